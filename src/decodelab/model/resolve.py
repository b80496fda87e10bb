"""Where a model name points, and which device it can run on — decided before anything slow starts.

Order for a name: `builtin:NAME` → a local directory → the local Hugging Face cache
(`huggingface_hub.snapshot_download(local_files_only=True)`) → the Hub. The Hub is asked once,
with `HfApi.model_info` (one request, no retries), so an offline machine fails in one line at once
instead of after transformers' retry loop; `HF_HUB_OFFLINE=1` skips even that request. Every
failure suggests the local directory (`./NAME`) or embedded model the user probably meant.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import torch

from ..errors import ModelError

HUB_TIMEOUT_S = 10.0


def resolve_name(name: str, builtin_path) -> tuple[Path | str, bool]:
    """(location, is_local): a local directory (builtin, user's or cached snapshot) or a Hub id to download."""
    if name.startswith("builtin:"):
        return builtin_path(name), True
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        if not path.is_dir():
            raise ModelError(f"model path {name!r} does not exist or is not a directory{_hint(name)}")
        return path, True
    cached = _cached_snapshot(name)
    if cached is not None and _complete(cached):
        return cached, True
    _check_hub(name, partial=cached is not None)
    return name, False


def _complete(snapshot: Path) -> bool:
    """A cached snapshot with a config and weights (an earlier AutoConfig call caches config.json alone)."""
    weights = ("*.safetensors", "*.bin", "*.pt")
    return (snapshot / "config.json").exists() and any(any(snapshot.glob(w)) for w in weights)


def _cached_snapshot(name: str) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except HFValidationError:
        raise ModelError(f"{name!r} is not a local directory, an embedded model (builtin:NAME) "
                         f"or a valid Hugging Face Hub id{_hint(name)}") from None
    except (OSError, ValueError):  # not cached (LocalEntryNotFoundError is an OSError)
        return None


def _check_hub(name: str, partial: bool = False) -> None:
    """One request to the Hub: the model exists and the network works, or a one-line ModelError."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    cache = "only partly in the local Hugging Face cache (no weights)" if partial else \
        "in the local Hugging Face cache"
    where = f"{name!r} is not a local directory, an embedded model, or {cache}"
    if constants.HF_HUB_OFFLINE:
        raise ModelError(f"{where}, and HF_HUB_OFFLINE is set{_hint(name)}")
    try:
        HfApi().model_info(name, timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError:
        raise ModelError(f"{where}, and the Hub has no public model {name!r}{_hint(name)}") from None
    except HfHubHTTPError as exc:
        raise ModelError(f"{where}; the Hub answered: {_first_line(exc)}{_hint(name)}") from None
    except Exception as exc:  # noqa: BLE001 - any transport failure means the same: no network
        raise ModelError(f"{where}, and the Hub is unreachable ({_first_line(exc)}){_hint(name)}") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _hint(name: str) -> str:
    """'; did you mean ./x?' when a similarly named local directory or an embedded model exists."""
    from .lm import BUILTIN_DIR

    path = Path(name).expanduser()
    short = path.name
    builtins = [p.name for p in BUILTIN_DIR.iterdir() if (p / "config.json").exists()] if BUILTIN_DIR.exists() else []
    if short in builtins:
        return f"; did you mean builtin:{short}?"
    parent = path.parent if path.parent.is_dir() else Path(".")
    try:
        dirs = [p.name for p in parent.iterdir() if p.is_dir()]
    except OSError:
        return ""
    close = difflib.get_close_matches(short, dirs, n=1, cutoff=0.6)
    if not close:
        return ""
    suggestion = str(parent / close[0])
    if not suggestion.startswith(("/", ".", "~")):
        suggestion = "./" + suggestion
    return f"; did you mean {suggestion}?"


def available_devices() -> list[str]:
    """Devices this torch build can use here: cpu, then cuda:i / mps / xpu:i when present."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        out += [f"xpu:{i}" for i in range(xpu.device_count())]
    return out


def check_device(device: str | torch.device) -> torch.device:
    """The device as a torch.device, or a one-line ModelError naming the devices that are available."""
    avail = available_devices()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelError(f"unknown device {str(device)!r}; available: {', '.join(avail)}") from None
    kinds = {d.split(":")[0] for d in avail}
    ok = dev.type == "cpu" or (dev.type in kinds and (dev.index is None or f"{dev.type}:{dev.index}" in avail))
    if not ok:
        raise ModelError(f"device {str(device)!r} is not available here; available: {', '.join(avail)}")
    return dev
