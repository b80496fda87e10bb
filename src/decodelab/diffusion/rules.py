"""The commit rules of the diffusion samplers, side by side; each is a `Rule` for sampling.decode.

- `Schedule` — LLaDA's reference sampler ("Large Language Diffusion Models", arXiv:2502.09992):
  per block, M masks over `steps_per_block` steps, the first M mod steps taking one extra token;
  commit the top-k by confidence (`low_confidence` = p(x0), or `random`).
- `DreamSchedule` — Dream ("Dream 7B", arXiv:2508.15487): timesteps linspace(1, ε, steps + 1);
  at step (t, s) commit n = ⌊M·(1 − s/t)⌋ of the M current masks (all at the last step), the top-n
  by `maskgit_plus` / `topk_margin` / `entropy`, or drawn by softmax(conf / alg_temp).
- `Threshold` / `Factor` — Fast-dLLM ("Fast-dLLM: Training-free Acceleration of Diffusion LLM by
  Enabling KV Cache and Parallel Decoding", arXiv:2505.22618): commit the top-1 and every position
  with confidence ≥ τ; or, sorted c(1) ≥ c(2) ≥ …, the longest prefix with c(j) ≥ 1 − f/(j + 1).
- `LocalLeap` — "Accelerating Diffusion LLM Inference via Local Determinism Propagation":
  anchors are positions with conf ≥ τ; within radius r of an anchor the bar drops to τ_relaxed.
- `EntropyBound` — EB-sampler ("Accelerated Sampling from Masked Diffusion Models via Entropy Bounded
  Unmasking", arXiv:2505.24857): sort the candidates by entropy H(1) ≤ H(2) ≤ …, commit the largest
  k with Σ_{j≤k} H(j) − max_{j≤k} H(j) ≤ γ (so the first always goes in; γ = 0 is one per step unless
  some are certain); optionally Learn2PD's End-of-Text truncation.
- `AdaBlock` — "AdaBlock-dLLM: Semantic-Aware Diffusion LLM Inference via Adaptive Block Size": the block ends right after the most confident
  predicted delimiter in a window of ⌊0.25·gen_length⌋ positions if its confidence ≥ δ, else after
  the default block length; inside, Fast-dLLM's threshold rule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .sampling import Rule, Step, top1, top_k_mask


class Schedule(Rule):
    def __init__(self, block_length: int, gen_length: int, steps: int, remasking: str):
        super().__init__(block_length, gen_length)
        self.steps = gen_length if steps == 0 else min(steps, gen_length)
        self.confidence = remasking
        self.plan: dict[int, list[int]] = {}

    def start_block(self, row: int, start: int, end: int, masks: int) -> None:
        per_block = max(1, round(self.steps * (end - start) / self.gen_length))
        base, extra = divmod(masks, per_block)
        self.plan[row] = [base + (i < extra) for i in range(per_block)]

    def select(self, step: Step) -> torch.Tensor:
        g = step.conf.shape[1]
        k = [self.plan[b].pop(0) if self.plan.get(b) else g for b in range(step.conf.shape[0])]
        return top_k_mask(step.conf, torch.tensor(k))


class DreamSchedule(Rule):
    def __init__(self, block_length: int, gen_length: int, steps: int, alg: str, alg_temp: float, eps: float = 1e-3):
        super().__init__(block_length, gen_length)
        self.steps = gen_length if steps == 0 else min(steps, gen_length)
        self.confidence, self.alg_temp, self.eps = alg, alg_temp, eps
        self.times: dict[int, list[float]] = {}

    def start_block(self, row: int, start: int, end: int, masks: int) -> None:
        per_block = max(1, round(self.steps * (end - start) / self.gen_length))
        self.times[row] = torch.linspace(1, self.eps, per_block + 1, dtype=torch.float64).tolist()

    def _count(self, row: int, masks: int) -> int:
        times = self.times.get(row, [])
        if len(times) <= 2:  # the block's last step: everything left
            return masks
        t, s = times.pop(0), times[0]
        return int(masks * (1 - s / t))

    def select(self, step: Step) -> torch.Tensor:
        finite = torch.isfinite(step.conf)
        n = [self._count(b, int(finite[b].sum())) if finite[b].any() else 0 for b in range(finite.shape[0])]
        if self.alg_temp <= 0:
            return top_k_mask(step.conf, torch.tensor(n))
        out = torch.zeros_like(finite)
        for b, k in enumerate(n):
            if k > 0:  # draw k candidates without replacement from softmax(conf / alg_temp)
                weights = torch.softmax(step.conf[b] / self.alg_temp, dim=-1)
                out[b, torch.multinomial(weights.float(), k, generator=step.gens[b])] = True
        return out


class Threshold(Rule):
    def __init__(self, block_length: int, gen_length: int, threshold: float):
        super().__init__(block_length, gen_length)
        self.threshold = threshold

    def select(self, step: Step) -> torch.Tensor:
        return top1(step.conf) | (step.conf >= self.threshold)


class Factor(Rule):
    def __init__(self, block_length: int, gen_length: int, factor: float):
        super().__init__(block_length, gen_length)
        self.factor = factor

    def select(self, step: Step) -> torch.Tensor:
        ranked = step.conf.sort(dim=-1, descending=True).values  # c(1) ≥ c(2) ≥ …
        j = torch.arange(1, ranked.shape[1] + 1, dtype=ranked.dtype)
        ok = ranked >= 1 - self.factor / (j + 1)
        ok[:, 0] = True
        n = ok.long().cumprod(dim=-1).sum(-1)  # longest prefix where every c(j) passes
        return top_k_mask(step.conf, n)


class EntropyBound(Rule):
    confidence = "entropy"  # conf = −H, so the loop's top-1 fallback is the lowest-entropy position

    def __init__(self, block_length: int, gen_length: int, gamma: float, eos_id: int | None = None):
        super().__init__(block_length, gen_length)
        self.gamma, self.eos_id = gamma, eos_id

    def select(self, step: Step) -> torch.Tensor:
        entropy = -step.conf.sort(dim=-1, descending=True).values  # H(1) ≤ H(2) ≤ …; +inf = not a candidate
        before = torch.cumsum(entropy, -1) - entropy  # Σ_{j≤k} H(j) − H(k), and H(k) is the max of the first k
        ok = (before <= self.gamma + 1e-12) & torch.isfinite(entropy)
        out = top_k_mask(step.conf, ok.long().cumprod(-1).sum(-1))
        if self.eos_id is not None:
            from .learn2pd import end_of_text

            out |= end_of_text(step, out, self.eos_id)
        return out


class LocalLeap(Rule):
    def __init__(self, block_length: int, gen_length: int, threshold: float, relaxed: float, radius: int):
        super().__init__(block_length, gen_length)
        self.threshold, self.relaxed, self.radius = threshold, relaxed, radius

    def select(self, step: Step) -> torch.Tensor:
        anchors = step.conf >= self.threshold
        near = F.max_pool1d(anchors.double()[:, None], 2 * self.radius + 1, stride=1, padding=self.radius)[:, 0] > 0
        return top1(step.conf) | anchors | (near & (step.conf >= self.relaxed))


class AdaBlock(Threshold):
    def __init__(self, block_length: int, gen_length: int, threshold: float, delta: float,
                 delimiter_ids: torch.Tensor):
        super().__init__(block_length, gen_length, threshold)
        self.delta, self.delimiter_ids = delta, delimiter_ids

    def block_end(self, row: int, start: int, step: Step) -> int:
        window = max(1, min(self.gen_length // 4, self.gen_length - start))
        conf = step.conf[row, start:start + window]  # -inf at committed positions
        is_delim = torch.isin(step.x0[row, start:start + window], self.delimiter_ids) & torch.isfinite(conf)
        if is_delim.any():
            best = int(conf.masked_fill(~is_delim, float("-inf")).argmax())
            if conf[best] >= self.delta:
                return start + best + 1
        return super().block_end(row, start, step)


class Buffered(Rule):
    """The buffered rule of CCD ("Beyond Confidence: Adaptive and Coherent Decoding for Diffusion Language
    Models"), as specified in this repository's diffusion notes (docs/DIFFUSION.md): after `warmup` ordinary top-b steps, keep the previous step's top-V positions and
    their argmax; if the current top-b overlaps that buffer, commit every current top-V position that
    was in the buffer with the same argmax, else the top-b. V grows by one per step up to b·(1 + expand)."""

    def __init__(self, block_length: int, gen_length: int, steps: int, expand_ratio: float, warmup: int):
        super().__init__(block_length, gen_length)
        steps = gen_length if steps == 0 else min(steps, gen_length)
        self.b = max(1, round(gen_length / steps))
        self.v_max = int(self.b + self.b * expand_ratio)
        self.warmup = warmup
        self.buffer: dict[int, dict[int, int]] = {}  # row → {position: argmax} of the previous step
        self.width: dict[int, int] = {}
        self.seen: dict[int, int] = {}

    def _row(self, row: int, conf: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        finite = int(torch.isfinite(conf).sum())
        order = conf.argsort(descending=True, stable=True).tolist()
        top_b = order[: min(self.b, finite)]
        v = self.width.get(row, self.b)
        top_v = order[: min(v, finite)]
        prev = self.buffer.get(row, {})
        out = torch.zeros_like(conf, dtype=torch.bool)
        keep = [p for p in top_v if prev.get(p) == int(x0[p])]
        warm = self.seen.get(row, 0) >= self.warmup
        out[keep if warm and set(top_b) & set(prev) and keep else top_b] = True
        self.buffer[row] = {p: int(x0[p]) for p in top_v}
        self.width[row] = min(v + 1, self.v_max)
        self.seen[row] = self.seen.get(row, 0) + 1
        return out

    def select(self, step: Step) -> torch.Tensor:
        rows = [self._row(b, step.conf[b], step.x0[b]) if torch.isfinite(step.conf[b]).any()
                else torch.zeros_like(step.masked[b]) for b in range(step.conf.shape[0])]
        return torch.stack(rows)


class Mixture(Rule):
    """APD ("Accelerating Diffusion LLMs via Adaptive Parallel Decoding"), greedy form: left to right,
    the diffusion model drafts the next `max_draft` masked positions in one pass, a small AR model
    scores the draft in one pass, and the target is the mixture log p = R·log p_D + (1 − R)·log p_AR.
    The draft is accepted up to the first position where it differs from the mixture's argmax, and
    that position takes the mixture's argmax (so every step commits at least one token)."""

    def __init__(self, gen_length: int, ar_session, mixture_weight: float, max_draft: int):
        super().__init__(0, gen_length)
        self.new_session, self.weight, self.max_draft = ar_session, mixture_weight, max_draft

    def _draft_span(self, step: Step) -> list[tuple[int, int]]:
        spans = []
        for b in range(step.masked.shape[0]):
            open_ = step.masked[b].nonzero().flatten()
            first = int(open_[0]) if len(open_) else step.masked.shape[1]
            spans.append((first, min(first + self.max_draft, step.masked.shape[1])))
        return spans

    def select(self, step: Step) -> torch.Tensor:
        canvas, spans = step.canvas, self._draft_span(step)
        drafted = canvas.ids.clone()
        for b, (f, e) in enumerate(spans):
            drafted[b, canvas.start + f:canvas.start + e] = step.x0[b, f:e]
        width = canvas.start + max(e for _, e in spans)
        ar_logits = self.new_session().forward(drafted[:, :width], pad_mask=canvas.attention[:, :width])
        out = torch.zeros_like(step.masked)
        for b, (f, e) in enumerate(spans):
            if f >= e:
                continue
            pos = torch.arange(canvas.start + f, canvas.start + e)  # AR logits at i - 1 predict token i
            log_d = torch.log_softmax(step.logits[b, f:e], -1)  # -inf at the mask token
            log_ar = torch.log_softmax(ar_logits[b, pos - 1].double(), -1)
            mix = self.weight * log_d.clamp_min(-1e30) + (1 - self.weight) * log_ar.clamp_min(-1e30)
            mix = mix.masked_fill(torch.isinf(log_d), float("-inf"))  # never the mask token
            target = mix.argmax(-1)
            wrong = (target != step.x0[b, f:e]).nonzero().flatten()
            n = int(wrong[0]) + 1 if len(wrong) else e - f
            step.x0[b, f:f + n] = target[:n]  # equal to the draft before the first disagreement
            out[b, f:f + n] = True
        return out
