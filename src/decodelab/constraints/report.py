"""Counts behind docs/CONSTRAINTS.md (no timings): `python -m decodelab.constraints.report`.

- validity: outputs that satisfy their constraint, per method, over CASES × PROMPTS (seeded);
- awrs_checks: constraint checks AWRS makes per token on those generations, next to the vocabulary
  size a full mask covers;
- mask_vs_validate: states where llguidance's mask and its token-validity check disagree, and how
  many of those have bytes forced by the grammar (the case awrs handles with a full mask);
- fast_forward: grammar-forced tokens fed as drafts and target forward passes, per method, summed
  over the cases (greedy has no fast-forward: its passes are the baseline).
"""

from __future__ import annotations

import argparse
import json
import re

import torch

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                           "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["name", "n"], "additionalProperties": False}
CASES = [{"json_schema": SCHEMA}, {"regex": r"(0|[1-9][0-9]?)( [+*] (0|[1-9][0-9]?)){0,2}"},
         {"choice": ["True", "False", "None", "self"]}, {"lark": 'start: "(" NUM ("," NUM)? ")"\nNUM: /[0-9]/'}]
PROMPTS = ["x = ", "def area(r):\n    return ", "result = f(", "# config\nDEBUG = "]
METHODS = ["greedy", "sample", "speculative", "pld", "lookahead", "recycling", "tree", "selfspec", "awrs"]


def satisfied(constraint: dict, text: str) -> bool:
    kind, value = next(iter(constraint.items()))
    if kind == "json_schema":
        import jsonschema

        try:
            jsonschema.validate(json.loads(text), value)
            return True
        except (ValueError, jsonschema.ValidationError):
            return False
    if kind == "regex":
        return re.fullmatch(value, text) is not None
    if kind == "choice":
        return text in value
    return re.fullmatch(r"\([0-9](,[0-9])?\)", text) is not None


def _states(lm, constraint, tokens):
    from . import RowConstraint, compile_constraint

    row = RowConstraint(compile_constraint(lm, constraint))
    for k in range(len(tokens)):
        row.seek(tokens[:k])
        yield row, tokens[k]


def _awrs_checks(lm, prompt, constraint, tokens, seed) -> list[int]:
    """Constraint checks AWRS makes at each state of a constrained generation."""
    from .awrs import awrs_token

    ids, gen, out = lm.encode(prompt), torch.Generator().manual_seed(seed), []
    with torch.inference_mode():
        logits = lm.session().forward(ids + tokens, last_only=False)[0, len(ids) - 1:]  # [len(tokens)+1, V]
    for k, (row, _) in enumerate(_states(lm, constraint, tokens)):
        def accept(t, row=row):
            return row.accepting if t in lm.eos_token_ids else row.validate([t]) == 1
        out.append(awrs_token(logits[k].log_softmax(-1), accept, gen, weight=False)[2])
    return out


def _disagreements(lm, constraint, tokens) -> tuple[int, int, int, int, int]:
    """(states, mask ≠ validity, of those with forced bytes, states with forced tokens, of those whose
    mask is exactly the first forced token)."""
    total = differ = forced = ff_states = ff_single = 0
    for row, _ in _states(lm, constraint, tokens):
        mask = set(row.allowed(lm.vocab_size).nonzero().flatten().tolist())
        valid = {t for t in range(lm.vocab_size)
                 if (row.accepting if t in lm.eos_token_ids else row.validate([t]) == 1)}
        total += 1
        if mask != valid:
            differ += 1
            forced += row.forced()
        ff = row.matcher.compute_ff_tokens()
        if ff:
            ff_states += 1
            ff_single += mask == {ff[0]}
    return total, differ, forced, ff_states, ff_single


def report(model: str, max_new_tokens: int) -> dict:
    import decodelab

    lm = decodelab.load(model)
    validity, checks, agree, forward = {}, [], [0] * 5, {}
    for method in METHODS:
        ok = total = 0
        forward[method] = {"forward_passes": 0, "forced_tokens": 0, "new_tokens": 0}
        for k, (constraint, prompt) in enumerate((c, p) for c in CASES for p in PROMPTS[:2]):
            g = decodelab.generate(lm, prompt, method=method, seed=k, max_new_tokens=max_new_tokens,
                                   temperature=0.0 if method == "greedy" else 0.8, constraint=constraint)
            ok += satisfied(constraint, g.text)
            total += 1
            for key in forward[method]:
                forward[method][key] += getattr(g.stats, key)
            if method == "sample":
                checks += _awrs_checks(lm, prompt, constraint, g.token_ids, k)
                agree = [a + b for a, b in zip(agree, _disagreements(lm, constraint, g.token_ids))]
        validity[method] = f"{ok}/{total}"
    return {"model": model, "max_new_tokens": max_new_tokens, "validity": validity,
            "awrs_checks_per_token": {"mean": round(sum(checks) / len(checks), 2), "max": max(checks),
                                      "tokens": len(checks), "vocab_size": lm.vocab_size},
            "mask_vs_validate": {"states": agree[0], "disagree": agree[1], "disagree_with_forced_bytes": agree[2],
                                 "forced_token_states": agree[3], "mask_is_first_forced_token": agree[4]},
            "fast_forward": forward}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin:pyco")
    p.add_argument("--max-new-tokens", type=int, default=48)
    args = p.parse_args()
    print(json.dumps(report(args.model, args.max_new_tokens)))


if __name__ == "__main__":
    main()
