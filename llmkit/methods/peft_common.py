"""What the PEFT-backed methods share: wrapping with the new head kept trainable and saved."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmkit.errors import ModelError
from llmkit.methods.prefix_cache import pass_prefix_as_cache
from llmkit.methods.registry import ModelTraits

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def wrap_with_peft(model: PreTrainedModel, config: Any, traits: ModelTraits) -> Any:
    """Wrap `model` with a PEFT config (LoraConfig, PrefixTuningConfig, PromptTuningConfig...)."""
    from peft import get_peft_model

    # PEFT adds `classifier`/`score` by itself; naming every newly initialised module as well
    # keeps heads with other names (or a fresh pooler) trained and saved with the adapter.
    config.modules_to_save = sorted(set(config.modules_to_save or []) | set(traits.new_modules))
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as exc:
        raise ModelError(
            f"PEFT could not wrap this {traits.model_type} model: {exc}",
            hint=_target_hint(traits),
        ) from exc
    # PEFT appends its own head names (`classifier`, `score`) to the list again; keep each once.
    saved = wrapped.peft_config["default"]
    if saved.modules_to_save:
        saved.modules_to_save = list(dict.fromkeys(saved.modules_to_save))
    return adapted_to_installed_libraries(wrapped)


def adapted_to_installed_libraries(peft_model: Any) -> Any:
    """Every PEFT model llmkit trains or loads passes through here: PEFT 0.21's own code paths
    that break on the installed transformers are replaced (prefix_cache says why)."""
    pass_prefix_as_cache(peft_model)
    return peft_model


def _target_hint(traits: ModelTraits) -> str:
    names = ", ".join(traits.linear_module_names[:12]) or "(none found)"
    return f"set method.target_modules to some of this model's linear layers: {names}"
