"""`generate_image` / `generate_images`: one entry point for every image decoding method.

Parameters are validated once here (label, method, sampling, the method's own parameters) with
one-line ValueErrors; the method then runs on an `ImageModel` that counts forward passes.
Methods needing a differently trained variant (LPD's position queries, NAR's heads, MuLo-SD's
low-resolution drafter) find it beside the raster model (e.g. builtin/digits/lpd).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelError, UserError
from .data import NUM_CLASSES, pixels_from_tokens
from .methods import SAMPLING
from .model import ImageModel, Processing, image_spec


@dataclass
class ImageGeneration:
    pixels: np.ndarray  # (H, W) intensities on scikit-learn's digits scale 0–16
    token_ids: list[int]  # raster order, gray levels 0..K-1
    label: int
    method: str
    stats: dict = field(default_factory=dict)

    @property
    def tokens(self) -> np.ndarray:
        return np.asarray(self.token_ids).reshape(self.pixels.shape)


def image_methods() -> dict:
    """Name → ImageMethod (description, exact, paper, parameters)."""
    from . import lpd, mulo, nar, zipar  # noqa: F401 - registration
    from .methods import IMAGE_METHODS

    return dict(IMAGE_METHODS)


def _check_label(label) -> int:
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < NUM_CLASSES:
        raise UserError(f"label must be an integer class 0–{NUM_CLASSES - 1}, got {label!r}")
    return int(label)


def as_image_lm(lm):
    """An LM (or a model name) → an image LM, with a clear error for text models."""
    if isinstance(lm, (str, Path)):
        from ..model import load

        lm = load(str(lm))
    if getattr(lm, "kind", None) != "image":
        raise ModelError(f"{getattr(lm, 'name', lm)}: not an image-token model (kind {getattr(lm, 'kind', '?')!r}); "
                         "use builtin:digits or builtin:digits16")
    if getattr(lm, "backend", "transformers") != "transformers":
        raise ModelError(f"{lm.name}: image models run on the transformers backend (explicit masks, "
                         "image/cache.py); load it with backend='auto' or 'transformers'")
    return lm


def model_dir(lm) -> Path:
    from ..model import builtin_path

    return builtin_path(lm.name) if lm.name.startswith("builtin:") else Path(lm.name)


def companion(lm, sub: str):
    """The model trained beside `lm` for another method (cached in lm.state)."""
    key = f"image:{sub}"
    if key not in lm.state:
        path = model_dir(lm) / sub
        if not (path / "config.json").exists():
            how = "--variant raster --zipar-windows ..." if sub == "zipar" else "--variant ..."
            raise ModelError(f"{lm.name}: no {sub!r} model beside it ({path}); this method needs its own "
                             f"trained model (`python -m decodelab.image.train {how} --out ...`)")
        from ..model import load

        lm.state[key] = load(str(path))
    return lm.state[key]


def generate_images(lm, labels: list[int], *, method: str = "raster", seeds: list[int] | int | None = None,
                    cfg_scale: float = 1.0, temperature: float = 1.0, top_k: int = 0, kv_cache: bool = True,
                    **params) -> list[ImageGeneration]:
    """One image per label, decoded together; row i uses seed `seeds + i` (or `seeds[i]`).

    kv_cache: feed only new tokens through the slot cache (cache.py) instead of recomputing the
    sequence every pass; same tokens for raster, SJD, NAR and LPD; ZipAR's cached states are frozen
    when fed, as in its released code; MuLo-SD's drafter and target both use it (same tokens)."""
    lm = as_image_lm(lm)
    info = image_methods().get(method)
    if info is None:
        raise UserError(f"unknown image method {method!r}; available: {', '.join(sorted(image_methods()))}")
    labels = [_check_label(x) for x in labels]
    if not labels:
        raise UserError("labels must not be empty")
    sampling = {k: spec.check(k, v) for (k, spec), v in zip(SAMPLING.items(), (cfg_scale, temperature, top_k))}
    if not isinstance(kv_cache, bool):
        raise UserError(f"kv_cache must be True or False, got {kv_cache!r}")
    own = info.check_params(params)
    seeds = _seeds(seeds, len(labels))
    sub = own.get("weights", "raster") if info.variant == "raster" else info.variant  # zipar's weights=zipar
    target = lm if sub == "raster" else companion(lm, sub)
    model = ImageModel(target, Processing(**sampling), kv_cache=kv_cache)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    extra = {"lm": lm} if method == "mulo" else {}
    start = time.perf_counter()
    tokens, stats = info.run(model, torch.tensor(labels), gens, **own, **extra)
    wall = time.perf_counter() - start
    spec = image_spec(target)
    return [ImageGeneration(pixels_from_tokens(t.reshape(spec.height, spec.width).numpy(), spec.levels),
                            t.tolist(), label, method,
                            {**s, "seed": seed, "kv_cache": kv_cache, "wall_time_s": wall / len(labels)})
            for t, s, label, seed in zip(tokens, stats, labels, seeds)]


def _seeds(seeds, n: int) -> list[int]:
    if seeds is None:
        base = random.SystemRandom().randrange(1 << 31)
        return [base + i for i in range(n)]
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        return [int(seeds) + i for i in range(n)]
    seeds = list(seeds)
    if len(seeds) != n or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds):
        raise UserError(f"seeds must be an int or a list of {n} ints")
    return [int(s) for s in seeds]


def generate_image(lm, label: int, *, method: str = "raster", seed: int | None = None, cfg_scale: float = 1.0,
                   temperature: float = 1.0, top_k: int = 0, kv_cache: bool = True, **params) -> ImageGeneration:
    """One class-conditional image: `.pixels` (H, W) on the 0–16 scale, `.token_ids`, `.stats`."""
    return generate_images(lm, [label], method=method, seeds=seed, cfg_scale=cfg_scale,
                           temperature=temperature, top_k=top_k, kv_cache=kv_cache, **params)[0]
