"""Masked diffusion LMs: the model kind (model.py, load.py), the training objective (objective.py),
the shared decoding loop (sampling.py) and the samplers' commit rules (rules.py, methods.py).

Importing this package registers decodelab's diffusion architecture with transformers' Auto classes.
"""

from .model import DiffusionConfig, DiffusionForMaskedLM

__all__ = ["DiffusionConfig", "DiffusionForMaskedLM"]
