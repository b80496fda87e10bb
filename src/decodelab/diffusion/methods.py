"""The diffusion samplers as registered methods (`kind="diffusion"`): one rule each, one shared loop.

All run on an LM with `kind == "diffusion"`; `max_new_tokens` is the canvas length (gen_length).
`steps=0` / `block_length=0` mean "gen_length" (one token per step / one block), LLaDA's defaults
when gen_length = steps = block_length. None is lossless: parallel commits change the output.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import UserError
from ..methods.registry import Param, register
from .rules import (
    AdaBlock,
    Buffered,
    DreamSchedule,
    EntropyBound,
    Factor,
    LocalLeap,
    Mixture,
    Schedule,
    Threshold,
)
from .sampling import decode, gen_length_of

LLADA = "Large Language Diffusion Models (arXiv:2502.09992)"
FAST = ("Fast-dLLM: Training-free Acceleration of Diffusion LLM by Enabling KV Cache and Parallel "
        "Decoding (arXiv:2505.22618)")


def _block(default: int) -> Param:
    return Param(default, 0, 4096, help="block length (semi-autoregressive); 0 = the whole canvas")


def _threshold(default: float = 0.9) -> Param:
    return Param(default, 0.0, 1.0, help="commit every position with confidence ≥ this (plus the top-1)")


STEPS = Param(0, 0, 1 << 16, help="forward passes over the canvas; 0 = gen_length (one token per step)")
CACHE = Param("none", choices=("none", "prefix", "dual"),
              help="Fast-dLLM's approximate KV cache: refreshed at each block start (diffusion/cache.py)")


@register("llada", description="LLaDA's reference sampler: top-k low-confidence (or random) remasking "
          "on a fixed schedule, semi-autoregressive blocks, optional classifier-free guidance.",
          lossless=False, paper=LLADA, batched=True, kind="diffusion",
          params={"steps": STEPS, "block_length": _block(0),
                  "remasking": Param("low_confidence", choices=("low_confidence", "random")),
                  "cfg_scale": Param(0.0, 0.0, 100.0, help="classifier-free guidance (2 passes per step)"),
                  "cache": CACHE})
def llada(ctx) -> Iterator[list[list[int]]]:
    p = ctx.params
    rule = Schedule(p["block_length"], gen_length_of(ctx), p["steps"], p["remasking"])
    return decode(ctx, rule, p["cfg_scale"], p["cache"])


@register("dream", description="Dream's sampler: timestep schedule linspace(1, ε, steps + 1), commit the "
          "most certain by maskgit_plus / topk_margin / entropy (or draw them with alg_temp).",
          lossless=False, paper="Dream 7B: Diffusion Large Language Models (arXiv:2508.15487)", batched=True,
          kind="diffusion", params={"steps": STEPS, "block_length": _block(0),
                                    "alg": Param("maskgit_plus", choices=("maskgit_plus", "topk_margin", "entropy")),
                                    "alg_temp": Param(0.0, 0.0, 100.0, help="0 = top-n; > 0 = sample positions"),
                                    "cache": CACHE})
def dream(ctx) -> Iterator[list[list[int]]]:
    p = ctx.params
    return decode(ctx, DreamSchedule(p["block_length"], gen_length_of(ctx), p["steps"], p["alg"], p["alg_temp"]),
                  cache=p["cache"])


@register("fastdllm", description="Fast-dLLM parallel decoding: in each block commit the top-1 and every "
          "position with confidence ≥ threshold (or, with factor > 0, the factor rule).",
          lossless=False, paper=FAST, batched=True, kind="diffusion",
          params={"threshold": _threshold(), "factor": Param(0.0, 0.0, 100.0, help="> 0: use the factor rule"),
                  "block_length": _block(32), "cache": CACHE})
def fastdllm(ctx) -> Iterator[list[list[int]]]:
    p, g = ctx.params, gen_length_of(ctx)
    rule = Factor(p["block_length"], g, p["factor"]) if p["factor"] > 0 else Threshold(p["block_length"], g, p["threshold"])
    return decode(ctx, rule, cache=p["cache"])


@register("ebsampler", description="EB-sampler: commit the lowest-entropy positions while their summed entropy "
          "minus the largest stays ≤ gamma (an error budget per step); optional End-of-Text truncation.",
          lossless=False, paper="Accelerated Sampling from Masked Diffusion Models via Entropy Bounded Unmasking "
          "(arXiv:2505.24857)", batched=True, kind="diffusion",
          params={"gamma": Param(0.1, 0.0, 1e6, help="entropy budget per step (nats); larger = more per step"),
                  "eot": Param(False, choices=(False, True), help="Learn2PD's End-of-Text truncation: after a committed EOS, all EOS"),
                  "block_length": _block(0), "cache": CACHE})
def ebsampler(ctx) -> Iterator[list[list[int]]]:
    p = ctx.params
    eos = min(ctx.lm.eos_token_ids) if p["eot"] and ctx.lm.eos_token_ids else None
    return decode(ctx, EntropyBound(p["block_length"], gen_length_of(ctx), p["gamma"], eos), cache=p["cache"])


@register("localleap", description="LocalLeap: anchors (confidence ≥ threshold) lower the bar to "
          "relaxed_threshold within radius positions; otherwise Fast-dLLM's threshold rule.",
          lossless=False, paper="Accelerating Diffusion LLM Inference via Local Determinism Propagation (LocalLeap)",
          batched=True, kind="diffusion",
          params={"threshold": _threshold(), "relaxed_threshold": Param(0.75, 0.0, 1.0),
                  "radius": Param(4, 0, 4096), "block_length": _block(32), "cache": CACHE})
def localleap(ctx) -> Iterator[list[list[int]]]:
    p = ctx.params
    return decode(ctx, LocalLeap(p["block_length"], gen_length_of(ctx), p["threshold"], p["relaxed_threshold"],
                                 p["radius"]), cache=p["cache"])


@register("adablock", description="AdaBlock-dLLM: each block ends after the most confident predicted "
          "delimiter (confidence ≥ delta) in the next quarter of the canvas; threshold decoding inside.",
          lossless=False, paper="AdaBlock-dLLM: Semantic-Aware Diffusion LLM Inference via Adaptive Block Size", batched=True, kind="diffusion",
          params={"threshold": _threshold(), "delta": Param(0.3, 0.0, 1.0), "block_length": _block(32),
                  "delimiters": Param("\n", help="characters whose tokens end a block"), "cache": CACHE})
def adablock(ctx) -> Iterator[list[list[int]]]:
    p = ctx.params
    ids = delimiter_ids(ctx.lm, p["delimiters"])
    return decode(ctx, AdaBlock(p["block_length"], gen_length_of(ctx), p["threshold"], p["delta"], ids), cache=p["cache"])


@register("ccd", description="Beyond Confidence's buffered rule: commit the top-V positions whose argmax "
          "held since the previous step when the top-b overlaps that buffer, else the top-b.",
          lossless=False, paper="Beyond Confidence: Adaptive and Coherent Decoding for Diffusion Language Models (CCD)",
          batched=True, kind="diffusion",
          params={"steps": STEPS, "block_length": _block(0), "expand_ratio": Param(4.0, 0.0, 64.0),
                  "warmup": Param(5, 0, 4096, help="ordinary top-b steps before the buffer is used"),
                  "cache": CACHE})
def ccd(ctx) -> Iterator[list[list[int]]]:
    p = ctx.params
    return decode(ctx, Buffered(p["block_length"], gen_length_of(ctx), p["steps"], p["expand_ratio"], p["warmup"]), cache=p["cache"])


@register("sspd", description="Self-speculative decoding: one pass drafts the next stepwise commits; one "
          "batched call verifies a tree of draft_length canvases (best-first over the draft's next positions and "
          "tokens, or a chain). Output equals llada at one token per step (temperature 0); each call evaluates up "
          "to draft_length canvases per row.",
          lossless=False, paper="Self Speculative Decoding for Diffusion Large Language Models (arXiv:2510.04147)",
          batched=True, kind="diffusion",
          params={"draft_length": Param(4, 1, 256, help="node budget: distinct canvases verified per call"),
                  "tree": Param("tree", choices=("tree", "chain"),
                                help="tree: best-first over (position rank, token rank); chain: the draft order"),
                  "tree_width": Param(3, 1, 64, help="tree: a node's children are its next tree_width drafted "
                                      "positions, each with its top-2 tokens"),
                  "block_length": _block(0)})
def sspd(ctx) -> Iterator[list[list[int]]]:
    from .sspd import decode_sspd

    p = ctx.params
    return decode_sspd(ctx, p["block_length"], p["draft_length"], p["tree"], p["tree_width"])


@register("apd", description="Adaptive parallel decoding: the diffusion model drafts the next max_draft "
          "positions, a small AR model scores them, and the draft is kept up to the first disagreement with "
          "the mixture R·log p_D + (1 − R)·log p_AR (greedy; one AR pass per step, no KV cache).",
          lossless=False, paper="Accelerating Diffusion LLMs via Adaptive Parallel Decoding (APD)",
          batched=True, kind="diffusion",
          params={"ar_model": Param("builtin:tasks-ar", help="the small AR model (same tokenizer)"),
                  "mixture_weight": Param(0.5, 0.0, 1.0, help="R: weight of the diffusion model"),
                  "max_draft": Param(16, 1, 4096, help="M: drafted positions per step")})
def apd(ctx) -> Iterator[list[list[int]]]:
    p = ctx.params
    if p["temperature"] > 0:
        raise UserError("apd is implemented for temperature 0 only")
    ar = ar_model(ctx.lm, p["ar_model"])
    rule = Mixture(gen_length_of(ctx), lambda: ctx.session(ar, role="draft"), p["mixture_weight"], p["max_draft"])
    return decode(ctx, rule)


@register("learn2pd", description="Learn2PD: a learned filter (logistic regression on confidence, margin, "
          "entropy, offset) commits the positions predicted to be final; End-of-Text truncation after EOS.",
          lossless=False, paper="Learning to Parallel: Accelerating Diffusion Large Language Models via Adaptive "
          "Parallel Decoding (Learn2PD)", batched=True, kind="diffusion",
          params={"accept": Param(0.9, 0.0, 1.0, help="commit when the filter's probability ≥ this"),
                  "filter": Param("", help="filter JSON; default: learn2pd.json beside the model; 'mlp': "
                                  "learn2pd-mlp.json beside it (the MLP variant); 'stable': learn2pd-stable.json "
                                  "(the MLP with CCD/KLASS step-stability features, fitted on-policy)"),
                  "budget": Param(0.0, 0.0, 1e9, help="if > 0, also cap each step's summed predicted error "
                                  "Σ(1 − filter probability) at this (EB-sampler's bound on the filter)"),
                  "distinct": Param(0, 0, 4096, help="if > 0, a step never commits two positions at most this far "
                                    "apart with the same token (the more probable one goes first)"),
                  "gate": Param(0.0, 0.0, 1.0, help="if > 0, the filter may commit a position only if its argmax "
                                "is unchanged since the previous step or its p(x0) ≥ gate (CCD/KLASS stability)"),
                  "block_length": _block(0), "cache": CACHE})
def learn2pd(ctx) -> Iterator[list[list[int]]]:
    from pathlib import Path

    from .learn2pd import Learned, load_filter

    p = ctx.params
    beside = {"": "learn2pd.json", "mlp": "learn2pd-mlp.json", "stable": "learn2pd-stable.json"}
    path = Path(ctx.lm.model.name_or_path) / beside[p["filter"]] if p["filter"] in beside else Path(p["filter"])
    spec = load_filter(path)
    eos = min(ctx.lm.eos_token_ids) if ctx.lm.eos_token_ids else None
    rule = Learned(p["block_length"], gen_length_of(ctx), spec.get("mlp") or spec["weights"], p["accept"], eos,
                   p["budget"], p["distinct"], p["gate"])
    return decode(ctx, rule, cache=p["cache"])


def ar_model(lm, name: str):
    """The AR helper model, loaded once per diffusion model; it must share the tokenizer."""
    from ..model import load

    key = ("diffusion.ar_model", name)
    if key not in lm.state:
        ar = load(name)
        if ar.kind != "causal" or ar.tokenizer.get_vocab() != lm.tokenizer.get_vocab():
            raise UserError(f"ar_model {name!r} must be a causal model with the diffusion model's tokenizer")
        lm.state[key] = ar
    return lm.state[key]


def delimiter_ids(lm, delimiters: str) -> torch.Tensor:
    """Ids of the tokens whose text contains one of the delimiter characters (cached per model)."""
    key = ("diffusion.delimiters", delimiters)
    if key not in lm.state:
        texts = [lm.decode([i]) for i in range(len(lm.tokenizer))]
        lm.state[key] = torch.tensor([i for i, t in enumerate(texts) if any(c in t for c in delimiters)],
                                     dtype=torch.long)
    return lm.state[key]


def kind_error(lm, info) -> str:
    """The one-line message when a method does not fit the model's kind (causal vs diffusion)."""
    from ..methods import methods

    fits = sorted(name for name, m in methods().items() if m.kind == getattr(lm, "kind", "causal"))
    return (f"method {info.name!r} decodes {info.kind} models but {lm.name} is a {lm.kind} model; "
            f"use one of: {', '.join(fits)}")
