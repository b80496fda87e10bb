"""Grammar constraints for the masked-diffusion samplers (the shared loop in diffusion/sampling.py).

Issue #13's rule — "commit only positions whose tokens keep the prefix valid, left to right within a
block" — made precise for a canvas that fills out of order. Each row keeps a **witness**: one token
for every canvas position up to its last committed one — the committed tokens, and for each
still-masked position before that a token proposed at an earlier step — such that the witness, read
left to right up to its first EOS, is a prefix the grammar accepts, and an EOS in it stands where the
grammar may end. Every step:

1. *Propose.* The first masked position f has only committed tokens to its left, so its grammar state
   is known exactly: if the sampler's proposal there is a token that state forbids, it is replaced by
   a proposal from the logits masked by that state (argmax, or a Gumbel-max draw from the row's own
   generator at temperature > 0). A proposal the grammar allows is kept as it is, so a grammar that
   allows every token the sampler proposes changes nothing.
2. *Commit, left to right.* The rule picks positions as without a grammar; the picks are taken in
   position order and a pick is committed only if the witness with its token still validates (the
   masked positions between the old witness end and the pick are filled with this step's proposals;
   if that fails, the masked positions before the pick's right end are re-filled with this step's
   proposals and checked once more). A refused pick stays masked and is proposed again next step.
3. *Progress.* A row whose picks were all refused commits f: with the proposal of step 1 if the
   witness admits it, else with the witness's own token at f (valid by the invariant). So every step
   commits at least one position of every unfinished row, as without a grammar.

**Guaranteed:** after every step the committed tokens of each row sit inside a valid grammar prefix
(the witness). When no mask is left the witness is the canvas, so the output — the canvas up to its
first EOS — is a prefix the grammar accepts, and it is complete (`finish_reason="stop"`,
`incomplete=False`) whenever the canvas holds an EOS or the grammar ended. If the grammar's longest
document is shorter than the canvas (in tokens), every output is complete. **Not guaranteed:** which
valid output comes out — like masking in an AR loop, the grammar changes the sampler's choices; the
diffusion samplers are not exact samplers of any distribution to begin with. The witness is one
filling, so a pick can be refused although some other filling of the gap would admit it (a
conservative check; DINGO, "DINGO: Constrained Inference for Diffusion LLMs", arXiv:2505.23061,
decides that existence exactly for regular languages with a DFA and picks the most probable valid
block by dynamic programming; this check needs only llguidance's prefix validation, so it works for
every grammar llguidance takes, context-free ones included).

Supported: the samplers that run `diffusion.sampling.decode` (`SUPPORTED`), and `sspd`, which verifies
its drafts against constrained stepwise decoding (`StepwiseGrammar`): its output is constrained
`llada`'s (one token per step), token for token. Token healing is refused for every diffusion sampler.
"""

from __future__ import annotations

import torch

from . import timing
from .matcher import RowConstraint

# the diffusion methods whose loop is diffusion.sampling.decode (they call the two hooks below), and sspd
# (its own loop verifies CanvasGrammar.stepwise_next: the output is constrained stepwise llada's)
SUPPORTED = ("llada", "dream", "fastdllm", "ebsampler", "localleap", "adablock", "ccd", "apd", "learn2pd", "sspd")


def refusal(info, grammar, healing: bool) -> str | None:
    """The one-line reason a non-causal method cannot take this constraint / healing (None: it can)."""
    if info.kind == "diffusion" and not healing and info.name in SUPPORTED:
        return None
    if info.kind == "diffusion" and healing:
        return f"token_healing is not supported by diffusion method {info.name!r} (a canvas has no prompt-boundary token)"
    if info.kind == "diffusion":
        return (f"constraint is not supported by diffusion method {info.name!r}; "
                f"constrained diffusion samplers: {', '.join(SUPPORTED)}")
    return f"constraint / token_healing are not supported by {info.kind} method {info.name!r}"


def stepwise_grammar(ctx, start: int, length: int) -> "StepwiseGrammar | None":
    """sspd's grammar (diffusion/sspd.py; None when the request has no constraint): canvas positions
    start at `start` in a row's ids, blocks are `length` long."""
    grammar = canvas_grammar(ctx)
    return None if grammar is None else StepwiseGrammar(grammar, start, length)


def canvas_grammar(ctx) -> "CanvasGrammar | None":
    """The canvas constraint for a diffusion run (None when the request has no constraint)."""
    mask = getattr(ctx.sampler, "constraint", None)
    if mask is None:
        return None
    return CanvasGrammar([row.grammar for row in mask.rows], ctx.lm.eos_token_ids)


class CanvasGrammar:
    """Per-row grammar state and witness of a diffusion canvas: the two hooks of the shared loop."""

    def __init__(self, grammars: list, eos_token_ids):
        self.rows = [RowConstraint(g) for g in grammars]
        self.eos = set(eos_token_ids)
        self.witness: list[list[int]] = [[] for _ in grammars]
        self.first: list[tuple[int, int] | None] = [None] * len(grammars)  # (f, grammar-allowed proposal)

    # --- step 1 -------------------------------------------------------------------------------------
    def propose_first(self, canvas, logits: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
                      temperature: float, confidence: str, gens: list) -> None:
        """Make each row's proposal at its first masked position one its grammar state allows (in place
        in x0 / conf [B, G]; logits [B, G, V] are read only); a proposal already allowed is left as is."""
        from ..diffusion.sampling import NEG_INF, propose

        tokens, masked = canvas.canvas.tolist(), canvas.masked.tolist()
        for b, row in enumerate(self.rows):
            self.first[b] = None
            if True not in masked[b]:
                continue
            f = masked[b].index(True)
            if self.eos & set(tokens[b][:f]) or not row.seek(tokens[b][:f]) or row.error:
                continue  # the row already ended (an EOS before f): nothing after it is output
            allowed = row.allowed(logits.shape[-1]).to(logits.device)
            if not bool(allowed[x0[b, f]]):
                masked_logits = logits[b, f].masked_fill(~allowed, NEG_INF)[None, None]
                new, c = propose(masked_logits, temperature, confidence, [gens[b]])
                x0[b, f], conf[b, f] = new[0, 0].to(x0.device), c[0, 0].nan_to_num(nan=-1e300, neginf=-1e300)
            self.first[b] = (f, int(x0[b, f]))

    # --- steps 2 and 3 --------------------------------------------------------------------------------
    def filter(self, canvas, x0: torch.Tensor, commit: torch.Tensor) -> torch.Tensor:
        """The commits that keep every row's witness valid ([B, G] bool); a row left with none commits
        its first masked position (x0 is updated there when the witness's token is used)."""
        tokens, masked, proposals = canvas.canvas.tolist(), canvas.masked.tolist(), x0.tolist()
        picks = commit.tolist()
        out = torch.zeros_like(commit)
        for b in range(len(self.rows)):
            if True not in masked[b]:
                continue
            done = [p for p in range(len(picks[b])) if picks[b][p] and masked[b][p]
                    and self._take(b, p, proposals[b][p], tokens[b], masked[b], proposals[b])]
            if not done:
                p, token = self._fallback(b, tokens[b], masked[b], proposals[b])
                x0[b, p] = token
                done = [p]
            out[b, done] = True
        return out

    def _take(self, b: int, p: int, token: int, tokens: list[int], masked: list[bool], proposals: list[int]) -> bool:
        """Commit `token` at position p if a witness admits it (tokens / masked are updated)."""
        w = self.witness[b]
        tries = [w[:p] + [token] + w[p + 1:] if p < len(w) else w + proposals[len(w):p] + [token]]
        end = max(len(w), p + 1)
        refill = [tokens[i] if not masked[i] else (token if i == p else proposals[i]) for i in range(end)]
        if refill != tries[0]:
            tries.append(refill)
        for cand in tries:
            if self._valid(b, cand):
                self.witness[b] = cand
                tokens[p], masked[p] = token, False
                return True
        return False

    def _fallback(self, b: int, tokens: list[int], masked: list[bool], proposals: list[int]) -> tuple[int, int]:
        """(f, token): the first masked position with a token the witness admits — the grammar-allowed
        proposal if it fits, else the witness's own token (always valid)."""
        f = masked.index(True)
        first = self.first[b]
        for token in dict.fromkeys([proposals[f], first[1] if first and first[0] == f else proposals[f]]):
            if self._take(b, f, token, tokens, masked, proposals):
                return f, token
        w = self.witness[b]
        if f >= len(w):  # cannot happen: the prefix's state allowed step 1's proposal
            raise RuntimeError(f"diffusion row {b}: no grammar-valid token at position {f}")
        tokens[f], masked[f] = w[f], False
        return f, w[f]

    def _valid(self, b: int, witness: list[int]) -> bool:
        """The witness up to its first EOS is a valid prefix, and that EOS (if any) comes where the
        grammar may end."""
        t0 = timing.clock()  # a constraint check (constraints/timing.py)
        end = next((i for i, t in enumerate(witness) if t in self.eos), len(witness))
        row = self.rows[b]
        ok = row.seek(witness[:end]) and not row.error and (end == len(witness) or row.accepting)
        timing.record_check(timing.clock() - t0)
        return ok


class StepwiseGrammar:
    """sspd under a grammar: the commits of constrained stepwise decoding, and drafts that follow them.

    sspd verifies a tree of drafted commits against what stepwise decoding (`llada`, one token per step,
    temperature 0) commits on each node's canvas. Under a grammar it verifies against what *constrained*
    stepwise decoding commits — `step`, `decode`'s three steps above for one row and one token, which
    advances the row's witness by the commit — so sspd's output is constrained `llada`'s, token for
    token, with the same guarantee (the committed tokens always sit inside a valid grammar prefix;
    tests/constraints/test_diffusion_constrained.py). The walk only ever moves along verified commits,
    in order, so the witness follows the path exactly as it would in stepwise decoding. `steer` makes the
    draft follow the grammar too: the chain it drafts is constrained stepwise decoding run on the node's
    logits held fixed (the grammar's replacements and refusals included), so drafted commits are not
    lost to tokens the grammar would refuse; a wrong draft costs acceptance, never exactness.
    """

    def __init__(self, grammar: CanvasGrammar, start: int, length: int):
        self.grammar, self.start, self.length = grammar, start, length

    def step(self, b: int, ids: torch.Tensor, masked: torch.Tensor, logits: torch.Tensor) -> tuple[int, int]:
        """(position, token): what constrained stepwise decoding commits next on row b's canvas (ids over
        the whole row, masked [G], logits [G, V] of that canvas); row b's witness is advanced by it."""
        return self._next(b, ids[self.start:], masked, logits, self._propose(logits))

    def steer(self, b: int, draft, ids: torch.Tensor, masked: torch.Tensor, logits: torch.Tensor,
              root: tuple[int, int], depth: int) -> None:
        """Reorder sspd's `draft` (in place) so that its chain is constrained stepwise decoding from the
        canvas + `root` with these logits held fixed, `depth` commits in all (the witness is restored)."""
        saved = list(self.grammar.witness[b])
        tokens, masked = ids[self.start:].clone(), masked.clone()
        chain, proposed = [root], self._propose(logits)
        tokens[root[0]], masked[root[0]] = root[1], False
        while len(chain) < depth and masked.any():
            pos, tok = self._next(b, tokens, masked, logits, proposed)
            tokens[pos], masked[pos] = tok, False
            chain.append((pos, tok))
        self.grammar.witness[b] = saved
        taken = {p for p, _ in chain}
        draft.order = [p for p, _ in chain] + [i for i in draft.order if i not in taken]
        for pos, tok in chain:
            if int(draft.tokens[pos, 0]) != tok:  # the grammar's token first, the model's argmax second
                draft.tokens[pos, 1:] = draft.tokens[pos, :-1].clone()
                draft.tokens[pos, 0] = tok

    @staticmethod
    def _propose(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from ..diffusion.sampling import propose

        x0, conf = propose(logits[None], 0.0, "low_confidence", [])
        return x0, conf.nan_to_num(nan=-1e300, posinf=1e300, neginf=-1e300)

    def _next(self, b: int, tokens: torch.Tensor, masked: torch.Tensor, logits: torch.Tensor,
              proposed: tuple[torch.Tensor, torch.Tensor]) -> tuple[int, int]:
        from types import SimpleNamespace

        from ..diffusion.sampling import NEG_INF, top1
        from ..diffusion.sspd import block_of

        grammar = self.grammar
        canvas = SimpleNamespace(canvas=tokens[None].clone(), masked=masked[None].clone())
        x0, conf = proposed[0].clone().to(tokens.device), proposed[1].clone()
        view = CanvasGrammar([], grammar.eos)  # row b alone, sharing its state and witness
        view.rows, view.witness, view.first = [grammar.rows[b]], [grammar.witness[b]], [None]
        view.propose_first(canvas, logits[None], x0, conf, 0.0, "low_confidence", [None])
        start, end = block_of(masked, self.length)
        candidates = masked.clone()
        candidates[:start] = False
        candidates[end:] = False
        commit = view.filter(canvas, x0, top1(conf.masked_fill(~candidates[None], NEG_INF)))
        grammar.witness[b] = view.witness[0]
        pos = int(commit[0].nonzero()[0])
        return pos, int(x0[0, pos])
