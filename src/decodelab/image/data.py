"""The toy image data: scikit-learn's handwritten digits quantised to `LEVELS` gray tokens.

`sklearn.datasets.load_digits` ships 1,797 8×8 images with integer intensities 0–16 and labels
0–9 (no network). A pixel v becomes the token t = ⌊v·K/17⌋ (K = `LEVELS` = 8 gray levels, the
upper end of the 4–8 range suggested for this toy), and a token decodes to the centre of its bin,
(t + ½)·17/K, so quantise(dequantise(t)) == t. The 16×16 grid is the 8×8 token grid upsampled ×2
by nearest neighbour (each token repeated in a 2×2 block), which inflates spatial redundancy —
parallel methods look better on it than the pixel count alone suggests.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

LEVELS = 8  # K: gray levels (tokens 0..K-1)
NUM_CLASSES = 10
MAX_INTENSITY = 16  # scikit-learn digits scale 0..16
SPLIT_SEED = 0
NUM_VAL = 297  # held-out images (1,500 train)


def quantise(pixels: np.ndarray, levels: int = LEVELS) -> np.ndarray:
    """Intensities on the 0–16 scale → integer tokens 0..levels-1."""
    pixels = np.asarray(pixels, dtype=np.float64)
    return np.clip(np.floor(pixels * levels / (MAX_INTENSITY + 1)), 0, levels - 1).astype(np.int64)


def dequantise(tokens: np.ndarray, levels: int = LEVELS) -> np.ndarray:
    """Tokens → intensities on the 0–16 scale (the centre of each bin)."""
    return (np.asarray(tokens, dtype=np.float64) + 0.5) * (MAX_INTENSITY + 1) / levels


def upsample(tokens: np.ndarray, factor: int = 2) -> np.ndarray:
    """[..., H, W] → [..., H·f, W·f] by nearest neighbour."""
    return np.repeat(np.repeat(tokens, factor, axis=-2), factor, axis=-1)


def pool_pixels(pixels: np.ndarray, factor: int = 2) -> np.ndarray:
    """[..., H, W] intensities → [..., H/f, W/f] by averaging f×f blocks."""
    *lead, h, w = pixels.shape
    return pixels.reshape(*lead, h // factor, factor, w // factor, factor).mean(axis=(-3, -1))


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float64), data.target.astype(np.int64)


def split(part: str) -> tuple[np.ndarray, np.ndarray]:
    """(`images` [n, 8, 8] on 0–16, `labels` [n]) for part "train" or "val" (fixed seeded split)."""
    images, labels = _digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    idx = {"train": order[NUM_VAL:], "val": order[:NUM_VAL], "all": order}[part]
    return images[idx], labels[idx]


def token_grids(part: str, size: int, levels: int = LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """(`tokens` [n, size, size], `labels` [n]) on the 4×4, 8×8 or 16×16 grid.

    4×4 is the 2×2-pooled, re-quantised image (MuLo-SD's low-resolution drafter's data).
    """
    images, labels = split(part)
    if size == 4:
        return quantise(pool_pixels(images), levels), labels
    if size not in (8, 16):
        raise ValueError(f"grid size must be 4, 8 or 16, got {size}")
    tokens = quantise(images, levels)
    return (upsample(tokens, size // 8) if size == 16 else tokens), labels


def pixels_from_tokens(tokens: np.ndarray, levels: int = LEVELS) -> np.ndarray:
    """Token grid → intensities on the 0–16 scale, same shape."""
    return dequantise(tokens, levels)
