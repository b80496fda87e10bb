"""Constrained generation: JSON schema, regex, Lark grammar and choice constraints through llguidance.

`compile_constraint` validates a constraint against a model's tokenizer; `GrammarMask` is the logits
processor the `Sampler` runs (one `RowConstraint` per row); `prune` cuts drafts at the first token the
grammar rejects; `HealingMask` and `heal` implement token healing. Around them: timing.py (cheap
timers for mask / check / fast-forward time), batched.py (every mask of a verify step from one
llguidance call; mask_cost.py measures it against one call per node), validity.py (does a text satisfy a constraint),
json_suite.py + bench.py (the `json` bench suite), fastforward.py (plain decoding that feeds forced
tokens), diffusion.py (the diffusion samplers under a grammar). See docs/CONSTRAINTS.md.
"""

from decodelab.constraints.healing import HealingMask, heal, row_processors
from decodelab.constraints.matcher import GrammarMask, RowConstraint, prune, unpack
from decodelab.constraints.spec import KINDS, Grammar, compile_constraint, llg_tokenizer

__all__ = ["KINDS", "Grammar", "GrammarMask", "HealingMask", "RowConstraint", "compile_constraint", "heal",
           "llg_tokenizer", "prune", "row_processors", "unpack"]
