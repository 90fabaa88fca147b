"""Recipe loading: one merge order (defaults < recipe file < command line), override values read as
YAML, per-method default learning rates, and input paths relative to the recipe file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml


def write(path: Path, tree: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return path


def minimal(**sections: Any) -> dict[str, Any]:
    tree: dict[str, Any] = {"model": {"checkpoint": "some/model"}, "data": {"train_file": "train.csv"}}
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value} if isinstance(value, dict) else value
    return tree


def load(path: Path, *overrides: str) -> Any:
    from llmkit.recipe.loading import load_recipe

    return load_recipe(path, list(overrides))


def test_merge_order_defaults_then_file_then_command_line(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", minimal(train={"epochs": 2, "batch_size": 4, "seed": 7}))

    from_file = load(path)
    assert from_file.train.epochs == 2  # the file beats the default (3)
    assert from_file.train.batch_size == 4
    assert from_file.train.eval_batch_size == 64  # set nowhere: the default

    overridden = load(path, "train.epochs=5", "train.eval_batch_size=16")
    assert overridden.train.epochs == 5  # the command line beats the file
    assert overridden.train.eval_batch_size == 16  # and the default
    assert overridden.train.batch_size == 4  # keys beside an override keep their file values
    assert overridden.train.seed == 7


def test_later_override_of_the_same_key_wins(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", minimal())
    assert load(path, "train.epochs=1", "train.epochs=4").train.epochs == 4


def test_override_values_are_read_as_yaml(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", minimal(method={"name": "lora", "target_modules": ["query"]}))
    recipe = load(
        path,
        "train.learning_rate=2e-3",
        "method.target_modules=[query,value]",
        "train.max_steps=null",
        "data.text_columns=[premise, hypothesis]",
        "train.epochs=0.5",
        "method.dropout=0",
    )
    assert recipe.train.learning_rate == pytest.approx(2e-3)
    assert isinstance(recipe.train.learning_rate, float)
    assert recipe.method.target_modules == ["query", "value"]
    assert recipe.train.max_steps is None
    assert recipe.data.text_columns == ["premise", "hypothesis"]
    assert recipe.train.epochs == 0.5
    assert recipe.method.dropout == 0.0


def test_null_override_clears_a_value_from_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", minimal(method={"name": "lora", "target_modules": ["query"]}))
    assert load(path, "method.target_modules=null").method.target_modules is None
    assert load(path, "method.target_modules=").method.target_modules is None  # empty is null too


def test_override_value_may_contain_equals_signs(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", minimal(method={"name": "prompt"}))
    recipe = load(path, "method.init=text", "method.init_text=label = ?")
    assert recipe.method.init_text == "label = ?"


@pytest.mark.parametrize(
    ("method", "learning_rate"), [("full", 5e-5), ("lora", 2e-3), ("prefix", 1e-2), ("prompt", 3e-2)]
)
def test_method_default_learning_rate_applies_when_none_is_given(
    tmp_path: Path, method: str, learning_rate: float
) -> None:
    path = write(tmp_path / "r.yaml", minimal(method={"name": method}))
    recipe = load(path)
    assert recipe.train.learning_rate == learning_rate
    assert recipe.learning_rate == learning_rate
    assert load(path, "train.learning_rate=0.123").learning_rate == 0.123


def test_default_method_is_full_fine_tuning(tmp_path: Path) -> None:
    recipe = load(write(tmp_path / "r.yaml", minimal()))
    assert recipe.method.name == "full"
    assert recipe.learning_rate == 5e-5


def test_default_learning_rate_follows_a_method_changed_on_the_command_line(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", minimal(method={"name": "lora"}))
    assert load(path, "method.name=prefix").learning_rate == 1e-2


def test_null_learning_rate_falls_back_to_the_method_default(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", minimal(method={"name": "lora"}, train={"learning_rate": 1e-4}))
    assert load(path).learning_rate == 1e-4
    assert load(path, "train.learning_rate=null").learning_rate == 2e-3


def test_data_paths_in_a_file_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe_dir = tmp_path / "project" / "recipes"
    path = write(
        recipe_dir / "r.yaml",
        minimal(
            data={
                "train_file": "../data/train.csv",
                "validation_file": "dev.csv",
                "test_file": "/abs/test.csv",
            }
        ),
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    recipe = load(path)
    assert recipe.data.train_file == tmp_path / "project" / "data" / "train.csv"
    assert recipe.data.validation_file == recipe_dir / "dev.csv"
    assert recipe.data.test_file == Path("/abs/test.csv")

    # On the command line a path is relative to where the command runs.
    assert load(path, "data.validation_file=mine.csv").data.validation_file == elsewhere / "mine.csv"


def test_recipe_given_by_a_relative_path_resolves_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "recipes" / "r.yaml", minimal(data={"train_file": "data/train.csv"}))
    monkeypatch.chdir(tmp_path)
    recipe = load(Path("recipes/r.yaml"))
    assert recipe.data.train_file == tmp_path / "recipes" / "data" / "train.csv"
    assert recipe.data.train_file.is_absolute()


def test_output_dir_defaults_to_runs_and_the_recipe_name(tmp_path: Path) -> None:
    path = write(tmp_path / "my-recipe.yaml", minimal())
    assert load(path).output_dir == Path("runs") / "my-recipe"
    assert load(path, "output_dir=elsewhere").output_dir == Path("elsewhere")


def test_every_problem_is_reported_at_once_with_its_line(tmp_path: Path) -> None:
    from llmkit.errors import RecipeError

    path = tmp_path / "r.yaml"
    path.write_text(
        "model:\n"
        "  checkpoint: some/model\n"
        "data:\n"
        "  train_file: train.csv\n"
        "train:\n"
        "  epochs: -1\n"
        "  batchsize: 8\n",
        encoding="utf-8",
    )
    with pytest.raises(RecipeError) as caught:
        load(path, "method.name=lorra")
    problems = caught.value.problems
    assert len(problems) == 3, problems
    text = str(caught.value)
    assert f"[{path}:6] train.epochs: Input should be greater than 0" in text
    assert f"[{path}:7] train.batchsize: unknown key. Did you mean 'train.batch_size'?" in text
    assert "[command line] method.name: unknown method 'lorra'. Did you mean 'lora'?" in text


def test_a_method_option_must_match_the_method(tmp_path: Path) -> None:
    from llmkit.errors import RecipeError

    path = write(tmp_path / "r.yaml", minimal(method={"name": "prefix"}))
    with pytest.raises(RecipeError) as caught:
        load(path, "method.r=4")
    assert "[command line] method.r: unknown key" in str(caught.value)
    assert "'lora'" in str(caught.value)  # where the option does belong
    assert load(path, "method.name=lora", "method.r=4").method.r == 4
