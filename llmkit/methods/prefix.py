"""Prefix tuning through PEFT: trained key/value prefixes in every attention layer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field, PositiveInt, model_validator

from llmkit.methods.peft_common import wrap_with_peft
from llmkit.methods.registry import MethodOptions, ModelTraits, register_method

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class PrefixOptions(MethodOptions):
    name: Literal["prefix"] = "prefix"
    num_virtual_tokens: PositiveInt = Field(20, description="Prefix length per layer.")
    projection: bool = Field(
        False, description="Reparameterise the prefix through a two-layer MLP (P-tuning v2 style)."
    )
    projection_hidden_size: PositiveInt | None = Field(
        None, description="Hidden size of the projection MLP; needs projection: true."
    )
    default_learning_rate = 1e-2
    summary = "trained key/value prefixes in every layer"
    merge_refusal = (
        "prefix tuning adds trained key/value vectors to every attention layer as extra positions; "
        "they are inputs, not changes to existing weights, so no plain checkpoint computes the same "
        "function"
    )
    plain_peft_gap = (
        "PEFT 0.21 runs prefix tuning only on models whose forward takes `past_key_values`, which "
        "transformers 5.24 renamed `cache` (llmkit.methods.prefix_cache)"
    )

    # _projection_size_needs_projection, as JSON Schema states it (for editors).
    model_config = ConfigDict(
        json_schema_extra={
            "if": {
                "required": ["projection_hidden_size"],
                "properties": {"projection_hidden_size": {"type": "integer"}},
            },
            "then": {"required": ["projection"], "properties": {"projection": {"const": True}}},
        }
    )

    @property
    def virtual_tokens(self) -> int:
        return self.num_virtual_tokens

    @model_validator(mode="after")
    def _projection_size_needs_projection(self) -> PrefixOptions:
        if self.projection_hidden_size is not None and not self.projection:
            raise ValueError("projection_hidden_size is only used with projection: true; set both or neither")
        return self


def wrap(model: PreTrainedModel, options: PrefixOptions, traits: ModelTraits) -> Any:
    from peft import PrefixTuningConfig, TaskType

    config = PrefixTuningConfig(
        task_type=TaskType(traits.peft_task_type),
        num_virtual_tokens=options.num_virtual_tokens,
        prefix_projection=options.projection,
        encoder_hidden_size=options.projection_hidden_size or model.config.hidden_size,
    )
    return wrap_with_peft(model, config, traits)


register_method(PrefixOptions, wrap)
