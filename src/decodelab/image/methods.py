"""Image decoding methods on a raster image model: the registry, `raster` and `sjd` (zipar.py: ZipAR).

A method is `run(model, labels, gens, **params) -> (tokens [B, N], per-row stats)`; rows are
independent images (one `torch.Generator` each) decoded together, and every forward pass of
`ImageModel` counts as one NFE for every row still being decoded.

* `raster` — next-token prediction in raster order: N passes (the reference distribution).
* `sjd` — Speculative Jacobi Decoding (Teng et al., "Accelerating Auto-regressive Text-to-Image
  Generation with Training-free Speculative Jacobi Decoding", arXiv 2410.01699): a window of
  L-1 drafts after the last accepted token, one forward pass, probabilistic acceptance
  r < min(1, p(x)/q(x)), residual resampling norm(max(0, p - q)) at the first rejection, a bonus
  token when all are accepted, and the Jacobi update (fresh samples beyond the accepted prefix
  are the next drafts, with their p as q). Exact speculative sampling given the accepted
  prefix, hence lossless.
  `update="reinit"` (ours, not the paper's) drops the Jacobi iteration: after each step every
  draft is re-initialised from the accepted prefix by `init` — with `repeat_horizon` a run of
  copies of the last accepted token, i.e. speculative decoding with a copy drafter. Still exact
  (each draft is a function of the accepted prefix, q its one-hot or its sampling distribution).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..methods.registry import Param
from ..methods.registry import register as main_register
from .cache import window_probs
from .model import ImageModel


@dataclass(frozen=True)
class ImageMethod:
    name: str
    description: str
    exact: bool  # output distribution identical to raster sampling (tested)
    paper: str | None
    variant: str  # the model variant it needs: raster | lpd | nar
    specs: dict[str, Param] = field(default_factory=dict)
    run: Callable = field(default=None, repr=False)

    def check_params(self, params: dict) -> dict:
        unknown = sorted(set(params) - set(self.specs))
        if unknown:
            raise UserError(f"unknown parameter {unknown[0]!r} for image method {self.name!r}; "
                             f"allowed: {', '.join(sorted(self.specs)) or 'none'}")
        return {name: spec.check(name, params.get(name, spec.default)) for name, spec in self.specs.items()}


IMAGE_METHODS: dict[str, ImageMethod] = {}
SAMPLING = {"cfg_scale": Param(1.0, 0.0, 20.0, help="classifier-free guidance scale (1 = off)"),
            "temperature": Param(1.0, 0.0, 10.0, help="0 = greedy"),
            "top_k": Param(0, 0, 1 << 16, help="0 = off")}


def register(name: str, *, description: str, exact: bool, paper: str | None, variant: str = "raster", **specs: Param):
    """Register an image method here (what generate_image runs) and, with kind="image", in the main
    registry (`decodelab.methods()`: listing, CLI, model-kind checks); `lossless` = `exact`."""
    def wrap(fn):
        IMAGE_METHODS[name] = ImageMethod(name, description, exact, paper, variant, specs, fn)
        main_register(name, description=description, lossless=exact, paper=paper, params={**specs, **SAMPLING},
                      temperature=1.0, kind="image")(_through_generate_image(name))
        return fn
    return wrap


def _through_generate_image(name: str):
    """The main registry's entry point: image methods decode labels, not prompts."""
    def run(ctx):
        raise UserError(f"{name!r} is an image method: use decodelab.generate_image(lm, label, method={name!r}) "
                         f"or `decodelab image --label L --method {name}`")
        yield  # a generator, like every registered method
    return run


def sample(probs: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
    """probs [B, K] → one token per row [B], row b drawn with gens[b]."""
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, gens)])


def uniform(gen: torch.Generator) -> float:
    return torch.rand((), generator=gen).item()


def _stats(passes: int, **extra) -> dict:
    return {"forward_passes": passes, **extra}


@register("raster", description="next-token prediction in raster order (the reference)", exact=True, paper=None)
def raster(model: ImageModel, labels: torch.Tensor, gens: list[torch.Generator]) -> tuple[torch.Tensor, list[dict]]:
    b, n = len(labels), model.spec.n
    tokens = torch.zeros(b, n, dtype=torch.long)
    for p in range(n):
        tokens[:, p] = sample(window_probs(model, labels, tokens, [p] * b, [p + 1] * b)[:, p], gens)
    return tokens, [_stats(n) for _ in range(b)]


# ---------------------------------------------------------------- Speculative Jacobi Decoding

@dataclass
class JacobiRow:
    """One image's SJD state: accepted prefix length, drafts and their draft distributions q."""

    tokens: torch.Tensor  # [N] accepted prefix, then drafts
    q: torch.Tensor  # [N, K] draft distribution of each draft position
    dist: torch.Tensor  # [N, K] latest distribution seen at each position (sample_horizon's source)
    accepted: int = 0
    drafted: int = 0  # drafts present after the prefix
    passes: int = 0
    per_pass: list = field(default_factory=list)


def initialise_drafts(row: JacobiRow, upto: int, init: str, gen: torch.Generator) -> None:
    """Fill draft positions up to `upto` (exclusive): `random` (uniform token, one-hot q),
    `repeat_horizon` (copy the previous token, one-hot q), `sample_horizon` (draw from the
    previous position's distribution, which becomes q)."""
    k = row.q.shape[1]
    for j in range(row.accepted + row.drafted, upto):
        if init == "sample_horizon":
            row.q[j] = row.dist[j - 1] if j > 0 else torch.full((k,), 1 / k)
            row.tokens[j] = torch.multinomial(row.q[j], 1, generator=gen)
            row.dist[j] = row.q[j]
            continue
        if init == "repeat_horizon" and j > 0:
            row.tokens[j] = row.tokens[j - 1]
        else:
            row.tokens[j] = torch.randint(k, (), generator=gen)
        row.q[j] = torch.nn.functional.one_hot(row.tokens[j], k).float()
    row.drafted = upto - row.accepted


def verify_window(row: JacobiRow, p: torch.Tensor, gen: torch.Generator) -> int:
    """p [≥ window end, K]: x_j's target distribution given row.tokens before j. Accepts drafts
    with r < min(1, p(x)/q(x)); at the first rejection samples the residual norm(max(0, p - q));
    if every draft passes, samples the bonus token from p. Returns the new tokens' count."""
    a, n = row.accepted, row.tokens.shape[0]
    for j in range(a, a + row.drafted):
        x = row.tokens[j]
        if uniform(gen) < min(1.0, (p[j, x] / row.q[j, x]).item()):
            continue  # accepted
        residual = (p[j] - row.q[j]).clamp(min=0)
        residual = residual if residual.sum() > 0 else p[j]
        row.tokens[j] = torch.multinomial(residual / residual.sum(), 1, generator=gen)
        return j + 1 - a  # recovered token ends the step
    end = a + row.drafted
    if end < n:  # bonus token
        row.tokens[end] = torch.multinomial(p[end], 1, generator=gen)
        return end + 1 - a
    return end - a


def jacobi_update(row: JacobiRow, p: torch.Tensor, new: int, window_end: int, gen: torch.Generator) -> None:
    """Fresh samples beyond the accepted prefix (from this pass's p, which becomes q) are the next drafts."""
    row.accepted += new
    for j in range(row.accepted, window_end):
        row.tokens[j] = torch.multinomial(p[j], 1, generator=gen)
        row.q[j] = p[j]
    row.drafted = max(0, window_end - row.accepted)


@register("sjd", description="Speculative Jacobi Decoding: window of drafts, probabilistic acceptance (lossless)",
          exact=True, paper="Accelerating Auto-regressive Text-to-Image Generation with Training-free "
          "Speculative Jacobi Decoding (arXiv 2410.01699)",
          window=Param(16, 2, 256, help="L: last accepted token + L-1 drafts"),
          init=Param("random", choices=("random", "repeat_horizon", "sample_horizon"), help="draft initialisation"),
          update=Param("jacobi", choices=("jacobi", "reinit"), help="next drafts: jacobi = this pass's fresh samples "
                       "(the paper); reinit = re-initialised from the accepted prefix by `init` (ours)"))
def sjd(model: ImageModel, labels: torch.Tensor, gens: list[torch.Generator], window: int = 16,
        init: str = "random", update: str = "jacobi") -> tuple[torch.Tensor, list[dict]]:
    b, n, k = len(labels), model.spec.n, model.spec.levels
    rows = [JacobiRow(torch.zeros(n, dtype=torch.long), torch.zeros(n, k), torch.full((n, k), 1 / k)) for _ in range(b)]
    while any(r.accepted < n for r in rows):
        live = [i for i, r in enumerate(rows) if r.accepted < n]
        for i in live:
            initialise_drafts(rows[i], min(rows[i].accepted + window - 1, n), init, gens[i])
        starts = [r.accepted if r.accepted < n else 0 for r in rows]  # finished rows feed nothing
        ends = [min(r.accepted + window, n) if r.accepted < n else 0 for r in rows]
        probs = window_probs(model, labels, torch.stack([r.tokens for r in rows]), starts, ends)
        for i in live:
            row, p, end = rows[i], probs[i], ends[i]
            new = verify_window(row, p, gens[i])
            row.dist[row.accepted:end] = p[row.accepted:end]
            row.passes += 1
            row.per_pass.append(new)
            if update == "jacobi":
                jacobi_update(row, p, new, end, gens[i])
            else:  # every draft is re-initialised next pass from the accepted prefix
                row.accepted, row.drafted = row.accepted + new, 0
    out = torch.stack([r.tokens for r in rows])
    return out, [_stats(r.passes, steps=r.passes, accepted_per_pass=r.per_pass, mean_accepted=n / r.passes) for r in rows]
