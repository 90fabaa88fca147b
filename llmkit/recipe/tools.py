"""`llmkit recipes`: find, list, show, validate and copy recipe files, and the recipe JSON Schema.

A recipe NAME is `recipes/**/NAME.yaml` under the current directory, or a path to a file.
`recipes/benchmarks/` holds benchmark definitions, a different format, so it is skipped."""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmkit.errors import LlmkitError
from llmkit.methods import METHODS
from llmkit.recipe.loading import (
    BASE_KEY,
    CHECKPOINT_KEY,
    INPUT_PATH_KEYS,
    OUTPUT_KEY,
    is_local_checkpoint,
    load_recipe,
)
from llmkit.recipe.schema import DEFAULT_METHOD, ONE_SOURCE_JSON_RULES, ZERO_STAGE_JSON_RULE, Recipe
from llmkit.tasks import TASKS, Task, task_for
from llmkit.training.stopping import check_stop_at

RECIPES_DIR = Path("recipes")
SKIPPED_DIRS = ("benchmarks",)
SUFFIXES = (".yaml", ".yml")
# `# yaml-language-server: $schema=...` tells editors which schema to use; it describes nothing.
EDITOR_MODELINE = "# yaml-language-server:"


def find_recipes(root: Path = RECIPES_DIR) -> list[Path]:
    """Every recipe file under `root`, recursively, benchmark definitions excluded."""
    found = [
        path
        for suffix in SUFFIXES
        for path in root.rglob(f"*{suffix}")
        if not any(part in SKIPPED_DIRS for part in path.relative_to(root).parts[:-1])
    ]
    return sorted(found)


def resolve_recipe(name: str, root: Path = RECIPES_DIR) -> Path:
    """A recipe file by path, or by name under `root` (`quickstart` -> recipes/quickstart.yaml)."""
    as_path = Path(name).expanduser()
    if as_path.is_file():
        return as_path
    stem = as_path.name.removesuffix(as_path.suffix) if as_path.suffix in SUFFIXES else as_path.name
    recipes = find_recipes(root) if root.is_dir() else []
    matches = [path for path in recipes if path.stem == stem]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise LlmkitError(
            f"Recipe name '{name}' matches {len(matches)} files: {', '.join(map(str, matches))}.",
            hint="give the path of the one you mean",
        )
    close = difflib.get_close_matches(stem, [path.stem for path in recipes], n=3)
    hint = (
        f"did you mean {' or '.join(repr(c) for c in close)}?"
        if close
        else "`llmkit recipes list` lists them"
    )
    raise LlmkitError(f"No recipe '{name}': no such file, and no {root}/**/{stem}.yaml.", hint=hint)


# ----------------------------------------------------------------------------- list


@dataclass(frozen=True)
class RecipeSummary:
    path: Path
    task: str
    model: str
    method: str
    description: str


def header_comment(text: str) -> list[str]:
    """The comment lines a recipe opens with, without their `# `."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith(EDITOR_MODELINE):
            lines.append(line[1:].removeprefix(" ").rstrip())
    return lines


def description(text: str) -> str:
    """The first sentence of the header comment's first paragraph."""
    paragraph = []
    for line in header_comment(text):
        if not line.strip():
            break
        paragraph.append(line.strip())
    first = re.split(r"(?<=[.!?;])\s", " ".join(paragraph), maxsplit=1)[0]
    # Parenthesised asides (sizes, install commands) make a listing line too long to scan.
    return re.sub(r"\s*\([^()]*\)", "", first).removesuffix(";")


def summarize(path: Path) -> RecipeSummary:
    text = path.read_text(encoding="utf-8")
    try:
        recipe = load_recipe(path)
    except LlmkitError as exc:
        first = str(exc).splitlines()[0]
        return RecipeSummary(path, "?", "?", "invalid", f"{description(text)} [{first}]".strip())
    return RecipeSummary(
        path=path,
        task=_task(recipe),
        model=recipe.model.checkpoint,
        method=recipe.method.name,
        description=description(text),
    )


def _task(recipe: Recipe) -> str:
    """The data the recipe classifies: a hub dataset, or the folder (or file) of its train file."""
    data = recipe.data
    if data.dataset is not None:
        name = data.dataset + (f"/{data.config}" if data.config else "")
    else:
        assert data.train_file is not None
        train = Path(data.train_file)
        name = train.parent.name if train.stem in ("train", "training") else train.stem
    return name + (" (pairs)" if len(data.text_columns) == 2 else "")


def list_recipes(root: Path = RECIPES_DIR) -> list[RecipeSummary]:
    if not root.is_dir():
        raise LlmkitError(f"There is no '{root}' directory here.", hint="run this where recipes/ is")
    return [summarize(path) for path in find_recipes(root)]


def print_recipe_list(root: Path = RECIPES_DIR) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"recipes in {root}/", title_justify="left")
    for column in ("name", "task", "model", "method"):
        table.add_column(column, no_wrap=column != "model", overflow="fold")
    table.add_column("description", ratio=1)
    for summary in list_recipes(root):
        name = summary.path.relative_to(root).with_suffix("").as_posix()
        table.add_row(name, summary.task, summary.model, summary.method, summary.description)
    Console().print(table)


# ----------------------------------------------------------------------------- show


def show_recipe(path: Path, overrides: list[str] | None = None) -> str:
    """The fully resolved recipe as YAML: defaults, base recipes and overrides merged."""
    recipe = load_recipe(path, overrides or [])
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# ----------------------------------------------------------------------------- validate


@dataclass
class Validation:
    path: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_file(path: Path) -> Validation:
    """Every check that runs without training: the schema, the checkpoint (present, and an
    architecture transformers can classify with), the data (files read with the recipe's reader
    options, columns present, labels consistent across splits) and the metric options."""
    result = Validation(path)
    try:
        recipe = load_recipe(path)
    except LlmkitError as exc:
        result.problems.append(str(exc))
        return result
    for check in (_check_checkpoint, _check_data):
        try:
            note = check(recipe)
        except LlmkitError as exc:
            result.problems.append(str(exc))
        else:
            if note:
                result.notes.append(note)
    return result


def _check_checkpoint(recipe: Recipe) -> str | None:
    from llmkit.errors import ModelError
    from llmkit.models.checkpoint import locate_checkpoint

    reference = recipe.model.checkpoint
    location = locate_checkpoint(reference)
    if not location.is_local:
        return f"checkpoint '{reference}' is a hub id: not checked (it is fetched when training starts)"
    if location.gguf_file is not None:
        return None  # its architecture is known only once the file is read, when training starts
    try:
        config = json.loads((Path(location.path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"Cannot read {location.path}/config.json: {exc}") from exc
    model_type = str(config.get("model_type"))
    task = task_for(recipe.task)
    task.check_model_type(model_type, reference)
    targets = getattr(recipe.method, "target_modules", None)
    if isinstance(targets, list):
        present = _linear_layer_names(location.path, task)
        absent = [name for name in targets if name not in present]
        if absent:
            raise ModelError(
                f"method.target_modules names modules this {model_type} model does not have: "
                f"{', '.join(absent)}.",
                hint="choose from its linear layers: " + ", ".join(sorted(present)),
            )
    return None


def _linear_layer_names(checkpoint_dir: str, task: Task) -> set[str]:
    """Linear layer names of a checkpoint's architecture, built on the meta device (no weights)."""
    import torch
    from transformers import AutoConfig
    from transformers.pytorch_utils import Conv1D

    with torch.device("meta"):
        model = task.auto_model_class().from_config(AutoConfig.from_pretrained(checkpoint_dir))
    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | Conv1D)
    }


def _check_data(recipe: Recipe) -> str:
    import datasets

    datasets.disable_progress_bars()  # a validation report, not a progress display
    task = task_for(recipe.task)
    labelled = task.load_splits(recipe.data, seed=recipe.train.seed)
    task.check_metrics(recipe.eval, labelled.label_names)
    check_stop_at(recipe, task.metric_names(recipe.eval))
    rows = ", ".join(f"{split} {len(dataset)}" for split, dataset in labelled.splits.items())
    return f"data: {rows} rows; labels: {', '.join(labelled.label_names)}"


# ----------------------------------------------------------------------------- new


def new_recipe(name: str, source: Path, overwrite: bool = False) -> Path:
    """Copy `source` to a new recipe `name` (placed beside the source unless `name` is a path),
    with its header's first line naming it and its commands pointing at the new file."""
    target = Path(name).expanduser()
    if target.suffix not in SUFFIXES:
        target = target.with_name(target.name + ".yaml")
    if target.parent == Path("."):
        target = source.parent / target.name  # beside its source, so relative data paths still hold
    if target.exists() and not overwrite:
        raise LlmkitError(f"'{target}' already exists.", hint="choose another name, or pass --overwrite")
    text = source.read_text(encoding="utf-8")
    if target.parent.resolve() != source.parent.resolve():
        text = _rebase_paths(text, source.parent, target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(_new_header(text, source, target), encoding="utf-8")
    return target


def _new_header(text: str, source: Path, target: Path) -> str:
    original = text.splitlines(keepends=True)
    comment_lines = next((i for i, line in enumerate(original) if not line.startswith("#")), len(original))
    modelines = [line for line in original[:comment_lines] if line.startswith(EDITOR_MODELINE)]
    old_paths = sorted({str(source), source.as_posix(), f"{source.parent.name}/{source.name}"}, key=len)
    lines = [f"{target.stem}: a copy of {source.as_posix()}; say here what this recipe changes.", ""]
    for line in header_comment(text):
        for old in reversed(old_paths):  # longest first: a full path before its tail
            line = line.replace(old, target.as_posix())
        lines.append(line)
    if len(lines) == 2:
        lines.append(f"  llmkit finetune {target.as_posix()}")
    header = "".join(f"# {line}".rstrip() + "\n" for line in lines)
    return "".join(modelines) + header + "".join(original[comment_lines:])


def _rebase_paths(text: str, old_dir: Path, new_dir: Path) -> str:
    """Rewrite relative data paths (and `base:`) so they still point at the same files from
    `new_dir`. Only the value is replaced, so comments and layout stay as written."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode):
        return text
    spans = []
    wanted = {*INPUT_PATH_KEYS, OUTPUT_KEY, (BASE_KEY,)}
    for path, node in _scalar_nodes(root):
        is_path = path in wanted or (path == CHECKPOINT_KEY and is_local_checkpoint(node.value, old_dir))
        if is_path and node.value and not Path(node.value).expanduser().is_absolute():
            moved = os.path.relpath((old_dir / node.value).resolve(), new_dir.resolve())
            spans.append((node.start_mark.index, node.end_mark.index, json.dumps(Path(moved).as_posix())))
    for start, end, value in sorted(spans, reverse=True):
        text = text[:start] + value + text[end:]
    return text


def _scalar_nodes(node: yaml.MappingNode, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found: list[tuple[tuple[str, ...], Any]] = []
    for key_node, value_node in node.value:
        path = (*prefix, str(key_node.value))
        if isinstance(value_node, yaml.MappingNode):
            found.extend(_scalar_nodes(value_node, path))
        elif isinstance(value_node, yaml.ScalarNode):
            found.append((path, value_node))
    return found


# ----------------------------------------------------------------------------- schema


def json_schema() -> dict[str, Any]:
    """The recipe format as JSON Schema, for editors (e.g. the YAML language server)."""
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "llmkit recipe"
    schema["properties"] = {
        BASE_KEY: {
            "type": "string",
            "description": "A recipe this one extends (path relative to this file): its keys apply "
            "unless set here. output_dir is not inherited; a different method.name starts that "
            "method from its defaults.",
        },
        **schema["properties"],
    }
    # A task may be named alone (`task: token_classification`), its options then the defaults.
    task = schema["properties"]["task"]
    description = task.pop("description", None)
    schema["properties"]["task"] = {
        "description": description,
        "anyOf": [{"type": "string", "enum": list(TASKS)}, task],
    }
    # One text column may be written as a plain string (the schema's before-validator wraps it).
    columns = schema["$defs"]["DataSection"]["properties"]["text_columns"]
    as_list = {key: columns.pop(key) for key in ("type", "items", "minItems", "maxItems") if key in columns}
    columns["anyOf"] = [{"type": "string"}, {**as_list, "minItems": 1, "maxItems": 2, "uniqueItems": True}]
    schema["$defs"]["DistributedSection"].update(ZERO_STAGE_JSON_RULE)
    # A method section without a name is the default method's: the others must name themselves.
    for option in (spec.options for spec in METHODS.values()):
        if option.model_fields["name"].default != DEFAULT_METHOD:
            definition = schema["$defs"][option.__name__]
            definition["required"] = sorted({*definition.get("required", []), "name"})
    # A recipe with a base may leave out what its base sets, required sections and the data
    # source included; the method section may always be left out (full fine-tuning).
    required = [key for key in schema.pop("required", []) if key != "method"]
    schema["if"] = {"not": {"required": [BASE_KEY]}}
    schema["then"] = {"required": required, "properties": {"data": ONE_SOURCE_JSON_RULES}}
    schema["$comment"] = (
        "llmkit also checks what JSON Schema cannot state: train.micro_batch_size must divide "
        "train.batch_size; files, checkpoint and labels are checked by `llmkit recipes validate`."
    )
    return schema


def bench_json_schema() -> dict[str, Any]:
    """The bench file format (recipes/benchmarks/*.yaml) as JSON Schema."""
    from llmkit.bench.schema import Bench

    schema = Bench.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "llmkit bench file"
    # A run without `kind` is an llmkit run: a peer run must say so.
    for definition in schema["$defs"].values():
        kind = definition.get("properties", {}).get("kind", {})
        if kind.get("const", kind.get("default")) == "peer":
            definition["required"] = sorted({*definition.get("required", []), "kind"})
    return schema
