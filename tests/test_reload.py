"""A trained model loaded back from its run directory scores the validation data exactly as the run
recorded, for every method and architecture: adapters and the new classification head both come
back trained (hand-written PEFT scripts often lose the head)."""

from __future__ import annotations

from typing import Any

import pytest

from helpers import ARCHITECTURES, METHODS, explain, f1_score, validation_logits


def head_weight(model: Any) -> Any:
    """The classification head's weight as the model uses it (PEFT's trained copy, if wrapped)."""
    # classifier.weight, or classifier.modules_to_save.default.weight beside PEFT's frozen original.
    found = {}
    for name, param in model.named_parameters():
        parts = name.split(".")
        if parts[-1] == "weight" and {"classifier", "score"} & set(parts) and "original_module" not in parts:
            found[name] = param
    assert len(found) == 1, sorted(found)
    return next(iter(found.values())).detach()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_reloaded_model_reproduces_recorded_validation(matrix_runs, arch: str, method: str) -> None:
    import torch
    from transformers import set_seed

    from llmkit.models.loading import load_classifier, load_trained

    run = matrix_runs(arch, method)
    assert run.result.exit_code == 0, explain(run.result)
    recorded = run.results["metrics"]["validation"]

    loaded = load_trained(run.run_dir / "model", str(run.checkpoint))
    logits, labels = validation_logits(run.run_dir, loaded.model, loaded.tokenizer)
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    predicted = logits.argmax(-1).tolist()

    assert loss == pytest.approx(recorded["loss"], abs=1e-5)
    assert sum(p == t for p, t in zip(predicted, labels.tolist(), strict=True)) / len(
        predicted
    ) == pytest.approx(recorded["accuracy"], abs=1e-9)
    assert f1_score(predicted, labels.tolist(), average="binary") == pytest.approx(recorded["f1"], abs=1e-9)

    # The head came back trained: it differs from the one a fresh load starts from with the run's
    # seed (which is what a reload that dropped the head would use).
    set_seed(42)
    fresh = load_classifier(str(run.checkpoint), ["0", "1"]).model
    assert not torch.allclose(head_weight(loaded.model), head_weight(fresh), atol=1e-4)
