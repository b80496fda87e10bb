"""Fast-dLLM's approximate KV cache for the block samplers: `prefix` and `dual`.

"Fast-dLLM: Training-free Acceleration of Diffusion LLM by Enabling KV Cache and Parallel Decoding"
(arXiv:2505.22618). A masked diffusion LM attends bidirectionally, so no key/value is ever final:
committing a token changes every position's keys and values. Fast-dLLM reuses them anyway, because
they change little inside a block:
- at the first step of a block the whole sequence is run (an exact pass) and every layer's keys and
  values are kept;
- `prefix`: later steps of the block feed the block and everything after it (the masked suffix) and
  attend to the kept keys/values of the positions before the block;
- `dual`: later steps feed only the block and also reuse the kept keys/values of the suffix.
Both are approximations of the no-cache loop (the kept keys/values are those of the canvas at the
block's start); docs/DIFFUSION.md measures the accuracy change on the tasks.

Batches: each row keeps its own blocks (sampling._Blocks). One forward per step feeds the union of
the rows' windows; a row takes fresh keys/values only inside its own window and its cached ones
elsewhere, and a row at a block start has the whole sequence as its window — so a row's output is
the one it gets alone (batch-size invariance). Works with decodelab's own architecture
(diffusion/model.py); remote-code LLaDA / Dream models are refused with a one-line error.
"""

from __future__ import annotations

import torch

from ..errors import UserError

MODES = ("none", "prefix", "dual")


class CanvasCache:
    """Per-layer keys/values [B, H_kv, S, hd] of each row's last block-start pass."""

    def __init__(self, mode: str, shift: bool):
        if mode not in MODES[1:]:
            raise UserError(f"cache must be one of {list(MODES)}, got {mode!r}")
        self.mode, self.shift = mode, int(shift)
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.window: torch.Tensor | None = None  # [B, S] bool: the positions each row recomputes
        self.refresh: torch.Tensor | None = None  # [B] bool: rows whose window is everything
        self.a = self.b = 0  # the fed slice [a, b) of the S positions

    def plan(self, start: int, masked: torch.Tensor, block_start: list[int], block_end: list[int],
             total: int) -> tuple[int, int]:
        """Choose each row's window for this step; returns the fed slice [a, b).

        start: first canvas position; masked [B, G]; block_start/end: each row's current block
        (canvas coordinates, as sampling._Blocks holds them before the step); total: S.
        """
        rows = masked.shape[0]
        window = torch.zeros(rows, total, dtype=torch.bool)
        refresh = torch.zeros(rows, dtype=torch.bool)
        for r in range(rows):
            if not masked[r].any():
                continue  # finished row: nothing of it is used
            s, e = block_start[r], block_end[r]
            if not self.k or not masked[r, s:e].any():  # the row enters a new block: exact full pass
                refresh[r] = True
                window[r] = True
                continue
            lo = max(0, start + s - self.shift)  # shifted logits: position p reads position p − 1
            window[r, lo:total if self.mode == "prefix" else start + e] = True
        cols = window.any(0).nonzero()
        self.a, self.b = (int(cols[0]), int(cols[-1]) + 1) if len(cols) else (start, start + 1)
        self.window, self.refresh = window, refresh
        return self.a, self.b

    def layer(self, i: int):
        """The merge for layer i: fed keys/values [B, H_kv, b − a, hd] → all S keys/values."""

        def merge(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if len(self.k) <= i:  # first pass: every row refreshes and the slice is everything
                self.k.append(k)
                self.v.append(v)
                return k, v
            return self._merge(self.k, i, k), self._merge(self.v, i, v)

        return merge

    def _merge(self, store: list[torch.Tensor], i: int, fresh: torch.Tensor) -> torch.Tensor:
        full = store[i].clone()
        win = self.window[:, None, self.a:self.b, None].to(fresh.device)
        full[:, :, self.a:self.b] = torch.where(win, fresh, full[:, :, self.a:self.b])
        keep = self.refresh.to(fresh.device)
        store[i][keep] = full[keep]  # a refreshing row's window is everything: all fresh
        return full


def check_cache(lm, mode: str, cfg_scale: float = 0.0) -> CanvasCache | None:
    """A cache for the loop (None for mode 'none'), or a one-line ValueError."""
    if mode == "none":
        return None
    if mode not in MODES:
        raise UserError(f"cache must be one of {list(MODES)}, got {mode!r}")
    from .model import DiffusionForMaskedLM

    if not isinstance(lm.model, DiffusionForMaskedLM):
        raise UserError(f"cache={mode!r} needs decodelab's diffusion architecture; {lm.name} has none (use cache='none')")
    if cfg_scale > 0:
        raise UserError("cache does not combine with cfg_scale > 0 (use cache='none')")
    return CanvasCache(mode, bool(lm.model.config.logit_shift))
