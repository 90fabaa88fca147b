"""The tuning-method registry: a method is an options schema plus a function that wraps the model.

Every method shares one training and one evaluation path; they differ only in `wrap`. Adding a
method means adding one module that calls `register_method` and one row in the test matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

from llmkit.models.traits import ModelTraits
from llmkit.recipe.yaml_types import whole_floats_as_ints

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class MethodOptions(BaseModel):
    """Options common to every method; subclasses add their own and fix `name`."""

    # Strict types, as the recipe JSON schema states them (see llmkit.recipe.yaml_types).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str
    # The learning rate used when the recipe gives none: PEFT methods need far higher rates than
    # full fine-tuning, and a shared default leaves them at the majority class.
    default_learning_rate: ClassVar[float]
    summary: ClassVar[str]
    # Facts the rest of llmkit asks a method about, instead of comparing its name.
    # Whether the base model's own weights train (full fine-tuning), or stay frozen behind an
    # adapter, prefix or prompt: the backward pass then skips their gradients (training/flops.py).
    trains_base_weights: ClassVar[bool] = False
    # Whether the virtual tokens (see `virtual_tokens`) are positions of the input sequence (prompt
    # tuning: they take position embeddings and are attended to and from) rather than extra
    # key/value context only (prefix tuning).
    virtual_tokens_in_input: ClassVar[bool] = False
    # Why `llmkit merge` cannot fold this method into plain weights; None when it can.
    merge_refusal: ClassVar[str | None] = None
    # True for methods whose trainable parameters may get no gradient in a step: DDP must then
    # search the graph for them every step (find_unused_parameters), at the cost of an extra pass.
    may_leave_parameters_unused: ClassVar[bool] = False
    # Why plain PEFT cannot run the saved adapter on the installed libraries, when it cannot:
    # loading code outside llmkit then passes it through
    # llmkit.methods.peft_common.adapted_to_installed_libraries (model cards say so).
    plain_peft_gap: ClassVar[str | None] = None

    @model_validator(mode="before")
    @classmethod
    def _whole_floats_are_integers(cls, data: Any) -> Any:
        return whole_floats_as_ints(cls, data)

    @property
    def virtual_tokens(self) -> int:
        """Trained positions the method adds in front of every sequence (0: none)."""
        return 0


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
    if name in METHODS:
        raise ValueError(f"a method named {name!r} is registered already ({METHODS[name].options.__name__})")
    METHODS[name] = MethodSpec(name=name, options=options, wrap=wrap)


def get_method(name: str) -> MethodSpec:
    return METHODS[name]
