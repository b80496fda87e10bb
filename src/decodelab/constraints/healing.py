"""Token healing: back the prompt up by its last token and make the first generated token re-cover it.

A prompt that ends in the middle of what the tokenizer would merge ("x =" + " " where the model
learned " 1" as one token, or a trailing newline before an indent) puts the model off its training
distribution. Healing removes the prompt's last token t and constrains the first generated token to
one whose text starts with text(t), so the model chooses the tokenization itself (Lundberg, "The
Art of Prompt Design: Prompt Boundaries and Token Healing", guidance blog 2023, no arXiv id). It backs
up one token only; Vieira et al., "From Language Models over Tokens to Language Models over
Characters" (arXiv:2412.03719) treat the prompt boundary problem exactly and show where one-token
healing falls short. Generated text excludes the re-covered text(t); `token_ids` are the model's own
tokens, the first of which overlaps the prompt.

Under a constraint the grammar is prefixed with text(t) (an llguidance grammar that references the
user's grammar), so the grammar still constrains exactly the text after the original prompt.
"""

from __future__ import annotations

import json

import torch

from .spec import Grammar


def decoded_vocab(lm) -> list[str]:
    """Every token's text, decoded alone (cached per model)."""
    if "decoded_vocab" not in lm.state:
        lm.state["decoded_vocab"] = [lm.decode([i]) for i in range(lm.vocab_size)]
    return lm.state["decoded_vocab"]


def heal(lm, prompt: list[int]) -> tuple[list[int], str]:
    """(prompt without its last token, that token's text); unchanged when it cannot be healed."""
    if len(prompt) < 2 or prompt[-1] in lm.eos_token_ids:
        return prompt, ""
    text = lm.decode(prompt[-1:])
    if not text or "\ufffd" in text:  # a partial UTF-8 sequence: no text to re-cover
        return prompt, ""
    return prompt[:-1], text


def healed_grammar(grammar: Grammar, prefix: str) -> Grammar:
    """The grammar of `prefix` followed by what `grammar` accepts."""
    if not prefix:
        return grammar
    text = grammar.text.strip()  # llguidance takes a JSON grammar set or plain Lark (lark / choice)
    inner = json.loads(text)["grammars"] if text.startswith("{") else [{"lark_grammar": grammar.text}]
    first = {**inner[0], "name": "healed_inner"}
    head = {"lark_grammar": f"start: {json.dumps(prefix, ensure_ascii=False)} @healed_inner"}
    text = json.dumps({"grammars": [head, first, *inner[1:]]})
    return Grammar(grammar.kind, grammar.source, text, grammar.tokenizer)


class HealingMask:
    """Logits processor: at the first generated position only tokens that start with the removed text.

    Kept as an additive row per row (0 allowed / -inf not, what `GrammarMask` adds too: matcher.apply_bias),
    so a row whose allowed tokens a penalty already removed never turns NaN."""

    needs_history = True

    def __init__(self, lm, removed: list[str], prompt_len: int):
        vocab = decoded_vocab(lm)
        self.prompt_len = prompt_len
        self.removed = list(removed)  # per row: the text the first token re-covers ("" when not healed)
        allowed = torch.ones(len(removed), lm.vocab_size, dtype=torch.bool)  # [B, V]
        for b, text in enumerate(removed):
            if text:
                allowed[b] = torch.tensor([v.startswith(text) for v in vocab])
        self.bias = torch.where(allowed, 0.0, -float("inf"))  # [B, V] float32

    def for_row(self, b: int, prompt_len: int) -> "HealingMask":
        """A one-row view for row b's own unpadded history (see GrammarMask.for_row)."""
        return self._view(prompt_len, self.bias[b : b + 1], self.removed[b : b + 1])

    def repeated(self, k: int) -> "HealingMask":
        """The mask for k copies of every row, prompt-major (beam search's B·K beams, DeAL's states)."""
        return self._view(self.prompt_len, self.bias.repeat_interleave(k, dim=0),
                          [t for t in self.removed for _ in range(k)])

    @staticmethod
    def _view(prompt_len: int, bias: torch.Tensor, removed: list[str]) -> "HealingMask":
        view = HealingMask.__new__(HealingMask)
        view.prompt_len, view.bias, view.removed = prompt_len, bias, removed
        return view

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids: [B, L]; scores: [B, V]
        from .matcher import apply_bias

        if input_ids.shape[1] > self.prompt_len:  # past the first generated token: nothing to do
            return scores
        return apply_bias(scores, self.bias[:, : scores.shape[-1]])


def row_processors(lm, prompts: list[list[int]], grammar: Grammar | list[Grammar] | None, token_healing: bool):
    """(prompts, GrammarMask or None, HealingMask or None, re-covered text per row) for one batch.

    `grammar` may be a list with one grammar per row: a batch whose rows follow different constraints."""
    from .matcher import GrammarMask

    healed = [""] * len(prompts)
    if token_healing:
        prompts, healed = (list(x) for x in zip(*(heal(lm, p) for p in prompts)))
    width = max(len(p) for p in prompts)
    mask = None
    if grammar is not None:
        grammars = grammar if isinstance(grammar, list) else [grammar] * len(prompts)
        if len(grammars) != len(prompts):
            raise ValueError(f"{len(grammars)} grammars for {len(prompts)} rows")
        mask = GrammarMask([healed_grammar(g, h) for g, h in zip(grammars, healed)], width, lm.eos_token_ids)
    healer = HealingMask(lm, healed, width) if any(healed) else None
    return prompts, mask, healer, healed
