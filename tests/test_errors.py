"""Rejected input through `llmkit finetune`: a non-zero exit, the words the user needs, no traceback,
and no run directory left behind."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from helpers import DataFiles, write_csv


def assert_rejected(result: Any, *expected: str, run_dir: Path | None = None) -> str:
    """The CLI stopped with a user-facing message (not the catch-all 'unexpected' one) holding every
    expected phrase; returns the message."""
    message = result.stderr
    assert result.exit_code != 0, f"accepted; stdout:\n{result.stdout}"
    assert result.exit_code == 2, f"exit code {result.exit_code}:\n{message}"
    assert "Traceback" not in result.output
    assert "error: unexpected" not in message, message
    for phrase in expected:
        assert phrase in message, f"{phrase!r} not in:\n{message}"
    if run_dir is not None:
        assert not run_dir.exists(), "a rejected run must leave no run directory"
    return message


@pytest.fixture
def recipe(make_recipe: Any, bert_checkpoint: Path, sentiment_data: DataFiles) -> Path:
    return make_recipe(bert_checkpoint, sentiment_data, "lora")


@pytest.fixture
def finetune(cli: Any, recipe: Path, tmp_path: Path) -> Any:
    """`finetune(*overrides, recipe=...)` -> result, writing to tmp_path/'run' (which must not
    appear when the input is rejected)."""

    def run(*overrides: str, recipe: Path = recipe) -> Any:
        return cli("finetune", recipe, *overrides, "--output-dir", tmp_path / "run")

    return run


# ----------------------------------------------------------------------------- the recipe


def test_unknown_key_suggests_the_close_one(finetune: Any, tmp_path: Path) -> None:
    assert_rejected(
        finetune("train.epoch=2"),
        "[command line] train.epoch: unknown key",
        "Did you mean 'train.epochs'?",
        run_dir=tmp_path / "run",
    )


def test_misspelled_section_in_the_file_names_file_line_and_section(
    make_recipe: Any, bert_checkpoint: Path, sentiment_data: DataFiles, finetune: Any, tmp_path: Path
) -> None:
    path = make_recipe(bert_checkpoint, sentiment_data, "full", name="typo.yaml")
    lines = path.read_text().splitlines()
    lines = [line.replace("train:", "trian:") if line.startswith("train:") else line for line in lines]
    path.write_text("\n".join(lines) + "\n")
    line_number = lines.index("trian:") + 1
    assert_rejected(
        finetune(recipe=path),
        f"[{path}:{line_number}] trian: unknown key",
        "Did you mean 'train'?",
        run_dir=tmp_path / "run",
    )


def test_wrong_type_names_key_and_value(finetune: Any) -> None:
    assert_rejected(finetune("train.epochs=abc"), "train.epochs", "number", "'abc'")


def test_negative_learning_rate(finetune: Any) -> None:
    assert_rejected(finetune("train.learning_rate=-0.001"), "train.learning_rate", "greater than 0")


def test_lora_rank_zero(finetune: Any) -> None:
    assert_rejected(finetune("method.r=0"), "method.r", "greater than 0")


def test_option_of_another_method(finetune: Any) -> None:
    message = assert_rejected(finetune("method.name=prefix", "method.r=8"), "method.r: unknown key")
    assert "'lora'" in message  # the method that does take it


def test_unknown_method_suggests_the_close_one(finetune: Any) -> None:
    assert_rejected(finetune("method.name=lorra"), "unknown method 'lorra'", "Did you mean 'lora'?")


def test_three_text_columns(finetune: Any) -> None:
    assert_rejected(finetune("data.text_columns=[a,b,c]"), "data.text_columns", "got 3 columns", "two")


def test_micro_batch_that_does_not_divide_the_batch(finetune: Any) -> None:
    assert_rejected(
        finetune("train.batch_size=8", "train.micro_batch_size=3"),
        "train.micro_batch_size (3) must divide train.batch_size (8)",
    )


def test_yaml_syntax_error_points_at_line_and_column(finetune: Any, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  checkpoint: [a, b\ndata:\n  train_file: t.csv\n")
    message = assert_rejected(finetune(recipe=path), "YAML syntax error", run_dir=tmp_path / "run")
    assert re.search(rf"{re.escape(str(path))}:3:5: YAML syntax error", message), message


def test_empty_recipe_file(finetune: Any, tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    assert_rejected(finetune(recipe=path), "empty", "model and data")


def test_missing_recipe_file(finetune: Any, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    assert_rejected(
        finetune(recipe=missing), f"Recipe file '{missing}' does not exist", run_dir=tmp_path / "run"
    )


def test_malformed_override(finetune: Any, tmp_path: Path) -> None:
    assert_rejected(
        finetune("train.epochs"),
        "Override 'train.epochs' is not KEY=VALUE",
        "train.epochs=1",
        run_dir=tmp_path / "run",
    )


# ----------------------------------------------------------------------------- the data


def test_missing_data_file(finetune: Any, tmp_path: Path) -> None:
    missing = tmp_path / "no-such.csv"
    assert_rejected(
        finetune(f"data.validation_file={missing}"),
        f"Data file '{missing}' does not exist",
        run_dir=tmp_path / "run",
    )


def test_text_column_that_does_not_exist_lists_the_columns(finetune: Any, tmp_path: Path) -> None:
    assert_rejected(
        finetune("data.text_columns=sentence"),
        "no column 'sentence'",
        "text, label",
        "data.text_columns",
        run_dir=tmp_path / "run",
    )


def test_label_column_that_does_not_exist_lists_the_columns(finetune: Any, tmp_path: Path) -> None:
    assert_rejected(
        finetune("data.label_column=sentiment"),
        "no column 'sentiment'",
        "text, label",
        run_dir=tmp_path / "run",
    )


def test_validation_labels_never_seen_in_training(
    finetune: Any, sentiment_data: DataFiles, tmp_path: Path
) -> None:
    validation = write_csv(
        tmp_path / "validation.csv", ["text", "label"], [["a great film", 1], ["so so", 2]]
    )
    assert_rejected(
        finetune(f"data.validation_file={validation}"),
        f"'{validation}' has labels that never occur in the training data: 2",
        run_dir=tmp_path / "run",
    )


def test_single_class_training_set(finetune: Any, tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", ["text", "label"], [["a great film", 1], ["superb", 1]])
    assert_rejected(
        finetune(f"data.train_file={train}"),
        "single label ('1')",
        "at least two",
        run_dir=tmp_path / "run",
    )


def test_train_sample_cap_that_leaves_a_single_class(finetune: Any, tmp_path: Path) -> None:
    """A file sorted by label, cut by data.max_train_samples to rows of one label."""
    rows = [[f"film {word}", 0] for word in ("awful", "boring", "dreadful")] + [["great film", 1]] * 3
    train = write_csv(tmp_path / "sorted.csv", ["text", "label"], rows)
    assert_rejected(
        finetune(f"data.train_file={train}", "data.max_train_samples=3"),
        "The first 3 training rows (data.max_train_samples) all have the label '0'",
        "at least two",
        run_dir=tmp_path / "run",
    )


# ----------------------------------------------------------------------------- the model


def test_checkpoint_path_that_does_not_exist(finetune: Any, tmp_path: Path) -> None:
    missing = tmp_path / "models" / "tiny"
    assert_rejected(
        finetune(f"model.checkpoint={missing}"),
        f"Checkpoint path '{missing}' does not exist",
        run_dir=tmp_path / "run",
    )


def test_prompt_longer_than_the_model_positions(finetune: Any, tmp_path: Path) -> None:
    # The tiny BERT has 512 positions: 500 tokens of text plus 20 prompt tokens do not fit.
    assert_rejected(
        finetune("method.name=prompt", "method.num_virtual_tokens=20", "data.max_length=500"),
        "data.max_length (500) + method.num_virtual_tokens (20) exceeds the 512 positions",
        "lower data.max_length or method.num_virtual_tokens",
        run_dir=tmp_path / "run",
    )


def test_hub_id_while_offline_explains_local_paths(finetune: Any, tmp_path: Path) -> None:
    # HF_HUB_OFFLINE is set and sockets are blocked (conftest): nothing can be downloaded.
    assert_rejected(
        finetune("model.checkpoint=someorg/tiny-model"),
        "Could not load 'someorg/tiny-model'",
        "hf download someorg/tiny-model --local-dir DIR",
        "model.checkpoint=DIR",
        run_dir=tmp_path / "run",
    )


def test_model_type_that_cannot_classify_sequences(finetune: Any, tmp_path: Path) -> None:
    from transformers import ViTConfig

    image_model = tmp_path / "vit"
    ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
    ).save_pretrained(image_model)
    assert_rejected(
        finetune(f"model.checkpoint={image_model}"),
        "'vit' model",
        "cannot use for sequence classification",
        run_dir=tmp_path / "run",
    )


# ----------------------------------------------------------------------------- the run directory


def test_existing_run_directory_needs_overwrite(cli: Any, recipe: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("keep me")
    result = cli("finetune", recipe, "--output-dir", run_dir)
    assert_rejected(result, f"Run directory '{run_dir}' already exists", "--overwrite")
    assert (run_dir / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]


# ----------------------------------------------------------------------------- the test environment


def test_every_test_runs_without_network() -> None:
    """The guard in conftest is in force: a connection attempt fails at once, and the hub libraries
    run offline with their caches in a temporary directory."""
    import os
    import socket

    import huggingface_hub.constants

    with pytest.raises(OSError, match="test tried to connect"):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    with pytest.raises(OSError, match="test tried to connect"), socket.socket() as raw:
        raw.connect(("127.0.0.1", 9))
    assert huggingface_hub.constants.HF_HUB_OFFLINE
    assert "llmkit-tests-hf-" in os.environ["HF_HOME"]
    assert os.environ["LLMKIT_CACHE"].startswith(os.environ["HF_HOME"])
