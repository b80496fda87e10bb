"""Recognising and loading masked-diffusion checkpoints as an `LM` with `kind == "diffusion"`.

Three families: decodelab's own (`model_type: "decodelab_diffusion"`, diffusion/model.py), LLaDA
("Large Language Diffusion Models", arXiv:2502.09992; mask id 126336) and Dream ("Dream 7B",
arXiv:2508.15487; mask id 151666, logits shifted by one position). LLaDA and Dream ship remote code,
run only with `trust_remote_code=True`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ModelError

REMOTE = {"llada": 126336, "dream": 151666}  # model_type (lower case) → mask token id


def model_type(path: Path) -> str:
    try:
        return str(json.loads((path / "config.json").read_text()).get("model_type", "")).lower()
    except (OSError, ValueError, AttributeError):
        return ""


def is_diffusion_dir(path: Path) -> bool:
    from .model import MODEL_TYPE

    return model_type(path) in (MODEL_TYPE, *REMOTE)


def load_diffusion(name: str, path: Path, *, device: str, dtype: torch.dtype, trust_remote_code: bool = False):
    """An LM over a masked-diffusion checkpoint (one-line ModelError on any failure)."""
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    from ..model.lm import LM, _short
    from .model import MODEL_TYPE

    kind = model_type(path)
    if kind != MODEL_TYPE and not trust_remote_code:
        raise ModelError(f"{name}: a {kind} diffusion checkpoint needs its remote code; "
                         "pass trust_remote_code=True if you trust it")
    auto = AutoModelForMaskedLM if kind == MODEL_TYPE else AutoModel
    try:
        model, info = auto.from_pretrained(path, dtype=dtype, use_safetensors=True, output_loading_info=True,
                                           trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - the user's checkpoint, reported in one line
        raise ModelError(f"{name}: cannot load diffusion model — {_short(exc)}") from None
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise ModelError(f"{name}: incomplete weights — {len(missing)} tensor(s) missing, e.g. {missing[0]!r}")
    lm = LM(model.to(device).eval(), tokenizer, name=name)
    lm.kind = "diffusion"
    lm.mask_token_id = _mask_id(model.config, tokenizer, kind)
    lm.logit_shift = kind == "dream"  # decodelab's own model shifts inside its forward when configured to
    return lm


def _mask_id(config, tokenizer, kind: str) -> int:
    for value in (getattr(config, "mask_token_id", None), tokenizer.mask_token_id, REMOTE.get(kind)):
        if value is not None:
            return int(value)
    raise ModelError("diffusion checkpoint without a mask token (config.mask_token_id or tokenizer.mask_token)")
