"""Log-probabilities of generated tokens, for every causal method: one teacher-forced forward over the
prompt and the output.

What is reported is the model's own next-token distribution (log-softmax of its logits, before any
temperature, penalty, warper or grammar mask) — vLLM's default ("raw_logprobs") and what evaluation
harnesses score with. It is the same for every method: a lossless method that emits greedy's tokens
reports greedy's logprobs, whichever way it found them; a search or meta method's chosen candidate is
scored the same way. Cost: one forward pass over prompt + output per row, after generation.
"""

from __future__ import annotations

import torch

from .errors import UserError

MAX_TOP = 20  # OpenAI's chat limit for top_logprobs


def check_top(value) -> int | None:
    """`logprobs=None` (off), or k ≥ 0 alternatives per token besides the chosen one (0 ≤ k ≤ 20)."""
    if value is None or value is False:
        return None
    if value is True:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOP:
        raise UserError(f"logprobs must be None or an integer in [0, {MAX_TOP}] (alternatives per token), got {value!r}")
    return value


def refuse_healed(top: int | None, token_healing: bool) -> None:
    """Logprobs are of the prompt as given: a healed prompt (backed up by a token the first generated token
    overlaps) has none to report."""
    if top is not None and token_healing:
        raise UserError("logprobs are defined without token healing (a healed prompt is not the prompt given: "
                        "its first generated token overlaps it)")


@torch.inference_mode()
def score(lm, prompt: list[int], tokens: list[int], top: int = 0):
    """(log p of each token, its `top` most likely alternatives as (token id, log p) pairs) under `lm`."""
    if not tokens:
        return [], []
    logits = lm.session().forward(prompt + tokens)[0, len(prompt) - 1 : -1].float()  # [n, V]
    return _of(logits, tokens, top)


def _of(logits: torch.Tensor, tokens: list[int], top: int):
    """logits [n, V] of the distributions the n tokens were drawn from → (log p of each, top alternatives)."""
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(1, torch.tensor(tokens, device=logp.device)[:, None])[:, 0].tolist()
    alternatives = [[] for _ in tokens]
    if top:
        values, ids = logp.topk(top, dim=-1)
        alternatives = [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    return chosen, alternatives


def attach(lm, prompt: list[int], generation, top: int) -> None:
    """Fill `generation.logprobs` and `.top_logprobs` for its token ids."""
    generation.logprobs, generation.top_logprobs = score(lm, prompt, generation.token_ids, top)


class Scorer:
    """One row's logprobs as its tokens stream (the Engine, for streamed responses): the prompt is run once,
    then each event's tokens in one cached forward; `score`'s numbers over the whole output up to float
    rounding (≤ 1e-4 in the tests)."""

    @torch.inference_mode()
    def __init__(self, lm, prompt: list[int], top: int):
        self.top = top
        self.session = lm.session()
        self.last = self.session.forward(prompt, last_only=True)[0, -1].float()  # the next token's logits
        self.logprobs: list[float] = []
        self.alternatives: list[list[tuple[int, float]]] = []

    @torch.inference_mode()
    def score(self, tokens: list[int]):
        """(log p, alternatives) of these next tokens; they are kept for the row's Generation too."""
        if not tokens:
            return [], []
        logits = self.session.forward(tokens)[0].float()  # [n, V]: the distributions after each token
        chosen, alternatives = _of(torch.cat([self.last[None], logits[:-1]]), tokens, self.top)
        self.last = logits[-1]
        self.logprobs += chosen
        self.alternatives += alternatives
        return chosen, alternatives
