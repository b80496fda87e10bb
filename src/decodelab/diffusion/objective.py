"""The masked-diffusion training objective of LLaDA (arXiv:2502.09992) and MDLM (arXiv:2406.07524).

Per row: t ~ U(0, 1), p_mask = (1 − ε)·t + ε; every maskable token is replaced by `<|mask|>` with
probability p_mask; the loss is the cross-entropy on the masked tokens weighted by 1 / p_mask
(an upper bound on the negative log-likelihood), summed and divided by the row's maskable length.
SFT-style rows never mask their prompt (`maskable` is False there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-3


def mask_tokens(ids: torch.Tensor, maskable: torch.Tensor, mask_id: int, gen: torch.Generator,
                eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids, maskable [B, T] → (noisy ids [B, T], masked [B, T] bool, p_mask [B, 1])."""
    t = torch.rand(ids.shape[0], 1, generator=gen)
    p_mask = (1 - eps) * t + eps
    masked = (torch.rand(ids.shape, generator=gen) < p_mask) & maskable
    return torch.where(masked, torch.full_like(ids, mask_id), ids), masked, p_mask


def diffusion_loss(logits: torch.Tensor, ids: torch.Tensor, masked: torch.Tensor, p_mask: torch.Tensor,
                   maskable: torch.Tensor) -> torch.Tensor:
    """logits [B, T, V], ids / masked / maskable [B, T], p_mask [B, 1] → scalar loss."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), ids.flatten(), reduction="none").view(ids.shape)
    per_row = (ce * masked / p_mask).sum(-1) / maskable.sum(-1).clamp(min=1)
    return per_row.mean()
