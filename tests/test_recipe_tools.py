"""Recipe inheritance (`base:`) and the `llmkit recipes` commands: list, show, validate, new,
schema. Nothing here trains; the checks that read data use the tiny fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import explain, invoke, recipe_tree, write_csv, write_recipe

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def shown(*args: Any) -> dict[str, Any]:
    result = invoke("recipes", "show", *args)
    assert result.exit_code == 0, explain(result)
    return yaml.safe_load(result.stdout)


@pytest.fixture
def base_recipe(tmp_path: Path, bert_checkpoint: Path, sentiment_data: Any) -> Path:
    """A complete recipe in a subdirectory, with a relative data path and an output_dir."""
    base = tmp_path / "family" / "base.yaml"
    tree = recipe_tree(bert_checkpoint, sentiment_data, {"name": "lora", "r": 4}, train={"epochs": 2})
    tree["data"]["train_file"] = "data/train.csv"
    tree["output_dir"] = "runs/base"
    write(base.parent / "data" / "train.csv", sentiment_data.train.read_text())
    return write(base, yaml.safe_dump(tree, sort_keys=False))


# ----------------------------------------------------------------------------- base: inheritance


def test_a_child_recipe_overrides_only_what_differs(tmp_path: Path, base_recipe: Path) -> None:
    child = write(tmp_path / "child.yaml", "base: family/base.yaml\nmethod:\n  r: 16\ntrain:\n  seed: 7\n")
    recipe = shown(child)
    assert recipe["method"] == {**recipe["method"], "name": "lora", "r": 16}
    assert recipe["train"]["epochs"] == 2 and recipe["train"]["seed"] == 7
    # Paths in the base are relative to the base file, not to the child.
    assert recipe["data"]["train_file"] == str((base_recipe.parent / "data" / "train.csv").resolve())
    # A child is its own experiment: it does not write into its base's run directory.
    assert recipe["output_dir"] == "runs/child"
    assert "base" not in recipe


def test_inheritance_is_recursive_and_a_new_method_starts_from_its_defaults(
    tmp_path: Path, base_recipe: Path
) -> None:
    write(tmp_path / "middle.yaml", "base: family/base.yaml\ntrain:\n  batch_size: 4\n")
    grandchild = write(tmp_path / "sub" / "leaf.yaml", "base: ../middle.yaml\nmethod:\n  name: prefix\n")
    recipe = shown(grandchild)
    assert recipe["train"]["batch_size"] == 4 and recipe["train"]["epochs"] == 2
    assert recipe["method"]["name"] == "prefix"
    assert "r" not in recipe["method"]  # lora's options are not carried over to prefix


def test_errors_point_at_the_file_that_sets_the_key(tmp_path: Path, base_recipe: Path) -> None:
    text = base_recipe.read_text().replace("epochs: 2", "epochs: -1")
    write(base_recipe, text)
    line = text.splitlines().index("  epochs: -1") + 1
    child = write(tmp_path / "child.yaml", "base: family/base.yaml\ntrain:\n  sede: 1\n")
    result = invoke("recipes", "show", child)
    assert result.exit_code == 2
    assert f"[{base_recipe}:{line}] train.epochs" in result.stderr
    assert "[" + str(child) + ":3] train.sede: unknown key. Did you mean 'train.seed'?" in result.stderr


def test_inheritance_loops_and_missing_bases_are_errors(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    looped = invoke("recipes", "show", tmp_path / "a.yaml")
    assert looped.exit_code == 2
    assert "inherit in a loop" in looped.stderr and "a.yaml -> " in looped.stderr

    write(tmp_path / "orphan.yaml", "base: nowhere.yaml\n")
    missing = invoke("recipes", "show", tmp_path / "orphan.yaml")
    assert missing.exit_code == 2
    assert ":1] base: 'nowhere.yaml' does not exist" in missing.stderr


def test_finetune_reads_inherited_recipes(tmp_path: Path, base_recipe: Path) -> None:
    from llmkit.recipe.loading import load_recipe

    child = write(tmp_path / "child.yaml", "base: family/base.yaml\n")
    recipe = load_recipe(child, ["method.r=2"])
    assert recipe.method.name == "lora" and recipe.method.r == 2  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- list and show


@pytest.fixture
def recipes_dir(
    tmp_path: Path, bert_checkpoint: Path, sentiment_data: Any, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A project directory with recipes/ (one nested, one broken, one benchmark file), as cwd."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "recipes"
    body = yaml.safe_dump(recipe_tree(bert_checkpoint, sentiment_data, "lora"), sort_keys=False)
    modeline = "# yaml-language-server: $schema=../schema.json\n"  # for editors; not a description
    write(
        root / "alpha.yaml",
        modeline + "# Alpha: LoRA on the tiny BERT (for tests). More text here.\n#\n" + body,
    )
    write(
        root / "group" / "beta.yaml", "# Beta: full tuning; the nested one.\n" + body.replace("lora", "full")
    )
    write(root / "broken.yaml", "# Broken on purpose.\nmodel: {}\n")
    write(root / "benchmarks" / "bench.yaml", "# not a recipe\nsuites: [a, b]\n")
    return root


def test_recipes_list_shows_every_recipe_but_benchmarks(recipes_dir: Path) -> None:
    from llmkit.recipe.tools import list_recipes

    summaries = {summary.path.stem: summary for summary in list_recipes()}
    assert set(summaries) == {"alpha", "beta", "broken"}
    alpha = summaries["alpha"]
    assert (alpha.method, alpha.task) == ("lora", "sentiment0")  # task: the training data's folder
    assert alpha.description == "Alpha: LoRA on the tiny BERT."  # first sentence, asides dropped
    assert summaries["beta"].method == "full"
    assert summaries["broken"].method == "invalid"

    result = invoke("recipes", "list")
    assert result.exit_code == 0, explain(result)
    for name in ("alpha", "group/beta", "broken"):
        assert f"│ {name} " in result.stdout
    assert "bench" not in result.stdout


def test_recipes_list_covers_the_shipped_recipes(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmkit.recipe.tools import find_recipes, list_recipes

    monkeypatch.chdir(REPO)
    summaries = list_recipes()
    assert len(summaries) == len(find_recipes()) > 0
    for summary in summaries:
        assert summary.method != "invalid", summary
        assert summary.description, f"{summary.path} has no header comment"


def test_recipes_show_resolves_names_recursively_with_defaults(recipes_dir: Path) -> None:
    recipe = shown("beta", "train.epochs=5")
    assert recipe["method"] == {"name": "full"}
    assert recipe["train"]["epochs"] == 5
    assert recipe["train"]["eval_batch_size"] == 64  # a default, stated
    assert recipe["output_dir"] == "runs/beta"
    assert shown("recipes/group/beta.yaml") == shown("beta")


def test_recipes_show_unknown_and_ambiguous_names(recipes_dir: Path) -> None:
    unknown = invoke("recipes", "show", "alpah")
    assert unknown.exit_code == 2
    assert "No recipe 'alpah'" in unknown.stderr and "did you mean 'alpha'" in unknown.stderr
    write(recipes_dir / "other" / "alpha.yaml", (recipes_dir / "alpha.yaml").read_text())
    ambiguous = invoke("recipes", "show", "alpha")
    assert ambiguous.exit_code == 2
    assert "matches 2 files" in ambiguous.stderr


# ----------------------------------------------------------------------------- validate


def test_validate_accepts_a_good_recipe(make_recipe: Any, bert_checkpoint: Path, sentiment_data: Any) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora")
    result = invoke("recipes", "validate", recipe)
    assert result.exit_code == 0, explain(result)
    assert f"ok: {recipe}" in result.stdout
    assert "train 200, validation 41, test 30 rows; labels: 0, 1" in result.stdout


def test_validate_reports_every_problem_and_exits_non_zero(
    tmp_path: Path, bert_checkpoint: Path, sentiment_data: Any
) -> None:
    good = write_recipe(tmp_path / "good.yaml", bert_checkpoint, sentiment_data)
    wrong_columns = write_csv(tmp_path / "wrong.csv", ["sentence", "label"], [["a", 0], ["b", 1]])
    cases = {
        "schema.yaml": ({"train": {"epochs": 0}}, "train.epochs"),
        "checkpoint.yaml": ({"model": {"checkpoint": str(tmp_path / "no-model")}}, "does not exist"),
        "missing.yaml": (
            {"data": {"validation_file": str(tmp_path / "gone.csv")}},
            "gone.csv' does not exist",
        ),
        "columns.yaml": ({"data": {"validation_file": str(wrong_columns)}}, "has no column 'text'"),
        "targets.yaml": ({"method": {"name": "lora", "target_modules": ["qkv"]}}, "does not have: qkv"),
        "f1.yaml": ({"eval": {"positive_label": "yes"}}, "positive_label 'yes' is not a label"),
    }
    paths = []
    for name, (change, _) in cases.items():
        tree = recipe_tree(bert_checkpoint, sentiment_data)
        for section, values in change.items():
            tree[section] = {**tree.get(section, {}), **values}
        paths.append(write(tmp_path / name, yaml.safe_dump(tree)))

    result = invoke("recipes", "validate", good, *paths)
    assert result.exit_code == 1, explain(result)
    assert f"ok: {good}" in result.stdout
    assert f"{len(cases)} of {len(cases) + 1} recipes have problems" in result.stderr
    for path, (_, message) in zip(paths, cases.values(), strict=True):
        section = result.stderr.split(f"FAILED: {path}", 1)[1].split("FAILED:", 1)[0]
        assert message in section, f"{path.name}: {message!r} not in\n{section}"


def test_validate_checks_every_base_in_the_chain(tmp_path: Path, base_recipe: Path) -> None:
    (base_recipe.parent / "data" / "train.csv").unlink()
    child = write(tmp_path / "child.yaml", "base: family/base.yaml\n")
    result = invoke("recipes", "validate", child)
    assert result.exit_code == 1
    assert "train.csv' does not exist" in result.stderr


# ----------------------------------------------------------------------------- new


def test_recipes_new_copies_with_an_updated_header(recipes_dir: Path) -> None:
    result = invoke("recipes", "new", "gamma", "--from", "beta")
    assert result.exit_code == 0, explain(result)
    created = recipes_dir / "group" / "gamma.yaml"  # beside its source, so relative paths hold
    text = created.read_text()
    assert text.startswith("# gamma: a copy of recipes/group/beta.yaml")
    assert "# Beta: full tuning; the nested one." in text
    assert shown("gamma")["method"] == shown("beta")["method"]

    again = invoke("recipes", "new", "gamma", "--from", "beta")
    assert again.exit_code == 2 and "already exists" in again.stderr


def test_recipes_new_elsewhere_rebases_relative_paths(tmp_path: Path, base_recipe: Path) -> None:
    write(
        base_recipe.parent / "child.yaml",
        "# Child: a child.\n#\n#   llmkit finetune family/child.yaml\nbase: base.yaml\n",
    )
    result = invoke(
        "recipes", "new", tmp_path / "copies" / "copy.yaml", "--from", base_recipe.parent / "child.yaml"
    )
    assert result.exit_code == 0, explain(result)
    copy = tmp_path / "copies" / "copy.yaml"
    assert f"llmkit finetune {copy.as_posix()}" in copy.read_text()
    original, copied = shown(base_recipe.parent / "child.yaml"), shown(copy)
    assert copied["data"]["train_file"] == original["data"]["train_file"]

    moved = invoke("recipes", "new", tmp_path / "copies" / "base-copy.yaml", "--from", base_recipe)
    assert moved.exit_code == 0, explain(moved)
    assert shown(tmp_path / "copies" / "base-copy.yaml")["data"] == shown(base_recipe)["data"]


# ----------------------------------------------------------------------------- schema


def test_recipes_schema_describes_every_key() -> None:
    from llmkit.recipe.schema import Recipe

    result = invoke("recipes", "schema")
    assert result.exit_code == 0, explain(result)
    schema = json.loads(result.stdout)
    assert set(schema["properties"]) == {"base", *Recipe.model_fields}
    assert schema["additionalProperties"] is False
    train = schema["$defs"]["TrainSection"]["properties"]
    assert train["epochs"]["description"] and train["batch_size"]["default"] == 32


def test_recipes_schema_accepts_the_shipped_recipes_and_rejects_typos() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from llmkit.recipe.tools import find_recipes, json_schema

    validator = jsonschema.Draft202012Validator(json_schema())
    for path in find_recipes(REPO / "recipes"):
        errors = [error.message for error in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert not errors, f"{path}: {errors}"
    assert not validator.is_valid(
        {"model": {"checkpoint": "x"}, "data": {"train_file": "t.csv"}, "trian": {}}
    )
    assert validator.is_valid({"base": "other.yaml", "train": {"epochs": 1}})
