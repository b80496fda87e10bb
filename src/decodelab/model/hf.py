"""The transformers adapter: the Session protocol over any `AutoModelForCausalLM` and its DynamicCache.

Everything version-specific about transformers' cache API lives here: the forward keyword (`cache=` in
5.2x, `past_key_values=` before), and rollback, done on each layer's `keys`/`values` directly so that
"keep these columns" means the same on every release (`DynamicCache.crop` changed from a length to a
negative count in 5.x). Chains pass a 2-D pad mask (or none); trees a 4-D additive float mask, which
transformers 5.x passes through unchanged to eager and SDPA attention.
"""

from __future__ import annotations

import inspect
from functools import cache

import torch

from ..errors import ModelError
from .session import Session, superpose


@cache
def _cache_kwarg(model_cls: type) -> str:
    params = inspect.signature(model_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_cache(config):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config)
    except TypeError:  # older signature without config
        return DynamicCache()


class HFSession(Session):
    """A Session whose forward is the transformers model's own, over a DynamicCache."""

    accepts_token_weights = True

    def __init__(self, lm, batch_size: int = 1, stats=None, role: str = "target"):
        super().__init__(lm, batch_size, stats, role)
        self.cache = _new_cache(lm.config)
        self._kwarg = _cache_kwarg(type(lm.model))

    def _run(self, ids, positions, parents, last_only, hidden):
        n = ids.shape[1]
        if parents is None:
            mask = self.pad_mask.to(self.lm.device) if self.pad_mask is not None else None
        else:
            allowed = self.allowed(n, parents)
            dtype = self.lm.dtype
            mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
            mask = mask[:, None].to(self.lm.device)
        kwargs = {self._kwarg: self.cache, "use_cache": True, "position_ids": positions, "attention_mask": mask}
        if last_only:
            kwargs["logits_to_keep"] = 1
        if hidden:
            kwargs["output_hidden_states"] = True
        if self._token_weights is not None:  # superposed input: Σ_v w_v·E[v]  [B, n, H]
            kwargs["inputs_embeds"] = superpose(self._token_weights, self.lm.model.get_input_embeddings())
        else:
            kwargs["input_ids"] = ids
        out = self.lm.model(**kwargs)
        return (out.logits, out.hidden_states) if hidden else out.logits

    def _layers(self):
        layers = getattr(self.cache, "layers", None)
        if layers is None:
            raise ModelError("this transformers release's cache has no per-layer storage; rollback unsupported")
        for layer in layers:
            if getattr(layer, "is_sliding", False):
                raise ModelError(f"{self.lm.name}: sliding-window attention cache cannot be rolled back")
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                yield layer

    def _keep(self, columns: list[int]) -> None:
        if columns == list(range(len(columns))):
            n = len(columns)
            for layer in self._layers():
                layer.keys = layer.keys[..., :n, :]
                layer.values = layer.values[..., :n, :]
            return
        index = torch.tensor(columns, dtype=torch.long, device=self.lm.device)
        for layer in self._layers():
            layer.keys = layer.keys.index_select(-2, index)
            layer.values = layer.values.index_select(-2, index)

    def _select_rows(self, rows: torch.Tensor) -> None:
        for layer in self._layers():
            layer.keys = layer.keys.index_select(0, rows)
            layer.values = layer.values.index_select(0, rows)

    def _gather_columns(self, index: torch.Tensor) -> None:
        rows = torch.arange(index.shape[0], device=index.device)[:, None]
        for layer in self._layers():  # keys [B, H, T, D] → per-row gather along T
            layer.keys = layer.keys[rows, :, index].permute(0, 2, 1, 3).contiguous()
            layer.values = layer.values[rows, :, index].permute(0, 2, 1, 3).contiguous()

    def _merge(self, other: "HFSession", shift: int, other_shift: int) -> None:
        mine, theirs = list(self._layers()), list(other._layers())
        if len(mine) != len(theirs):
            raise ModelError("merge(): the two caches hold different layers")
        for a, b in zip(mine, theirs):  # [B, H, T, D]: left-pad along T, concatenate along B
            a.keys = torch.cat([_pad_left(a.keys, shift), _pad_left(b.keys, other_shift)])
            a.values = torch.cat([_pad_left(a.values, shift), _pad_left(b.values, other_shift)])


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, 0, n, 0)) if n else t
