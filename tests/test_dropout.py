"""`model.dropout`: one dropout probability for the whole model, whatever the architecture calls
its dropouts; set on the tiny checkpoints, in a run and in what the run saves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import explain, invoke


def dropout_probabilities(model: Any) -> set[float]:
    from torch import nn

    return {module.p for module in model.modules() if isinstance(module, nn.Dropout)}


@pytest.mark.parametrize(
    ("config_class", "expected"),
    [
        ("BertConfig", ["attention_probs_dropout_prob", "classifier_dropout", "hidden_dropout_prob"]),
        ("GPT2Config", ["attn_pdrop", "embd_pdrop", "resid_pdrop", "summary_first_dropout"]),
        ("LlamaConfig", ["attention_dropout"]),
        # LayerDrop skips whole layers: not a dropout probability.
        ("BartConfig", ["activation_dropout", "attention_dropout", "classifier_dropout", "dropout"]),
    ],
)
def test_dropout_attributes_are_found_under_each_architectures_names(
    config_class: str, expected: list[str]
) -> None:
    import transformers

    from llmkit.models.dropout import dropout_attributes

    assert dropout_attributes(getattr(transformers, config_class)()) == expected


def test_a_configuration_without_dropout_cannot_take_a_positive_one() -> None:
    from transformers import PretrainedConfig

    from llmkit.errors import ModelError
    from llmkit.models.dropout import set_dropout

    config = PretrainedConfig()
    assert set_dropout(config, 0.0, "some/model") == []  # nothing to turn off
    with pytest.raises(ModelError) as raised:
        set_dropout(config, 0.2, "some/model")
    assert "The configuration of 'some/model'" in str(raised.value)
    assert "names no dropout to set to 0.2" in str(raised.value)
    assert "leave model.dropout out" in str(raised.value)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_loading_sets_every_dropout_of_the_model(checkpoints: dict[str, Path], arch: str) -> None:
    from llmkit.models.loading import load_classifier

    kept = load_classifier(str(checkpoints[arch]), ["negative", "positive"])
    assert dropout_probabilities(kept.model) == {0.1}  # the tiny checkpoints' own
    off = load_classifier(str(checkpoints[arch]), ["negative", "positive"], dropout=0.0)
    assert dropout_probabilities(off.model) == {0.0}
    changed = load_classifier(str(checkpoints[arch]), ["negative", "positive"], dropout=0.25)
    assert dropout_probabilities(changed.model) == {0.25}


@pytest.mark.parametrize("value", [1.0, -0.1, "none"])
def test_the_recipe_refuses_a_dropout_outside_zero_to_one(
    bert_checkpoint: Path, sentiment_data: Any, make_recipe: Any, value: Any
) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data)
    result = invoke("finetune", recipe, f"model.dropout={value}", "--dry-run")
    assert result.exit_code == 2, explain(result)
    assert "model.dropout" in result.output


def test_a_run_trains_and_saves_the_model_without_dropout(
    bert_checkpoint: Path, sentiment_data: Any, make_recipe: Any, tmp_path: Path
) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, train={"max_steps": 2})
    run_dir = tmp_path / "run"
    result = invoke("finetune", recipe, "model.dropout=0", "--output-dir", run_dir)
    assert result.exit_code == 0, explain(result)
    saved = json.loads((run_dir / "model" / "config.json").read_text())
    assert saved["hidden_dropout_prob"] == saved["attention_probs_dropout_prob"] == 0.0
    assert saved["classifier_dropout"] == 0.0


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            [],
            "dropout: attn_pdrop 0.1, embd_pdrop 0.1, resid_pdrop 0.1, summary_first_dropout 0.1 "
            "(the checkpoint's; model.dropout sets them all)",
        ),
        (
            ["model.dropout=0"],
            "dropout: attn_pdrop 0, embd_pdrop 0, resid_pdrop 0, summary_first_dropout 0 (model.dropout)",
        ),
    ],
)
def test_the_dry_run_shows_the_dropout_the_model_gets(
    gpt2_checkpoint: Path, sentiment_data: Any, make_recipe: Any, overrides: list[str], expected: str
) -> None:
    recipe = make_recipe(gpt2_checkpoint, sentiment_data)
    result = invoke("finetune", recipe, *overrides, "--dry-run")
    assert result.exit_code == 0, explain(result)
    assert expected in result.stdout.splitlines()
