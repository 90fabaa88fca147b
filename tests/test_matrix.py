"""Every method on every architecture, end to end through `llmkit finetune`: the run directory it
writes and the numbers in it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import (
    ARCHITECTURES,
    HIDDEN_SIZE,
    MATRIX_SETTINGS,
    METHODS,
    NUM_LAYERS,
    explain,
    f1_score,
    log_entries,
    majority_rate,
    read_labels,
    results_of,
    validation_logits,
)

TRAIN_ROWS, VALIDATION_ROWS, TEST_ROWS, BATCH = 200, 41, 30, 8
CLASSIFIER_CLASS = {"bert": "BertForSequenceClassification", "gpt2": "GPT2ForSequenceClassification"}


def expected_trainable(arch: str, method: str) -> int:
    """What each PEFT method should train on the tiny checkpoints, the new head included."""
    from llmkit.methods import get_method

    head = HIDDEN_SIZE * 2 + (2 if arch == "bert" else 0)  # GPT-2's score layer has no bias
    options = get_method(method).options()  # the matrix runs use the defaults
    if method == "lora":  # A (r x in) and B (out x r) on BERT's query+value, or GPT-2's fused c_attn
        per_layer = (
            2 * options.r * (HIDDEN_SIZE + HIDDEN_SIZE)
            if arch == "bert"
            else options.r * (HIDDEN_SIZE + 3 * HIDDEN_SIZE)
        )
        return NUM_LAYERS * per_layer + head
    if method == "prefix":  # a key and a value vector per virtual token and layer
        return options.num_virtual_tokens * NUM_LAYERS * 2 * HIDDEN_SIZE + head
    if method == "prompt":  # one input embedding per virtual token
        return options.num_virtual_tokens * HIDDEN_SIZE + head
    raise AssertionError(method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_finetune_writes_a_complete_run(matrix_runs, arch: str, method: str) -> None:
    from llmkit.methods import get_method
    from llmkit.models.loading import load_tokenizer

    run = matrix_runs(arch, method)
    assert run.result.exit_code == 0, explain(run.result)
    run_dir = run.run_dir

    for name in ("results.json", "recipe.yaml", "status.json", "log.jsonl", "model/labels.json"):
        assert (run_dir / name).is_file(), f"{name} missing from {sorted(p.name for p in run_dir.iterdir())}"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    assert not (run_dir / "checkpoints").exists(), "a completed run keeps no resumable checkpoints"
    assert json.loads((run_dir / "model" / "labels.json").read_text()) == {"label_names": ["0", "1"]}

    log = log_entries(run_dir)
    assert log, "log.jsonl is empty"
    losses = [entry["loss"] for entry in log if "loss" in entry]
    evaluations = [entry for entry in log if "eval_loss" in entry]
    epochs = MATRIX_SETTINGS[method]["train"]["epochs"]
    steps = epochs * TRAIN_ROWS // BATCH
    assert len(losses) == steps // 5  # logging_steps=5
    assert len(evaluations) == epochs  # one per epoch
    assert all(loss > 0 for loss in losses)

    results = run.results
    assert results["status"] == "completed"
    assert results["method"]["name"] == method
    assert results["model"]["checkpoint"] == str(run.checkpoint)
    assert results["model"]["model_type"] == arch
    assert results["model"]["architecture"] == CLASSIFIER_CLASS[arch]
    assert results["data"]["train_rows"] == TRAIN_ROWS
    assert results["data"]["validation_rows"] == VALIDATION_ROWS
    assert results["data"]["test_rows"] == TEST_ROWS
    assert results["data"]["label_names"] == ["0", "1"]
    assert {"llmkit", "torch", "transformers", "peft", "datasets"} <= set(results["versions"])

    metrics = results["metrics"]
    for split in ("validation", "test"):
        assert 0.0 <= metrics[split]["accuracy"] <= 1.0
        assert 0.0 <= metrics[split]["f1"] <= 1.0
        assert metrics[split]["loss"] > 0
    # The last epoch's evaluation is the final one, and is what results.json reports.
    assert metrics["validation"]["loss"] == pytest.approx(evaluations[-1]["eval_loss"])

    train = results["train"]
    assert train["steps"] == steps
    assert train["samples"] == epochs * TRAIN_ROWS
    default_lr = get_method(method).options.default_learning_rate
    expected_lr = MATRIX_SETTINGS[method]["train"].get("learning_rate", default_lr)
    assert train["learning_rate"] == pytest.approx(expected_lr)
    for key in ("runtime_s", "samples_per_second", "tokens_per_second", "peak_memory_mb"):
        assert train[key] > 0, key
    # From the start of training, without loading's transient peak: never above the whole run's.
    (training_peak,) = train["training_peak_memory_mb_per_process"]
    assert 0 < training_peak <= train["peak_memory_mb"]
    # One process holds the whole training state: fp32 weights and AdamW's two moments, which full
    # fine-tuning keeps for the word-embedding rows of the training data's tokens alone.
    counts = results["parameters"]
    stepped = counts["trainable"]
    if train["embedding_rows_trained"] is not None:
        assert method == "full"
        vocabulary = json.loads((run.checkpoint / "config.json").read_text())["vocab_size"]
        stepped -= (vocabulary - train["embedding_rows_trained"]) * HIDDEN_SIZE
    (state_mb,) = train["training_state_mb_per_process"]
    assert state_mb == pytest.approx((counts["total"] * 4 + stepped * 8) / 2**20, rel=0.02)
    assert train["samples_per_second"] == pytest.approx(train["samples"] / train["runtime_s"], rel=1e-2)
    # Throughput counts real tokens, not padding: per sample, the training file's mean length.
    tokenizer = load_tokenizer(str(run.checkpoint))
    texts = read_labels(run.data.train, "text")
    mean_tokens = sum(len(ids) for ids in tokenizer(texts)["input_ids"]) / len(texts)
    assert train["tokens_per_second"] / train["samples_per_second"] == pytest.approx(mean_tokens, rel=1e-3)

    parameters = results["parameters"]
    if method == "full":
        assert parameters["trainable"] == parameters["total"]
    else:
        assert parameters["trainable"] < 0.05 * parameters["total"]
        assert parameters["trainable"] == expected_trainable(arch, method)
    assert parameters["trainable_percent"] == pytest.approx(
        100 * parameters["trainable"] / parameters["total"], abs=1e-4
    )

    # The terminal summary names the splits and metrics.
    assert "validation" in run.result.stdout
    assert "accuracy" in run.result.stdout


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_saved_model_is_the_method_s_artifact(matrix_runs, arch: str, method: str) -> None:
    """Full fine-tuning saves a whole checkpoint; PEFT methods only the adapter and its head."""
    run = matrix_runs(arch, method)
    assert run.result.exit_code == 0, explain(run.result)
    saved = {p.name for p in (run.run_dir / "model").iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "labels.json"} <= saved
    if method == "full":
        assert {"config.json", "model.safetensors"} <= saved
        assert "adapter_config.json" not in saved
    else:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= saved
        assert "model.safetensors" not in saved
        adapter = json.loads((run.run_dir / "model" / "adapter_config.json").read_text())
        head = "classifier" if arch == "bert" else "score"
        assert head in adapter["modules_to_save"]


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_learns_the_synthetic_task(matrix_runs, arch: str, method: str) -> None:
    run = matrix_runs(arch, method)
    assert run.result.exit_code == 0, explain(run.result)
    metrics = run.results["metrics"]
    # 21 of 41 validation rows (15 of 30 test rows) share a label: a model that learnt nothing
    # scores about 0.5. Across seeds, full fine-tuning reaches 0.95-1.0 and LoRA 0.8-0.95.
    assert majority_rate(run.data.validation) == pytest.approx(21 / 41)
    assert majority_rate(run.data.test) == pytest.approx(0.5)
    learnt = {"full": 0.9, "lora": 0.75}[method]
    assert metrics["validation"]["accuracy"] >= learnt
    assert metrics["validation"]["f1"] >= learnt - 0.05
    assert metrics["test"]["accuracy"] >= learnt - 0.05
    assert metrics["validation"]["loss"] < 0.6  # chance is ln 2 = 0.69


def test_sentence_pairs_reach_the_model_as_pairs(
    cli, make_recipe, bert_checkpoint, pair_data, tmp_path
) -> None:
    from llmkit.data.loading import load_splits
    from llmkit.data.tokenize import tokenize_split
    from llmkit.models.loading import load_tokenizer
    from llmkit.recipe.loading import load_recipe

    recipe = make_recipe(bert_checkpoint, pair_data, "full", train={"epochs": 2, "learning_rate": 2e-3})
    result = cli("finetune", recipe, "--output-dir", tmp_path / "run")
    assert result.exit_code == 0, explain(result)
    results = results_of(tmp_path / "run")
    assert results["data"]["train_rows"] == 60
    assert results["data"]["validation_rows"] == 21

    # Both columns are encoded as one [CLS] A [SEP] B [SEP] input with segment ids 0 then 1.
    loaded = load_recipe(recipe)
    splits = load_splits(loaded.data, seed=0)
    tokenizer = load_tokenizer(str(bert_checkpoint))
    encoded = tokenize_split(splits.splits["train"], tokenizer, loaded.data.text_columns, 128, "train")
    row = encoded[0]
    premise, hypothesis = splits.splits["train"][0]["premise"], splits.splits["train"][0]["hypothesis"]
    assert len(row["input_ids"]) == len(premise.split()) + len(hypothesis.split()) + 3
    assert row["input_ids"].count(tokenizer.sep_token_id) == 2
    assert row["token_type_ids"] == [0] * (len(premise.split()) + 2) + [1] * (len(hypothesis.split()) + 1)


def test_string_labels_with_three_classes(
    cli, make_recipe, gpt2_checkpoint, three_label_data, tmp_path
) -> None:
    from llmkit.models.loading import load_trained

    recipe = make_recipe(gpt2_checkpoint, three_label_data, "lora", train={"epochs": 2})
    run_dir = tmp_path / "run"
    result = cli("finetune", recipe, "--output-dir", run_dir)
    assert result.exit_code == 0, explain(result)
    results = results_of(run_dir)
    names = ["negative", "neutral", "positive"]  # sorted, as written in the file
    assert sorted(set(read_labels(three_label_data.train, "sentiment"))) == names
    assert results["data"]["label_names"] == names
    assert json.loads((run_dir / "model" / "labels.json").read_text()) == {"label_names": names}

    loaded = load_trained(run_dir / "model", str(gpt2_checkpoint))
    assert loaded.model.config.id2label == dict(enumerate(names))
    # With three labels, F1 is the macro average (not accuracy, as micro F1 would be).
    logits, labels = validation_logits(run_dir, loaded.model, loaded.tokenizer)
    predicted, true = logits.argmax(-1).tolist(), labels.tolist()
    recorded = results["metrics"]["validation"]
    assert recorded["f1"] == pytest.approx(f1_score(predicted, true, average="macro"), abs=1e-9)
    correct = sum(p == t for p, t in zip(predicted, true, strict=True))
    assert recorded["accuracy"] == pytest.approx(correct / len(true))


def test_run_directory_recipe_is_the_resolved_recipe(matrix_runs) -> None:
    """recipe.yaml in a run holds every setting, defaults included, and loads again as a recipe."""
    from llmkit.recipe.loading import load_recipe

    run = matrix_runs("bert", "lora")
    assert run.result.exit_code == 0, explain(run.result)
    recipe = load_recipe(run.run_dir / "recipe.yaml")
    assert recipe.method.name == "lora"
    assert recipe.method.r == 8  # defaults are written out
    assert recipe.method.alpha == 16.0
    assert recipe.train.learning_rate == pytest.approx(1e-2)
    assert Path(recipe.data.train_file) == run.data.train
    assert Path(recipe.output_dir) == run.run_dir
