"""Tuning methods. Importing this package registers every built-in method."""

from llmkit.methods import full, lora, prefix, prompt  # noqa: F401  (registration)
from llmkit.methods.registry import METHODS, MethodOptions, MethodSpec, ModelTraits, get_method

__all__ = ["METHODS", "MethodOptions", "MethodSpec", "ModelTraits", "get_method"]
