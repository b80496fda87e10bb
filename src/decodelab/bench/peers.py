"""The peers in the same table: transformers' own generate — greedy, assisted generation with the
same draft, and prompt lookup — timed exactly like decodelab's methods."""

from __future__ import annotations

import torch

from ..model import LM

PEERS = {
    "hf:greedy": "transformers generate, greedy",
    "hf:assisted": "transformers assisted generation (assistant_model = the same draft)",
    "hf:pld": "transformers prompt lookup (prompt_lookup_num_tokens=10)",
    "llamacpp:greedy": "llama.cpp's own greedy loop over the same weights as GGUF (llama-cpp-python installed)",
}


def hf_generate(lm: LM, ids: list[int], max_new_tokens: int, peer: str, draft: LM | None = None,
                params: dict | None = None) -> list[int]:
    """New token ids from transformers' generate (or llama.cpp's, for llamacpp:greedy) for one prompt
    (stopping at EOS as decodelab does)."""
    params = params or {}
    if peer == "llamacpp:greedy":
        from ..model.llamacpp import plain_greedy

        return plain_greedy(llamacpp_model(lm), ids, max_new_tokens, lm.eos_token_ids)
    kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=lm.pad_token_id,
                  eos_token_id=sorted(lm.eos_token_ids) or None)
    temperature = params.get("temperature", 0.0)
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_k=params.get("top_k", 0) or None,
                      top_p=params.get("top_p", 1.0))
    else:
        kwargs.update(do_sample=False)
    if peer == "hf:assisted":
        if draft is None:
            raise ValueError("hf:assisted needs a draft model")
        kwargs["assistant_model"] = transformers_model(draft)
    elif peer == "hf:pld":
        kwargs["prompt_lookup_num_tokens"] = 10
    x = torch.tensor([ids], device=lm.device)
    with torch.inference_mode():
        out = transformers_model(lm).generate(x, attention_mask=torch.ones_like(x), **kwargs)
    return out[0, len(ids):].tolist()


def hf_generate_batch(lm: LM, rows: list[list[int]], max_new_tokens: int, params: dict | None = None) -> list[list[int]]:
    """transformers' batched greedy over left-padded rows: each row's new tokens, cut after its EOS (as
    decodelab stops a row there; generate pads a finished row until the longest is done)."""
    width = max(len(r) for r in rows)
    pad = lm.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=lm.device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=lm.device)
    eos = sorted(lm.eos_token_ids)
    with torch.inference_mode():
        out = transformers_model(lm).generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                              pad_token_id=pad, eos_token_id=eos or None)
    new = []
    for row in out[:, width:].tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in lm.eos_token_ids), len(row))
        new.append(row[:end])
    return new


def transformers_model(lm: LM):
    """The transformers model object behind `lm`: itself, or for a native LM the same checkpoint loaded
    through the adapter once (same weights, same dtype), so the peers always run transformers' code."""
    if lm.backend == "transformers":
        return lm.model
    if "transformers_twin" not in lm.state:
        from ..model import load

        lm.state["transformers_twin"] = load(lm.name, device=str(lm.device), dtype=lm.dtype, backend="transformers")
    return lm.state["transformers_twin"].model


def llamacpp_model(lm: LM):
    """The llama.cpp model behind `lm`: its own (backend llamacpp) or the same checkpoint converted once to
    GGUF in the same precision (float32 → f32, bfloat16 → bf16)."""
    if lm.backend == "llamacpp":
        return lm.model
    if "llamacpp_twin" not in lm.state:
        from ..model import load

        lm.state["llamacpp_twin"] = load(lm.name, dtype=lm.dtype, backend="llamacpp")
    return lm.state["llamacpp_twin"].model


def drop_unavailable(lm: LM, entries: list, skipped: dict) -> list:
    """The entries without peers that cannot run here (reason in `skipped`): llamacpp:greedy needs
    llama-cpp-python, a Llama-family model on the CPU, and greedy decoding."""
    kept = []
    for e in entries:
        reason = _llamacpp_unavailable(lm, e.params) if e.method == "llamacpp:greedy" else None
        if reason:
            skipped[e.label] = reason
        else:
            kept.append(e)
    return kept


def _llamacpp_unavailable(lm: LM, params: dict) -> str | None:
    from ..errors import ModelError

    if params.get("temperature", 0.0) > 0:
        return "the llama.cpp peer decodes greedily only"
    try:
        llamacpp_model(lm)
    except ModelError as exc:
        return str(exc)
    return None
