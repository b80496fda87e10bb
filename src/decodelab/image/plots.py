"""PNG output for generated digits (matplotlib, headless): one image, or a labelled grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_png(pixels: np.ndarray, out: Path, scale: int = 32) -> None:
    """One (H, W) image on the 0–16 scale, upscaled by nearest neighbour, dark ink on white."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    big = np.kron(pixels, np.ones((max(1, scale * 8 // pixels.shape[0]),) * 2))
    plt.imsave(str(out), big, cmap="gray_r", vmin=0, vmax=16)


def save_grid(rows: list[tuple[str, list[np.ndarray]]], out: Path, title: str = "") -> None:
    """rows: (row label, images) → one figure, one row of images per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(0.8 * cols + 1.2, 0.8 * len(rows) + 0.4), squeeze=False)
    for r, (name, images) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(images[c], cmap="gray_r", vmin=0, vmax=16, interpolation="nearest")
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
