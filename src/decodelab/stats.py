"""The one statistics object every method fills (its public fields: README.md, "Python API")."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Stats:
    """Counters for one generation.

    τ (`mean_accepted`) follows the reference definition: tokens emitted per target forward pass in
    the decode phase — the token that prefill emits is not part of any step, so plain greedy has
    τ = 1.00 exactly and `forward_passes = 1 + steps` for it.
    In a batch each row's Stats counts that row's `new_tokens`; forward passes, steps, τ and times
    belong to the whole batch of `batch_size` rows (they were shared).
    """

    new_tokens: int = 0
    forward_passes: int = 0
    draft_forward_passes: int = 0
    steps: int = 0
    wall_time_s: float = 0.0
    target_time_s: float = 0.0
    draft_time_s: float = 0.0
    decode_tokens: float = 0  # tokens emitted by decode steps (new_tokens minus prefill's)
    drafted: list[int] = field(default_factory=list)  # per draft position: times a draft was offered
    accepted: list[int] = field(default_factory=list)  # per draft position: times it was accepted
    batch_size: int = 1
    forced_tokens: int = 0  # constrained speculative methods: grammar-forced tokens fed as drafts
    # sampling: log Z_t, the log of the kept mass, for each emitted token (processors/distortion.py);
    # None when greedy or when the method does not draw every token from the sampler (speculative, search)
    log_z: list[float] | None = None

    def count_forward(self, role: str, seconds: float) -> None:
        if role == "target":
            self.forward_passes += 1
            self.target_time_s += seconds
        else:
            self.draft_forward_passes += 1
            self.draft_time_s += seconds

    def record_step(self, emitted: float) -> None:
        """One decoding step that emitted `emitted` tokens per row (after stop-cutting)."""
        self.steps += 1
        self.decode_tokens += emitted

    def record_drafts(self, drafted: int, accepted: int) -> None:
        """A verify step offered `drafted` tokens along its best chain and `accepted` of them were kept."""
        for i in range(drafted):
            if i >= len(self.drafted):
                self.drafted.append(0)
                self.accepted.append(0)
            self.drafted[i] += 1
            self.accepted[i] += int(i < accepted)

    @property
    def mean_accepted(self) -> float:
        return self.decode_tokens / self.steps if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    @property
    def acceptance_by_position(self) -> list[float]:
        return [a / d if d else 0.0 for a, d in zip(self.accepted, self.drafted)]

    @property
    def forward_passes_per_token(self) -> float:
        """Target forward passes (prefill included) per new token: 1.0 for greedy, lower is better."""
        return self.forward_passes / self.new_tokens if self.new_tokens else 0.0

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted ÷ drafted tokens along the verified chains; None when the method never drafted."""
        drafted = sum(self.drafted)
        return sum(self.accepted) / drafted if drafted else None

    @property
    def log_distortion(self) -> float | None:
        """log ε = −Σ_t log Z_t, the sequence's local normalisation distortion (Kempton & Burrell,
        arXiv:2503.21929): the sampler drew the text with probability p(y)^{1/τ} · ε."""
        return None if self.log_z is None else -sum(self.log_z)

    @property
    def draft_time_share(self) -> float:
        return self.draft_time_s / self.wall_time_s if self.wall_time_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "new_tokens": self.new_tokens,
            "batch_size": self.batch_size,
            "forward_passes": self.forward_passes,
            "draft_forward_passes": self.draft_forward_passes,
            "steps": self.steps,
            "mean_accepted": round(self.mean_accepted, 4),
            "wall_time_s": round(self.wall_time_s, 6),
            "tokens_per_s": round(self.tokens_per_s, 3),
            "draft_time_share": round(self.draft_time_share, 4),
            "forward_passes_per_token": round(self.forward_passes_per_token, 4),
            "acceptance_rate": None if self.acceptance_rate is None else round(self.acceptance_rate, 4),
            "acceptance_by_position": [round(a, 4) for a in self.acceptance_by_position],
            **({} if self.log_z is None else {"log_z": self.log_z, "log_distortion": self.log_distortion}),
        }
