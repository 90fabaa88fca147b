"""LoRA through PEFT: low-rank updates on chosen linear layers, plus the trained head."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PositiveInt

from llmkit.errors import ModelError
from llmkit.methods.peft_common import wrap_with_peft
from llmkit.methods.registry import MethodOptions, ModelTraits, register_method

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class LoraOptions(MethodOptions):
    name: Literal["lora"] = "lora"
    r: PositiveInt = Field(8, description="Rank of the low-rank update.")
    alpha: PositiveInt = Field(16, description="Scaling numerator: updates are scaled by alpha/r.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="Module names to adapt; null uses PEFT's per-architecture default "
        "(query/value projections).",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases to train.")
    default_learning_rate = 2e-3
    summary = "low-rank adapters on attention projections"


def wrap(model: PreTrainedModel, options: LoraOptions, traits: ModelTraits) -> Any:
    from peft import LoraConfig, TaskType
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    if options.target_modules is None and traits.model_type not in (
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    ):
        names = ", ".join(traits.linear_module_names[:12])
        raise ModelError(
            f"PEFT has no default LoRA target modules for model type '{traits.model_type}'.",
            hint=f"set method.target_modules, e.g. to some of: {names}",
        )
    if isinstance(options.target_modules, list):
        present = set(traits.linear_module_names)
        absent = [m for m in options.target_modules if m not in present]
        if absent:
            raise ModelError(
                f"method.target_modules names modules this {traits.model_type} model does not "
                f"have: {', '.join(absent)}.",
                hint="choose from its linear layers: " + ", ".join(traits.linear_module_names),
            )
    config = LoraConfig(
        task_type=TaskType(traits.peft_task_type),
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=options.target_modules,
        bias=options.bias,
        # GPT-2 style Conv1D layers store weights transposed; PEFT would warn and flip it itself.
        fan_in_fan_out=_has_conv1d(model),
    )
    return wrap_with_peft(model, config, traits)


def _has_conv1d(model: PreTrainedModel) -> bool:
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(module, Conv1D) for module in model.modules())


register_method(LoraOptions, wrap)
