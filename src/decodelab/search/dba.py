"""Lexically constrained beam search with dynamic beam allocation (DBA) — Post & Vilar, "Fast Lexically
Constrained Decoding with Dynamic Beam Allocation for Neural Machine Translation" (arXiv:1804.06609).

Phrases that must appear in the output; the beam size K stays fixed whatever their number. Per step and
prompt, over the K hypotheses' extensions (summed log-probabilities, scored as in `search.beam`):

1. candidates = the global top-K over all K·V extensions ∪ for each hypothesis every token that advances
   an unmet phrase (the next token of the phrase in progress, else the first token of every unmet
   phrase) ∪ each hypothesis's best next token;
2. each candidate falls in bank c = the number of constraint tokens it has met (C + 1 banks for C
   constraint tokens in all); a partially matched phrase that deviates loses its progress;
3. bank sizes ⌊K/(C+1)⌋, the remainder to the top bank C; from the top bank down, a bank with fewer
   candidates than its size passes the unused slots to the bank below; each bank takes its best
   candidates by score (slots still free after bank 0 go to the best candidates left);
4. EOS is invalid until every phrase is met; a finished hypothesis keeps its slot (it sits in bank C
   with its score frozen, as in the paper's Sockeye implementation) and the search stops when every
   slot is finished or at the length limit.

The result is the best hypothesis that met every phrase, by `logp / length^length_penalty` (finished
ones, then those cut by the length limit); all hypotheses left are ranked in `.candidates`. A grammar
`constraint=` composes: every beam keeps its own llguidance matcher (`search.beam.beam_sampler`), and a
token the grammar forbids is never a candidate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from ..errors import UserError
from .beam import NEG, beam_log_probs, beam_sampler


@dataclass(frozen=True)
class Progress:
    """One hypothesis's constraint state: which phrases are met and the phrase in progress."""

    met: tuple[bool, ...]
    phrase: int = -1  # index of the phrase being matched, -1 = none
    matched: int = 0  # tokens of it matched so far

    def count(self, phrases: list[list[int]]) -> int:
        """Constraint tokens met: the bank number."""
        return sum(len(p) for p, m in zip(phrases, self.met) if m) + self.matched

    def done(self) -> bool:
        return all(self.met)

    def advancing(self, phrases: list[list[int]]) -> set[int]:
        """Tokens that advance an unmet phrase from here."""
        if self.phrase >= 0:
            return {phrases[self.phrase][self.matched]}
        return {p[0] for p, m in zip(phrases, self.met) if not m}

    def step(self, token: int, phrases: list[list[int]]) -> "Progress":
        """The state after `token`: progress grows on the phrase's next token; a deviation loses it
        (and the token may start an unmet phrase afresh)."""
        if self.phrase >= 0 and phrases[self.phrase][self.matched] == token:
            return self._grow(self.phrase, self.matched + 1, phrases)
        for j, (p, m) in enumerate(zip(phrases, self.met)):
            if not m and p[0] == token:
                return Progress(self.met)._grow(j, 1, phrases)
        return Progress(self.met)

    def _grow(self, j: int, matched: int, phrases: list[list[int]]) -> "Progress":
        if matched < len(phrases[j]):
            return Progress(self.met, j, matched)
        return Progress(tuple(m or i == j for i, m in enumerate(self.met)))


def bank_sizes(k: int, counts: list[int]) -> list[int]:
    """Slots per bank 0..C for beam size k, given how many candidates each bank holds: ⌊k/(C+1)⌋ each,
    the remainder to the top bank, and from the top down a short bank passes unused slots below."""
    banks = len(counts)
    sizes = [k // banks] * banks
    sizes[-1] += k - sum(sizes)
    for c in range(banks - 1, 0, -1):
        spare = max(0, sizes[c] - counts[c])
        sizes[c] -= spare
        sizes[c - 1] += spare
    return sizes


def allocate(k: int, candidates: list[tuple[float, int]], banks: int) -> list[int]:
    """Indices of the k candidates DBA keeps; candidates = (score, bank) pairs."""
    by_bank = [sorted((i for i, (_, b) in enumerate(candidates) if b == c), key=lambda i: -candidates[i][0])
               for c in range(banks)]
    sizes = bank_sizes(k, [len(b) for b in by_bank])
    chosen = [i for c in range(banks - 1, -1, -1) for i in by_bank[c][: sizes[c]]]
    rest = sorted(set(range(len(candidates))) - set(chosen), key=lambda i: -candidates[i][0])
    return chosen + rest[: k - len(chosen)]


def parse_phrases(lm, constraints) -> list[list[int]]:
    """The phrases as token ids: a list of strings (or of token-id lists), or a string holding a JSON
    list (the CLI's `-p constraints='["a", "b"]'`) or a single phrase. Bad input → ValueError."""
    if isinstance(constraints, str):
        text = constraints.strip()
        try:
            constraints = json.loads(text) if text.startswith("[") else [constraints]
        except ValueError as exc:
            raise UserError(f"constraints: not a JSON list of phrases ({exc})") from None
    if not isinstance(constraints, (list, tuple)) or not constraints:
        raise UserError("dba needs constraints: a non-empty list of phrases that must appear")
    phrases = []
    for phrase in constraints:
        ids = list(phrase) if isinstance(phrase, (list, tuple)) else lm.encode(phrase) if isinstance(phrase, str) else None
        if not ids or (isinstance(phrase, str) and lm.decode(ids) != phrase):
            raise UserError(f"constraint phrase {phrase!r}: the tokenizer cannot produce it (empty, or it "
                             "does not decode back to itself)")
        if any(not isinstance(t, int) or not 0 <= t < lm.vocab_size for t in ids):
            raise UserError(f"constraint phrase {phrase!r}: token ids must lie in 0..{lm.vocab_size - 1}")
        phrases.append(ids)
    return phrases


@dataclass
class Hyp:
    tokens: list[int]
    score: float
    state: Progress
    finished: bool = False


def _candidates(hyps: list[Hyp], logp: torch.Tensor, k: int, phrases) -> list[tuple[int, int, float]]:
    """(hypothesis, token, score) candidates of one prompt; logp [K, V] step scores (EOS already
    masked for hypotheses with unmet phrases). A finished hypothesis is its own only candidate."""
    total = logp + torch.tensor([h.score for h in hyps])[:, None]
    live = torch.tensor([not h.finished for h in hyps])
    total = total.masked_fill(~live[:, None], NEG)
    v = total.shape[1]
    picks = {(int(i) // v, int(i) % v) for i in total.flatten().topk(k).indices}
    for h, hyp in enumerate(hyps):
        if not hyp.finished:
            picks |= {(h, t) for t in hyp.state.advancing(phrases)}
            picks.add((h, int(total[h].argmax())))
    out = [(h, t, float(total[h, t])) for h, t in sorted(picks) if total[h, t] > NEG / 2]
    return out + [(h, -1, hyp.score) for h, hyp in enumerate(hyps) if hyp.finished and hyp.score > NEG / 2]


def dba_step(hyps: list[Hyp], logp: torch.Tensor, k: int, phrases, eos: set[int]) -> list[tuple[int, Hyp]]:
    """One DBA step for one prompt: the k kept (source hypothesis, new hypothesis) pairs."""
    logp = logp.clone()
    for h, hyp in enumerate(hyps):
        if not hyp.state.done():
            logp[h, sorted(eos)] = NEG  # EOS is invalid until every phrase is met
    cands = _candidates(hyps, logp, k, phrases)
    banks = sum(len(p) for p in phrases) + 1
    new = []
    for h, t, s in cands:
        old = hyps[h]
        if t < 0:
            new.append((h, old))
        else:
            new.append((h, Hyp(old.tokens + [t], s, old.state.step(t, phrases), t in eos)))
    keep = [new[i] for i in allocate(k, [(hyp.score, hyp.state.count(phrases)) for _, hyp in new], banks)]
    dead = Hyp(keep[0][1].tokens, NEG, keep[0][1].state, finished=True)  # fewer than k candidates: fill
    return keep + [(keep[0][0], dead)] * (k - len(keep))


def _ranked(hyps: list[Hyp], length_penalty: float, n: int) -> list[tuple[list[int], float]]:
    """Best first: hypotheses that met every phrase, then by logp / length^length_penalty."""
    def key(h: Hyp):
        return (h.state.done(), h.score / max(len(h.tokens), 1) ** length_penalty)
    alive = [h for h in hyps if h.score > NEG / 2]
    return [(h.tokens, key(h)[1]) for h in sorted(alive, key=key, reverse=True)[:n]]


def dba_search(ctx, constraints, k: int, length_penalty: float, n_return: int) -> list[list[tuple[list[int], float]]]:
    """Run DBA for every prompt of ctx; per prompt the ranked (tokens, score) hypotheses."""
    from ..methods.autoregressive import prefill

    phrases = parse_phrases(ctx.lm, constraints)
    if n_return > k:
        raise UserError(f"num_return_sequences ({n_return}) must be ≤ num_beams ({k})")
    need, max_new = sum(len(p) for p in phrases), ctx.remaining(0)
    if need > max_new:
        raise UserError(f"the constraint phrases take {need} tokens but max_new_tokens allows {max_new}")
    batch, eos, pad = ctx.batch_size, set(ctx.lm.eos_token_ids), ctx.lm.pad_token_id
    sampler = beam_sampler(ctx.sampler, k)
    start = Progress(tuple(False for _ in phrases))
    beams = [[Hyp([], 0.0 if i == 0 else NEG, start) for i in range(k)] for _ in range(batch)]
    session = ctx.session()
    logits = prefill(ctx, session).repeat_interleave(k, dim=0)  # [B·K, V]
    session.reorder([b for b in range(batch) for _ in range(k)])
    prompt_ids = ctx.padded_prompts[0].repeat_interleave(k, dim=0)  # [B·K, L]
    for g in range(max_new):
        history = torch.cat([prompt_ids, torch.tensor([h.tokens[:g] + [pad] * (g - len(h.tokens[:g]))
                                                        for row in beams for h in row],
                                                      dtype=torch.long).reshape(batch * k, g)], 1)
        logp = beam_log_probs(sampler, history, logits).reshape(batch, k, -1)
        kept = [dba_step(beams[b], logp[b], k, phrases, eos) for b in range(batch)]
        beams = [[hyp for _, hyp in row] for row in kept]
        if g + 1 == max_new or all(h.finished for row in beams for h in row):
            break
        session.reorder([b * k + h for b, row in enumerate(kept) for h, _ in row])
        step = [h.tokens[-1] if not h.finished else pad for row in beams for h in row]
        logits = session.forward(torch.tensor(step)[:, None])[:, -1]
    return [_ranked(row, length_penalty, n_return) for row in beams]
