"""Every recipe shipped in recipes/ (searched recursively) is a valid recipe."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
# recipes/benchmarks/ holds bench files, a format of their own: tests/test_bench.py validates
# each of them (and the recipes they name) with the bench loader.
BENCH_DIR = RECIPES / "benchmarks"


def shipped_recipes() -> list[pytest.param]:
    paths = sorted(RECIPES.rglob("*.yaml")) + sorted(RECIPES.rglob("*.yml"))
    return [
        pytest.param(path, id=str(path.relative_to(RECIPES)))
        for path in paths
        if BENCH_DIR not in path.parents
    ]


def test_the_quickstart_recipe_is_shipped() -> None:
    assert (RECIPES / "quickstart.yaml").is_file()
    assert any(p.values[0].name == "quickstart.yaml" for p in shipped_recipes())


@pytest.mark.parametrize("path", shipped_recipes())
def test_shipped_recipe_validates(path: Path) -> None:
    from llmkit.recipe.loading import load_recipe

    recipe = load_recipe(path)  # raises, listing every problem, if the recipe is invalid
    assert recipe.model.checkpoint
    assert recipe.learning_rate > 0  # given, or the method's default


@pytest.mark.parametrize("path", shipped_recipes())
def test_shipped_recipe_opens_with_the_command_that_runs_it(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#"), "a recipe opens with a comment saying what it does and how to run it"
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert f"llmkit finetune {path.relative_to(REPO).as_posix()}" in header


@pytest.mark.parametrize("path", shipped_recipes())
def test_shipped_recipe_inputs_inside_the_repository_exist(path: Path) -> None:
    """Data shipped with the repository must be where the recipe says; data outside it (such as
    the SST-2 files in ../shared) is the user's to provide."""
    from llmkit.models.checkpoint import locate_checkpoint
    from llmkit.recipe.loading import load_recipe

    recipe = load_recipe(path)
    for file in (recipe.data.train_file, recipe.data.validation_file, recipe.data.test_file):
        if file is not None and REPO in Path(file).parents:
            assert Path(file).is_file(), f"{path.name} names {file}, which does not exist"

    checkpoint = recipe.model.checkpoint
    if checkpoint.startswith("package:"):
        package = checkpoint.removeprefix("package:").split("/", 1)[0]
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"package {package} is not installed")
        assert locate_checkpoint(checkpoint).is_local
