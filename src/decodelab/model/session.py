"""One sequence batch's KV cache, forward passes over new tokens, and cache rollback.

Everything version-specific about transformers' cache API lives here: the forward keyword
(`cache=` in 5.2x, `past_key_values=` before), and rollback, done on each layer's `keys`/`values`
directly so that `truncate(n)` ("keep the first n cache columns") means the same on every release
(`DynamicCache.crop` changed from a length to a negative count in 5.x).

Tree attention: `forward(ids, parents=...)` feeds a token tree in one pass. Node i sits at position
`length + depth(i)` and attends to the whole cache plus its own ancestors — the layout of SpecInfer
(arXiv:2305.09781) and Token Recycling (arXiv:2408.08696). The mask is an additive float 4-D mask,
which transformers 5.x passes through unchanged to eager and SDPA attention.
"""

from __future__ import annotations

import inspect
import time
from functools import cache

import torch

from ..errors import ModelError


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


def tree_depths(parents: list[int]) -> list[int]:
    """Depth of each node; parents[i] is an earlier node index or -1 (hangs off the cache)."""
    depths: list[int] = []
    for p in parents:
        depths.append(0 if p < 0 else depths[p] + 1)
    return depths


def ancestor_matrix(parents: list[int]) -> torch.Tensor:
    """[n, n] bool: entry (i, j) is True when node j is node i or one of its ancestors."""
    n = len(parents)
    anc = torch.eye(n, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            anc[i] |= anc[p]
    return anc


class Session:
    """KV cache for a batch of sequences plus the forward passes that fill it.

    `tokens[b]` mirrors what row b's cache holds (left pads included), so a proposer can `sync`
    its own cache to the target's context without recomputing what it already has.
    """

    def __init__(self, lm, batch_size: int = 1, stats=None, role: str = "target"):
        self.lm = lm
        self.batch_size = batch_size
        self.cache = _new_cache(lm.config)
        self.tokens: list[list[int]] = [[] for _ in range(batch_size)]
        self.pad_mask: torch.Tensor | None = None  # [B, length] 1 = real token; None = no padding
        self.stats = stats
        self.role = role
        self.forward_passes = 0
        self._kwarg = _cache_kwarg(type(lm.model))

    @property
    def length(self) -> int:
        return len(self.tokens[0])

    # ---- forward -------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor | list[int], parents: list[int] | None = None,
                pad_mask: torch.Tensor | None = None, last_only: bool = False,
                hidden: bool = False):
        """Run the model over new tokens and append them to the cache.

        input_ids: [B, n] (or a list for B = 1). parents: tree structure of the n nodes (None =
        causal chain). pad_mask: [B, n] for the new tokens (1 real, 0 left pad), prefill only.
        Returns logits [B, n, V] float32 ([B, 1, V] when last_only); with hidden=True also the
        tuple of hidden states (embeddings + every layer) at the new positions.
        """
        ids = self._as_batch(input_ids)
        n = ids.shape[1]
        if self.length + n > self.lm.max_length:
            raise ModelError(f"context too long: {self.length + n} tokens > model maximum {self.lm.max_length}")
        self._extend_pad_mask(pad_mask, n)
        positions, mask = self._positions_and_mask(n, parents)
        kwargs = {self._kwarg: self.cache, "use_cache": True, "position_ids": positions,
                  "attention_mask": mask}
        if last_only:
            kwargs["logits_to_keep"] = 1
        if hidden:
            kwargs["output_hidden_states"] = True
        t0 = time.perf_counter()
        out = self.lm.model(input_ids=ids, **kwargs)
        self._count(time.perf_counter() - t0)
        for row, new in zip(self.tokens, ids.tolist()):
            row.extend(new)
        logits = out.logits.float()
        return (logits, out.hidden_states) if hidden else logits

    def _as_batch(self, input_ids) -> torch.Tensor:
        if not isinstance(input_ids, torch.Tensor):
            input_ids = torch.tensor([input_ids], dtype=torch.long)
        if input_ids.shape[0] != self.batch_size:
            raise ValueError(f"batch of {input_ids.shape[0]} rows fed to a session of {self.batch_size}")
        return input_ids.to(self.lm.device)

    def _extend_pad_mask(self, pad_mask: torch.Tensor | None, n: int) -> None:
        if pad_mask is None and self.pad_mask is None:
            return
        if pad_mask is None:
            pad_mask = torch.ones(self.batch_size, n, dtype=torch.long)
        if self.pad_mask is None:
            self.pad_mask = torch.ones(self.batch_size, self.length, dtype=torch.long)
        self.pad_mask = torch.cat([self.pad_mask, pad_mask.long().cpu()], dim=1)

    def _positions_and_mask(self, n: int, parents: list[int] | None):
        start = self.length
        if parents is None:
            offsets = torch.arange(n)
        else:
            if len(parents) != n:
                raise ValueError(f"{len(parents)} parents for {n} tree nodes")
            offsets = torch.tensor(tree_depths(parents))
        positions = (start + offsets).unsqueeze(0).repeat(self.batch_size, 1)
        if self.pad_mask is not None:
            pads = (1 - self.pad_mask[:, :start]).sum(dim=1, keepdim=True)
            positions = (positions - pads).clamp(min=0)
        if parents is None:
            mask = self.pad_mask.to(self.lm.device) if self.pad_mask is not None else None
            return positions.to(self.lm.device), mask
        return positions.to(self.lm.device), self._tree_mask(start, parents)

    def _tree_mask(self, start: int, parents: list[int]) -> torch.Tensor:
        """[B, 1, n, start + n] additive mask: cache (minus pads) + ancestors."""
        n = len(parents)
        allowed = torch.zeros(self.batch_size, n, start + n, dtype=torch.bool)
        allowed[:, :, :start] = True if self.pad_mask is None else self.pad_mask[:, None, :start].bool()
        allowed[:, :, start:] = ancestor_matrix(parents)
        dtype = self.lm.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
        return mask[:, None].to(self.lm.device)

    def _count(self, seconds: float) -> None:
        self.forward_passes += 1
        if self.stats is not None:
            self.stats.count_forward(self.role, seconds)

    # ---- rollback ------------------------------------------------------------------------
    def _layers(self):
        layers = getattr(self.cache, "layers", None)
        if layers is None:
            raise ModelError("this transformers release's cache has no per-layer storage; rollback unsupported")
        for layer in layers:
            if getattr(layer, "is_sliding", False):
                raise ModelError(f"{self.lm.name}: sliding-window attention cache cannot be rolled back")
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                yield layer

    def truncate(self, n: int) -> None:
        """Keep the first n cache columns (n ≤ length): rolling back rejected drafts."""
        if n >= self.length:
            return
        for layer in self._layers():
            layer.keys = layer.keys[..., :n, :]
            layer.values = layer.values[..., :n, :]
        self.tokens = [row[:n] for row in self.tokens]
        if self.pad_mask is not None:
            self.pad_mask = self.pad_mask[:, :n]

    def compact(self, keep: list[int]) -> None:
        """Keep only the listed cache columns, in order (prefix + an accepted tree path)."""
        if keep == list(range(len(keep))):
            return self.truncate(len(keep))
        index = torch.tensor(keep, dtype=torch.long, device=self.lm.device)
        for layer in self._layers():
            layer.keys = layer.keys.index_select(-2, index)
            layer.values = layer.values.index_select(-2, index)
        self.tokens = [[row[i] for i in keep] for row in self.tokens]
        if self.pad_mask is not None:
            self.pad_mask = self.pad_mask[:, index.cpu()]

    def sync(self, context: list[int]) -> list[int]:
        """Roll back to the longest common prefix with `context` (B = 1); return what is missing."""
        cached = self.tokens[0]
        k = 0
        limit = min(len(cached), len(context))
        while k < limit and cached[k] == context[k]:
            k += 1
        self.truncate(k)
        return context[k:]
