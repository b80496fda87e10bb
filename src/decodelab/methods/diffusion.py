"""Registers the masked-diffusion samplers (they live in decodelab/diffusion/methods.py)."""

from ..diffusion import methods as _diffusion_methods  # noqa: F401
