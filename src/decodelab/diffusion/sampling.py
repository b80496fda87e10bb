"""The one loop every masked-diffusion sampler shares: forward, propose, pick, commit, emit.

Generation starts from `[prompt, <|mask|> × gen_length]` (gen_length = max_new_tokens, clipped to
the context). Each step is one forward pass over the whole canvas; the loop proposes x0 (the argmax,
or the argmax of Gumbel-perturbed logits at temperature > 0, as LLaDA's `generate.py`) and a
confidence per masked position; a `Rule` picks which masked positions of the row's current block
to commit. Committed tokens are never remasked. If a rule picks nothing for a row that still has
masks in its block, the loop commits that row's most confident position, so decoding never hangs
(Fast-dLLM's "always commit the top-1"). Every decision is per row and every random draw comes from
the row's own generator (seed s + row), so a row's output does not depend on the batch around it.

The engine receives, after each step, each row's newly *contiguous* committed tokens (a token fixed
ahead of a mask is held back until the gap closes), so streaming, stop strings and EOS work as for
an AR model, and decoding ends as soon as every row has committed an EOS with no mask before it.
Stats: `forward_passes` counts model calls (CFG costs two); `steps` counts the iterations after the
first, as for AR methods (`forward_passes = 1 + steps` without CFG).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..processors import SAMPLING_DEFAULTS

NEG_INF = float("-inf")
CONFIDENCES = ("low_confidence", "random", "maskgit_plus", "topk_margin", "entropy")


@dataclass
class Step:
    """What a rule sees at one step (B rows, G canvas positions)."""

    conf: torch.Tensor  # [B, G] float64 confidence; -inf where not a candidate
    x0: torch.Tensor  # [B, G] proposed tokens
    masked: torch.Tensor  # [B, G] bool: still masked before this step
    index: int = 0  # steps taken so far in this generation
    gens: list = field(default_factory=list)  # the rows' torch.Generators
    logits: torch.Tensor | None = None  # [B, G, V] float64, for rules that mix in another model (APD)
    canvas: "Canvas | None" = None  # the canvas before this step's commits


class Rule:
    """Picks the positions to commit. Subclasses override `select`, optionally the block hooks."""

    confidence = "low_confidence"

    def __init__(self, block_length: int, gen_length: int):
        self.block_length = block_length if block_length > 0 else gen_length
        self.gen_length = gen_length

    def block_end(self, row: int, start: int, step: Step) -> int:
        """End (exclusive) of the row's next block starting at `start`: fixed length by default."""
        return min(start + self.block_length, self.gen_length)

    def start_block(self, row: int, start: int, end: int, masks: int) -> None:
        """Called when a row enters the block [start, end) holding `masks` masked positions."""

    def select(self, step: Step) -> torch.Tensor:  # -> [B, G] bool
        raise NotImplementedError


@dataclass
class Canvas:
    ids: torch.Tensor  # [B, W + G] left-padded prompts, then the generated canvas
    attention: torch.Tensor  # [B, W + G] 1 = real token
    start: int  # W: index of the first canvas position
    masked: torch.Tensor  # [B, G] bool
    emitted: list[int] = field(default_factory=list)  # per row: contiguous tokens already yielded

    @property
    def canvas(self) -> torch.Tensor:  # [B, G] view
        return self.ids[:, self.start:]


def new_canvas(ctx, gen_length: int, mask_id: int) -> Canvas:
    prompts, pad = ctx.prompts, ctx.lm.pad_token_id
    width = max(map(len, prompts))
    rows = [[pad] * (width - len(p)) + p + [mask_id] * gen_length for p in prompts]
    attention = [[0] * (width - len(p)) + [1] * (len(p) + gen_length) for p in prompts]
    return Canvas(torch.tensor(rows, device=ctx.lm.device), torch.tensor(attention, device=ctx.lm.device),
                  width, torch.ones(len(prompts), gen_length, dtype=torch.bool), [0] * len(prompts))


def gen_length_of(ctx) -> int:
    width = max(map(len, ctx.prompts))
    return max(1, min(ctx.max_new_tokens, ctx.lm.max_length - width))


def check_sampling(params: dict) -> None:
    """Diffusion samplers take `temperature` only; other AR sampling parameters are refused."""
    for name, default in SAMPLING_DEFAULTS.items():
        if name != "temperature" and params.get(name, default) != default:
            raise UserError(f"parameter {name!r} is not supported by diffusion samplers (only temperature)")


def row_generators(ctx) -> list[torch.Generator]:
    """One CPU generator per row, seeded seed + row (seed 0 when decoding is greedy)."""
    base = ctx.generator.initial_seed() if ctx.generator is not None else 0
    return [torch.Generator().manual_seed(base + b) for b in range(ctx.batch_size)]


@torch.inference_mode()
def forward(ctx, canvas: Canvas, cfg_scale: float = 0.0, cache=None) -> torch.Tensor:
    """Logits [B, G, V] (float64) for the canvas positions; classifier-free guidance when cfg_scale > 0.

    With a `cache` (diffusion/cache.py, planned for this step) only its fed slice is run; canvas
    positions outside the slice get zero logits (they are outside every row's block).
    """
    ids, attention = canvas.ids, canvas.attention
    if cfg_scale > 0:  # LLaDA: unconditional input = the prompt re-masked
        uncond = ids.clone()
        uncond[:, : canvas.start] = torch.where(attention[:, : canvas.start].bool(), ctx.lm.mask_token_id,
                                                uncond[:, : canvas.start])
        ids, attention = torch.cat([ids, uncond]), torch.cat([attention, attention])
    t0 = time.perf_counter()
    kwargs = {"attention_mask": attention} if not bool(attention.all()) else {}
    if cache is None:
        logits = ctx.lm.model(input_ids=ids, **kwargs).logits
    else:
        logits = _cached_logits(ctx.lm.model, ids, attention, cache, kwargs)
    for _ in range(2 if cfg_scale > 0 else 1):
        ctx.stats.count_forward("target", (time.perf_counter() - t0) / (2 if cfg_scale > 0 else 1))
    if getattr(ctx.lm, "logit_shift", False):  # Dream: position i's logits come from position i - 1
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    logits = logits[:, canvas.start:].double()
    if cfg_scale > 0:
        cond, uncond = logits.chunk(2)
        logits = uncond + (cfg_scale + 1) * (cond - uncond)
    logits[..., ctx.lm.mask_token_id] = NEG_INF  # the mask token is never a prediction
    return logits


def _cached_logits(model, ids: torch.Tensor, attention: torch.Tensor, cache, kwargs: dict) -> torch.Tensor:
    """[B, S, V]: the model run on the cache's fed slice [a, b) (zeros elsewhere)."""
    from .model import _positions

    a, b = cache.a, cache.b
    positions = _positions(attention, *ids.shape, ids.device)[:, a:b]
    fed = model(input_ids=ids[:, a:b], position_ids=positions, kv_cache=cache, **kwargs).logits
    logits = fed.new_zeros(ids.shape[0], ids.shape[1], fed.shape[-1])
    logits[:, a:b] = fed
    return logits


def propose(logits: torch.Tensor, temperature: float, confidence: str,
            gens: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, G, V] float64 → (x0 [B, G], confidence [B, G] float64)."""
    if temperature > 0:  # Gumbel-max: argmax(l/T + g) samples softmax(l/T) (LLaDA's add_gumbel_noise)
        u = torch.stack([torch.rand(logits.shape[1:], generator=g, dtype=torch.float64) for g in gens])
        x0 = (logits / temperature - torch.log(-torch.log(u.clamp_min(1e-300)))).argmax(-1)
    else:
        x0 = logits.argmax(-1)
    p = torch.softmax(logits, dim=-1)
    if confidence in ("low_confidence", "maskgit_plus"):
        conf = p.gather(-1, x0[..., None])[..., 0]
    elif confidence == "random":
        conf = torch.stack([torch.rand(logits.shape[1], generator=g, dtype=torch.float64) for g in gens])
    elif confidence == "topk_margin":
        top2 = p.topk(2, dim=-1).values
        conf = top2[..., 0] - top2[..., 1]
    elif confidence == "entropy":
        conf = (p * torch.log(p.clamp_min(1e-300))).sum(-1)  # −H: higher is more certain
    else:
        raise UserError(f"unknown confidence {confidence!r}; use one of {list(CONFIDENCES)}")
    return x0, conf


def top_k_mask(conf: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """conf [B, G] (-inf = not a candidate), k [B] → [B, G] bool: each row's k most confident candidates."""
    order = conf.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(conf.shape[-1]).expand_as(order))
    return (ranks < k[:, None]) & torch.isfinite(conf)


def top1(conf: torch.Tensor) -> torch.Tensor:
    return top_k_mask(conf, torch.ones(conf.shape[0], dtype=torch.long))


class _Blocks:
    """Per-row current block [start, end), advanced when a row's block has no mask left."""

    def __init__(self, batch: int):
        self.start, self.end = [0] * batch, [0] * batch

    def window(self, rule: Rule, step: Step) -> torch.Tensor:  # -> [B, G] bool
        g = step.masked.shape[1]
        win = torch.zeros_like(step.masked)
        for b in range(step.masked.shape[0]):
            while not step.masked[b, self.start[b]:self.end[b]].any() and self.end[b] < g:
                self.start[b] = self.end[b]
                self.end[b] = max(self.start[b] + 1, min(g, rule.block_end(b, self.start[b], step)))
                masks = int(step.masked[b, self.start[b]:self.end[b]].sum())
                rule.start_block(b, self.start[b], self.end[b], masks)
            win[b, self.start[b]:self.end[b]] = True
        return win


def decode(ctx, rule: Rule, cfg_scale: float = 0.0, cache: str = "none") -> Iterator[list[list[int]]]:
    """The shared loop: yields each row's newly contiguous committed tokens after every step.

    cache: "none", or Fast-dLLM's approximate "prefix" / "dual" cache (diffusion/cache.py)."""
    from ..constraints.diffusion import canvas_grammar
    from .cache import check_cache

    check_sampling(ctx.params)
    kv = check_cache(ctx.lm, cache, cfg_scale)
    gen_length = gen_length_of(ctx)
    canvas = new_canvas(ctx, gen_length, ctx.lm.mask_token_id)
    gens, blocks = row_generators(ctx), _Blocks(ctx.batch_size)
    temperature = float(ctx.params.get("temperature", 0.0))
    grammar = canvas_grammar(ctx)  # constraints/diffusion.py; None without a constraint
    index = 0
    while canvas.masked.any():
        if kv is not None:
            kv.plan(canvas.start, canvas.masked, blocks.start, blocks.end, canvas.ids.shape[1])
        logits = forward(ctx, canvas, cfg_scale, kv)
        x0, conf = propose(logits, temperature, rule.confidence, gens)
        x0, conf = x0.to(canvas.ids.device), conf.nan_to_num(nan=-1e300, posinf=1e300, neginf=-1e300)
        if grammar is not None:  # the first masked position proposes only what its grammar state allows
            grammar.propose_first(canvas, logits, x0, conf, temperature, rule.confidence, gens)
        step = Step(conf.masked_fill(~canvas.masked, NEG_INF), x0, canvas.masked.clone(), index, gens, logits, canvas)
        candidates = canvas.masked & blocks.window(rule, step)
        step.conf = step.conf.masked_fill(~candidates, NEG_INF)
        commit = rule.select(step) & candidates
        stuck = candidates.any(-1) & ~commit.any(-1)
        commit |= top1(step.conf) & stuck[:, None]  # never hang: the most confident one goes in
        if grammar is not None:  # only commits that keep the canvas inside a valid grammar prefix
            commit = grammar.filter(canvas, step.x0, commit)
        if not commit.any():  # cannot happen while the guard holds; fail loudly rather than loop
            raise RuntimeError("diffusion step committed nothing while masks remain")
        canvas.canvas[commit] = step.x0[commit]  # a rule may replace proposals (APD's mixture argmax)
        canvas.masked &= ~commit
        index += 1
        yield _contiguous(canvas)


def _contiguous(canvas: Canvas) -> list[list[int]]:
    out = []
    for b in range(canvas.masked.shape[0]):
        open_ = canvas.masked[b].nonzero()
        n = int(open_[0]) if len(open_) else canvas.masked.shape[1]
        out.append(canvas.canvas[b, canvas.emitted[b]:n].tolist())
        canvas.emitted[b] = n
    return out
