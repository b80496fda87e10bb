"""What the papers report, on our toy: likelihood under the raster model, a digit classifier's
accuracy on class-conditional samples, and a distribution distance to raster samples.

* `nll_per_token` — exact −log p(x | class) / N under the raster model (teacher forcing, no
  guidance, temperature 1): one forward pass over the whole grid.
* `DigitClassifier` — scikit-learn's RBF support-vector classifier (C=10, γ=0.001) trained on the
  real 8×8 digits of the training split (intensities 0–16); 16×16 samples are 2×2-average-pooled
  to 8×8 first. `python -m decodelab.image.bench` prints its accuracy on the held-out real digits
  (raw and quantised) as the ceiling.
* `marginal_kl` — per class and per position, KL(reference ‖ samples) between the empirical
  distributions over the K gray levels (add-½ smoothing), averaged over positions and classes.
  The same statistic between two independent raster sample sets is its noise floor.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .data import pool_pixels, split
from .model import ImageModel, Processing


def nll_per_token(raster_lm, labels: list[int], tokens: np.ndarray) -> np.ndarray:
    """tokens [M, N] (raster order) → mean NLL per token of each sample [M] (nats)."""
    model = ImageModel(raster_lm, Processing())
    x = torch.as_tensor(tokens, dtype=torch.long)
    out = []
    for i in range(0, len(x), 256):
        chunk, lab = x[i:i + 256], torch.tensor(labels[i:i + 256])
        p = model.raster_probs(lab, chunk, torch.ones_like(chunk, dtype=torch.bool))
        out.append(-torch.log(p.gather(-1, chunk[..., None]).squeeze(-1).clamp_min(1e-30)).mean(-1))
    return torch.cat(out).numpy()


class DigitClassifier:
    """An SVC on real 8×8 digits (0–16); `predict` takes (H, W) images of any even grid."""

    def __init__(self):
        from sklearn.svm import SVC

        images, labels = split("train")
        self.svc = SVC(C=10.0, gamma=0.001).fit(images.reshape(len(labels), -1), labels)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """pixels [M, H, W] → predicted classes [M]."""
        while pixels.shape[-1] > 8:
            pixels = pool_pixels(pixels)
        return self.svc.predict(pixels.reshape(len(pixels), -1))

    def accuracy(self, pixels: np.ndarray, labels) -> float:
        return float((self.predict(pixels) == np.asarray(labels)).mean())


@lru_cache(maxsize=1)
def classifier() -> DigitClassifier:
    return DigitClassifier()


def marginal_kl(reference: np.ndarray, ref_labels, samples: np.ndarray, labels, levels: int) -> float:
    """reference [M, N], samples [M', N] tokens → mean over classes and positions of KL(ref ‖ samples)."""
    ref_labels, labels = np.asarray(ref_labels), np.asarray(labels)
    kls = []
    for c in sorted(set(ref_labels.tolist()) & set(labels.tolist())):
        p = _hist(reference[ref_labels == c], levels)
        q = _hist(samples[labels == c], levels)
        kls.append(float((p * np.log(p / q)).sum(-1).mean()))
    return float(np.mean(kls))


def _hist(tokens: np.ndarray, levels: int) -> np.ndarray:
    """[M, N] → smoothed per-position distributions [N, K]."""
    counts = np.stack([(tokens == k).sum(0) for k in range(levels)], axis=-1) + 0.5
    return counts / counts.sum(-1, keepdims=True)
