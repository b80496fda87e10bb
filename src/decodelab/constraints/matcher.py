"""Per-row grammar state and the grammar mask as a logits processor.

`RowConstraint` is one row's state: an llguidance `LLMatcher` plus the tokens it has consumed. It
advances, rolls back, seeks to any token list (roll back to the common prefix, advance the rest),
validates drafts without committing, and forks (`deep_copy`) for beams and particles.

`GrammarMask` is a logits processor with the fixed signature `(input_ids [B, L], scores [B, V])`:
it masks row b's scores with the grammar state *after the generated part of that row's history*
(`input_ids[b, prompt_len:]`). Because the state is a function of the history it is given, the same
processor masks plain decoding, a draft model's q at every draft position, and the target's p at
every node of a verify tree — each call names the node's own history, the row seeks there. As a
logits processor (not a warper) it also holds at temperature 0.

`prune` drops deterministic draft nodes the grammar rejects before they are verified. That changes
no output: a rejected token has p = 0 under the mask, so verification would reject it with
probability 1 and its residual p − one-hot is p itself. Stochastic nodes (q rows) are never pruned:
cutting them would condition on the draft and bias sampling; under the mask they are valid anyway.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from ..verify import Draft
from . import timing
from .spec import Grammar


class RowConstraint:
    """One row's grammar matcher and the tokens it has consumed (advance / rollback / fork)."""

    def __init__(self, grammar: Grammar, matcher=None, tokens: list[int] | None = None):
        from llguidance import LLMatcher

        self.grammar = grammar
        self.matcher = matcher if matcher is not None else LLMatcher(grammar.tokenizer, grammar.text, log_level=0)
        self.tokens: list[int] = list(tokens or [])
        self.reachable = True  # False when the last seek hit a token the grammar rejects
        # masks known for this step, keyed by generated tokens → [⌈V/32⌉] int32 words (batched.py)
        self.masks: dict[tuple[int, ...], torch.Tensor] = {}
        # the same step's batched masks as additive rows: [32·⌈V/32⌉] float32, 0 allowed / -inf forbidden
        self.bias: dict[tuple[int, ...], torch.Tensor] = {}

    def remember(self, key: tuple[int, ...], words: torch.Tensor) -> None:
        """Keep the mask of the state after `key` (a bounded, oldest-first cache: the masks of one step)."""
        self.masks[key] = words
        if len(self.masks) > MASKS_KEPT:
            del self.masks[next(iter(self.masks))]

    def fork(self) -> "RowConstraint":
        return RowConstraint(self.grammar, self.matcher.deep_copy(), self.tokens)  # masks not shared

    def advance(self, tokens: list[int]) -> int:
        """Consume as many of `tokens` as the grammar allows; returns how many."""
        n = self.matcher.try_consume_tokens(list(tokens)) if tokens else 0
        self.tokens.extend(tokens[:n])
        return n

    def rollback(self, n: int) -> None:
        if n > 0:
            self.matcher.rollback(n)
            del self.tokens[len(self.tokens) - n :]

    def seek(self, tokens: list[int]) -> bool:
        """Move to the state after `tokens`; False (state left at the longest valid prefix) if invalid."""
        mine = self.tokens
        if len(tokens) >= len(mine) and tokens[: len(mine)] == mine:  # the usual case: only new tokens
            k = len(mine)
        else:
            k, limit = 0, min(len(mine), len(tokens))
            while k < limit and mine[k] == tokens[k]:
                k += 1
        self.rollback(len(mine) - k)
        self.reachable = self.advance(tokens[k:]) == len(tokens) - k
        return self.reachable

    def validate(self, tokens: list[int]) -> int:
        """How many of `tokens` the grammar accepts from the current state (nothing is committed)."""
        t0 = timing.clock()
        n = self.matcher.validate_tokens(list(tokens)) if tokens else 0
        timing.record_check(timing.clock() - t0)
        return n

    def forced_tokens(self, tokens: list[int]) -> list[int]:
        """The tokens the grammar forces after `tokens` (llguidance's canonical tokenization of the
        forced bytes; empty when nothing is forced or `tokens` are not valid)."""
        t0 = timing.clock()
        forced = self.matcher.compute_ff_tokens() if self.seek(tokens) else []
        timing.record_ff(timing.clock() - t0)
        return forced

    def forced(self) -> bool:
        """Does the grammar force the next bytes? (Then llguidance's mask admits only its canonical
        tokenization of them, a subset of what `validate` accepts.)"""
        return bool(self.matcher.compute_ff_bytes())

    def allowed(self, vocab_size: int) -> torch.Tensor:
        """[V] bool: the mask of the current state."""
        t0 = timing.clock()
        bitmask = torch.full((1, (vocab_size + 31) // 32), -1, dtype=torch.int32)
        self.fill(bitmask, 0)
        allowed = unpack(bitmask, vocab_size)[0]
        timing.record_mask(timing.clock() - t0, 1)
        return allowed

    @property
    def stopped(self) -> bool:
        """The grammar is complete and admits no further token (only EOS)."""
        return self.matcher.is_stopped()

    @property
    def accepting(self) -> bool:
        return self.matcher.is_accepting()

    @property
    def error(self) -> str:
        return self.matcher.get_error() if self.matcher.is_error() else ""

    def fill(self, bitmask: torch.Tensor, index: int) -> None:
        """Write the allowed-token bitmask of the current state into bitmask[index] (int32 words).

        What llguidance.torch.fill_next_token_bitmask does, without importing that module (it
        decorates a kernel with torch.compile at import, which costs seconds on a CPU)."""
        row = bitmask[index]  # [⌈V/32⌉] int32, contiguous, on the CPU
        self.matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())


MASKS_KEPT = 64  # masks computed one node at a time kept between steps (batched.py keeps a step's own)
_BITS = torch.arange(32, dtype=torch.int32)
# byte value → its 8 tokens' additive mask (bit j of a byte set: token allowed, 0; else -inf)
_BYTE_BIAS = np.where(np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little") == 1,
                      0.0, -np.inf).astype(np.float32)


def unpack(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[B, ⌈V/32⌉] int32 words → [B, V] bool, True where the token is allowed."""
    bits = (bitmask.unsqueeze(-1) >> _BITS) & 1  # [B, W, 32]
    return bits.flatten(1)[:, :vocab_size].bool()


def bias_of(bitmask: torch.Tensor) -> torch.Tensor:
    """[n, W] int32 words → [n, 32·W] float32 additive mask: 0 where the token is allowed, -inf where not.

    What the processor adds to the scores: on a CPU an add costs a fraction of a masked fill with a
    boolean mask of the same size, which matters at the 128k-token vocabularies of current models. One
    byte-table lookup in numpy on a little-endian host (bit j of byte k of word w is token 32w + 8k + j), a
    single-threaded call, so the mask worker never opens a torch parallel region beside the forward's."""
    if sys.byteorder != "little":  # pragma: no cover
        return torch.where(unpack(bitmask, 32 * bitmask.shape[1]), 0.0, -float("inf"))
    table = np.take(_BYTE_BIAS, bitmask.numpy().view(np.uint8), axis=0)  # [n, 4·W, 8]
    return torch.from_numpy(table.reshape(bitmask.shape[0], -1))


class GrammarMask:
    """Logits processor: -inf for every token the row's grammar forbids after its generated tokens."""

    needs_history = True

    def __init__(self, grammars: list[Grammar], prompt_len: int, eos_token_ids=()):
        self.rows = [RowConstraint(g) for g in grammars]  # one grammar (and matcher) per row
        self.prompt_len = prompt_len
        self.eos = sorted(eos_token_ids)
        self.hits = 0  # rows of the last call whose mask was already known

    def for_row(self, b: int, prompt_len: int) -> "GrammarMask":
        """A one-row view sharing row b's grammar state, for histories of row b alone ([1, L], its own
        unpadded prompt of `prompt_len` tokens) — what a per-row proposer or verifier passes."""
        view = GrammarMask([], prompt_len, self.eos)
        view.rows = [self.rows[b]]
        return view

    def allowed(self, input_ids: torch.LongTensor, vocab_size: int) -> torch.Tensor:
        # input_ids: [B, L] (prompt + generated) → [B, V] bool
        if input_ids.shape[0] != len(self.rows):
            raise ValueError(f"grammar mask holds {len(self.rows)} rows, got a batch of {input_ids.shape[0]}")
        bitmask = torch.full((len(self.rows), (vocab_size + 31) // 32), -1, dtype=torch.int32)
        dead, self.hits = [], 0
        for b, row in enumerate(self.rows):
            key = tuple(input_ids[b, self.prompt_len :].tolist())
            known = row.masks.get(key)
            if known is not None and known.numel() == bitmask.shape[1]:
                bitmask[b] = known  # computed with the step's other masks (batched.py)
                self.hits += 1
            elif row.seek(list(key)) and not row.error:
                row.fill(bitmask, b)
                row.remember(key, bitmask[b].clone())
            else:
                dead.append(b)  # a finished row's padding, or a rejected node: EOS only, never NaN
        allowed = unpack(bitmask, vocab_size)
        for b in dead:
            allowed[b] = False
            allowed[b, [e for e in self.eos if e < vocab_size] or list(range(vocab_size))] = True
        return allowed

    def _batched_bias(self, input_ids: torch.LongTensor, vocab_size: int) -> torch.Tensor | None:
        """[B, V] additive masks when every row's mask was computed by the step's batched call
        (batched.py), else None."""
        if input_ids.shape[0] != len(self.rows):
            return None
        found = _known([(row, tuple(input_ids[b, self.prompt_len :].tolist())) for b, row in enumerate(self.rows)],
                       vocab_size)
        if found is not None:
            self.hits = len(self.rows)
        return found

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids: [B, L]; scores: [B, V] → [B, V]
        t0 = timing.clock()  # mask time per call (constraints/timing.py): two clock reads
        bias = self._batched_bias(input_ids, scores.shape[-1])
        if bias is None:
            bias = torch.where(self.allowed(input_ids, scores.shape[-1]), 0.0, -float("inf"))
        masked = apply_bias(scores, bias)
        timing.record_mask(timing.clock() - t0, len(self.rows), self.hits)
        return masked

    def mask_nodes(self, keys: list[tuple[int, ...]], scores: torch.FloatTensor,
                   raw: bool = False) -> torch.FloatTensor | None:
        """scores [N, V] of one row's nodes masked at once, node i by the state after generated tokens
        keys[i] — when the step's batched call (batched.py) already computed every one of those masks;
        else None (the caller masks node by node). The same values as calling the processor per node.
        `raw`: the scores are the model's own logits (no processor ran before the mask), so no row can
        have lost every allowed token to an earlier -inf and `apply_bias` skips its check."""
        t0 = timing.clock()
        if len(self.rows) != 1:
            return None
        bias = _known([(self.rows[0], key) for key in keys], scores.shape[-1])
        if bias is None:
            return None
        masked = apply_bias(scores, bias, guard=not raw)
        timing.record_mask(timing.clock() - t0, len(keys), len(keys))
        return masked


def _known(wanted: list[tuple[RowConstraint, tuple[int, ...]]], vocab_size: int) -> torch.Tensor | None:
    """[N, V] additive masks of each (row, generated tokens) from the step's batched masks, or None when
    any of them is not known (or was computed for another vocabulary size)."""
    found = []
    for row, key in wanted:
        known = row.bias.get(key)
        if known is None or known.numel() < vocab_size or known.numel() - vocab_size >= 32:
            return None
        found.append(known[:vocab_size])
    return found[0][None] if len(found) == 1 else torch.stack(found)


def apply_bias(scores: torch.FloatTensor, bias: torch.Tensor, guard: bool = True) -> torch.FloatTensor:
    """scores [B, V] + an additive mask [B, V] (0 where allowed, -inf where forbidden: `bias_of`), i.e.
    -inf at every forbidden token; a row left with no finite score (penalties removed every allowed
    token) gets 0 at its allowed tokens instead, so it never turns NaN. `guard=False` skips that check
    (a reduction and a device-to-host read) for finite scores, where it cannot find such a row."""
    bias = bias.to(scores.device, scores.dtype)
    masked = scores + bias
    if guard and not bool(torch.isfinite(masked.amax(dim=-1)).all()):  # else every row kept a finite score
        empty = ~torch.isfinite(masked).any(dim=-1, keepdim=True)
        if bool(empty.any()):
            masked = torch.where(empty & (bias == 0), torch.zeros_like(scores), masked)
    return masked


def prune(draft: Draft, row: RowConstraint, generated: list[int]) -> Draft:
    """The draft without the deterministic nodes the grammar rejects (and their subtrees).

    `generated` are the row's tokens so far (the pending token last). Returns `draft` itself when
    every node is valid.
    """
    if draft.q is not None:  # sampled from the masked q: valid, and never to be cut (see above)
        return draft
    valid = _valid_nodes(draft, row, generated)
    if all(valid):
        return draft
    keep = [i for i, ok in enumerate(valid) if ok]
    index = {old: new for new, old in enumerate(keep)}
    n = len(draft.tokens)
    q = draft.q[keep] if draft.q is not None else None
    aux_parents = [p if p < 0 else (index.get(p, -2) if p < n else p - n + len(keep)) for p in draft.aux_parents]
    aux = draft.aux_tokens
    if -2 in aux_parents:  # a window node hung off a dropped candidate: drop the window this step
        aux, aux_parents = [], []
    return Draft([draft.tokens[i] for i in keep], [index.get(draft.parents[i], -1) for i in keep], q,
                 list(aux), aux_parents)


def _valid_nodes(draft: Draft, row: RowConstraint, generated: list[int]) -> list[bool]:
    """valid[i]: node i and all its ancestors are grammatical (parents come before their children)."""
    valid = [False] * len(draft.tokens)
    paths: dict[int, list[int]] = {-1: []}
    for parent, kids in draft.children().items():
        if parent not in paths:  # parent rejected (children lists come in node order: parents first)
            continue
        row.seek(generated + paths[parent])
        for c in kids:
            if row.validate([draft.tokens[c]]) == 1:
                valid[c] = True
                paths[c] = paths[parent] + [draft.tokens[c]]
    return valid
