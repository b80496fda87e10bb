"""Registers the image-token methods (raster, sjd, zipar, nar, lpd, mulo; they live in decodelab/image/)
with kind="image": `decodelab.methods()` lists them and the API refuses them on text models."""

from ..image.generate import image_methods

image_methods()
