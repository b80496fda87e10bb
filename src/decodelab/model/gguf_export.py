"""Hugging Face Llama-family directory → GGUF file for llama.cpp (f32, bf16, f16 or q8_0), cached on disk.

Written with the `gguf` package directly rather than llama.cpp's `convert_hf_to_gguf.py`: decodelab feeds
llama.cpp token ids, never text, so the GGUF's tokenizer only has to load (a byte-level-BPE vocabulary of
the right size: the model's own token strings where it has them), and the tensors follow the layout
`convert_hf_to_gguf.py` writes for the same architectures:

- llama / mistral → llama.cpp's `llama` architecture, whose RoPE rotates adjacent pairs, so q and k rows
  are permuted from Hugging Face's rotate-half order (`LlamaModel.permute` in `convert_hf_to_gguf.py`);
- qwen2 (QKV bias) / qwen3 (per-head q/k RMSNorm) → `qwen2` / `qwen3`, rotate-half RoPE, no permutation;
- llama3 RoPE scaling → a `rope_freqs` tensor of per-frequency factors; linear → `rope.scaling.*` keys;
- tied embeddings → no `output.weight` (llama.cpp then reads `token_embd`).

Norm weights and biases stay float32; q8_0 keeps a matrix whose rows are not a multiple of 32 in f32.
`layers=ℓ` writes only the first ℓ decoder layers (+ final norm + head): an exact early exit of the
model, the draft of self-speculative decoding (LayerSkip, arXiv:2404.16710) on the llamacpp backend.
Files are cached under `cache_dir()` keyed by the source files (path, size, mtime), dtype and ℓ; a file
whose source directory is gone is deleted at the next conversion.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from ..errors import ModelError

DTYPES = ("f32", "bf16", "f16", "q8_0")
FORMAT_VERSION = 1  # bump when the written layout changes: old cached files are then ignored
_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
_ROPE = ("default", "linear", "llama3")


def cache_dir() -> Path:
    """Where converted files live: $XDG_CACHE_HOME/decodelab/gguf (default ~/.cache/decodelab/gguf)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "decodelab" / "gguf"


def unsupported(config) -> str | None:
    """Why this config cannot be written as GGUF here, or None."""
    from .native import unsupported as native_unsupported

    reason = native_unsupported(config)
    if reason is not None:
        return reason
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    return None if rope in _ROPE else f"RoPE type {rope!r} (the llamacpp backend writes {', '.join(_ROPE)})"


def gguf_path(path: Path, dtype: str, layers: int | None = None) -> Path:
    """The cached GGUF for the model directory `path` (converted on first use)."""
    if dtype not in DTYPES:
        raise ModelError(f"unknown llamacpp dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    out = cache_dir() / f"{path.name}-{_key(path, dtype, layers)}-{dtype}.gguf"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        _prune(out.parent)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        try:
            write_gguf(path, tmp, dtype, layers)
            tmp.replace(out)  # atomic: a concurrent reader never sees half a file
            out.with_suffix(".source").write_text(str(path.resolve()))
        finally:
            tmp.unlink(missing_ok=True)
    return out


def _prune(folder: Path) -> None:
    """Drop converted files whose source directory is gone (e.g. a test's temporary model)."""
    for source in folder.glob("*.source"):
        if not Path(source.read_text().strip()).exists():
            source.with_suffix(".gguf").unlink(missing_ok=True)
            source.unlink(missing_ok=True)


def _key(path: Path, dtype: str, layers: int | None) -> str:
    files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".safetensors"))
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    raw = json.dumps([str(path.resolve()), stamp, dtype, layers, FORMAT_VERSION])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def write_gguf(path: Path, out: Path, dtype: str, layers: int | None = None) -> None:
    """Convert the HF directory `path` to a GGUF file `out`."""
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    from .native import read_weights

    config = AutoConfig.from_pretrained(path)
    reason = unsupported(config)
    if reason is not None:
        raise ModelError(f"{path}: the llamacpp backend cannot run {reason}")
    total = config.num_hidden_layers
    layers = total if layers is None else layers
    if not 1 <= layers <= total:
        raise ValueError(f"exit layer must be in 1..{total}, got {layers}")
    arch = _ARCH[config.model_type]
    writer = gguf.GGUFWriter(str(out), arch)
    _write_hparams(writer, config, arch, layers, dtype)
    _write_vocab(writer, AutoTokenizer.from_pretrained(path), config)
    weights = read_weights(path)
    for name, tensor in _tensors(weights, config, arch, layers):
        _add(writer, name, tensor, dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _write_hparams(writer, config, arch: str, layers: int, dtype: str) -> None:
    import gguf

    writer.add_name(getattr(config, "_name_or_path", "") or "decodelab")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_key_length(_head_dim(config))
    writer.add_value_length(_head_dim(config))
    writer.add_rope_dimension_count(_head_dim(config))
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_vocab_size(config.vocab_size)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                 "f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _write_vocab(writer, tokenizer, config) -> None:
    """A byte-level BPE vocabulary of config.vocab_size entries (only its size matters: ids are fed)."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    tokens, types = [], []
    for i in range(config.vocab_size):
        token = by_id.get(i)
        tokens.append(token if token is not None else f"[PAD{i}]")
        control = token is None or i in special
        types.append(gguf.TokenType.CONTROL if control else gguf.TokenType.NORMAL)
    if len(set(tokens)) != len(tokens):  # duplicates would confuse llama.cpp's token → id map
        seen: set[str] = set()
        tokens = [t if not (t in seen or seen.add(t)) else f"[DUP{i}]" for i, t in enumerate(tokens)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(tokenizer) or [f"{tokens[-1]} {tokens[-1]}"])
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                     ("pad_token_id", writer.add_pad_token_id)):
        value = getattr(config, key, None)
        value = value[0] if isinstance(value, (list, tuple)) and value else value
        if isinstance(value, int) and 0 <= value < config.vocab_size:
            add(value)
    writer.add_add_bos_token(False)


def _merges(tokenizer) -> list[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        return []
    model = json.loads(backend.to_str()).get("model", {})
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Rotate-half row order → adjacent pairs, per head (convert_hf_to_gguf.py's LlamaModel.permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(weights: dict, config, arch: str, layers: int):
    """(gguf name, float32 array) for every tensor the architecture reads."""
    get = lambda name: weights[name].float().numpy()  # noqa: E731
    yield "token_embd.weight", get("model.embed_tokens.weight")
    yield "output_norm.weight", get("model.norm.weight")
    if "lm_head.weight" in weights and not getattr(config, "tie_word_embeddings", False):
        yield "output.weight", get("lm_head.weight")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type") == "llama3":
        yield "rope_freqs.weight", _llama3_factors(config, rope)
    names = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
             "self_attn.o_proj.weight": "attn_output.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
             "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
             "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight"}
    heads = {"q": config.num_attention_heads, "k": config.num_key_value_heads}
    for i in range(layers):
        prefix = f"model.layers.{i}."
        for hf, ours in names.items():
            if prefix + hf in weights:
                yield f"blk.{i}.{ours}", get(prefix + hf)
        for p in "qkv":
            for kind in ("weight", "bias"):
                key = f"{prefix}self_attn.{p}_proj.{kind}"
                if key not in weights:
                    continue
                w = get(key)
                if arch == "llama" and p in heads:
                    w = _permute(w, heads[p])
                yield f"blk.{i}.attn_{p}.{kind}", w


def _llama3_factors(config, rope: dict) -> np.ndarray:
    """Per-frequency RoPE factors of llama3 scaling (as convert_hf_to_gguf.py computes them)."""
    dim, base = _head_dim(config), float(rope.get("rope_theta", 10000.0))
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    out = []
    for freq in 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim):
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _add(writer, name: str, w: np.ndarray, dtype: str) -> None:
    import gguf

    w = np.ascontiguousarray(w, dtype=np.float32)
    kind = gguf.GGMLQuantizationType.F32
    if w.ndim == 2 and dtype == "bf16":
        kind = gguf.GGMLQuantizationType.BF16
    elif w.ndim == 2 and dtype == "q8_0" and w.shape[1] % 32 == 0:
        kind = gguf.GGMLQuantizationType.Q8_0
    if w.ndim == 2 and dtype == "f16":
        writer.add_tensor(name, w.astype(np.float16))
    elif kind == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, w)
    else:
        writer.add_tensor(name, gguf.quants.quantize(w, kind), raw_dtype=kind)
