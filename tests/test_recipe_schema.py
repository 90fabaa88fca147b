"""The recipe JSON schema (`llmkit recipes schema`, for editors) and `llmkit recipes validate`
give the same verdict on a corpus of recipe variants: valid and invalid, floats YAML 1.1 reads as
strings, strict types, and the cross-field rules. Bench files have a schema of their own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import explain

# name: (recipe text, valid). MODEL, TRAIN and VALIDATION are filled with real files, so only the
# recipe itself decides the verdict.
HEAD = "model:\n  checkpoint: MODEL\ndata:\n  train_file: TRAIN\n  validation_file: VALIDATION\n"
CORPUS: dict[str, tuple[str, bool]] = {
    "lora": (HEAD + "method:\n  name: lora\n", True),
    "no method section": (HEAD, True),
    "empty method section": (HEAD + "method: {}\n", True),
    "exponent float without a dot": (HEAD + "train:\n  learning_rate: 1e-3\n", True),
    "exponent float with a dot": (HEAD + "train:\n  learning_rate: 2.0e-3\n", True),
    "float given as a quoted string": (HEAD + "train:\n  learning_rate: '1e-3'\n", False),
    "integer given as a quoted string": (HEAD + "train:\n  batch_size: '16'\n", False),
    "whole float for an integer": (HEAD + "method:\n  name: lora\n  r: 16.0\n", True),
    "fraction for an integer": (HEAD + "method:\n  name: lora\n  r: 16.5\n", False),
    "yes for a boolean": (HEAD + "train:\n  group_by_length: yes\n", False),
    "model dropout written as 0": (HEAD.replace("MODEL\n", "MODEL\n  dropout: 0\n"), True),
    "model dropout of 1": (HEAD.replace("MODEL\n", "MODEL\n  dropout: 1.0\n"), False),
    "false for a boolean": (HEAD + "train:\n  group_by_length: false\n", True),
    "method options without a name": (HEAD + "method:\n  r: 16\n", False),
    "unknown method": (HEAD + "method:\n  name: loar\n", False),
    "option of another method": (HEAD + "method:\n  name: prompt\n  r: 8\n", False),
    "unknown key": (HEAD + "train:\n  epoch: 3\n", False),
    "prefix size without projection": (
        HEAD + "method:\n  name: prefix\n  projection_hidden_size: 32\n",
        False,
    ),
    "prefix size with projection": (
        HEAD + "method:\n  name: prefix\n  projection: true\n  projection_hidden_size: 32\n",
        True,
    ),
    "prefix size null": (HEAD + "method:\n  name: prefix\n  projection_hidden_size: null\n", True),
    "prompt text init without text": (HEAD + "method:\n  name: prompt\n  init: text\n", False),
    "prompt text init with text": (
        HEAD + "method:\n  name: prompt\n  init: text\n  init_text: 'Classify:'\n",
        True,
    ),
    "prompt text without text init": (HEAD + "method:\n  name: prompt\n  init_text: 'Classify:'\n", False),
    "both a hub dataset and files": (HEAD + "  dataset: glue\n", False),
    "no data source": ("model:\n  checkpoint: MODEL\ndata:\n  validation_file: VALIDATION\n", False),
    "dataset config without a dataset": (HEAD + "  config: sst2\n", False),
    "unknown data file extension": (HEAD.replace("TRAIN", "train.xlsx"), False),
    "one text column as a string": (HEAD + "  text_columns: text\n", True),
    "three text columns": (HEAD + "  text_columns: [a, b, c]\n", False),
    "a text column twice": (HEAD + "  text_columns: [text, text]\n", False),
    "no metrics": (HEAD + "eval:\n  metrics: []\n", False),
    "warm-up ratio of 1": (HEAD + "train:\n  warmup_ratio: 1\n", False),
    "max_length below 8": (HEAD + "  max_length: 4\n", False),
    "misspelt scheduler": (HEAD + "train:\n  lr_scheduler: cosin\n", False),
    "checkpoint every 100 steps": (HEAD + "train:\n  checkpoint_every: 100\n", True),
    "checkpoint every 0 steps": (HEAD + "train:\n  checkpoint_every: 0\n", False),
    "tracker list": (HEAD + "train:\n  report_to: [tensorboard]\n", True),
    "tracker as a string": (HEAD + "train:\n  report_to: tensorboard\n", False),
    "zero stage with deepspeed": (
        HEAD + "train:\n  distributed:\n    strategy: deepspeed\n    zero_stage: 2\n",
        True,
    ),
    "zero stage with fsdp": (HEAD + "train:\n  distributed:\n    strategy: fsdp\n    zero_stage: 2\n", False),
    "zero stage without a strategy": (HEAD + "train:\n  distributed:\n    zero_stage: 3\n", False),
    "no model section": ("data:\n  train_file: TRAIN\n  validation_file: VALIDATION\n", False),
}


def write_corpus(
    root: Path, checkpoint: Path, data: Any, corpus: dict[str, tuple[str, bool]]
) -> dict[str, Path]:
    files = {}
    for index, (name, (text, _)) in enumerate(corpus.items()):
        filled = text.replace("MODEL", str(checkpoint))
        filled = filled.replace("TRAIN", str(data.train)).replace("VALIDATION", str(data.validation))
        files[name] = root / f"variant-{index:02d}.yaml"
        files[name].write_text(filled, encoding="utf-8")
    return files


def llmkit_verdicts(cli: Any, files: dict[str, Path]) -> dict[str, bool]:
    result = cli("recipes", "validate", *files.values())
    assert result.exit_code in (0, 1), explain(result)
    ok = {line.removeprefix("ok: ").strip() for line in result.stdout.splitlines() if line.startswith("ok: ")}
    failed = {
        line.removeprefix("FAILED: ").strip()
        for line in result.stderr.splitlines()
        if line.startswith("FAILED: ")
    }
    assert ok | failed == {str(path) for path in files.values()}, explain(result)
    return {name: str(path) in ok for name, path in files.items()}


def schema_verdicts(cli: Any, files: dict[str, Path]) -> dict[str, bool]:
    """What an editor says: the schema `llmkit recipes schema` prints, applied by jsonschema to
    the file read as YAML 1.2 (as the YAML language server reads it)."""
    import jsonschema

    from llmkit.recipe.yaml_types import load_yaml_value

    result = cli("recipes", "schema")
    assert result.exit_code == 0, explain(result)
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    return {
        name: validator.is_valid(load_yaml_value(path.read_text(encoding="utf-8")))
        for name, path in files.items()
    }


def test_schema_and_loader_agree_on_every_variant(
    cli, bert_checkpoint, sentiment_data, tmp_path: Path
) -> None:
    files = write_corpus(tmp_path, bert_checkpoint, sentiment_data, CORPUS)
    expected = {name: valid for name, (_, valid) in CORPUS.items()}
    assert llmkit_verdicts(cli, files) == expected
    assert schema_verdicts(cli, files) == expected


def test_the_one_rule_json_schema_cannot_state_is_named_in_it(
    cli, bert_checkpoint, sentiment_data, tmp_path: Path
) -> None:
    """JSON Schema cannot relate two numbers: the schema says so in its $comment."""
    corpus = {"micro batch not dividing": (HEAD + "train:\n  batch_size: 32\n  micro_batch_size: 5\n", False)}
    files = write_corpus(tmp_path, bert_checkpoint, sentiment_data, corpus)
    assert llmkit_verdicts(cli, files) == {"micro batch not dividing": False}
    assert schema_verdicts(cli, files) == {"micro batch not dividing": True}
    schema = json.loads(cli("recipes", "schema").stdout)
    assert "micro_batch_size must divide" in schema["$comment"]


def test_yaml_1_1_strings_are_read_as_editors_read_them() -> None:
    import yaml

    from llmkit.recipe.yaml_types import load_yaml_value

    assert yaml.safe_load("x: 1e-3") == {"x": "1e-3"}  # why llmkit has its own reader
    assert load_yaml_value("x: 1e-3") == {"x": 0.001}
    assert load_yaml_value("{a: yes, b: true, c: off}") == {"a": "yes", "b": True, "c": "off"}


def test_override_floats_are_numbers(cli, make_recipe, bert_checkpoint, sentiment_data) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora")
    result = cli("recipes", "show", recipe, "train.learning_rate=3e-4")
    assert result.exit_code == 0, explain(result)
    assert "learning_rate: 0.0003" in result.stdout


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize(
    "path", sorted(RECIPES.rglob("*.yaml")), ids=lambda p: p.relative_to(RECIPES).as_posix()
)
def test_shipped_files_match_their_own_schema_only(cli, path: Path) -> None:
    """Recipes match the recipe schema, bench files the bench schema, and neither the other's:
    the README's editor set-up maps recipes/benchmarks/ to the bench schema."""
    import jsonschema

    from llmkit.recipe.yaml_types import load_yaml_value

    recipe = jsonschema.Draft202012Validator(json.loads(cli("recipes", "schema").stdout))
    bench = jsonschema.Draft202012Validator(json.loads(cli("recipes", "schema", "--bench").stdout))
    document = load_yaml_value(path.read_text(encoding="utf-8"))
    is_bench = path.parent.name == "benchmarks"
    assert recipe.is_valid(document) is not is_bench
    assert bench.is_valid(document) is is_bench


def test_readme_editor_setup_maps_each_schema_to_its_files() -> None:
    readme = (RECIPES.parent / "README.md").read_text(encoding="utf-8")
    assert '"recipe.schema.json": ["recipes/**/*.yaml", "!recipes/benchmarks/**"]' in readme
    assert '"bench.schema.json": "recipes/benchmarks/*.yaml"' in readme
    assert "llmkit recipes schema --bench > bench.schema.json" in readme
