"""decodelab's own forward for the Llama family: one compact model file, a preallocated KV cache.

In the spirit of gpt-fast's `model.py` (pytorch-labs/gpt-fast): the Hugging Face safetensors and
`config.json` are read directly; q/k/v and gate/up projections are fused into one matmul each (a decode
step is a handful of large GEMVs, not 57 small ones); keys and values are written by column into a cache
preallocated per session, so rollback is moving a length and accepting a tree path copies only the
accepted columns. Attention is `scaled_dot_product_attention` with grouped-query heads and a boolean mask
built from precomputed tables (causal chain) or the draft tree's ancestor matrix, turned into an additive
one (0 / -inf) once per forward, not once per layer (`additive`).

Supported: Llama (GQA, RoPE incl. llama3 / linear / yarn scaling), Mistral (no sliding window in use),
Qwen2 (QKV bias), Qwen3 (per-head q/k RMSNorm), tied or untied embeddings. The rotary frequencies come
from transformers' own `LlamaRotaryEmbedding` for the config, so every static RoPE variant it knows is
computed by the library that defines it. Everything else runs through the transformers adapter.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .session import Session, superpose

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
_STATIC_ROPE = ("default", "llama3", "linear", "yarn")


def unsupported(config) -> str | None:
    """Why the native backend cannot run this config, or None when it can."""
    kind = getattr(config, "model_type", "?")
    if getattr(config, "auto_map", None):
        return "a model with its own remote code (auto_map)"
    if kind not in ARCHITECTURES:
        return f"architecture {kind!r} (native supports {', '.join(ARCHITECTURES)})"
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope not in _STATIC_ROPE:
        return f"RoPE type {rope!r}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    window = getattr(config, "sliding_window", None)
    uses_window = kind == "mistral" or getattr(config, "use_sliding_window", False)
    if uses_window and window and window < config.max_position_embeddings:
        return f"sliding-window attention ({window} < context {config.max_position_embeddings})"
    return None


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in float32 like transformers' LlamaRMSNorm, weight applied in the input dtype
    (torch's fused kernel: in float32 the same values as LlamaRMSNorm's op-by-op formula)."""
    if x.dtype == torch.float32:
        return torch.rms_norm(x, weight.shape, weight, eps)
    return weight * torch.rms_norm(x.float(), weight.shape, None, eps).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """RoPE in the rotate-half layout: x [..., heads, D], cos/signed_sin [..., 1, D].

    transformers' x·cos + rotate_half(x)·sin with rotate_half(x) = (−x₂, x₁): the sign sits in the
    table (`signed_sin` = (−sin₁, sin₂)), so the half swap is one roll and no negation (same values)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


class Block(nn.Module):
    """One decoder layer: pre-norm attention (fused QKV, GQA, RoPE) + pre-norm SwiGLU MLP."""

    def __init__(self, config, weights: dict[str, torch.Tensor], prefix: str):
        super().__init__()
        w = lambda name: weights.get(prefix + name)  # noqa: E731
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.in_norm = _param(w("input_layernorm.weight"))
        self.post_norm = _param(w("post_attention_layernorm.weight"))
        self.wqkv = _param(torch.cat([w(f"self_attn.{p}_proj.weight") for p in "qkv"]))
        biases = [w(f"self_attn.{p}_proj.bias") for p in "qkv"]
        self.bqkv = _param(torch.cat(biases)) if all(b is not None for b in biases) else None
        self.wo, self.bo = _param(w("self_attn.o_proj.weight")), _param(w("self_attn.o_proj.bias"))
        self.q_norm, self.k_norm = _param(w("self_attn.q_norm.weight")), _param(w("self_attn.k_norm.weight"))
        self.w_gate_up = _param(torch.cat([w("mlp.gate_proj.weight"), w("mlp.up_proj.weight")]))
        self.w_down = _param(w("mlp.down_proj.weight"))

    def forward(self, x, cos, sin, k_cache, v_cache, start: int, mask):
        """x [B, n, H]; k/v_cache [B, kv_heads, T, D] (this layer's); writes columns start..start+n."""
        B, n, _ = x.shape
        qk, v = self._qkv(_rms_norm(x, self.in_norm, self.eps), cos, sin)  # [B, n, heads + kv, D], [B, n, kv, D]
        q, k = qk.transpose(1, 2).split([self.heads, self.kv_heads], dim=1)
        attn = self._attend(q, k, v.transpose(1, 2), k_cache, v_cache, start, mask)
        return self._mlp(x + linear(attn.transpose(1, 2).reshape(B, n, -1), self.wo, self.bo))

    def forward_packed(self, x, cos, sin, k_cache, v_cache, start: int, mask, rows: "Rows"):
        """The same layer over packed tokens x [T, H] (`Rows`: where they sit in the [B, n] batch).

        Every matmul runs over the T real tokens only; queries, keys and values are scattered into the
        padded [B, n] layout just for the cache write and attention (pad slots are zero and never read)."""
        qkv = torch.cat(self._qkv(_rms_norm(x, self.in_norm, self.eps), cos, sin), dim=1)  # [T, heads + 2·kv, D]
        full = qkv.new_zeros(rows.B * rows.n, *qkv.shape[1:]).index_copy_(0, rows.keep, qkv)
        q, k, v = full.view(rows.B, rows.n, -1, self.head_dim).transpose(1, 2).split(
            [self.heads, self.kv_heads, self.kv_heads], dim=1)
        k_cache[:, :, start : start + rows.n] = k
        v_cache[:, :, start : start + rows.n] = v
        parts = []
        for (lo, hi, width), local in zip(rows.segments, rows.local_keep):  # contiguous rows, own width
            seg_mask = None if mask is None else mask[lo:hi] if mask.shape[0] > 1 else mask
            end = start + width  # a real token never sees this step's columns past its row's width
            attn = self._attention(q[lo:hi, :, :width], k_cache[lo:hi, :, :end], v_cache[lo:hi, :, :end],
                                   None if seg_mask is None else seg_mask[:, :, :width, :end])
            attn = attn.transpose(1, 2).reshape((hi - lo) * width, -1)
            parts.append(attn if local is None else attn.index_select(0, local))
        attn = parts[0] if len(parts) == 1 else torch.cat(parts)
        return self._mlp(x + linear(attn, self.wo, self.bo))

    def _attend(self, q, k, v, k_cache, v_cache, start: int, mask):
        end = start + q.shape[2]
        k_cache[:, :, start:end] = k
        v_cache[:, :, start:end] = v
        return self._attention(q, k_cache[:, :, :end], v_cache[:, :, :end], mask)

    def _attention(self, q, k, v, mask):
        B, _, n, _ = q.shape
        if B > 1 and 1 < n <= GROUPED_MAX_QUERIES and q.device.type == "cpu":
            return _grouped_attention(q, k, v, mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.heads != self.kv_heads)

    def _mlp(self, x):
        gate, up = linear(_rms_norm(x, self.post_norm, self.eps), self.w_gate_up).chunk(2, dim=-1)
        return x + linear(F.silu(gate) * up, self.w_down)

    def _qkv(self, h, cos, sin):
        """Fused projection and RoPE of tokens h [..., H] (cos/sin [..., 1, D]) → q and k rotated together
        [..., heads + kv_heads, D], and v [..., kv_heads, D] (Qwen3: q/k RMSNorm before RoPE)."""
        qkv = linear(h, self.wqkv, self.bqkv).view(*h.shape[:-1], -1, self.head_dim)
        hk = self.heads + self.kv_heads
        qk = qkv[..., :hk, :]
        if self.q_norm is not None:
            qk = torch.cat([_rms_norm(qk[..., : self.heads, :], self.q_norm, self.eps),
                            _rms_norm(qk[..., self.heads :, :], self.k_norm, self.eps)], dim=-2)
        return _rotate(qk, cos, sin), qkv[..., hk:, :]


GROUPED_MAX_QUERIES = 64  # verify widths up to this use _grouped_attention on a CPU batch


def additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean attention mask (True = attend) as the additive one SDPA would make of it (0 / -inf in
    `dtype`); None and additive masks pass through. Done once per forward: SDPA converts a boolean mask
    on every call, i.e. in every layer, and on a CPU a masked fill over the [B, heads, n, T] scores of a
    batched verify step costs several times an add of the same size. Every query attends at least to
    itself (Session.allowed), so no row is all -inf and the values equal the boolean mask's."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.where(mask, 0.0, float("-inf")).to(dtype)


def _grouped_attention(q, k, v, mask):
    """Attention of a few new tokens per row with each KV head's query heads folded into one matmul:
    q [B, heads, n, D] → [B, kv_heads, g·n, D] against k, v [B, kv_heads, T, D]; mask [B or 1, 1, n, T]
    additive (0 / -inf, `additive`) or None. The same values as SDPA's with `enable_gqa`. On a CPU, torch's fused
    attention splits a batch of short queries into many tiny (row, head) blocks: at 8 rows × 2–11 new
    tokens each (a batched verify step) these 3–4 ops take half to two thirds of its time, so every row's drafted
    columns cost less (`python -m decodelab.bench.verify_cost`)."""
    B, H, n, D = q.shape
    kv = k.shape[1]
    scores = torch.matmul(q.reshape(B, kv, H // kv * n, D), k.transpose(-1, -2)).mul_(D ** -0.5)
    if mask is not None:
        scores = scores.view(B, kv, H // kv, n, -1).add_(mask[:, None]).view(B, kv, -1, k.shape[2])
    return torch.matmul(torch.softmax(scores, dim=-1), v).view(B, H, n, D)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weightᵀ + bias, through oneDNN when the weight was packed for it (`NativeModel.pack`)."""
    if weight.is_mkldnn:
        return _LINEAR_POINTWISE(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


_LINEAR_WEIGHTS = ("wqkv", "wo", "w_gate_up", "w_down")
PACK_ROWS = 8  # the rows oneDNN packs for: a decode step has 1 per row, a verify pass a few
PACK_MIN_ELEMENTS = 1 << 17  # smaller weights stay on F.linear (NativeModel.pack)


def _packed(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS)


def can_pack(dtype: torch.dtype, device) -> bool:
    """oneDNN-packed matmuls are used for float32 / bfloat16 on a CPU whose torch has oneDNN."""
    return (torch.device(device).type == "cpu" and dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available() and _LINEAR_POINTWISE is not None)


# the op's one overload, resolved once (calling the packet resolves it on every call: 33 times a step)
_LINEAR_POINTWISE = getattr(getattr(torch.ops.mkldnn, "_linear_pointwise", None), "default", None)


def _param(t: torch.Tensor | None) -> nn.Parameter | None:
    return None if t is None else nn.Parameter(t, requires_grad=False)


class NativeModel(nn.Module):
    """The Llama-family decoder; `forward` runs new tokens against a `KVCache` at column `start`."""

    def __init__(self, config, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.config = config
        self.embed = _param(weights["model.embed_tokens.weight"])
        self.layers = nn.ModuleList(Block(config, weights, f"model.layers.{i}.")
                                    for i in range(config.num_hidden_layers))
        self.norm = _param(weights["model.norm.weight"])
        head = weights.get("lm_head.weight")
        self.head = self.embed if head is None or getattr(config, "tie_word_embeddings", False) else _param(head)
        self.eps = config.rms_norm_eps
        self.generation_config = None
        self.n_params = sum(p.numel() for p in self.parameters())  # pack() turns most into plain tensors
        self._rope_tables(config)

    def _rope_tables(self, config) -> None:
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        rope = LlamaRotaryEmbedding(config)
        positions = torch.arange(config.max_position_embeddings, dtype=torch.float32)
        freqs = positions[:, None] * rope.inv_freq.float()[None]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos() * rope.attention_scaling, persistent=False)  # [T_max, D]
        sin = emb.sin() * rope.attention_scaling
        half = sin.shape[-1] // 2
        self.register_buffer("sin", torch.cat((-sin[:, :half], sin[:, half:]), dim=-1), persistent=False)  # signed

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def packed(self) -> bool:
        """Whether any matmul weight runs through oneDNN (`pack`)."""
        return self.head.is_mkldnn or any(getattr(b, n).is_mkldnn for b in self.layers for n in _LINEAR_WEIGHTS)

    @torch.inference_mode()
    def pack(self, names: "set[str] | None" = None) -> bool:
        """Repack matmul weights for oneDNN (in place; call after moving to the device).

        `names`: which of the layers' weights ("wqkv", "wo", "w_gate_up", "w_down") and "head" to pack;
        None packs every one of at least PACK_MIN_ELEMENTS elements (`choose_packing` measures instead).

        Why: on a CPU, torch's default float32 matmul (MKL's GEMM/GEMV) can be slow at the few rows a decode
        or verify step has — on an AMD EPYC (2 cores) the 33 weight matmuls of a `builtin:pyco` step took
        4.0 ms through `F.linear` and 1.5 ms through oneDNN with prepacked weights, and 5 rows (a verify
        pass) cost 1.07× what one does. It depends on the CPU: on an Intel Xeon (Sapphire Rapids, 2 cores)
        the one-row step was faster through `F.linear` (1.9 against 2.9 ms) and packed only tied at 5 rows
        (`python -m decodelab.bench.matmul`, docs/BACKENDS.md) — hence `load(pack="auto")`.
        Logits stay within float32 rounding of the unpacked model's (tests/model/test_native_pack.py).
        With `names=None`, small matrices (fewer than PACK_MIN_ELEMENTS) keep `F.linear`: there oneDNN's
        per-call cost is the larger one (on the AMD EPYC `builtin:pyco-draft`'s step ran 0.38 ms with its
        128-wide layers packed, 0.29 ms with only its 8,192 × 128 head packed). Embeddings stay dense for the lookup; a tied head gets its own packed copy. Returns whether it
        packed anything (False on a GPU, in float16, or where oneDNN cannot pack the dtype)."""
        if not can_pack(self.dtype, self.embed.device):
            return self.packed
        wanted = lambda name, w: (not w.is_mkldnn and  # noqa: E731
                                  (w.numel() >= PACK_MIN_ELEMENTS if names is None else name in names))
        try:
            for block in self.layers:
                for name in _LINEAR_WEIGHTS:
                    if wanted(name, getattr(block, name)):
                        packed = _packed(getattr(block, name))
                        delattr(block, name)
                        setattr(block, name, packed)
            head = _packed(self.head) if wanted("head", self.head) else None
        except RuntimeError:  # this CPU's oneDNN cannot pack the dtype: keep torch's matmul
            return self.packed
        if head is not None:
            del self.head  # a Parameter (the embedding's, when tied) cannot be replaced by a plain tensor
            self.head = head
        return self.packed

    def truncated(self, layers: int) -> "NativeModel":
        """The same model exiting after `layers` decoder layers (shares every tensor: an early exit)."""
        exit_model = NativeModel.__new__(NativeModel)
        nn.Module.__init__(exit_model)
        exit_model.config, exit_model.eps, exit_model.generation_config = self.config, self.eps, self.generation_config
        exit_model.embed, exit_model.norm, exit_model.head = self.embed, self.norm, self.head
        exit_model.layers = nn.ModuleList(self.layers[:layers])
        exit_model.register_buffer("cos", self.cos, persistent=False)
        exit_model.register_buffer("sin", self.sin, persistent=False)
        return exit_model

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin at `positions` ([B, n], or [T] packed) → [..., 1, D]: broadcast over heads."""
        return self.cos[positions].to(dtype).unsqueeze(-2), self.sin[positions].to(dtype).unsqueeze(-2)

    def run_layers(self, x: torch.Tensor, positions: torch.Tensor, cache: "KVCache", start: int,
                   mask: torch.Tensor | None, lo: int, hi: int, states: list | None = None) -> torch.Tensor:
        """Decoder layers lo..hi−1 over hidden states x [B, n, H] at cache columns start..start+n."""
        cos, sin = self._rope(positions, x.dtype)
        mask = additive(mask, x.dtype)
        layers = self.layers
        for i in range(lo, hi):  # Block.forward directly: no module hooks are used, Module.__call__ costs
            x = layers[i].forward(x, cos, sin, cache.k[i], cache.v[i], start, mask)
            if states is not None:
                states.append(x)
        return x

    def forward_packed(self, ids: torch.Tensor, positions: torch.Tensor, cache: "KVCache", start: int,
                       mask: torch.Tensor | None, rows: "Rows") -> torch.Tensor:
        """`forward` over only the real tokens of a ragged batch (varlen packing): ids, positions [B, n]
        where row b's first rows.lengths[b] tokens are real and the rest pads. Logits [B, n, V], zero at
        the pads. A verify step whose rows drafted different amounts pays for Σ lengths tokens in every
        matmul instead of B·n (BASS, arXiv:2404.15778, §3.2, packs its ragged batch the same way)."""
        keep = rows.keep
        x = F.embedding(ids.reshape(-1).index_select(0, keep), self.embed)  # [T, H]
        at = positions.reshape(-1).index_select(0, keep)
        cos, sin = self._rope(at, x.dtype)
        mask = additive(mask, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer.forward_packed(x, cos, sin, cache.k[i], cache.v[i], start, mask, rows)
        logits = self.logits(x)  # [T, V]
        out = logits.new_empty(rows.B * rows.n, logits.shape[-1]).index_copy_(0, keep, logits)
        return out.index_fill_(0, rows.pads, 0).view(rows.B, rows.n, -1)  # zeroing only the pads

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head: [..., H] → [..., V]."""
        return linear(_rms_norm(h, self.norm, self.eps), self.head)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, cache: "KVCache", start: int,
                mask: torch.Tensor | None, last_only: bool = False, hidden: bool = False,
                embeds: torch.Tensor | None = None):
        """ids, positions [B, n]; mask [B, 1, n, start + n] bool (True = attend) or None (attend to all).

        Returns logits [B, n, V] ([B, 1, V] when last_only) and, with hidden=True, the tuple of hidden
        states (embeddings, every layer's output, the last one normed) as transformers returns them.
        """
        x = F.embedding(ids, self.embed) if embeds is None else embeds  # embeds [B, n, H]: superposed input
        states = [x] if hidden else None
        x = self.run_layers(x, positions, cache, start, mask, 0, len(self.layers), states)
        if last_only:
            x = x[:, -1:]
        h = _rms_norm(x, self.norm, self.eps)
        logits = linear(h, self.head)
        if hidden:
            states[-1] = h
            return logits, tuple(states)
        return logits


class Rows:
    """Where a ragged batch's real tokens sit: row b's first lengths[b] of n; `keep` their flat indices,
    `pads` the others'.

    `segments`: the rows split into at most MAX_SEGMENTS contiguous runs (lo, hi, width) for attention,
    each padded only to its own widest row — chosen to minimise the query slots attention computes, an
    extra run counting as SEGMENT_COST slots (its few extra ops); `local_keep`: each run's real tokens in
    its [hi − lo, width] layout (None when all are real). The cache rows of a run are a view: no copy."""

    def __init__(self, lengths: list[int], n: int, device):
        self.B, self.n = len(lengths), n
        self.keep = torch.tensor([b * n + j for b, m in enumerate(lengths) for j in range(m)], device=device)
        self.pads = torch.tensor([b * n + j for b, m in enumerate(lengths) for j in range(m, n)], dtype=torch.long,
                                 device=device)
        self.segments = _segments(lengths)
        self.local_keep = [None if all(m == w for m in lengths[lo:hi]) else torch.tensor(
            [(b - lo) * w + j for b in range(lo, hi) for j in range(lengths[b])], device=device)
            for lo, hi, w in self.segments]

    @staticmethod
    def worth(lengths: list[int] | None, n: int) -> bool:
        """Pack when pads would be at least PACK_WASTE of the batch's B·n token slots."""
        return lengths is not None and len(lengths) > 1 and n > 1 and sum(lengths) <= (1 - PACK_WASTE) * len(lengths) * n


PACK_WASTE = 0.25  # below this share of pad slots, the scatter/gather of packing costs more than it saves
MAX_SEGMENTS, SEGMENT_COST = 3, 8  # attention runs of a packed batch; what one more run costs, in query slots
SEGMENT_MAX_ROWS = 32


def _segments(lengths: list[int]) -> list[tuple[int, int, int]]:
    """Contiguous runs (lo, hi, width) covering the rows, minimising Σ (SEGMENT_COST + rows · width)."""
    B = len(lengths)
    if B > SEGMENT_MAX_ROWS:  # the search is O(B²) in Python: one run
        return [(0, B, max(lengths))]
    best = {(0, 0): (0, [])}  # (runs used, rows covered) → (cost, runs)
    for k in range(1, MAX_SEGMENTS + 1):
        for hi in range(k, B + 1):
            width, options = 0, []
            for lo in range(hi - 1, k - 2, -1):  # the run lo..hi−1, its width kept as lo moves down
                width = max(width, lengths[lo])
                if (k - 1, lo) in best:
                    cost, runs = best[(k - 1, lo)]
                    options.append((cost + SEGMENT_COST + (hi - lo) * width, runs + [(lo, hi, width)]))
            best[(k, hi)] = min(options, key=lambda o: o[0])
    return min((best[(k, B)] for k in range(1, min(MAX_SEGMENTS, B) + 1)), key=lambda o: o[0])[1]


class KVCache:
    """Keys and values of every layer: k, v [L, B, kv_heads, capacity, D], grown by doubling.

    Every method runs in inference mode: the tensors are inference tensors, updated in place."""

    @torch.inference_mode()
    def __init__(self, model: NativeModel, batch_size: int, capacity: int = 256):
        block = model.layers[0]
        self.max_length = model.config.max_position_embeddings
        capacity = min(capacity, self.max_length)
        shape = (len(model.layers), batch_size, block.kv_heads, capacity, block.head_dim)
        self.k = torch.zeros(shape, dtype=model.dtype, device=model.embed.device)
        self.v = torch.zeros_like(self.k)

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    @torch.inference_mode()
    def reserve(self, length: int) -> None:
        """Make room for `length` columns (copies the cache once per doubling)."""
        if length <= self.capacity:
            return
        new = min(max(length, 2 * self.capacity), self.max_length)
        pad = (0, 0, 0, new - self.capacity)
        self.k, self.v = F.pad(self.k, pad), F.pad(self.v, pad)

    @torch.inference_mode()
    def move(self, src: torch.Tensor, dst_start: int) -> None:
        """Copy columns `src` (a [m] index) to dst_start..dst_start+m (the accepted tree path)."""
        end = dst_start + len(src)
        self.k[:, :, :, dst_start:end] = self.k.index_select(3, src)
        self.v[:, :, :, dst_start:end] = self.v.index_select(3, src)

    @torch.inference_mode()
    def gather_columns(self, index: torch.Tensor) -> None:
        """Row b's column j becomes its old column index[b, j] (index [B, W], W ≤ capacity)."""
        W = index.shape[1]
        rows = torch.arange(index.shape[0], device=index.device)[:, None]  # [B, 1]
        for t in (self.k, self.v):  # [L, B, H, T, D] → gather per row along T
            t[:, :, :, :W] = t[:, rows, :, index].permute(2, 0, 3, 1, 4)  # [B, W, L, H, D] → [L, B, H, W, D]

    @torch.inference_mode()
    def merge(self, other: "KVCache", length: int, shift: int, other_length: int, other_shift: int) -> None:
        """Rows of `other` after ours; columns 0..length of each side move right by its shift."""
        width = max(length + shift, other_length + other_shift)
        capacity = min(max(self.capacity, other.capacity, width), self.max_length)
        B, B2 = self.k.shape[1], other.k.shape[1]
        shape = (self.k.shape[0], B + B2, self.k.shape[2], capacity, self.k.shape[4])
        k, v = self.k.new_zeros(shape), self.v.new_zeros(shape)
        for new, old, o in ((k, self.k, other.k), (v, self.v, other.v)):
            new[:, :B, :, shift : shift + length] = old[:, :, :, :length]
            new[:, B:, :, other_shift : other_shift + other_length] = o[:, :, :, :other_length]
        self.k, self.v = k, v

    @torch.inference_mode()
    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep / repeat / reorder batch rows (beam search's fork and reorder)."""
        self.k, self.v = self.k.index_select(1, rows), self.v.index_select(1, rows)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a (possibly sharded) safetensors checkpoint in `path`."""
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{path}: the native backend reads safetensors weights only (none found)")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            weights.update(load_file(str(file)))
        except Exception as exc:  # noqa: BLE001 - a corrupt file is the user's, reported in one line
            raise ModelError(f"{file}: cannot read safetensors — {str(exc).splitlines()[0][:200]}") from None
    return {k.removeprefix("base_model."): v for k, v in weights.items()}


def build(config, path: Path, dtype: torch.dtype, device: str, pack: bool = True) -> NativeModel:
    """Load the checkpoint at `path` into a NativeModel; a missing tensor is a one-line ModelError."""
    weights = {k: v.to(dtype) for k, v in read_weights(path).items()}
    try:
        model = NativeModel(config, weights)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ModelError(f"{path}: weights do not match a {config.model_type} model — {exc}") from None
    _check_shapes(model, config, path)
    gen = path / "generation_config.json"
    if gen.exists():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_dict(json.loads(gen.read_text()))
    model = model.to(device).eval()
    if pack:
        model.pack()
    return model


def _check_shapes(model: NativeModel, config, path: Path) -> None:
    block = model.layers[0]
    expected = (block.heads + 2 * block.kv_heads) * block.head_dim
    if block.wqkv.shape != (expected, config.hidden_size):
        raise ModelError(f"{path}: attention weights {tuple(block.wqkv.shape)} do not match the config "
                         f"({expected}, {config.hidden_size})")


class NativeSession(Session):
    """The Session protocol over a NativeModel and a preallocated KVCache."""

    accepts_token_weights = True

    def __init__(self, lm, batch_size: int = 1, stats=None, role: str = "target"):
        super().__init__(lm, batch_size, stats, role)
        self.cache = KVCache(lm.model, batch_size)
        self._drafted = Drafted()

    def _run(self, ids, positions, parents, last_only, hidden):
        start, n = self.length, ids.shape[1]
        self.cache.reserve(start + n)
        mask = self._mask(start, n, parents)
        reuse = self._drafted.reusable(ids, parents, hidden)
        self._drafted = Drafted()
        if self._token_weights is not None:  # superposed input: Σ_v w_v·E[v]  [B, n, H]
            embeds = superpose(self._token_weights, lambda cols: F.embedding(cols, self.lm.model.embed))
            return self.lm.model(ids, positions, self.cache, start, mask, last_only=last_only, hidden=hidden,
                                 embeds=embeds)
        if reuse:
            return self._run_reusing(ids, positions, start, mask, last_only, *reuse)
        if not (last_only or hidden) and Rows.worth(self._lengths, n):
            return self.lm.model.forward_packed(ids, positions, self.cache, start, mask,
                                                Rows(self._lengths, n, self.lm.device))
        step = self.lm.model
        if n == 1 and mask is None and not hidden and self.lm.state.get("compiled") is not None:
            step = self.lm.state["compiled"]  # the one decode-step shape torch.compile specialises on
        return step(ids, positions, self.cache, start, mask, last_only=last_only, hidden=hidden)

    def _merge(self, other: "NativeSession", shift: int, other_shift: int) -> None:
        self.cache.merge(other.cache, self.length, shift, other.length, other_shift)
        self._drafted = Drafted()

    def _mask(self, start: int, n: int, parents: list[int] | None) -> torch.Tensor | None:
        """[B or 1, 1, n, start + n] bool, or None when every new token may see every column."""
        if parents is None and self.pad_mask is None:
            if n == 1:
                return None
            device = self.lm.device
            cols = torch.arange(start + n, device=device)
            return (cols[None, :] <= start + torch.arange(n, device=device)[:, None])[None, None]
        return self.allowed(n, parents)[:, None].to(self.lm.device)

    def _run_reusing(self, ids, positions, start, mask, last_only, layer: int, hidden: list[torch.Tensor]):
        """Verify over drafted columns: layers < ℓ already ran while drafting (their keys and values are
        in the cache, their outputs in `hidden`), so only the undrafted tail runs them; every token then
        runs layers ℓ..L in one pass (LayerSkip's shared cache, arXiv:2404.16710)."""
        model, k = self.lm.model, len(hidden)
        x = torch.cat(hidden, dim=1)  # [1, k, H]
        if ids.shape[1] > k:
            tail = F.embedding(ids[:, k:], model.embed)
            tail_mask = None if mask is None else mask[..., k:, : start + ids.shape[1]]
            tail = model.run_layers(tail, positions[:, k:], self.cache, start + k, tail_mask, 0, layer)
            x = torch.cat([x, tail], dim=1)
        x = model.run_layers(x, positions, self.cache, start, mask, layer, len(model.layers))
        return model.logits(x[:, -1:] if last_only else x)

    @torch.inference_mode()
    def exit_forward(self, token: int, layer: int) -> torch.Tensor:
        """Draft one token with the first `layer` layers into the columns after the cache (B = 1).

        Returns the early exit's logits [1, 1, V]. The keys and values of layers < ℓ stay in the cache
        for the verifying forward to reuse; `length` and `tokens` do not change until that forward."""
        if self.batch_size != 1 or self.pad_mask is not None:
            raise ValueError("shared early-exit drafting runs one unpadded row")
        model, col = self.lm.model, self.length + len(self._drafted.ids)
        if self._drafted.ids and self._drafted.layer != layer:
            self._drafted = Drafted()
            col = self.length
        if col + 1 > self.lm.max_length:
            raise ModelError(f"context too long: {col + 1} tokens > model maximum {self.lm.max_length}")
        self.cache.reserve(col + 1)
        t0 = time.perf_counter()
        ids = torch.tensor([[token]], device=self.lm.device)
        positions = torch.tensor([[col]], device=self.lm.device)
        h = model.run_layers(F.embedding(ids, model.embed), positions, self.cache, col, None, 0, layer)
        self._drafted.add(token, layer, h)
        logits = model.logits(h).float()
        if self.stats is not None:
            self.stats.count_forward("draft", time.perf_counter() - t0)
        return logits

    def _keep(self, columns: list[int]) -> None:
        self._drafted = Drafted()
        prefix = 0
        while prefix < len(columns) and columns[prefix] == prefix:
            prefix += 1
        if prefix < len(columns):  # the accepted path's columns move down behind the kept prefix
            self.cache.move(torch.tensor(columns[prefix:], device=self.lm.device), prefix)

    def _select_rows(self, rows: torch.Tensor) -> None:
        self._drafted = Drafted()
        self.cache.select_rows(rows)

    def _gather_columns(self, index: torch.Tensor) -> None:
        self._drafted = Drafted()
        self.cache.gather_columns(index)


class Drafted:
    """Tokens drafted by `exit_forward` past the cache's length: their ids, the exit layer ℓ, and their
    hidden states after layer ℓ ([1, 1, H] each)."""

    def __init__(self):
        self.ids: list[int] = []
        self.layer = 0
        self.hidden: list[torch.Tensor] = []

    def add(self, token: int, layer: int, h: torch.Tensor) -> None:
        self.ids.append(token)
        self.layer = layer
        self.hidden.append(h)

    def reusable(self, ids: torch.Tensor, parents, hidden: bool):
        """(ℓ, hidden states) for the drafted prefix of a chain forward over `ids`, or None."""
        if not self.ids or parents is not None or hidden or ids.shape[0] != 1:
            return None
        k = 0
        fed = ids[0].tolist()
        while k < min(len(fed), len(self.ids)) and fed[k] == self.ids[k]:
            k += 1
        return (self.layer, self.hidden[:k]) if k else None


def from_transformers(model, pack: bool = True) -> NativeModel:
    """A NativeModel over an already loaded transformers Llama-family model's weights (same values);
    `pack=False` keeps torch's own matmul (the weights stay shared with `model`)."""
    reason = unsupported(model.config)
    if reason is not None:
        raise ModelError(f"the native backend cannot run {reason}")
    native = NativeModel(model.config, dict(model.state_dict()))
    native.generation_config = getattr(model, "generation_config", None)
    native = native.to(next(model.parameters()).device).eval()
    if pack:
        native.pack()
    return native


def compile_decode_step(lm) -> None:
    """torch.compile the single-token decode step of a native LM (CUDA graphs on a GPU).

    Other shapes (prefill, drafts, trees) stay eager. Whether it pays is measured, not assumed:
    `decodelab decode-cost` times eager and compiled side by side (docs/BENCHMARKS.md), and
    `load(..., compile="auto")` keeps it only where it measured faster (`choose_compiled`)."""
    if lm.backend != "native":
        raise ModelError("compile=True needs the native backend")
    lm.state["compiled"] = _compiled(lm.model)


def _compiled(model: NativeModel):
    return torch.compile(model, dynamic=True, mode="reduce-overhead" if model.embed.device.type == "cuda" else None)


def choose_compiled(dense: NativeModel, pack: "set[str] | None" = None, steps: int = 32,
                    rounds: int = 5) -> tuple[NativeModel, object, dict]:
    """`compile="auto"`: the eager model (packed for oneDNN where that applies) and the compiled decode step
    timed against each other on this machine; returns (eager model, the compiled step or None, the record).
    `pack`: the weights the eager model packs (`NativeModel.pack`'s names; None: every large one).

    The compiled step runs `dense` (torch.compile cannot trace packed weights), so where packing applies and
    compiling wins both copies of the weights are kept: eager, packed, for every other shape; where nothing
    packs, both run the one model. The step is
    timed the way a decode runs (one token, a growing cache), in interleaved rounds after a warm-up that
    includes the compilation itself; the median of the rounds decides, so compiling never makes the decode
    step slower than eager measured."""
    eager = copy.deepcopy(dense)
    if not eager.pack(pack):  # nothing to pack (a GPU, float16, small weights): one copy serves both
        eager = dense
    compiled = _compiled(dense)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    with torch.inference_mode():
        cache = KVCache(eager, 1, 4 * steps)
        prompt = torch.zeros(1, steps, dtype=torch.long, device=eager.embed.device)
        eager(prompt, torch.arange(steps, device=prompt.device)[None], cache, 0, None, last_only=True)
        for r in range(rounds + 1):  # round 0 warms both up (and compiles)
            for name, step in (("eager", eager), ("compiled", compiled)):
                t0 = time.perf_counter()
                for i in range(steps, 2 * steps):
                    step(prompt[:, :1], torch.tensor([[i]], device=prompt.device), cache, i, None, last_only=True)
                _synchronize(prompt.device)
                if r:
                    times[name].append((time.perf_counter() - t0) / steps * 1e3)
    record = {k: round(statistics.median(v), 4) for k, v in times.items()}
    record["chosen"] = "compiled" if record["compiled"] < record["eager"] else "eager"
    return eager, compiled if record["chosen"] == "compiled" else None, record


PACK_TIMING_ROWS = (1, 5)  # a decode step's one token per row and a 4-draft verify pass's five
PACK_TIMING_LAYERS = 4  # weights cycled through per timing: out of L2 like a real step's, bounded memory


def choose_packing(model: NativeModel, reps: int = 9, calls: int = 8) -> tuple[set[str], dict]:
    """`pack="auto"`: for each matmul weight kind of the layers ("wqkv", "wo", "w_gate_up", "w_down") and
    the head, time `F.linear` on the dense weight against oneDNN on a packed copy, at 1 and 5 rows, on this
    machine and thread; returns (the kinds where packed was faster summed over both row counts, the record).

    Which is faster depends on the CPU, not only on the shapes (`NativeModel.pack`): packing is
    never assumed. Each timing cycles through the weights of up to PACK_TIMING_LAYERS layers (read from
    cache or memory as a decode step reads them, not from L1/L2 as one weight called in a loop would be)
    and packs only those copies, so the memory it needs is bounded; `calls` calls per sample, the median of
    `reps` samples, dense and packed interleaved. Nothing is timed where packing cannot apply."""
    record: dict = {"chosen": []}
    if model.packed or not can_pack(model.dtype, model.embed.device):
        return set(), record
    layers = model.layers[: PACK_TIMING_LAYERS]
    kinds = {name: [getattr(b, name) for b in layers] for name in _LINEAR_WEIGHTS}
    kinds["head"] = [model.head]
    chosen = set()
    with torch.inference_mode():
        for name, dense in kinds.items():
            try:
                packed = [_packed(w) for w in dense]
            except RuntimeError:  # oneDNN cannot pack this dtype here
                return set(), {"chosen": []}
            times: dict[str, list[float]] = {"dense": [], "packed": []}
            for rows in PACK_TIMING_ROWS:
                x = torch.randn(rows, dense[0].shape[1], dtype=model.dtype, device=model.embed.device)
                samples = {"dense": [], "packed": []}
                for r in range(reps + 1):  # sample 0 warms up
                    for route, weights in (("dense", dense), ("packed", packed)):
                        t0 = time.perf_counter()
                        for c in range(calls):
                            linear(x, weights[c % len(weights)])
                        if r:
                            samples[route].append((time.perf_counter() - t0) / calls * 1e6)
                for route, values in samples.items():
                    times[route].append(round(statistics.median(values), 2))
            record[name] = {"shape": list(dense[0].shape), "rows": list(PACK_TIMING_ROWS),
                            "dense_us": times["dense"], "packed_us": times["packed"]}
            if sum(times["packed"]) < sum(times["dense"]):
                chosen.add(name)
    record["chosen"] = sorted(chosen)
    return chosen, record


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
