"""Shared constraints, prompts and checks for the constraint tests."""

from __future__ import annotations

import json
import re

import torch

from decodelab.constraints import compile_constraint
from decodelab.processors import Sampler, check_sampling_params

from fakes import tiny_lm

# Small JSON schemas of the kinds real ones use (nested objects, enums, bounded arrays, patterns,
# optional fields, $ref, anyOf), kept small enough that a 15M model finishes them in ~40 tokens.
SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "kind": {"enum": ["int", "str", "list"]}},
     "required": ["ok", "kind"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 1, "maxItems": 3},
    {"type": "object", "properties": {"id": {"type": "string", "pattern": "^[a-z]{1,4}[0-9]$"},
                                      "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}},
     "required": ["id"], "additionalProperties": False},
    {"$defs": {"pt": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -9, "maximum": 9}},
                      "required": ["x"], "additionalProperties": False}},
     "type": "object", "properties": {"p": {"$ref": "#/$defs/pt"}},
     "required": ["p"], "additionalProperties": False},
    {"anyOf": [{"type": "null"}, {"type": "object", "properties": {"v": {"enum": [1, 2, 3]}},
                                  "required": ["v"], "additionalProperties": False}]},
]
REGEX = r"(0|[1-9][0-9]?)( [+*] (0|[1-9][0-9]?)){0,2}"
CHOICES = ["True", "False", "None", "self"]
CONSTRAINTS = [{"json_schema": s} for s in SCHEMAS] + [{"regex": REGEX}, {"choice": CHOICES},
                                                       {"lark": 'start: "(" NUM ("," NUM)? ")"\nNUM: /[0-9]/'}]


def satisfied(constraint: dict, text: str) -> bool:
    """Does `text` satisfy the constraint? (JSON: parses and validates with `jsonschema`.)"""
    kind, value = next(iter(constraint.items()))
    if kind == "json_schema":
        import jsonschema

        try:
            jsonschema.validate(json.loads(text), value)
        except (ValueError, jsonschema.ValidationError):
            return False
        return True
    if kind == "regex":
        return re.fullmatch(value, text) is not None
    if kind == "choice":
        return text in value
    return re.fullmatch(r"\([0-9](,[0-9])?\)", text) is not None  # the lark case above


def flat_lm(seed: int, scale: float = 0.03):
    """A tiny random llama whose logits are flat enough that several constrained outcomes are likely."""
    lm = tiny_lm("llama", seed=seed)
    with torch.no_grad():
        lm.model.get_output_embeddings().weight.mul_(scale)
    return lm


@torch.inference_mode()
def exact_outcomes(lm, prompt: str, constraint: dict, token_healing: bool = False, **params) -> dict[str, float]:
    """Exact probability of every constrained output text, walking the masked distribution (with token
    healing: the prompt backed up by its last token, the first token re-covering it, the text after it)."""
    from decodelab.constraints import row_processors

    grammar = compile_constraint(lm, constraint)
    (ids,), mask, healer, (healed,) = row_processors(lm, [lm.encode(prompt)], grammar, token_healing)
    sampler = Sampler(check_sampling_params(params), len(ids), constraint=mask, healing=healer)
    row = mask.rows[0]
    out: dict[str, float] = {}

    def add(prefix: list[int], prob: float) -> None:
        text = lm.decode(prefix)[len(healed):]
        out[text] = out.get(text, 0.0) + prob

    def walk(prefix: list[int], prob: float) -> None:
        if prefix and row.seek(prefix) and row.stopped:
            return add(prefix, prob)
        history = torch.tensor([ids + prefix])
        p = sampler.probs(history, lm.model(history).logits[:, -1])[0]
        for t in p.nonzero().flatten().tolist():
            if t in lm.eos_token_ids:
                add(prefix, prob * float(p[t]))
            else:
                walk(prefix + [t], prob * float(p[t]))

    walk([], 1.0)
    return out


def _obj(props: dict, required=None) -> dict:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required,
            "additionalProperties": False}


_S = {"type": "string", "maxLength": 6}
_I = {"type": "integer", "minimum": 0, "maximum": 999}
# 24 more: realistic shapes (configs, records, API payloads), all bounded so a model can finish them
# (a free "number" lets a random model write fraction digits forever).
MORE_SCHEMAS = [
    _obj({"host": _S, "port": {"type": "integer", "minimum": 1, "maximum": 9999}}),
    _obj({"level": {"enum": ["debug", "info", "warn", "error"]}, "msg": _S}),
    _obj({"user": _obj({"id": _I, "name": _S})}),
    _obj({"items": {"type": "array", "items": _I, "minItems": 1, "maxItems": 3}}),
    _obj({"x": {"type": "integer", "minimum": -10, "maximum": 10}, "y": {"type": "integer", "minimum": -10, "maximum": 10}}),
    _obj({"ok": {"type": "boolean"}, "code": {"enum": [200, 404, 500]}}),
    _obj({"date": {"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"}}),
    _obj({"email": {"type": "string", "pattern": "^[a-z]{1,5}@[a-z]{1,5}\\.(com|org)$"}}),
    _obj({"tags": {"type": "array", "items": {"enum": ["py", "rs", "go"]}, "maxItems": 3}}),
    _obj({"name": _S, "nick": _S}, required=["name"]),
    _obj({"a": {"anyOf": [_I, {"type": "null"}]}}),
    _obj({"shape": {"oneOf": [_obj({"r": _I}), _obj({"w": _I, "h": _I})]}}),
    {"type": "array", "items": _obj({"k": _S, "v": _I}), "minItems": 1, "maxItems": 2},
    _obj({"version": {"type": "string", "pattern": "^[0-9]\\.[0-9]{1,2}\\.[0-9]$"}}),
    _obj({"matrix": {"type": "array", "items": {"type": "array", "items": {"enum": [0, 1]}, "minItems": 2,
                                                                "maxItems": 2}, "minItems": 2, "maxItems": 2}}),
    {"enum": ["red", "green", "blue"]},
    {"type": "integer", "minimum": 10, "maximum": 99},
    {"type": "string", "pattern": "^[A-Z][a-z]{2,5}$"},
    _obj({"point": {"$ref": "#/$defs/p"}, "other": {"$ref": "#/$defs/p"}}) | {
        "$defs": {"p": _obj({"x": {"type": "integer", "minimum": 0, "maximum": 9}})}},
    _obj({"id": {"type": "string", "minLength": 2, "maxLength": 4}, "score": {"enum": [0, 0.5, 1]}}),
    _obj({"status": {"const": "done"}, "n": _I}),
    _obj({"path": {"type": "string", "pattern": "^/[a-z]{1,4}(/[a-z]{1,4}){0,2}$"}}),
    _obj({"pair": {"type": "array", "prefixItems": [_S, _I], "items": False, "minItems": 2}}),
    _obj({"meta": _obj({"a": {"type": "boolean"}, "b": {"type": "null"}})}),
]
