"""An encoder classifier's last layer computes only the position its head reads
(llmkit/models/first_position.py): the logits and every gradient are the model's own, for each
method, padded batches included; other models and tasks are left alone; a saved model is plain
transformers."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from helpers import METHODS

TEXTS = ["the plot was quite boring and the actor was very dreadful", "great movie", "it had superb scenes"]
# Well below the gap between two rows' scores on the random tiny encoders (checked: 20x), so a
# last layer reading the wrong position, or a wrong mask, cannot pass.
TOLERANCE = 1e-6


def last_layer(model: Any) -> Any:
    return model.base_model.encoder.layer[-1] if hasattr(model.base_model, "encoder") else None


def full_last_layer(model: Any) -> Any:
    """A copy of `model` whose last layer runs the class's own forward (every position)."""
    from llmkit.models.first_position import compute_every_position

    reference = copy.deepcopy(model)
    assert compute_every_position(reference), "the model should have had the shortcut"
    return reference


def logits_and_gradients(model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    import torch

    model.zero_grad(set_to_none=True)
    logits = model(**batch).logits
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1])).backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), gradients


def assert_same_computation(patched: Any, reference: Any, batch: dict[str, Any]) -> None:
    from torch.testing import assert_close

    patched.eval()  # no dropout: both sides must compute the same function
    reference.eval()
    logits, gradients = logits_and_gradients(patched, batch)
    expected_logits, expected_gradients = logits_and_gradients(reference, batch)
    gap = (expected_logits[0] - expected_logits[1]).abs().max().item()
    assert gap > 20 * TOLERANCE, "the model cannot tell these rows apart; the test would prove nothing"
    assert_close(logits, expected_logits, atol=TOLERANCE, rtol=0)
    assert gradients.keys() == expected_gradients.keys() and gradients
    for name, gradient in gradients.items():
        assert_close(gradient, expected_gradients[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("method", METHODS)
def test_bert_classifier_last_layer_computes_the_first_position_only_with_the_same_result(
    bert_checkpoint: Path, method: str
) -> None:
    from transformers import set_seed

    from llmkit.methods import get_method
    from llmkit.models.loading import load_classifier

    set_seed(0)
    loaded = load_classifier(str(bert_checkpoint), ["negative", "positive"])
    assert "forward" in vars(last_layer(loaded.model)), "llmkit should give the last layer its own forward"
    spec = get_method(method)
    model = spec.wrap(loaded.model, spec.options(), loaded.traits)
    batch = dict(loaded.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1], "a row should be padded"
    outputs = model(**batch, output_hidden_states=False)
    assert outputs.logits.shape == (3, 2)
    assert_same_computation(model, full_last_layer(model), batch)


ARCHITECTURES = {
    "bert": "BertConfig",
    "roberta": "RobertaConfig",
    "xlm-roberta": "XLMRobertaConfig",
    "camembert": "CamembertConfig",
    "electra": "ElectraConfig",
}


@pytest.mark.parametrize("model_type", list(ARCHITECTURES))
def test_every_listed_encoder_family_gives_its_own_logits_and_gradients(model_type: str) -> None:
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification

    from llmkit.models.first_position import FIRST_POSITION_CLASSIFIERS, compute_only_first_position

    config = getattr(transformers, ARCHITECTURES[model_type])(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=1,
        num_labels=2,
        **({"embedding_size": 32} if model_type == "electra" else {}),
    )
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    assert type(model).__name__ in FIRST_POSITION_CLASSIFIERS
    reference = copy.deepcopy(model)
    assert compute_only_first_position(model)
    input_ids = torch.randint(3, 50, (3, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 4:] = 0
    input_ids[1, 4:] = 1
    assert_same_computation(model, reference, {"input_ids": input_ids, "attention_mask": attention_mask})


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_both_cpu_attention_implementations_give_the_models_logits(
    bert_checkpoint: Path, implementation: str
) -> None:
    from transformers import AutoModelForSequenceClassification

    from llmkit.models.first_position import compute_only_first_position

    model = AutoModelForSequenceClassification.from_pretrained(
        bert_checkpoint, num_labels=2, attn_implementation=implementation
    )
    reference = copy.deepcopy(model)
    assert compute_only_first_position(model)
    batch = dict(tokenizer_of(bert_checkpoint)(TEXTS, padding=True, return_tensors="pt"))
    assert_same_computation(model, reference, batch)


def test_other_attention_implementations_run_the_layers_own_forward(
    bert_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Masks this module does not know how to cut to one query (flash, flex) get every position."""
    import torch

    from llmkit.models import first_position

    model = first_position_model(bert_checkpoint)
    monkeypatch.setattr(first_position, "FIRST_POSITION_ATTENTION", frozenset())
    batch = dict(tokenizer_of(bert_checkpoint)(TEXTS, padding=True, return_tensors="pt"))
    model.eval()
    with torch.no_grad():
        hidden = model.base_model(**batch).last_hidden_state
    assert hidden.shape[1] == batch["input_ids"].shape[1]
    assert_same_computation(model, full_last_layer(model), batch)


def tokenizer_of(checkpoint: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint)


def first_position_model(checkpoint: Path) -> Any:
    from transformers import AutoModelForSequenceClassification

    from llmkit.models.first_position import compute_only_first_position

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=2)
    assert compute_only_first_position(model)
    return model


def test_models_whose_head_reads_other_positions_are_left_alone(
    bert_checkpoint: Path, gpt2_checkpoint: Path
) -> None:
    from transformers import AutoModelForTokenClassification

    from llmkit.models.first_position import compute_only_first_position
    from llmkit.models.loading import load_classifier

    # A decoder classifier reads each row's last real token; a token classifier reads them all.
    decoder = load_classifier(str(gpt2_checkpoint), ["negative", "positive"]).model
    assert not compute_only_first_position(decoder)
    tagger = AutoModelForTokenClassification.from_pretrained(bert_checkpoint, num_labels=3)
    assert not compute_only_first_position(tagger)
    assert "forward" not in vars(tagger.base_model.encoder.layer[-1])


def test_saved_model_is_plain_transformers_and_scores_the_same(bert_checkpoint: Path, tmp_path: Path) -> None:
    """What llmkit saves has the checkpoint's weight names, and plain transformers, which
    computes every position, gives the same logits."""
    import torch
    from torch.testing import assert_close
    from transformers import AutoModelForSequenceClassification

    from llmkit.models.loading import load_classifier

    loaded = load_classifier(str(bert_checkpoint), ["negative", "positive"])
    loaded.model.save_pretrained(tmp_path)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert "forward" not in vars(plain.base_model.encoder.layer[-1])
    assert set(plain.state_dict()) == set(loaded.model.state_dict())
    batch = dict(loaded.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    loaded.model.eval()
    plain.eval()
    with torch.no_grad():
        assert_close(loaded.model(**batch).logits, plain(**batch).logits, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_the_shortcut_comes_off_for_a_plain_transformers_reference(
    bert_checkpoint: Path, method: str
) -> None:
    """The reference a pipeline's speed is measured with is the model as plain transformers runs
    it: compute_every_position finds the shortcut through a PEFT wrapper and takes it off."""
    from torch.testing import assert_close

    from llmkit.methods import get_method
    from llmkit.models.first_position import compute_every_position
    from llmkit.models.loading import load_classifier

    loaded = load_classifier(str(bert_checkpoint), ["negative", "positive"])
    spec = get_method(method)
    model = spec.wrap(loaded.model, spec.options(), loaded.traits).eval()
    batch = dict(loaded.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    shortcut_logits = model(**batch).logits
    assert compute_every_position(model)
    assert "forward" not in vars(last_layer(loaded.model))
    assert_close(model(**batch).logits, shortcut_logits, atol=TOLERANCE, rtol=0)
    assert not compute_every_position(model)  # nothing left to undo


def test_prediction_speed_is_compared_with_a_pipeline_on_the_plain_model(
    matrix_runs: Any, sentiment_data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    from llmkit.bench.inference_speed import compare_with_pipeline
    from llmkit.models.first_position import compute_every_position

    run = matrix_runs("bert", "full")
    given: list[Any] = []
    real_pipeline = transformers.pipeline

    def spy(*args: Any, **kwargs: Any) -> Any:
        given.append(kwargs["model"])
        return real_pipeline(*args, **kwargs)

    monkeypatch.setattr(transformers, "pipeline", spy)
    result = compare_with_pipeline(run.run_dir, sentiment_data.validation)
    (model,) = given
    # Nothing left to undo: the pipeline ran the model as plain transformers does, every position.
    assert not compute_every_position(model), "the pipeline was given llmkit's last-layer shortcut"
    assert result["label_agreement"] == 1.0
