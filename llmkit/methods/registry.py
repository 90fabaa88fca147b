"""The tuning-method registry: a method is an options schema plus a function that wraps the model.

Every method shares one training and one evaluation path; they differ only in `wrap`. Adding a
method means adding one module that calls `register_method` and one row in the test matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class MethodOptions(BaseModel):
    """Options common to every method; subclasses add their own and fix `name`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    # The learning rate used when the recipe gives none: PEFT methods need far higher rates than
    # full fine-tuning, and a shared default leaves them at the majority class.
    default_learning_rate: ClassVar[float]
    summary: ClassVar[str]
    # False for methods that keep the base weights frozen behind an adapter saved on its own.
    updates_base_weights: ClassVar[bool] = False


@dataclass(frozen=True)
class ModelTraits:
    """What a method needs to know about the model it wraps."""

    model_type: str
    is_decoder: bool
    # Modules whose weights were absent from the checkpoint (the classification head, usually).
    # They start random, so every method must train them and save them with the adapter.
    new_modules: tuple[str, ...] = field(default_factory=tuple)
    linear_module_names: tuple[str, ...] = field(default_factory=tuple)


WrapFn = Callable[["PreTrainedModel", Any, ModelTraits], Any]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    options: type[MethodOptions]
    wrap: WrapFn


METHODS: dict[str, MethodSpec] = {}


def register_method(options: type[MethodOptions], wrap: WrapFn) -> None:
    name = options.model_fields["name"].default
    if not isinstance(name, str):
        raise TypeError(f"{options.__name__}.name needs a Literal default naming the method")
    METHODS[name] = MethodSpec(name=name, options=options, wrap=wrap)


def get_method(name: str) -> MethodSpec:
    return METHODS[name]
