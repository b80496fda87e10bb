"""decodelab's masked-diffusion architecture: a Llama-style transformer with bidirectional attention.

A masked diffusion LM ("Large Language Diffusion Models", LLaDA, arXiv:2502.09992; "Simple and
Effective Masked Diffusion Language Models", MDLM, arXiv:2406.07524) is a Transformer without the
causal mask that returns logits at every position; generation unmasks `<|mask|>` positions.

The blocks are Llama's (RMSNorm, RoPE, grouped-query attention, SwiGLU) written out here in plain
torch, with Llama's parameter names, so an AR Llama's state dict initialises it (AR-to-diffusion
adaptation, as in Dream 7B, arXiv:2508.15487). Saved as a standard Hugging Face directory:
`config.json` has `model_type: "decodelab_diffusion"`, registered with transformers' Auto classes
when `decodelab.diffusion` is imported (`AutoModelForMaskedLM.from_pretrained(path)` then works).
`logit_shift=True` gives Dream-style logits (position i predicts token i + 1's slot, shifted back).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

MODEL_TYPE = "decodelab_diffusion"


class DiffusionConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, vocab_size=256, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=None, max_position_embeddings=128,
                 rms_norm_eps=1e-6, rope_theta=10000.0, mask_token_id=None, logit_shift=False,
                 tie_word_embeddings=True, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.mask_token_id = mask_token_id
        self.logit_shift = logit_shift
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


def rope(positions: torch.Tensor, head_dim: int, theta: float, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, T, head_dim] for integer positions [B, T] (Llama's half-rotation layout)."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    freqs = positions.float()[..., None] * inv  # [B, T, head_dim/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class Attention(nn.Module):
    def __init__(self, c: DiffusionConfig):
        super().__init__()
        self.heads, self.kv_heads = c.num_attention_heads, c.num_key_value_heads
        self.head_dim = c.hidden_size // c.num_attention_heads
        self.q_proj = nn.Linear(c.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, c.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, kv=None):  # x [B, T, D]; mask [B, 1, 1, S] bool (True = attend)
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if kv is not None:  # a cache's merge: the fed keys/values [B, H_kv, T, hd] → all S keys/values
            k, v = kv(k, v)
        rep = self.heads // self.kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, c: DiffusionConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, c: DiffusionConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin, mask, kv=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, kv)
        return x + self.mlp(self.post_attention_layernorm(x))


class DiffusionBackbone(nn.Module):
    def __init__(self, c: DiffusionConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class DiffusionForMaskedLM(PreTrainedModel):
    """Bidirectional Llama-style masked-diffusion LM: logits [B, T, V] at every position."""

    config_class = DiffusionConfig
    base_model_prefix = "model"
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: DiffusionConfig):
        super().__init__(config)
        self.model = DiffusionBackbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, kv_cache=None, **_) -> MaskedLMOutput:
        """input_ids [B, T]; attention_mask [B, S] (1 = real token, 0 = padding) → logits [B, T, V].

        Without `kv_cache`, S = T. With it (diffusion/cache.py), input_ids are a slice of a longer
        sequence of S positions: `position_ids` [B, T] are required, the attention mask covers all S
        keys, and `kv_cache.layer(i)` merges each layer's fed keys/values into the S cached ones.
        """
        b, t = input_ids.shape
        if position_ids is None:
            position_ids = _positions(attention_mask, b, t, input_ids.device)
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        x = self.model.embed_tokens(input_ids)
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        cos, sin = rope(position_ids, head_dim, self.config.rope_theta, x.dtype)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, mask, None if kv_cache is None else kv_cache.layer(i))
        logits = self.lm_head(self.model.norm(x))
        if self.config.logit_shift:  # Dream: the logits for position i come from position i - 1
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return MaskedLMOutput(logits=logits)


def _positions(attention_mask, b: int, t: int, device) -> torch.Tensor:
    """[B, T] positions counted from each row's first real token (left padding gets 0)."""
    if attention_mask is None:
        return torch.arange(t, device=device).expand(b, t)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


AutoConfig.register(MODEL_TYPE, DiffusionConfig, exist_ok=True)
AutoModelForMaskedLM.register(DiffusionConfig, DiffusionForMaskedLM, exist_ok=True)
