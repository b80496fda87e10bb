"""decodelab: every decoding algorithm on any Hugging Face causal LM, under one API."""

from .api import generate, generate_batch, next_token_probs, stream
from .engine import Engine, Event, Generation
from .errors import DecodelabError, ModelError, UserError
from .image import ImageGeneration, generate_image, generate_images, image_methods
from .methods import MethodInfo, methods
from .model import LM, builtin_path, load
from .processors import SamplingParams
from .stats import Stats

__version__ = "0.1.0"

__all__ = ["LM", "DecodelabError", "Engine", "Event", "Generation", "MethodInfo", "ModelError", "SamplingParams", "Stats", "UserError",
           "builtin_path", "generate", "generate_batch", "load", "methods", "next_token_probs", "stream"]
__all__ += ["ImageGeneration", "generate_image", "generate_images", "image_methods"]
