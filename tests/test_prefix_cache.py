"""Prefix tuning reaches the model on the installed transformers, whatever it calls the cache.

transformers 5.24 renamed the models' `past_key_values` parameter to `cache`; PEFT 0.21's check for
classification-style tasks looks for the old name and refused every model. llmkit hands PEFT's
prefix to the task model itself (llmkit/methods/prefix_cache.py). These tests hold that path to
what prefix tuning means: the trained prefix changes the logits, for each task model PEFT would
route through that check, on an encoder and a decoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmkit.methods.prefix_cache import CACHE_ARGUMENTS, cache_argument


def _prefix_model(checkpoint: Path, task: str) -> tuple[object, dict[str, torch.Tensor]]:
    from peft import PrefixTuningConfig, TaskType
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    from llmkit.methods.peft_common import adapted_to_installed_libraries

    auto, task_type = {
        "sequence": (AutoModelForSequenceClassification, TaskType.SEQ_CLS),
        "token": (AutoModelForTokenClassification, TaskType.TOKEN_CLS),
    }[task]
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    torch.manual_seed(0)
    model = auto.from_pretrained(checkpoint, num_labels=3, pad_token_id=tokenizer.pad_token_id)
    from peft import get_peft_model

    config = PrefixTuningConfig(task_type=task_type, num_virtual_tokens=4)
    peft_model = adapted_to_installed_libraries(get_peft_model(model, config)).eval()
    batch = tokenizer(["a fine film", "dull"], padding=True, return_tensors="pt")
    return peft_model, dict(batch)


@pytest.mark.parametrize("task", ["sequence", "token"])
@pytest.mark.parametrize("architecture", ["bert", "gpt2"])
def test_changing_the_prefix_changes_the_logits(
    checkpoints: dict[str, Path], architecture: str, task: str
) -> None:
    model, batch = _prefix_model(checkpoints[architecture], task)
    labels = torch.zeros_like(batch["input_ids"]) if task == "token" else torch.tensor([0, 1])
    with torch.no_grad():
        before = model(**batch, labels=labels)
        embedding = model.prompt_encoder["default"].embedding.weight
        embedding.add_(torch.randn_like(embedding))
        after = model(**batch, labels=labels)
    assert torch.isfinite(before.loss)
    # The prefix's keys and values are attended to: new values move every logit.
    assert not torch.allclose(before.logits, after.logits, atol=1e-4)


def test_prefix_gradients_reach_the_prefix(checkpoints: dict[str, Path]) -> None:
    model, batch = _prefix_model(checkpoints["bert"], "sequence")
    model.train()
    model(**batch, labels=torch.tensor([0, 2])).loss.backward()
    gradient = model.prompt_encoder["default"].embedding.weight.grad
    assert gradient is not None and float(gradient.abs().sum()) > 0


def test_the_cache_keyword_is_the_one_the_installed_backbone_takes(checkpoints: dict[str, Path]) -> None:
    import inspect

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(checkpoints["bert"], num_labels=2)
    name = cache_argument(model)
    assert name in CACHE_ARGUMENTS
    assert name in inspect.signature(model.base_model.forward).parameters


def test_a_model_without_a_cache_parameter_is_named_in_the_error() -> None:
    class NoCache(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return input_ids

    with pytest.raises(ValueError, match=r"NoCache\.forward takes no key/value cache"):
        cache_argument(NoCache())
