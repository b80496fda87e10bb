"""Image-token models and parallel decoding of visual autoregressive models (see docs/VISUAL.md)."""

from .generate import ImageGeneration, generate_image, generate_images, image_methods

__all__ = ["ImageGeneration", "generate_image", "generate_images", "image_methods"]
