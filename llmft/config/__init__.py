"""Recipe schema (one model per section) and the one load path."""

from llmft.config.loader import load_raw, load_recipe, validate_recipe
from llmft.config.recipe import Recipe

__all__ = ["Recipe", "load_raw", "load_recipe", "validate_recipe"]
