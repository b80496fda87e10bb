"""Early-exit LMs: the target's first ℓ layers + its final norm + LM head, sharing its weight tensors.

The draft of self-speculative decoding — LayerSkip (Elhoushi et al., "LayerSkip: Enabling Early Exit
Inference and Self-Speculative Decoding", arXiv:2404.16710) and DEL (Zarch et al., "DEL: Context-Aware
Dynamic Exit Layer for Efficient Self-Speculative Decoding", arXiv:2504.05598).

An exit after layer ℓ is the target's own model class built on the meta device from a copy of its
config with `num_hidden_layers = ℓ`, whose modules are then replaced by the target's (embeddings,
`layers[:ℓ]`, final norm, rotary embedding, LM head): nothing is copied, nothing in transformers is
patched, and the class's own forward runs it, so it is exact by construction. Supported: Llama-family
models exposing `model.model.layers` (llama, qwen2, mistral, …). On the native backend an exit is
`NativeModel.truncated(ℓ)`, the same tensors with the layer list cut.
"""

from __future__ import annotations

import copy
from itertools import chain

import torch
from torch import nn

from ..errors import ModelError, UserError
from .lm import LM

_PARTS = ("embed_tokens", "layers", "norm", "rotary_emb")


def num_layers(lm: LM) -> int:
    """L, the target's decoder layer count; ModelError when the model has no early-exit layout."""
    if lm.backend in ("native", "llamacpp"):  # llamacpp: an exit is a GGUF of the first ℓ layers
        return len(lm.model.layers)
    inner = getattr(lm.model, "model", None)
    if not isinstance(getattr(inner, "layers", None), nn.ModuleList) or not all(hasattr(inner, p) for p in _PARTS) \
            or lm.model.get_output_embeddings() is None:
        raise ModelError(f"{lm.name}: early exit needs a Llama-family model exposing model.model.layers "
                         f"(architecture {lm.config.model_type!r} has no such layout)")
    return len(inner.layers)


def early_exit_lm(lm: LM, layer: int) -> LM:
    """The LM that exits after `layer` (1 ≤ layer ≤ L) of `lm`; built once per layer, kept in lm.state."""
    total = num_layers(lm)
    if not 1 <= layer <= total:
        raise UserError(f"exit layer must be in 1..{total}, got {layer}")
    built = lm.state.setdefault("early_exit", {})
    if layer not in built:
        model = lm.model.truncated(layer) if lm.backend in ("native", "llamacpp") else _build(lm.model, layer)
        built[layer] = LM(model, lm.tokenizer, name=f"{lm.name}[:{layer}]", backend=lm.backend)
    return built[layer]


def _build(target, layer: int):
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = layer
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:layer]
    with torch.device("meta"):
        model = type(target)(config)
    inner, source = model.model, target.model
    inner.embed_tokens, inner.norm, inner.rotary_emb = source.embed_tokens, source.norm, source.rotary_emb
    inner.layers = nn.ModuleList(source.layers[:layer])
    model.set_output_embeddings(target.get_output_embeddings())
    left = [n for n, t in chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left:
        raise ModelError(f"{config.model_type}: early exit cannot share {left[0]!r} with the target")
    _share_output_hooks(source, model)
    model.generation_config = target.generation_config
    return model.eval()


def _share_output_hooks(source, model) -> None:
    """Let the shared layers carry one set of hidden-state hooks: the target's.

    transformers 5.x records `output_hidden_states` with forward hooks installed lazily on each model's
    layers; installed by both models on the same layer objects, every shared layer would be recorded
    twice in *both* models' hidden states. So the target's hooks go in now and the exit never adds its own.
    """
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:  # releases before hook-based capture return hidden states directly
        return
    maybe_install_capturing_hooks(source)
    for module in (model, model.model):
        module._output_capturing_hooks_installed = True


@torch.inference_mode()
def exit_tokens(lm: LM, hidden: tuple[torch.Tensor, ...], layers: list[int], rows: list[int]) -> torch.Tensor:
    """[len(layers), len(rows)] argmax of LM head(norm(hidden[ℓ])) at the given positions.

    hidden: the target's hidden states of one forward (embeddings + every layer, each [1, n, H]), as
    `Session.forward(..., hidden=True)` returns them; 1 ≤ ℓ < L (hidden[L] is already normed). These
    are DEL's "shadow tokens": what an exit after layer ℓ would have drafted at each position.
    """
    h = torch.stack([hidden[layer][0, rows] for layer in layers])  # [len(layers), len(rows), H]
    return lm.exit_logits(h).argmax(-1)
