"""Seeded synthetic exact-answer tasks: ParallelBench's Waiting Line operations and 4×4 Latin squares.

ParallelBench ("ParallelBench: Understanding the Trade-offs of Parallel Decoding in Diffusion LLMs")
shows that parallel decoding breaks on tasks whose answer tokens depend on each
other; these tasks have one exact answer, so accuracy is measured exactly:
an item is solved when `generation.text.strip() == item.answer`.

`names()` lists the tasks; `make(task, n, seed)` returns `n` items, the same ones for the same seed.
Prompts and answers are space-separated words from one fixed vocabulary (see tokenizer.py), so the
AR model `builtin:tasks-ar` and the diffusion model `builtin:tasks-diffusion` share one tokenizer.
"""

from .generators import Item, make, names

__all__ = ["Item", "make", "names"]
