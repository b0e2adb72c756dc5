"""maejax: masked autoencoders for cellular morphology in JAX / Flax NNX."""

from maejax.api import Model, load, save_pretrained
from maejax.models import create, get_config, REGISTRY as MODELS

__all__ = ["Model", "load", "save_pretrained", "create", "get_config", "MODELS"]
__version__ = "0.1.0"
