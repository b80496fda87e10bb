"""Loading: embedded builtin models, local Hugging Face directories, Hub ids — with clear errors."""

from __future__ import annotations

import json
import threading
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import ModelError

if TYPE_CHECKING:
    from .session import Session

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "builtin"
DEFAULT_MODEL = "builtin:pyco"
DRAFTS = {"builtin:pyco": "builtin:pyco-draft"}


def builtin_path(name: str) -> Path:
    """Local directory of an embedded model (`builtin:pyco` or `pyco`)."""
    short = name.removeprefix("builtin:")
    path = BUILTIN_DIR / short
    if not (path / "config.json").exists():
        known = sorted(p.name for p in BUILTIN_DIR.iterdir() if (p / "config.json").exists()) if BUILTIN_DIR.exists() else []
        raise ModelError(f"no embedded model {name!r}; embedded models: {['builtin:' + k for k in known]}")
    return path


def _resolve(name: str) -> tuple[Path | str, bool]:
    """(location, is_local) for a builtin name, a local directory, a cached Hub snapshot, or a Hub id."""
    from .resolve import resolve_name

    return resolve_name(name, builtin_path)


def _check_local_dir(path: Path, allow_pickle: bool) -> None:
    if not (path / "config.json").exists():
        raise ModelError(f"{path}: no config.json — not a Hugging Face model directory")
    has_safetensors = any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").exists()
    has_pickle = any(path.glob("*.bin")) or any(path.glob("*.pt"))
    if not has_safetensors and has_pickle and not allow_pickle:
        raise ModelError(f"{path}: only pickle weights (*.bin); refusing to unpickle — pass allow_pickle=True "
                         "(CLI: --allow-pickle) if you trust them")
    if not has_safetensors and not has_pickle:
        raise ModelError(f"{path}: no weights (*.safetensors) found")
    if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")):
        raise ModelError(f"{path}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
    try:
        config = json.loads((path / "config.json").read_text())
    except (ValueError, OSError) as exc:
        raise ModelError(f"{path}: cannot read config.json — {_short(exc)}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: config.json is not a JSON object")
    if config.get("auto_map") and not config.get("model_type"):
        raise ModelError(f"{path}: needs remote code; pass trust_remote_code=True (CLI: --trust-remote-code) "
                         "if you trust it")


def _short(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """`"float16"`, `"bf16"`-style names or a torch.dtype; anything else is a one-line ModelError."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16", "float": "float32"}
    name = str(dtype).removeprefix("torch.")
    name = aliases.get(name, name)
    if name in ("float32", "float16", "bfloat16", "float64"):
        return getattr(torch, name)
    raise ModelError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")


BACKENDS = ("auto", "native", "transformers", "llamacpp")


def load(name: str | None = None, *, device: str = "cpu", dtype: torch.dtype | str | None = None,
         backend: str = "auto", allow_pickle: bool = False, trust_remote_code: bool = False,
         compile: bool | str = False, pack: bool | str = "auto") -> "LM":
    """Load a causal LM + tokenizer. `name=None` → the embedded default `builtin:pyco`.

    backend: "native" (decodelab's Llama-family forward, model/native.py), "transformers" (the
    adapter, any architecture), or "auto" — native where the architecture is supported.
    compile: torch.compile the native backend's decode step (model/native.py, compile_decode_step);
    "auto" times the compiled step against eager at load time, on the calling thread, and keeps the faster
    (`LM.state["compile_choice"]` records both; a backend that cannot compile runs eager), so it never makes
    decoding slower the way an unconditional compile can on a CPU (docs/BENCHMARKS.md).
    pack: the native backend's matmul weights on a CPU repacked for oneDNN (model/native.py, NativeModel.pack)
    — True packs every large weight, False keeps torch's `F.linear`, "auto" (the default) times both per
    weight kind at load (on the loading thread, below) and packs only where oneDNN was faster on this CPU
    (`LM.state["pack_choice"]`): which is faster differs between CPUs (docs/BACKENDS.md).

    The loading itself runs on a short-lived thread (`_off_thread`), so that the calling thread starts no
    OpenMP thread team of its own: a server or app that loads on its main thread and generates on a
    worker would otherwise keep two teams, and GNU OpenMP, seeing more of its threads than CPUs, stops
    spinning between parallel regions — a native decode step then ran about twice as slow on a 2-core
    machine (`python -m decodelab.bench.thread_cost`, docs/BENCHMARKS.md)."""
    if pack not in (True, False, "auto"):
        raise ModelError(f"pack must be True, False or 'auto', got {pack!r}")
    lm = _off_thread(_load, name, device, dtype, backend, allow_pickle, trust_remote_code, compile, pack)
    if compile == "auto" and lm.backend == "native":  # timed where decoding is likely to run: this thread
        from .native import choose_compiled

        names = set(lm.state["pack_choice"]["chosen"]) if pack == "auto" else None if pack else set()
        lm.model, compiled, record = choose_compiled(lm.model, names)  # eager packed as chosen, compiled dense
        lm.state.update(compiled=compiled, compile_choice=record)
    return lm


def _off_thread(fn, *args):
    """fn(*args) on a new thread, joined at once: its result, or its exception raised here."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=run, name="decodelab-load", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _load(name, device, dtype, backend, allow_pickle, trust_remote_code, compile, pack) -> "LM":
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if compile not in (True, False, "auto"):
        raise ModelError(f"compile must be True, False or 'auto', got {compile!r}")
    from transformers import AutoConfig, AutoModelForCausalLM

    name = name or DEFAULT_MODEL
    from .resolve import check_device

    device = str(check_device(device))
    location, local = _resolve(name)
    if local:
        _check_local_dir(Path(location), allow_pickle)
    if backend == "llamacpp":  # llama.cpp's forward over a converted GGUF (model/llamacpp.py)
        from .llamacpp import load_llamacpp

        if compile is True:
            raise ModelError("compile=True needs the native backend (llamacpp runs llama.cpp's compiled kernels)")
        return load_llamacpp(name, location, local, dtype, device, trust_remote_code)
    dtype = _dtype(dtype) or (torch.float32 if device == "cpu" else torch.float16)
    from ..diffusion.load import is_diffusion_dir, load_diffusion

    if local and is_diffusion_dir(Path(location)):  # masked-diffusion checkpoint: LM.kind == "diffusion"
        return load_diffusion(name, Path(location), device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any failure here is the user's model, reported in one line
        raise ModelError(f"{name}: cannot read config — {_short(exc)}") from None
    if getattr(config, "decodelab_kind", None) == "image" and backend == "auto":
        backend = "transformers"  # image-token models run under explicit masks (image/model.py)
    native_model = _native(name, location, local, config, backend, allow_pickle, dtype, device,
                           pack=pack is True and not compile)
    if native_model is not None:
        lm = LM(native_model, _tokenizer(name, location, trust_remote_code), name=name, backend="native")
        if pack == "auto" and compile is not True:  # timed here, on the loading thread (_off_thread's reason)
            from .native import choose_packing

            names, lm.state["pack_choice"] = choose_packing(native_model)
            if compile is False:  # compile="auto" packs its eager copy as chosen (load)
                native_model.pack(names)
        if compile is True:
            from .native import compile_decode_step

            compile_decode_step(lm)
        return lm
    if compile is True:
        raise ModelError(f"{name}: compile=True needs the native backend (this model runs on transformers)")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype, use_safetensors=None if allow_pickle else True,
            trust_remote_code=trust_remote_code, output_loading_info=True)
    except ValueError as exc:
        if "Unrecognized configuration" in str(exc) or "model type" in str(exc):
            raise ModelError(f"{name}: unsupported architecture {getattr(config, 'model_type', '?')!r} "
                             "(not a causal LM transformers knows)") from None
        raise ModelError(f"{name}: cannot load weights — {_short(exc)}") from None
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{name}: cannot load weights — {_short(exc)}") from None
    missing = sorted(info.get("missing_keys") or ())
    if missing:  # transformers would silently initialise them at random
        raise ModelError(f"{name}: incomplete weights — {len(missing)} tensor(s) missing, e.g. {missing[0]!r}")
    return LM(model.to(device).eval(), _tokenizer(name, location, trust_remote_code), name=name)


def _tokenizer(name: str, location, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{name}: cannot load tokenizer — {_short(exc)}") from None


def _native(name: str, location, local: bool, config, backend: str, allow_pickle: bool, dtype, device,
            pack: bool = True):
    """The NativeModel when `backend` asks for it (or "auto" allows it), else None. `pack`: oneDNN-packed
    matmul weights on a CPU (native.NativeModel.pack); off under torch.compile, which needs dense weights."""
    from . import native

    if backend == "transformers":
        return None
    reason = native.unsupported(config)
    if reason is None and not local:
        reason = "a Hub id (the native backend reads a local directory or cached snapshot)"
    if reason is None and not any(Path(location).glob("*.safetensors")):
        reason = "pickle-only weights"
    if reason is not None:
        if backend == "native":
            raise ModelError(f"{name}: the native backend cannot run {reason}; use backend='transformers'")
        return None
    return native.build(config, Path(location), dtype, device, pack=pack)


class LM:
    """A loaded causal LM: the HF model, its tokenizer, and the facts decoding needs.

    `model` and `tokenizer` are the plain transformers objects; decoding code reaches the model
    only through `Session` (see session.py).
    """

    def __init__(self, model, tokenizer, name: str = "custom", backend: str = "transformers"):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.backend = backend  # "transformers" (hf.HFSession) or "native" (native.NativeSession)
        self.kind = "image" if getattr(model.config, "decodelab_kind", None) == "image" else "causal"
        self.config = model.config
        self.state: dict = {}  # per-model state that methods keep across calls (e.g. token recycling)

    @cached_property
    def device(self) -> torch.device:
        """Where the weights are (read once: move the model before wrapping it in an LM)."""
        return next(self.model.parameters()).device

    @cached_property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @cached_property
    def vocab_size(self) -> int:
        """Size of the logits' last dimension."""
        if self.backend == "native":
            return self.model.head.shape[0]
        if self.backend == "llamacpp":
            return self.model.vocab_size
        return self.model.get_output_embeddings().weight.shape[0]

    @cached_property
    def max_length(self) -> int:
        """Longest sequence (prompt + generated) the model accepts."""
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(self.config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return 1 << 20

    @cached_property
    def eos_token_ids(self) -> frozenset[int]:
        ids = set()
        for src in (getattr(self.model, "generation_config", None), self.config, self.tokenizer):
            value = getattr(src, "eos_token_id", None) if src is not None else None
            if value is not None:
                ids.update(value if isinstance(value, (list, tuple)) else [value])
        return frozenset(int(i) for i in ids)

    @cached_property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else min(self.eos_token_ids, default=0)

    def encode(self, text: str) -> list[int]:
        # verbose=False: no "will result in indexing errors" warning; callers check the length themselves
        return self.tokenizer.encode(text, add_special_tokens=False, verbose=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def session(self, batch_size: int = 1, stats=None, role: str = "target") -> "Session":
        """A new KV cache + forward passes for `batch_size` rows, on this LM's backend (the one factory)."""
        if self.backend == "native":
            from .native import NativeSession

            return NativeSession(self, batch_size, stats, role)
        if self.backend == "llamacpp":
            from .llamacpp import LlamaCppSession

            return LlamaCppSession(self, batch_size, stats, role)
        from .hf import HFSession

        return HFSession(self, batch_size, stats, role)

    def exit_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head applied to a hidden state [..., H] → [..., V] (early-exit drafts)."""
        if self.backend == "native":
            return self.model.logits(hidden)
        return self.model.get_output_embeddings()(self.model.model.norm(hidden))

    @property
    def n_params(self) -> int:
        """The model's parameter count (a native model's packed matmul weights are not nn.Parameters,
        and a llama.cpp model holds none: both report their own)."""
        return getattr(self.model, "n_params", None) or sum(p.numel() for p in self.model.parameters())

    def __repr__(self) -> str:
        n = self.n_params
        return (f"LM({self.name!r}, {self.config.model_type}, {n / 1e6:.1f}M params, {self.dtype}, "
                f"{self.device}, backend={self.backend!r})")
