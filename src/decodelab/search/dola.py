"""DoLa layer-contrast decoding — Chuang et al., "DoLa: Decoding by Contrasting Layers Improves
Factuality in Large Language Models" (arXiv:2309.03883).

Per step, with q_N the final layer's next-token distribution and q_j = softmax(head(norm(h_j))) the
early exit of candidate layer j (`LM.exit_logits`):

- premature layer M = argmax_{j ∈ J} JSD(q_N ‖ q_j) (dynamic: the layer whose guess changed most);
- adaptive plausibility constraint (APC): V_head = {v : q_N(v) ≥ α · max_w q_N(w)} (α = relative_top);
- F(v) = log q_N(v) − log q_M(v) on V_head, −∞ elsewhere; F then goes through the processors and is
  decoded greedily (temperature 0) or sampled.

Differences from transformers' remote-code version (transformers-community/dola): the early exits
go through the final norm before the head, as in the paper's code; the JSD is the textbook one
(½KL(q_N‖m) + ½KL(q_j‖m)); and M is chosen per row, not averaged over the batch, so a row's output
never depends on the other rows. Candidate buckets follow transformers: "low" = layers
[s, N/2) step 2 (s = 2 when the embeddings are tied, else 0), "high" = [N/2, N) step 2 (the last 20
layers for N > 40), or a comma-separated list of layer indices (one index = a fixed premature layer).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from ..errors import UserError


def candidate_layers(spec: str, num_layers: int, tied: bool) -> list[int]:
    """The candidate premature layers J (hidden-state indices: 0 = embeddings, i = after block i)."""
    start = 2 if tied else 0
    if spec == "low":
        layers = [start] if start == num_layers // 2 else list(range(start, min(num_layers // 2, 20), 2))
    elif spec == "high":
        layers = list(range(num_layers // 2 if num_layers <= 40 else num_layers - 20, num_layers, 2))
    else:
        return layer_list("dola_layers", spec, num_layers, "'low', 'high' or comma-separated layer indices")
    return check_layers("dola_layers", spec, layers, num_layers)


def layer_list(name: str, spec: str, num_layers: int, allowed: str) -> list[int]:
    """Comma-separated early-exit layer indices, each below the final layer (shared with `deco`)."""
    try:
        layers = [int(x) for x in spec.split(",")]
    except ValueError:
        raise UserError(f"{name} must be {allowed}, got {spec!r}") from None
    return check_layers(name, spec, layers, num_layers)


def check_layers(name: str, spec: str, layers: list[int], num_layers: int) -> list[int]:
    if not layers or any(not 0 <= j < num_layers for j in layers):
        raise UserError(f"{name}={spec!r} gives premature layers {layers}; this model has layers "
                         f"0..{num_layers - 1} (0 = embeddings) below its final layer {num_layers}")
    return layers


def text_config(lm):
    """The decoder's config (multimodal configs nest it)."""
    return lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config


def jsd(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence over the last dim: log_p [..., V], log_q [J, ..., V] → [J, ...]."""
    p, q = log_p.exp(), log_q.exp()
    log_m = (0.5 * (p + q)).clamp_min(1e-38).log()
    kl = lambda a, log_a: (a * (log_a - log_m)).nan_to_num(0.0).sum(-1)  # noqa: E731  0·log 0 = 0
    return 0.5 * kl(p, log_p) + 0.5 * kl(q, log_q)


def apc_contrast(final: torch.Tensor, premature: torch.Tensor, relative_top: float) -> torch.Tensor:
    """F = log q_N − log q_M on V_head = {q_N ≥ α·max q_N} (−∞ elsewhere): [B, V], [B, V] → [B, V]."""
    log_final, log_base = final.log_softmax(dim=-1), premature.log_softmax(dim=-1)
    threshold = log_final.max(dim=-1, keepdim=True).values + math.log(relative_top)
    return (log_final - log_base).masked_fill(log_final < threshold, float("-inf"))


@torch.inference_mode()
def early_exit(lm, hidden: torch.Tensor) -> torch.Tensor:
    """Final norm + head on an intermediate hidden state [..., H] → [..., V]: `LM.exit_logits`, or for
    transformers models whose final norm is not `model.norm` (GPT-2's `transformer.ln_f`), that norm."""
    base = getattr(lm.model, "base_model", None)
    if lm.backend == "native" or hasattr(base, "norm"):
        return lm.exit_logits(hidden)
    norm = getattr(base, "ln_f", None) or getattr(base, "final_layernorm", None)
    if norm is None:
        raise UserError(f"dola: cannot find the final norm of {type(lm.model).__name__}")
    return lm.model.get_output_embeddings()(norm(hidden))


def dola_logits(lm, logits: torch.Tensor, hidden: tuple, layers: list[int], relative_top: float):
    """Contrast logits [B, V] for the last position and the premature layer chosen per row [B]."""
    final = logits.float()  # [B, V]
    early = torch.stack([early_exit(lm, hidden[j][:, -1]).float() for j in layers])  # [J, B, V]
    chosen = jsd(final.log_softmax(-1), early.log_softmax(-1)).argmax(dim=0)  # [B]
    premature = early[chosen, torch.arange(final.shape[0])]
    return apc_contrast(final, premature, relative_top), chosen


def dola(ctx, spec: str, relative_top: float) -> Iterator[list[list[int]]]:
    """Yield one token per row per step: the processed contrast F decoded greedily or sampled."""
    cfg = text_config(ctx.lm)
    layers = candidate_layers(spec, cfg.num_hidden_layers, bool(getattr(cfg, "tie_word_embeddings", False)))
    yield from layer_contrast_loop(ctx, lambda logits, hidden: dola_logits(ctx.lm, logits, hidden, layers, relative_top)[0])


def layer_contrast_loop(ctx, contrast) -> Iterator[list[list[int]]]:
    """The decoding loop of every layer-contrast method: `contrast(logits [B, V], hidden states)` →
    scores [B, V] for the last position, then the processors, then greedy or sampling, one token per row."""
    from ..methods.autoregressive import sample_rows

    session = ctx.session()
    ids, mask = ctx.padded_prompts
    logits, hidden = session.forward(ids, pad_mask=mask, hidden=True)
    while True:
        scores = contrast(logits[:, -1], hidden)
        history = ctx.history() if ctx.sampler.needs_history else None
        token = sample_rows(ctx, ctx.sampler.probs(history, scores))  # [B]
        yield [[t] for t in token.tolist()]
        logits, hidden = session.forward(token[:, None], hidden=True)
