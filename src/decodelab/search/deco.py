"""DeCo: Dynamic Correction Decoding — Wang et al., "MLLM can see? Dynamic Correction Decoding for
Hallucination Mitigation" (arXiv:2410.11779). Written for multimodal LMs; the rule only needs the
decoder's early exits, so it runs on any text LM here.

Per step and per row, with z_N the final layer's logits and z_j = head(norm(h_j)) the early exit of a
preceding layer j (`dola.early_exit`, the same machinery as DoLa):

1. candidates C: the top-k tokens of softmax(z_N) (k = threshold_top_k), cut to the shortest prefix whose
   cumulative probability reaches threshold_top_p — the probabilities are the full-vocabulary softmax,
   not renormalised within the top-k (the authors' code: searchsorted on the top-k cumsum, at most k);
2. anchor layer: over the window J of preceding layers, (ℓ*, c) = the layer and the value of
   max_{j ∈ J, v ∈ C} softmax(z_j)(v) — each early softmax is over the full vocabulary, then read at C;
   ties go to the first layer in J, then the higher-ranked candidate (torch.argmax on [J, |C|]);
3. corrected logits z̃ = z_N + α · c · z_ℓ* on C, −∞ elsewhere (the confidence c scales α: "dynamic
   soft modulation"); z̃ then goes through the processors and is decoded greedily or sampled, as the
   authors feed it to greedy decoding and nucleus sampling.

Defaults are the authors' (zjunlp/EasyEdit hparams/DeCo, file `llama.yaml`): α = 0.6, threshold_top_k = 20,
threshold_top_p = 0.9, layers 20..28 of LLaMA-7B's 32. `deco_layers="auto"` scales that window to N
layers: ⌊5N/8⌋..⌊7N/8⌋ (20..28 at N = 32), never the final layer; "a-b" is an inclusive range and a
comma list names the layers (hidden-state indices: 0 = embeddings, i = after block i). Differences from
the authors' code: batch rows are handled one by one (theirs squeezes a batch of one), and logits are
combined in float32.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import UserError
from .dola import check_layers, early_exit, layer_contrast_loop, layer_list, text_config


def deco_layers(spec: str, num_layers: int) -> list[int]:
    """The window J of preceding layers: 'auto', 'a-b' (inclusive) or comma-separated indices."""
    if spec == "auto":
        hi = min(7 * num_layers // 8, num_layers - 1)
        return list(range(min(5 * num_layers // 8, hi), hi + 1))
    if "-" in spec.strip().lstrip("-"):
        try:
            lo, hi = (int(x) for x in spec.split("-"))
        except ValueError:
            raise UserError(f"deco_layers must be 'auto', 'a-b' or comma-separated layer indices, got {spec!r}") from None
        return check_layers("deco_layers", spec, list(range(lo, hi + 1)), num_layers)
    return layer_list("deco_layers", spec, num_layers, "'auto', 'a-b' or comma-separated layer indices")


def candidates(final: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k ids of softmax(final) [B, V] → ids [B, k] and which of them survive the top-p cut [B, k]."""
    probs, ids = final.softmax(-1).topk(min(top_k, final.shape[-1]), dim=-1)
    n_keep = (probs.cumsum(-1) < top_p).sum(-1, keepdim=True) + 1  # first index with cumsum ≥ p, inclusive
    return ids, torch.arange(ids.shape[-1]) < n_keep


def deco_logits(lm, logits: torch.Tensor, hidden: tuple, layers: list[int], alpha: float, top_k: int,
                top_p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Corrected logits [B, V] for the last position, the anchor layer ℓ* per row [B] (an index into
    `layers`) and its confidence c [B]. logits: [B, V]; hidden: the Session's hidden states."""
    final = logits.float()  # [B, V]
    ids, keep = candidates(final, top_k, top_p)  # [B, k], [B, k]
    early = torch.stack([early_exit(lm, hidden[j][:, -1]).float() for j in layers])  # [J, B, V]
    at_cand = early.softmax(-1).gather(-1, ids.expand(len(layers), *ids.shape))  # [J, B, k]
    at_cand = at_cand.masked_fill(~keep, -1.0).transpose(0, 1).flatten(1)  # [B, J·k], layer-major
    best = at_cand.argmax(-1)  # [B]
    conf, chosen = at_cand.gather(-1, best[:, None])[:, 0], best // ids.shape[-1]
    anchor = early[chosen, torch.arange(final.shape[0])]  # [B, V]
    allowed = torch.zeros_like(final, dtype=torch.bool).scatter_(-1, ids, keep)
    corrected = final + alpha * conf[:, None] * anchor
    return corrected.masked_fill(~allowed, float("-inf")), chosen, conf


def deco(ctx, spec: str, alpha: float, top_k: int, top_p: float) -> Iterator[list[list[int]]]:
    """Yield one token per row per step: the processed corrected logits decoded greedily or sampled."""
    layers = deco_layers(spec, text_config(ctx.lm).num_hidden_layers)
    yield from layer_contrast_loop(ctx, lambda logits, hidden: deco_logits(ctx.lm, logits, hidden, layers, alpha,
                                                                             top_k, top_p)[0])
