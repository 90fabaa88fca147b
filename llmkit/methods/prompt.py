"""Prompt tuning through PEFT: trained soft-prompt embeddings prepended to the input."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field, PositiveInt, model_validator

from llmkit.methods.peft_common import wrap_with_peft
from llmkit.methods.registry import MethodOptions, ModelTraits, register_method

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class PromptOptions(MethodOptions):
    name: Literal["prompt"] = "prompt"
    num_virtual_tokens: PositiveInt = Field(20, description="Number of soft-prompt embeddings.")
    init: Literal["random", "text"] = Field(
        "random", description="Start the prompt from random vectors or from init_text's embeddings."
    )
    init_text: str | None = Field(None, description="Text whose token embeddings seed the prompt.")
    default_learning_rate = 3e-2
    summary = "trained soft-prompt embeddings before the input"
    virtual_tokens_in_input = True
    merge_refusal = (
        "prompt tuning prepends trained embeddings to every input; they are inputs, not changes to "
        "existing weights, so no plain checkpoint computes the same function"
    )

    # _init_text_matches_init, as JSON Schema states it (for editors).
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"required": ["init"], "properties": {"init": {"const": "text"}}},
            "then": {
                "required": ["init_text"],
                "properties": {"init_text": {"type": "string", "minLength": 1}},
            },
            "else": {"properties": {"init_text": {"enum": [None, ""]}}},
        }
    )

    @property
    def virtual_tokens(self) -> int:
        return self.num_virtual_tokens

    @model_validator(mode="after")
    def _init_text_matches_init(self) -> PromptOptions:
        if self.init == "text" and not self.init_text:
            raise ValueError("init: text needs init_text, e.g. init_text: 'Classify the sentiment:'")
        if self.init == "random" and self.init_text:
            raise ValueError("init_text is only used with init: text; set init: text or drop it")
        return self


def wrap(model: PreTrainedModel, options: PromptOptions, traits: ModelTraits) -> Any:
    from peft import PromptTuningConfig, PromptTuningInit, TaskType

    config = PromptTuningConfig(
        task_type=TaskType(traits.peft_task_type),
        num_virtual_tokens=options.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT if options.init == "text" else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=options.init_text,
        tokenizer_name_or_path=_tokenizer_path(model) if options.init == "text" else None,
    )
    return wrap_with_peft(model, config, traits)


def _tokenizer_path(model: PreTrainedModel) -> str:
    # PEFT re-loads the tokenizer by path to embed init_text; the model was loaded from there.
    return str(model.config._name_or_path)


register_method(PromptOptions, wrap)
