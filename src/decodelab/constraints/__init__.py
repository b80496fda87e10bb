"""Constrained generation: JSON schema, regex, Lark grammar and choice constraints through llguidance.

`compile_constraint` validates a constraint against a model's tokenizer; `GrammarMask` is the logits
processor the `Sampler` runs (one `RowConstraint` per row); `prune` cuts drafts at the first token the
grammar rejects. See docs/CONSTRAINTS.md.
"""

from decodelab.constraints.matcher import GrammarMask, RowConstraint, prune, unpack
from decodelab.constraints.spec import KINDS, Grammar, compile_constraint, llg_tokenizer

__all__ = ["KINDS", "Grammar", "GrammarMask", "RowConstraint", "compile_constraint", "llg_tokenizer",
           "prune", "unpack"]
