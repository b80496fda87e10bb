"""A KV cache indexed by sequence slot, so image methods feed only new tokens each forward pass.

Without it every pass recomputes the whole (≤ 257-slot) sequence under an explicit mask
(model.py). The image methods decode out of raster order — ZipAR starts row i+1 before row i is
complete, a new row's first input slot holds a placeholder that is overwritten later, SJD drafts
are rewritten every pass, NAR and LPD feed a diagonal or a group — so the cache is *static and
indexed by slot*, as in LlamaGen's KV cache that ZipAR (arXiv 2412.04062) and NAR (arXiv
2503.10696) decode with: a fed token's keys and values are written at its slot, and a column may
attend to a slot only when that slot is `valid` (holds a real, visible input).

Why not the project's Session protocol (model/session.py): a Session appends columns in feed
order, every new token sees the whole cache (only pads are hidden) and positions follow the
column count; the image methods need per-query visibility over slots out of order and in-place
overwrites. The forward runs the transformers Llama's own modules (embeddings, norms,
projections, rotary embedding, MLP), only the attention reads this cache.

Semantics (what the tests check): a slot's keys and values are those computed when it was last
fed. For prefix-causal decoding (raster, SJD) and for NAR/LPD (a fed token never gains context
later) that equals recomputing the sequence, so cached and uncached runs give the same tokens.
For ZipAR it is the released code's behaviour: a token's state is frozen when fed, although
later passes could have shown it more of the rows above (the uncached path recomputes it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class SlotCache:
    """Keys and values [layers, R, kv_heads, S + 1, D] for R rows × S slots (+ 1 scratch slot for padding)."""

    def __init__(self, model, rows: int, slots: int):
        config = model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (config.num_hidden_layers, rows, config.num_key_value_heads, slots + 1, head_dim)
        dtype = next(model.parameters()).dtype
        self.k = torch.zeros(shape, dtype=dtype)
        self.v = torch.zeros(shape, dtype=dtype)
        self.slots = slots
        self.valid = torch.zeros(rows, slots + 1, dtype=torch.bool)  # slot holds a visible input

    def mask(self, slots: torch.Tensor, visible: torch.Tensor, attend: torch.Tensor | None) -> torch.Tensor:
        """slots, visible [R, n] (scratch = S for padding) → bool [R, 1, n, S + 1].

        Default (raster-causal): a column at slot s sees the valid slots t < s and itself. With
        `attend` [R, n, S + 1] (a layout's own rule, NAR / LPD): the slots it allows that are valid
        or fed in this pass. Either way the columns of this pass are written before attention."""
        rows = torch.arange(slots.shape[0])[:, None]
        valid = self.valid.clone()
        valid[rows, slots] = visible
        valid[:, self.slots] = False
        if attend is None:
            t = torch.arange(self.slots + 1)
            allowed = (t[None, None, :] < slots[..., None]) & valid[:, None, :]
        else:
            fed = torch.zeros_like(valid)
            fed[rows, slots] = True
            fed[:, self.slots] = False
            allowed = attend & (valid | fed)[:, None, :]
        allowed[rows, torch.arange(slots.shape[1])[None, :], slots] = True  # every column sees itself
        return allowed[:, None]

    @torch.no_grad()
    def forward(self, model, ids: torch.Tensor, slots: torch.Tensor, visible: torch.Tensor,
                attend: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """ids [R, n] inputs at `slots` [R, n] (-1 = padding) with position ids `positions` [R, n]
        (default: the slot) → logits [R, n, V]. Afterwards a fed slot is valid iff its column was
        `visible`."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        slots = torch.where(slots < 0, self.slots, slots)
        visible = visible & (slots < self.slots)
        mask = self.mask(slots, visible, attend)
        trunk = model.model
        x = trunk.embed_tokens(ids)
        cos, sin = trunk.rotary_emb(x, slots if positions is None else positions)
        rows = torch.arange(ids.shape[0])[:, None]
        for i, layer in enumerate(trunk.layers):
            h = layer.input_layernorm(x)
            attn = layer.self_attn
            shape = (*ids.shape, -1, attn.head_dim)
            q, k, v = (proj(h).view(shape).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            self.k[i][rows, :, slots] = k.transpose(1, 2)  # [R, n, kv_heads, D] written at their slots
            self.v[i][rows, :, slots] = v.transpose(1, 2)
            out = F.scaled_dot_product_attention(q, self.k[i], self.v[i], attn_mask=mask, scale=attn.scaling,
                                                 enable_gqa=q.shape[1] != k.shape[1])
            x = x + attn.o_proj(out.transpose(1, 2).reshape(*ids.shape, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        self.valid[rows, slots] = visible
        self.valid[:, self.slots] = False
        return model.lm_head(trunk.norm(x))


def _inputs(tokens: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The input at raster slot s is x_{s-1} (slot 0: the class token, set by the model) → ids [B, n]."""
    return tokens.gather(1, (slots - 1).clamp(min=0))


def _scatter(probs: torch.Tensor, slots: torch.Tensor, upto: int) -> torch.Tensor:
    """probs [B, n, K] at `slots` [B, n] (-1 = padding) → [B, upto, K], zero where nothing was fed."""
    b, _, k = probs.shape
    out = probs.new_zeros(b, upto + 1, k)
    out[torch.arange(b)[:, None], torch.where(slots < 0, upto, slots.clamp(max=upto))] = probs
    return out[:, :upto]


def window_probs(model, labels: torch.Tensor, tokens: torch.Tensor, starts: list[int], ends: list[int],
                 known: torch.Tensor | None = None) -> torch.Tensor:
    """tokens [B, N] → p [B, max(ends), K]: for row b and starts[b] ≤ j < ends[b], x_j's distribution
    given every token before j (drafts included) — or only the `known` [B, N] ones (MuLo-SD's
    island resampling). Raster decoding, SJD's verify pass, MuLo-SD's drafter and target.

    Cached: feeds only slots starts[b]..ends[b]-1 (slot s visible iff x_{s-1} is known); the
    slots before starts[b] must hold what recomputation would give (the caller refeeds from the
    first slot whose input or visibility changed; an accepted prefix never changes) — checked
    that they were fed and visible."""
    upto = max(ends)
    if not model.kv_cache:
        known = torch.ones_like(tokens, dtype=torch.bool) if known is None else known
        return model.raster_probs(labels, tokens, known, upto=upto)
    cache = model.cache(len(labels))
    width = max(e - s for s, e in zip(starts, ends))
    slots = torch.full((len(labels), width), -1, dtype=torch.long)
    for row, (s, e) in enumerate(zip(starts, ends)):
        if s < e:
            if not bool(cache.valid[row, :s].all()):
                raise RuntimeError("window_probs: the prefix before the window was never fed to the cache")
            slots[row, : e - s] = torch.arange(s, e)
    visible = slots >= 0
    if known is not None:
        slot_known = torch.cat([known.new_ones(len(labels), 1), known[:, :-1]], dim=1)
        visible &= slot_known.gather(1, slots.clamp(min=0))
    return _scatter(model.cached_probs(labels, _inputs(tokens, slots), slots, visible), slots, upto)


def frontier_probs(model, labels: torch.Tensor, tokens: torch.Tensor, known: torch.Tensor,
                   queries: list[list[int]]) -> torch.Tensor:
    """tokens, known [B, N] → p [B, upto, K] with p[b, q] = x_q's distribution given the known tokens
    before q, for q in queries[b] (ZipAR). An unknown input (a new row's first slot) is a
    placeholder only its own slot reads.

    Cached: feeds the slots whose input became known since the last pass, plus the query slots;
    a fed slot keeps the state it was computed with (ZipAR's released code)."""
    upto = max((q for row in queries for q in row), default=0) + 1
    if not model.kv_cache:
        return model.raster_probs(labels, tokens, known, upto=upto)
    n = model.spec.n
    cache = model.cache(len(labels))
    slot_known = torch.cat([known.new_ones(len(labels), 1), known[:, : n - 1]], dim=1)
    fresh = slot_known & ~cache.valid[: len(labels), :n]  # the guidance rows mirror the first B
    feeds = [sorted(set(row.nonzero().flatten().tolist()) | set(q)) for row, q in zip(fresh, queries)]
    width = max(map(len, feeds))
    slots = torch.full((len(labels), width), -1, dtype=torch.long)
    for row, feed in enumerate(feeds):
        slots[row, : len(feed)] = torch.tensor(feed, dtype=torch.long)
    visible = slot_known.gather(1, slots.clamp(min=0)) & (slots >= 0)
    probs = model.cached_probs(labels, _inputs(tokens, slots), slots, visible)
    return _scatter(probs, slots, n)[:, :upto]
