"""ZipAR: next-set prediction over rows, with a fixed or an adaptive window.

ZipAR: Parallel Auto-regressive Image Generation through Spatial Locality (He et al.,
arXiv 2412.04062). Each forward pass advances every active row by one token, under raster-causal
attention over the decoded tokens only (undecoded slots masked explicitly).

* Fixed window s (the released code): row 0 is decoded sequentially, then row i ≥ 1 advances
  while row i-1 holds ≥ min(c_i + s, W) tokens ⇒ 2W + (H-2)·s passes; s = W is raster decoding.
  A new row's first input slot (x_{i-1,W-1}, not decoded yet) holds a placeholder (overwritten once
  the real token is decoded; no other slot sees it): `placeholder="latest"` (default) = a copy of the
  latest token of row i-2, as in the authors' LlamaGen port; `placeholder="above"` (ours) = the token
  in the last column of the nearest complete row above, x_{k,W-1} — the vertical neighbour of the
  missing token. The raster model predicts x_{i,0} from that slot's input: on builtin:digits16 the
  latest token of row i-2 is often a stroke pixel mid-row, and x_{i,0} (background in almost every
  digit) then costs ~2.8 nats instead of ~0.003 with s ≤ 6 (`python -m decodelab.image.diagnose zipar`).
* Adaptive window (the ICML version, `min_window` = s_min > 0): row i ≥ 2 starts as soon as row
  i-1 holds s_min settled tokens; its first token x is tentative. Every later pass re-predicts it
  with the wider context: accept if r < min(1, p_new(x)/p_old(x)), else resample from
  norm(max(0, p_new - p_old)) and keep widening; once row i-1 is complete the token is settled.
  The row then keeps the lead it was settled at as its window. Schedules differ per image.
* `weights="zipar"` (ours): the raster model fine-tuned so that the cached fixed-window sampler's
  context is in its training distribution (`python -m decodelab.image.train --zipar-windows ...`:
  every slot under the mask of the pass it is fed at, early row starts predicted from the
  `placeholder="above"` input; `zipar_training_layout`, tested equal to this module's decoding),
  shipped beside the raster model (builtin/digits16/zipar).
"""

from __future__ import annotations

import torch

from ..methods.registry import Param
from .cache import frontier_probs
from .methods import _stats, register, sample, uniform
from .model import ImageModel


def zipar_ready(counts: list[int], width: int, window: int) -> list[int]:
    """Rows whose next token is decodable: row 0 always; row 1 once row 0 is complete (the
    released code decodes row 0 sequentially); row i ≥ 1 while row i-1 holds ≥ min(c_i + s, W)."""
    ready = []
    for i, c in enumerate(counts):
        if c >= width:
            continue
        if i == 0 or (counts[i - 1] >= min(c + window, width) and (i > 1 or counts[0] == width)):
            ready.append(i)
    return ready


PLACEHOLDERS = ("latest", "above")


def zipar_placeholders(tokens: torch.Tensor, counts: list[int], rows: list[int], width: int,
                       rule: str = "latest") -> None:
    """A new row i's first input slot is x_{i-1,W-1}, not decoded yet: put a placeholder there (it
    is masked from every other slot) — "latest": the latest token of row i-2 (LlamaGen port);
    "above": x_{k,W-1} of the nearest complete row k ≤ i-2 (row 0 is complete before row 2 starts)."""
    for i in rows:
        if counts[i] == 0 and i >= 2 and counts[i - 1] < width:
            source = (i - 2) * width + counts[i - 2] - 1
            if rule == "above":
                source = next(k for k in range(i - 2, -1, -1) if counts[k] >= width) * width + width - 1
            tokens[(i - 1) * width + width - 1] = tokens[source]


def zipar_schedule(h: int, w: int, window: int) -> list[int]:
    """The fixed window's schedule: t[p] = the pass (0-based) at which x_p is sampled (raster index p)."""
    counts, t, step = [0] * h, [0] * (h * w), 0
    while min(counts) < w:
        for i in zipar_ready(counts, w, min(window, w)):
            t[i * w + counts[i]] = step
            counts[i] += 1
        step += 1
    return t


def zipar_training_layout(h: int, w: int, window: int, rule: str = "above") -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """What the cached fixed-window sampler (`zipar`, kv_cache=True) computes, as one training
    forward: attend [N + h - 2, N + h - 2] bool over the N raster slots (slot p: input x_{p-1},
    slot 0 the class; predicts x_p) and h - 2 extra *query* columns; extras = [(slot, source)] per
    used extra column (source: the raster index of the placeholder token it reads).

    Slot p is fed at f(p) = max(t(p), t(p-1) + 1): with its query when its input is known, else
    (a row started before the row above is complete) once x_{p-1} is decoded — its query state
    then read a placeholder and no other slot saw it. A fed slot sees the slots q < p fed at or
    before f(p), and its state is frozen (so every layer of a training forward under this mask
    equals the cache's). The early row starts' query columns get position p, the placeholder
    (`rule`, as `zipar_placeholders`) as input, and see q < p fed by t(p). Unused extra columns
    (and s ≥ W: raster) see only themselves."""
    n, t = h * w, zipar_schedule(h, w, window)
    fed = [-1] + [max(t[p], t[p - 1] + 1) for p in range(1, n)]
    f = torch.tensor(fed)
    size = n + max(h - 2, 0)
    attend = torch.eye(size, dtype=torch.bool)
    attend[:n, :n] = torch.tril(f[None, :] <= f[:, None])
    extras = []
    for i in range(2, h):
        p = i * w
        if t[p] > t[p - 1]:  # row i starts after row i-1 is complete: no placeholder
            continue
        done = [c for c in range(w) if t[(i - 2) * w + c] < t[p]]
        source = (i - 2) * w + len(done) - 1
        if rule == "above":
            source = next(k for k in range(i - 2, -1, -1) if t[k * w + w - 1] < t[p]) * w + w - 1
        col = n + len(extras)
        attend[col, :p] = f[:p] <= t[p]
        extras.append((p, source))
    return attend, extras


def settle(x: int, p_old: torch.Tensor, p_new: torch.Tensor, r: float, gen: torch.Generator) -> tuple[int, bool]:
    """The adaptive window's test for a tentative first token x: (token, accepted?)."""
    if r < min(1.0, (p_new[x] / p_old[x]).item()):
        return x, True
    residual = (p_new - p_old).clamp(min=0)
    residual = residual if residual.sum() > 0 else p_new
    return int(torch.multinomial(residual / residual.sum(), 1, generator=gen)), False


@register("zipar", description="ZipAR next-set prediction: rows decoded in parallel, staggered by a window",
          exact=False, paper="ZipAR: Parallel Auto-regressive Image Generation through Spatial Locality "
          "(arXiv 2412.04062)", window=Param(4, 1, 256, help="s: columns row i-1 must lead by (fixed window)"),
          min_window=Param(0, 0, 256, help="s_min of the adaptive window (ICML version); 0 = fixed window"),
          placeholder=Param("latest", choices=PLACEHOLDERS, help="a new row's missing input x_{i-1,W-1}: latest = "
                            "latest token of row i-2 (LlamaGen port); above = x_{k,W-1} of the nearest complete row (ours)"),
          weights=Param("raster", choices=("raster", "zipar"), help="raster = the raster model (training-free, the "
                        "paper); zipar = the model beside it fine-tuned under this sampler's context (ours; use with "
                        "placeholder=above)"))
def zipar(model: ImageModel, labels: torch.Tensor, gens: list[torch.Generator], window: int = 4,
          min_window: int = 0, placeholder: str = "latest", weights: str = "raster") -> tuple[torch.Tensor, list[dict]]:
    # `weights` picks the model `generate_images` hands in (generate.py); nothing to do here.
    if min_window:
        return adaptive_zipar(model, labels, gens, min(min_window, model.spec.width), placeholder)
    b, (h, w) = len(labels), (model.spec.height, model.spec.width)
    tokens = torch.zeros(b, h * w, dtype=torch.long)
    known = torch.zeros(b, h * w, dtype=torch.bool)
    counts, passes, per_pass = [0] * h, 0, []  # the schedule is the same for every image of the batch
    while min(counts) < w:
        ready = zipar_ready(counts, w, min(window, w))
        for row in tokens:
            zipar_placeholders(row, counts, ready, w, placeholder)
        positions = [i * w + counts[i] for i in ready]
        probs = frontier_probs(model, labels, tokens, known, [positions] * b)
        for p in positions:
            tokens[:, p] = sample(probs[:, p], gens)
            known[:, p] = True
        for i in ready:
            counts[i] += 1
        passes += 1
        per_pass.append(len(ready))
    return tokens, [_stats(passes, steps=passes, accepted_per_pass=per_pass) for _ in range(b)]


class AdaptiveRows:
    """One image's adaptive-window state: per row the count, lead (window once settled) and the
    tentative first token's draft distribution."""

    def __init__(self, h: int, w: int, s_min: int):
        self.h, self.w, self.s_min = h, w, s_min
        self.counts, self.lead = [0] * h, [0] * h
        self.p_old: list[torch.Tensor | None] = [None] * h  # set while row i's first token is tentative
        self.passes, self.resampled = 0, 0

    def settled(self, i: int) -> int:
        return 0 if self.p_old[i] is not None else self.counts[i]

    def actions(self) -> list[tuple[int, str]]:
        """(row, "next" | "start" | "recheck") for this pass."""
        out = []
        for i in range(self.h):
            c, above = self.counts[i], self.settled(i - 1) if i else self.w
            if c >= self.w:
                continue
            if self.p_old[i] is not None:
                out.append((i, "recheck"))
            elif i == 0 or (c > 0 and above >= min(c + self.lead[i], self.w)):
                out.append((i, "next"))
            elif c == 0 and (above == self.w or (i >= 2 and above >= self.s_min)):
                out.append((i, "start"))
        return out

    @property
    def done(self) -> bool:
        return min(self.counts) >= self.w


def adaptive_zipar(model: ImageModel, labels, gens, s_min: int,
                   placeholder: str = "latest") -> tuple[torch.Tensor, list[dict]]:
    b, (h, w) = len(labels), (model.spec.height, model.spec.width)
    tokens = torch.zeros(b, h * w, dtype=torch.long)
    known = torch.zeros(b, h * w, dtype=torch.bool)  # settled tokens only
    rows = [AdaptiveRows(h, w, s_min) for _ in range(b)]
    while not all(r.done for r in rows):
        plans = [r.actions() if not r.done else [] for r in rows]
        for img, (state, plan) in enumerate(zip(rows, plans)):
            starting = [i for i, act in plan if act in ("start", "recheck")]
            settled_counts = [state.settled(i) for i in range(h)]
            zipar_placeholders(tokens[img], [0 if i in starting else c for i, c in enumerate(settled_counts)], starting, w,
                               placeholder)
        queries = [[i * w + state.counts[i] * (act == "next") for i, act in plan] for state, plan in zip(rows, plans)]
        probs = frontier_probs(model, labels, tokens, known, queries)
        for img, (state, plan) in enumerate(zip(rows, plans)):
            state.passes += bool(plan)
            aboves = [state.settled(i - 1) if i else w for i, _ in plan]  # the context p was computed with
            for (i, act), above in zip(plan, aboves):
                _apply(state, img, i, act, above, probs[img], tokens, known, gens[img])
    return tokens, [_stats(r.passes, steps=r.passes, resampled_first_tokens=r.resampled) for r in rows]


def _apply(state: AdaptiveRows, img: int, i: int, act: str, above: int, probs, tokens, known, gen) -> None:
    w = state.w
    if act == "next":
        p = i * w + state.counts[i]
        tokens[img, p] = sample(probs[p][None], [gen])[0]
        known[img, p] = True
        state.counts[i] += 1
        return
    p, p_new = i * w, probs[i * w]
    if act == "start":
        tokens[img, p] = sample(p_new[None], [gen])[0]
        state.counts[i] = 1
        ok = above == w
    else:
        x, ok = settle(int(tokens[img, p]), state.p_old[i], p_new, uniform(gen), gen)
        state.resampled += not ok
        tokens[img, p] = x
        ok = ok or above == w
    state.p_old[i] = None if ok else p_new
    if ok:
        known[img, p] = True
        state.lead[i] = above
