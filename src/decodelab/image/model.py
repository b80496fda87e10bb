"""The image-token model kind: a class-conditional autoregressive Llama over a grid of gray tokens.

Sequence layout (raster order, N = H·W tokens): `[class, x_0, x_1, …, x_{N-1}]`, Llama position ids
0…N. The output at slot p (p = 0 is the class token) predicts x_p, so "the logits of x_p" always
come from slot p whatever order the tokens are decoded in. Vocabulary: gray levels 0…K-1, the ten
class tokens, a null class (label dropout 0.1 in training ⇒ classifier-free guidance), and a
`<mask>` token (LPD's position queries).

Two ways to run a pass. `raster_probs` recomputes the whole (≤ 257-token) sequence under an
explicit boolean attention mask (the reference path, and what MuLo-SD uses). With
`kv_cache=True` the methods that support it (raster, SJD, ZipAR, NAR, LPD) feed only new tokens
through a slot-indexed KV cache (cache.py) under the same visibility rules. One call of either is
one forward pass (NFE) whatever the batch; classifier-free guidance doubles the batch inside that
pass, as in LlamaGen.

The directory is a standard Hugging Face Llama directory (config.json, model.safetensors,
tokenizer.json); `config.json` carries `decodelab_kind = "image"` and an `image` block
(height, width, levels, variant).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelError
from .data import LEVELS, NUM_CLASSES

NEG = torch.finfo(torch.float32).min


@dataclass(frozen=True)
class ImageSpec:
    height: int
    width: int
    levels: int = LEVELS
    variant: str = "raster"  # raster | lpd | nar

    @property
    def n(self) -> int:
        return self.height * self.width

    def label_id(self, label: int) -> int:
        return self.levels + label

    @property
    def null_id(self) -> int:
        return self.levels + NUM_CLASSES

    @property
    def mask_id(self) -> int:
        return self.levels + NUM_CLASSES + 1

    @property
    def vertical_offset(self) -> int:
        """NAR only: output rows `v0…v{K-1}` after the input vocabulary are its vertical head."""
        return self.levels + NUM_CLASSES + 2

    @property
    def vocab_size(self) -> int:
        return self.vertical_offset + (self.levels if self.variant == "nar" else 0)


def image_spec(lm) -> ImageSpec:
    """The grid an image LM was trained on; a clear ModelError for any other model."""
    block = getattr(lm.config, "image", None)
    if getattr(lm.config, "decodelab_kind", None) != "image" or not isinstance(block, dict):
        raise ModelError(f"{lm.name}: not an image-token model (try builtin:digits or builtin:digits16)")
    return ImageSpec(int(block["height"]), int(block["width"]), int(block["levels"]), block.get("variant", "raster"))


def llama_config(spec: ImageSpec, hidden: int = 96, layers: int = 3, heads: int = 3):
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=spec.vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=spec.n + 1, tie_word_embeddings=False,
                         bos_token_id=spec.null_id, eos_token_id=spec.null_id, pad_token_id=spec.null_id)
    config.decodelab_kind = "image"
    config.image = {"height": spec.height, "width": spec.width, "levels": spec.levels, "variant": spec.variant}
    return config


def save_tokenizer(spec: ImageSpec, out: Path) -> None:
    """A word-level tokenizer naming every token (`g0`…, `<c0>`…, `<null>`, `<mask>`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = [f"g{t}" for t in range(spec.levels)] + [f"<c{c}>" for c in range(NUM_CLASSES)] + ["<null>", "<mask>"]
    names += [f"<v{t}>" for t in range(spec.vocab_size - len(names))]
    tok = Tokenizer(models.WordLevel({name: i for i, name in enumerate(names)}, unk_token="<null>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<null>", pad_token="<null>",
                                   eos_token="<null>", mask_token="<mask>")
    fast.save_pretrained(out)


def save(model, spec: ImageSpec, out: Path, summary: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(spec, out)
    (out / "training_summary.json").write_text(json.dumps(summary, indent=1) + "\n")


def slot_mask(known: torch.Tensor) -> torch.Tensor:
    """known [B, T] bool (slot k holds a real input) → attend [B, T, T]: q sees k iff k ≤ q and
    (k is known or k == q). Raster-causal attention over the known slots only (ZipAR's caveat:
    unknown slots are masked explicitly)."""
    t = known.shape[1]
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=known.device))
    eye = torch.eye(t, dtype=torch.bool, device=known.device)
    return causal & (known[:, None, :] | eye)


def run_model(model, ids: torch.Tensor, positions: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
    """The Llama forward under an explicit mask (float additive, works for sdpa and eager)."""
    mask = torch.zeros(attend.shape, dtype=torch.float32, device=ids.device).masked_fill(~attend, NEG)[:, None]
    return model(input_ids=ids, position_ids=positions, attention_mask=mask).logits


@dataclass
class Processing:
    """Classifier-free guidance, temperature and top-k, applied in that order (LlamaGen)."""

    cfg_scale: float = 1.0
    temperature: float = 1.0
    top_k: int = 0

    def probs(self, cond: torch.Tensor, uncond: torch.Tensor | None,
              scale: torch.Tensor | None = None) -> torch.Tensor:
        """cond/uncond logits [..., K] → probabilities [..., K] (one-hot argmax at temperature 0).
        `scale` [..., 1] replaces cfg_scale per position (LPD's linear guidance schedule)."""
        scale = self.cfg_scale if scale is None else scale
        logits = cond if uncond is None else uncond + scale * (cond - uncond)
        if self.temperature == 0:
            return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
        logits = logits / self.temperature
        if 0 < self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.softmax(logits, dim=-1)


class ImageModel:
    """An image LM plus processing; counts its forward passes."""

    def __init__(self, lm, processing: Processing | None = None, kv_cache: bool = False):
        self.lm = lm
        self.spec = image_spec(lm)
        self.processing = processing or Processing()
        self.forward_passes = 0
        self.kv_cache = kv_cache
        self._cache = None

    def cache(self, batch: int):
        """The slot cache of this decoding run (one per batch; created on first use)."""
        if self._cache is None:
            from .cache import SlotCache

            slots = {"raster": self.spec.n, "nar": self.spec.n + 1, "lpd": 2 * self.spec.n + 1}[self.spec.variant]
            self._cache = SlotCache(self.lm.model, batch * (2 if self.guided else 1), slots)
        return self._cache

    def cached_forward(self, labels: torch.Tensor, ids: torch.Tensor, slots: torch.Tensor, visible: torch.Tensor,
                       attend: torch.Tensor | None = None,
                       positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed ids at `slots` [B, n] (-1 = padding; position ids default to the slots) through the
        slot cache → (cond, uncond-or-None) logits [B, n, V]. Slot 0 holds the class token (the null
        class in the guidance rows)."""
        self.forward_passes += 1
        cache = self.cache(len(labels))
        cond = torch.where(slots == 0, (labels + self.spec.levels)[:, None], ids)
        if not self.guided:
            return cache.forward(self.lm.model, cond, slots, visible, attend, positions).float(), None
        null = torch.where(slots == 0, self.spec.null_id, ids)
        twice = [None if t is None else torch.cat([t, t]) for t in (slots, visible, attend, positions)]
        both = cache.forward(self.lm.model, torch.cat([cond, null]), *twice).float()
        cond, uncond = both.chunk(2)
        return cond, uncond

    def cached_probs(self, labels: torch.Tensor, ids: torch.Tensor, slots: torch.Tensor,
                     visible: torch.Tensor) -> torch.Tensor:
        """Gray-level distributions [B, n, K] at the fed slots (raster layout: slot p predicts x_p)."""
        return self.gray_probs(*self.cached_forward(labels, ids, slots, visible))

    def gray_probs(self, cond: torch.Tensor, uncond: torch.Tensor | None,
                   scale: torch.Tensor | None = None) -> torch.Tensor:
        """(cond, uncond-or-None) logits [..., V] → gray-level distributions [..., K] after processing
        (`scale` [...]: a per-position guidance scale instead of cfg_scale)."""
        k = self.spec.levels
        return self.processing.probs(cond[..., :k], None if uncond is None else uncond[..., :k],
                                     None if scale is None else scale[..., None])

    @property
    def guided(self) -> bool:
        return self.processing.cfg_scale != 1.0

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, positions: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """ids, positions [B, T]; attend [B, T, T] bool → logits over the whole vocabulary [B, T, V].
        One call = one NFE."""
        self.forward_passes += 1
        return run_model(self.lm.model, ids, positions, attend).float()

    def guided_forward(self, labels: torch.Tensor, ids: torch.Tensor, positions: torch.Tensor,
                       attend: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Slot 0 of `ids` becomes the class token → (cond, uncond-or-None) logits [B, T, V];
        the null-class row rides in the same forward pass when guidance is on."""
        ids = ids.clone()
        ids[:, 0] = labels + self.spec.levels
        if not self.guided:
            return self.forward(ids, positions, attend), None
        null = ids.clone()
        null[:, 0] = self.spec.null_id
        both = self.forward(torch.cat([ids, null]), torch.cat([positions, positions]), torch.cat([attend, attend]))
        cond, uncond = both.chunk(2)
        return cond, uncond

    def probs(self, labels: torch.Tensor, ids: torch.Tensor, positions: torch.Tensor,
              attend: torch.Tensor) -> torch.Tensor:
        """Gray-level distributions [B, T, K] after guidance, temperature and top-k."""
        return self.gray_probs(*self.guided_forward(labels, ids, positions, attend))

    def raster_probs(self, labels: torch.Tensor, tokens: torch.Tensor, known: torch.Tensor,
                     upto: int | None = None) -> torch.Tensor:
        """tokens, known [B, N] (raster order) → p [B, upto, K]: p[:, i] is x_i's distribution given
        the known tokens before i. Unknown tokens are invisible to everyone but their own slot
        (which reads the value in `tokens` as a placeholder input). Attention is causal, so only
        the first `upto` slots (default N) are computed."""
        b, n = tokens.shape
        upto = n if upto is None else min(upto, n)
        ids = torch.cat([tokens.new_zeros(b, 1), tokens[:, : upto - 1].clamp(min=0)], dim=1)
        slot_known = torch.cat([known.new_ones(b, 1), known[:, : upto - 1]], dim=1)
        positions = torch.arange(upto, device=tokens.device).expand(b, upto)
        return self.probs(labels, ids, positions, slot_mask(slot_known))
