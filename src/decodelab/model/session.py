"""The Session protocol: one batch's KV cache, forward passes over new tokens, and cache rollback.

Backend-neutral: everything above `model/` holds a Session and never knows which backend runs it.
`LM.session(batch_size)` is the one factory; `hf.HFSession` (the transformers adapter) and
`native.NativeSession` (decodelab's own Llama-family forward) implement the three backend hooks
`_run`, `_keep` and `_select_rows`. Bookkeeping shared by every backend lives here: the tokens each
row's cache holds, left-pad masks, positions, tree layouts and forward-pass counting.

Cache layout: `tokens[b]` mirrors what row b's cache holds (left pads included); all rows share one
length. Tree attention: `forward(ids, parents=...)` feeds a token tree in one pass; node i sits at
position `length + depth(i)` and attends to the whole cache plus its own ancestors — the layout of
SpecInfer (arXiv:2305.09781) and Token Recycling (arXiv:2408.08696).
"""

from __future__ import annotations

import time

import torch

from ..errors import ModelError
from ..treeshape import ancestor_matrix, tree_depths

__all__ = ["Session", "ancestor_matrix", "tree_depths"]


class Session:
    """KV cache for a batch of sequences plus the forward passes that fill it (backend-neutral base)."""

    def __init__(self, lm, batch_size: int = 1, stats=None, role: str = "target"):
        self.lm = lm
        self.batch_size = batch_size
        self.tokens: list[list[int]] = [[] for _ in range(batch_size)]
        self.pad_mask: torch.Tensor | None = None  # [B, length] 1 = real token; None = no padding
        self.stats = stats
        self.role = role
        self.forward_passes = 0
        self._last: tuple[int, int] = (0, 0)  # (start, n) of the last forward

    @property
    def length(self) -> int:
        return len(self.tokens[0])

    # ---- backend hooks ---------------------------------------------------------------------
    def _run(self, ids: torch.Tensor, positions: torch.Tensor, parents: list[int] | None,
             last_only: bool, hidden: bool):
        """Forward ids [B, n] at `positions` [B, n] over the cache; return logits (and hidden states)."""
        raise NotImplementedError

    def _keep(self, columns: list[int]) -> None:
        """Keep only these cache columns, in order (a prefix, or a prefix + an accepted path)."""
        raise NotImplementedError

    def _select_rows(self, rows: torch.Tensor) -> None:
        """Keep / repeat / reorder batch rows of the cache ([B'] row indices)."""
        raise NotImplementedError

    # ---- forward -------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor | list[int], parents: list[int] | None = None,
                pad_mask: torch.Tensor | None = None, last_only: bool = False,
                hidden: bool = False, token_weights: torch.Tensor | None = None,
                lengths: list[int] | None = None):
        """Run the model over new tokens and append them to the cache.

        input_ids: [B, n] (or a list for B = 1). parents: tree structure of the n nodes (None =
        causal chain). pad_mask: [B, n] for the new tokens (1 real, 0 left pad), prefill only.
        token_weights: [B, n, V] — each new position's input embedding is Σ_v w_v·E[v] instead of
        E[input_ids] (superposed decoding, search/superposed.py); input_ids still name what the cache
        records. Backends that cannot take it raise ModelError.
        lengths: row b's new tokens are its first lengths[b] of n, the rest pads whose logits are never
        read (a ragged verify batch); a backend may then skip the pads (the native one packs them out).
        Returns logits [B, n, V] float32 ([B, 1, V] when last_only); with hidden=True also the
        tuple of hidden states (embeddings + every layer, the last normed) at the new positions.
        """
        if token_weights is not None and not self.accepts_token_weights:
            raise ModelError(f"the {self.lm.backend} backend cannot feed superposed token embeddings")
        self._token_weights, self._lengths = token_weights, lengths
        try:
            return self._forward(input_ids, parents, pad_mask, last_only, hidden)
        finally:
            self._token_weights = self._lengths = None

    accepts_token_weights = False  # backends that read self._token_weights in _run set it True
    _token_weights: torch.Tensor | None = None
    _lengths: list[int] | None = None  # the ragged rows' real token counts, while a forward runs

    def _forward(self, input_ids, parents, pad_mask, last_only: bool, hidden: bool):
        ids = self._as_batch(input_ids)
        n = ids.shape[1]
        if self.length + n > self.lm.max_length:
            raise ModelError(f"context too long: {self.length + n} tokens > model maximum {self.lm.max_length}")
        parents = _per_row(parents, self.batch_size)
        if parents is not None and any(len(row) != n for row in parents):
            raise ValueError(f"{[len(row) for row in parents]} parents for {n} tree nodes")
        self._extend_pad_mask(pad_mask, n)
        positions = self._positions(n, parents)
        t0 = time.perf_counter()
        out = self._run(ids, positions, parents, last_only, hidden)
        self._count(time.perf_counter() - t0)
        self._last = (self.length, n)
        for row, new in zip(self.tokens, ids.tolist()):
            row.extend(new)
        if hidden:
            return out[0].float(), out[1]
        return out.float()

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

    def _positions(self, n: int, parents: list[int] | None) -> torch.Tensor:
        """[B, n] positions of the new tokens: the row's real tokens before each one (+ depth in a tree).

        Pads take no position: a left-padded row's first real token sits at 0 in prefill and every
        later step continues from there, so rows decode exactly as they would alone."""
        start = self.length
        if self.pad_mask is not None and parents is None:  # pads may sit among the new tokens
            positions = (self.pad_mask[:, : start + n].cumsum(dim=1) - 1).clamp(min=0)[:, start:]
            return positions.to(self.lm.device)
        if parents is None:
            positions = torch.arange(start, start + n).expand(self.batch_size, n)
        else:
            positions = start + torch.tensor([tree_depths(row) for row in parents])
        if self.pad_mask is not None:
            positions = positions - (1 - self.pad_mask[:, :start]).sum(dim=1, keepdim=True)
        return positions.to(self.lm.device)

    def allowed(self, n: int, parents: list[int] | None) -> torch.Tensor:
        """[B, n, start + n] bool attention mask of the new tokens: the cache (minus pads) + causal/tree.

        parents: one tree for every row, or a list of per-row trees."""
        start = self.length
        allowed = torch.zeros(self.batch_size, n, start + n, dtype=torch.bool)
        allowed[:, :, :start] = True if self.pad_mask is None else self.pad_mask[:, None, :start].bool()
        if parents is None:
            allowed[:, :, start:] = torch.ones(n, n, dtype=torch.bool).tril()
            if self.pad_mask is not None:
                allowed[:, :, start:] &= self.pad_mask[:, None, start:start + n].bool()
                allowed[:, :, start:] |= torch.eye(n, dtype=torch.bool)  # a pad attends to itself (no NaN)
        else:
            allowed[:, :, start:] = torch.stack([ancestor_matrix(row) for row in _per_row(parents, self.batch_size)])
        return allowed

    def _count(self, seconds: float) -> None:
        self.forward_passes += 1
        if self.stats is not None:
            self.stats.count_forward(self.role, seconds)

    # ---- rollback ------------------------------------------------------------------------
    def truncate(self, n: int) -> None:
        """Keep the first n cache columns (n ≤ length): rolling back rejected drafts."""
        if n >= self.length:
            return
        self._keep(list(range(n)))
        self.tokens = [row[:n] for row in self.tokens]
        if self.pad_mask is not None:
            self.pad_mask = self.pad_mask[:, :n]

    def accept(self, nodes: list[int]) -> None:
        """Keep, of the nodes fed by the last forward, only `nodes` (indices into that forward, in order).

        A chain prefix moves the length only; an accepted tree path copies just its columns.
        """
        start, n = self._last
        if self.length != start + n:
            raise ValueError("accept() must follow the forward whose nodes it keeps")
        if any(not 0 <= i < n for i in nodes):
            raise ValueError(f"accepted node index out of range 0..{n - 1}")
        self.compact(list(range(start)) + [start + i for i in nodes])

    def accept_rows(self, nodes: list[list[int]]) -> None:
        """Per row, keep of the last forward's nodes only `nodes[b]` (rows accept different amounts).

        Rows stay aligned by column: a node a row drops becomes a hole (a pad in the middle), which
        attention skips and positions do not count, so nothing is copied. Columns every row dropped are
        cut; `defragment` closes the holes when they waste room."""
        start, n = self._last
        if self.length != start + n or len(nodes) != self.batch_size:
            raise ValueError("accept_rows() takes one node list per row and must follow its forward")
        if self.batch_size == 1:  # one row: keep its path compactly, no holes
            return self.accept(nodes[0])
        keep = torch.zeros(self.batch_size, n, dtype=torch.long)
        for b, row in enumerate(nodes):
            keep[b, row] = 1
        if self.pad_mask is None:
            self.pad_mask = torch.ones(self.batch_size, self.length, dtype=torch.long)
        self.pad_mask = torch.cat([self.pad_mask[:, :start], self.pad_mask[:, start:] * keep], dim=1)
        used = int(keep.any(dim=0).nonzero().max()) + 1 if keep.any() else 0
        self.truncate(start + used)

    def keep_rows(self, counts: list[int]) -> None:
        """Per row b, keep only its first counts[b] real tokens (rows roll back by different amounts): the
        rest become holes, and columns no row keeps are cut. Nothing is copied."""
        if len(counts) != self.batch_size:
            raise ValueError(f"{len(counts)} counts for a batch of {self.batch_size}")
        if self.pad_mask is None:
            self.pad_mask = torch.ones(self.batch_size, self.length, dtype=torch.long)
        keep = (self.pad_mask.cumsum(dim=1) <= torch.tensor(counts)[:, None]) & self.pad_mask.bool()
        self.pad_mask = keep.long()
        used = int(keep.any(dim=0).nonzero().max()) + 1 if keep.any() else 0
        self.truncate(used)

    def holes(self) -> int:
        """Cache columns the fullest row does not use (pads and holes every row shares at most)."""
        if self.pad_mask is None:
            return 0
        return self.length - int(self.pad_mask.sum(dim=1).max())

    def real_tokens(self, b: int) -> list[int]:
        """The tokens row b's cache holds, without pads and holes."""
        if self.pad_mask is None:
            return list(self.tokens[b])
        return [t for t, m in zip(self.tokens[b], self.pad_mask[b].tolist()) if m]

    def defragment(self) -> None:
        """Close the holes: each row's real columns move right-aligned behind left pads (one gather)."""
        if self.pad_mask is None:
            return
        real = [m.nonzero().flatten().tolist() for m in self.pad_mask]
        width = max(len(r) for r in real)
        if width == self.length:
            return
        index = torch.tensor([[0] * (width - len(r)) + r for r in real], dtype=torch.long)
        self._gather_columns(index.to(self.lm.device))
        self.tokens = [[self.tokens[b][i] for i in row] for b, row in enumerate(index.tolist())]
        self.pad_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in real], dtype=torch.long)

    def _gather_columns(self, index: torch.Tensor) -> None:
        """Per row b, the new cache column j is the old column index[b, j] ([B, W] indices)."""
        raise NotImplementedError

    def compact(self, keep: list[int]) -> None:
        """Keep only the listed cache columns, in order (prefix + an accepted tree path)."""
        if keep == list(range(len(keep))):
            return self.truncate(len(keep))
        self._keep(keep)
        self.tokens = [[row[i] for i in keep] for row in self.tokens]
        if self.pad_mask is not None:
            self.pad_mask = self.pad_mask[:, keep]

    def reorder(self, rows: list[int]) -> None:
        """Rows become `rows` of the old batch (repeats allowed: beam search's fork + reorder)."""
        if any(not 0 <= r < self.batch_size for r in rows) or not rows:
            raise ValueError(f"rows must index 0..{self.batch_size - 1}")
        self._select_rows(torch.tensor(rows, dtype=torch.long, device=self.lm.device))
        self.tokens = [list(self.tokens[r]) for r in rows]
        if self.pad_mask is not None:
            self.pad_mask = self.pad_mask[rows]
        self.batch_size = len(rows)

    def merge(self, other: "Session") -> None:
        """Append `other`'s rows to this batch (continuous batching: prefilled new rows join a running one).

        Rows stay aligned on their last column: the shorter side gets left pads, which attention skips
        and positions do not count, so every row decodes exactly as it would alone."""
        if type(other) is not type(self) or other.lm is not self.lm:
            raise ValueError("merge() joins sessions of one model and backend")
        width = max(self.length, other.length)
        if width > self.lm.max_length:
            raise ModelError(f"context too long: {width} tokens > model maximum {self.lm.max_length}")
        shift, other_shift = width - self.length, width - other.length
        self._merge(other, shift, other_shift)
        pad = self.lm.pad_token_id
        masks = [_left_padded(s.pad_mask, s.batch_size, s.length, k) for s, k in ((self, shift), (other, other_shift))]
        self.tokens = [[pad] * shift + row for row in self.tokens] + [[pad] * other_shift + row for row in other.tokens]
        self.pad_mask = torch.cat(masks, dim=0) if (shift or other_shift or self.pad_mask is not None
                                                    or other.pad_mask is not None) else None
        self.batch_size += other.batch_size
        self._last = (self.length, 0)

    def _merge(self, other: "Session", shift: int, other_shift: int) -> None:
        """Backend hook: concatenate other's cache rows after ours, each side moved right by its shift."""
        raise NotImplementedError

    def fork(self, row: int, copies: int) -> None:
        """Replace the batch with `copies` copies of one row (n samples / beams from one prompt)."""
        self.reorder([row] * copies)

    def sync(self, context: list[int]) -> list[int]:
        """Roll back to the longest common prefix with `context` (B = 1); return what is missing."""
        cached = self.tokens[0]
        k = 0
        limit = min(len(cached), len(context))
        while k < limit and cached[k] == context[k]:
            k += 1
        self.truncate(k)
        return context[k:]


def _left_padded(mask: torch.Tensor | None, batch_size: int, length: int, shift: int) -> torch.Tensor:
    """[B, shift + length] pad mask: `shift` pad columns, then the rows' own mask (all real when None)."""
    own = mask if mask is not None else torch.ones(batch_size, length, dtype=torch.long)
    return torch.cat([torch.zeros(batch_size, shift, dtype=torch.long), own], dim=1)


def superpose(weights: torch.Tensor, embed) -> torch.Tensor:
    """Σ_v w_v·embed(v) for weights [B, n, V] → [B, n, H], embedding only the tokens with weight
    (embed: ids → vectors, the model's own embedding module, so any scaling inside it applies)."""
    cols = weights.abs().sum(dim=(0, 1)).nonzero().flatten()  # [m]
    vectors = embed(cols.to(weights.device))  # [m, H]
    return weights[..., cols].to(vectors.device, vectors.dtype) @ vectors


def _per_row(parents, batch_size: int) -> list[list[int]] | None:
    """None, or one parents list per row (a single list is shared by every row)."""
    if parents is None:
        return None
    if parents and isinstance(parents[0], (list, tuple)):
        if len(parents) != batch_size:
            raise ValueError(f"{len(parents)} per-row trees for a batch of {batch_size}")
        return [list(row) for row in parents]
    return [list(parents)] * batch_size
