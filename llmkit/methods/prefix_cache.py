"""Prefix tuning's trained key/value prefix, handed to the model as its cache by llmkit.

PEFT's prefix tuning for classification-style tasks (sequence and token classification, QA)
decides whether a model can take a prefix by looking for a `past_key_values` parameter in its
`forward` signature, then calls the backbone with that keyword. transformers 5.24 renamed the
parameter to `cache` (keeping `past_key_values` only as a deprecated alias), so PEFT 0.21 refuses
every model there. llmkit sidesteps the signature check: it asks PEFT for the prefix as a cache
(`get_prompt`) and passes it to the task model under whichever name the installed transformers
uses. The task model keeps its own head, pooling and loss, so the computation is the one PEFT made
before the rename. PEFT's causal-LM path passes the cache itself and is left alone.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

# The parameter through which transformers models take a cache, newest name first.
CACHE_ARGUMENTS = ("cache", "past_key_values")


def cache_argument(model: Any) -> str:
    """The keyword under which `model`'s backbone takes a key/value cache."""
    backbone = getattr(model, "base_model", model)
    parameters = inspect.signature(backbone.forward).parameters
    for name in CACHE_ARGUMENTS:
        if name in parameters:
            return name
    raise ValueError(
        f"{type(backbone).__name__}.forward takes no key/value cache "
        f"(none of: {', '.join(CACHE_ARGUMENTS)}), which prefix tuning needs"
    )


def pass_prefix_as_cache(peft_model: Any) -> None:
    """Make a prefix-tuned PEFT model (not causal-LM) feed its prefix through llmkit's path."""
    if not hasattr(peft_model, "_prefix_tuning_forward"):
        return  # causal LM and models without PEFT's classification-style prefix path
    peft_model._prefix_tuning_forward = types.MethodType(_prefix_tuning_forward, peft_model)


def _prefix_tuning_forward(
    self: Any, input_ids: Any = None, inputs_embeds: Any = None, labels: Any = None, **kwargs: Any
) -> Any:
    # Called by PEFT's forward, which has already prepended the prefix's positions to the mask.
    task_model = self.base_model
    batch_size = (input_ids if input_ids is not None else inputs_embeds).shape[0]
    kwargs[cache_argument(task_model)] = self.get_prompt(batch_size)
    # transformers 5 takes these through **kwargs; an explicit None would clash with the models
    # that set return_dict themselves when calling their backbone.
    for unset in [
        key for key in ("output_attentions", "output_hidden_states", "return_dict") if kwargs.get(key) is None
    ]:
        del kwargs[unset]
    return task_model(input_ids=input_ids, inputs_embeds=inputs_embeds, labels=labels, **kwargs)
