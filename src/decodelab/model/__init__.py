"""The model layer: the only code that touches transformers.

`LM` wraps a causal LM and its tokenizer; `Session` owns one KV cache and runs forward passes over
new tokens with explicit positions and optional 4-D (tree) attention masks; `truncate` / `compact`
roll the cache back. Everything above this package works on token ids and logits only.
"""

from .lm import LM, builtin_path, load
from .session import Session

__all__ = ["LM", "Session", "builtin_path", "load"]
