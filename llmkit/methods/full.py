"""Supervised fine-tuning of every weight: no wrapper, the model trains as loaded."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from llmkit.methods.registry import MethodOptions, ModelTraits, register_method

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class FullOptions(MethodOptions):
    name: Literal["full"] = "full"
    default_learning_rate = 5e-5
    summary = "all weights trained"
    trains_base_weights = True


def wrap(model: PreTrainedModel, options: FullOptions, traits: ModelTraits) -> PreTrainedModel:
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


register_method(FullOptions, wrap)
