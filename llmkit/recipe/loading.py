"""Recipe loading: one merge order (defaults < recipe file < command-line overrides), then
validation against the schema, with every problem reported at once by key, file and line."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from llmkit.errors import LlmkitError, RecipeError
from llmkit.methods import METHODS
from llmkit.recipe.schema import Recipe
from llmkit.recipe.yaml_types import YamlLoader, load_yaml_value
from llmkit.tasks import DEFAULT_TASK, TASKS

# Keys whose values are paths to inputs: in a recipe file they are relative to that file, so a
# recipe and its data travel together; on the command line they are relative to where you are.
INPUT_PATH_KEYS = (
    ("data", "train_file"),
    ("data", "validation_file"),
    ("data", "test_file"),
    ("train", "distill", "teacher"),  # a run directory or checkpoint directory
)
# Also paths, the same way, but not always: a checkpoint may be a hub id (resolved only when it
# names something local), and the default run directory (runs/<recipe name>) is where you are.
CHECKPOINT_KEY = ("model", "checkpoint")
OUTPUT_KEY = ("output_dir",)
PACKAGE_PREFIX = "package:"
CLI = "command line"
# A recipe may extend another: `base: other.yaml` (relative to the recipe) supplies every key the
# recipe does not set. It is resolved here, before validation, so it is not a schema key.
BASE_KEY = "base"

KeyPath = tuple[str, ...]


def load_recipe(path: Path | str, overrides: list[str] | None = None) -> Recipe:
    """Read, merge and validate a recipe file (and its `base:` chain) with `KEY=VALUE` overrides."""
    path = Path(path)
    document, lines, inherited = read_recipe_tree(path)
    document.setdefault("output_dir", str(Path("runs") / path.stem))
    return apply_overrides(document, overrides or [], str(path), lines=lines, sources=inherited)


def apply_overrides(
    tree: dict[str, Any],
    overrides: list[str],
    source: str,
    lines: dict[KeyPath, int] | None = None,
    sources: dict[KeyPath, str] | None = None,
) -> Recipe:
    """`KEY=VALUE` overrides merged over a recipe mapping (from a file, or a run's recipe.yaml),
    validated; their paths are relative to the current directory."""
    override_tree = parse_overrides(overrides)
    _resolve_input_paths(override_tree, base=Path.cwd(), in_file=False)
    merged = deep_merge(tree, override_tree)
    origins = {**(sources or {}), **{key: CLI for key in leaf_paths(override_tree)}}
    return validate_recipe(merged, source=source, lines=lines, sources=origins)


def read_recipe_tree(
    path: Path, chain: tuple[Path, ...] = ()
) -> tuple[dict[str, Any], dict[KeyPath, int], dict[KeyPath, str]]:
    """A recipe file merged over its `base:` recipes (recursively), with input paths made absolute.

    Returns the merged mapping, the line of each key written in `path` itself, and `file:line`
    for each key that comes from a base file instead, so errors point at the file to edit."""
    document, lines = read_recipe_file(path)
    _resolve_input_paths(document, base=path.parent, in_file=True)
    if BASE_KEY not in document:
        return document, lines, {}
    base_path = _base_path(path, document.pop(BASE_KEY), lines)
    here = path.resolve()
    if base_path.resolve() in (*chain, here):
        loop = " -> ".join(str(p) for p in (*chain, here, base_path.resolve()))
        raise RecipeError(
            [f"[{path}:{lines[(BASE_KEY,)]}] base: recipes inherit in a loop: {loop}"], str(path)
        )
    parent, parent_lines, parent_inherited = read_recipe_tree(base_path, (*chain, here))
    origins = {**{key: f"{base_path}:{line}" for key, line in parent_lines.items()}, **parent_inherited}
    # A recipe's run directory is its own: a child writing into its base's runs would clobber them.
    parent.pop("output_dir", None)
    if _method_name(document) not in (None, _method_name(parent)):
        # Options of one method mean nothing to another: a new method starts from its defaults.
        parent.pop("method", None)
    kept = {key: origin for key, origin in origins.items() if _present(parent, key) and key not in lines}
    return deep_merge(parent, document), lines, kept


def _base_path(path: Path, reference: Any, lines: dict[KeyPath, int]) -> Path:
    where = f"[{path}:{lines.get((BASE_KEY,), 1)}] base"
    if not isinstance(reference, str) or not reference.strip():
        raise RecipeError([f"{where}: must be the path of a recipe file, got {reference!r}"], str(path))
    base_path = path.parent / Path(reference).expanduser()
    if not base_path.is_file():
        raise RecipeError(
            [
                f"{where}: '{reference}' does not exist (looked for {base_path}; the path is relative "
                "to this recipe file)"
            ],
            str(path),
        )
    return base_path


def _method_name(document: dict[str, Any]) -> Any:
    method = document.get("method")
    return method.get("name") if isinstance(method, dict) else None


def _present(tree: dict[str, Any], key: KeyPath) -> bool:
    node: Any = tree
    for part in key:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def read_yaml_file(path: Path, kind: str, hint: str) -> tuple[Any, dict[KeyPath, int]]:
    """A YAML file's content and the line (1-based) of each key, parsed once; a missing file,
    non-UTF-8 text or a syntax error is a user error naming the file (and line and column)."""
    if path.is_dir():
        raise LlmkitError(f"{kind} file '{path}' is a directory, not a file.", hint=hint)
    if not path.is_file():
        raise LlmkitError(f"{kind} file '{path}' does not exist.", hint=hint)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LlmkitError(f"{kind} file '{path}' is not UTF-8 text ({exc.reason}).") from exc
    loader = YamlLoader(text)
    try:
        node = loader.get_single_node()
        document = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise LlmkitError(
            f"{where}: YAML syntax error: {exc.problem}",
            hint="check indentation and that each key is followed by ': '",
        ) from exc
    finally:
        loader.dispose()
    _check_unique_keys(node, path)
    return document, key_lines(node)


def _check_unique_keys(node: yaml.Node | None, path: Path) -> None:
    """A key written twice in one mapping is an error: YAML readers keep the last silently, so a
    second `train:` section would replace the first."""
    duplicates = []
    pending = [node]
    while pending:
        current = pending.pop()
        if isinstance(current, yaml.MappingNode):
            first: dict[str, int] = {}
            for key_node, value_node in current.value:
                name, line = str(key_node.value), key_node.start_mark.line + 1
                if name in first:
                    duplicates.append(
                        (
                            line,
                            f"{path}:{line}: the key '{name}' is written twice in one "
                            f"mapping (first at line {first[name]})",
                        )
                    )
                first.setdefault(name, line)
                pending.append(value_node)
        elif isinstance(current, yaml.SequenceNode):
            pending.extend(current.value)
    if duplicates:
        listing = "\n".join(f"  - {message}" for _, message in sorted(duplicates))
        raise LlmkitError(
            f"{path}: a key written twice:\n{listing}",
            hint="keep one of each: YAML would silently use only the last",
        )


def read_recipe_file(path: Path) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """The recipe's mapping and the line (1-based) where each key path is written."""
    document, lines = read_yaml_file(
        path, "Recipe", hint="give the path to a .yaml recipe; `ls recipes/` lists the shipped ones"
    )
    if document is None:
        raise RecipeError(["the file is empty; a recipe needs model and data sections"], str(path))
    if not isinstance(document, dict):
        raise RecipeError(
            [f"the top level must be a mapping of sections, got a {type(document).__name__}"],
            str(path),
        )
    return document, lines


def key_lines(node: yaml.Node | None, prefix: KeyPath = ()) -> dict[KeyPath, int]:
    """The line of each key, list items included: ('runs', '0', 'recipe') -> 12."""
    lines: dict[KeyPath, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            lines[key] = key_node.start_mark.line + 1
            lines.update(key_lines(value_node, key))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*prefix, str(index))] = item.start_mark.line + 1
            lines.update(key_lines(item, (*prefix, str(index))))
    return lines


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`a.b=value` pairs into a nested mapping; values are read as YAML (`1`, `null`, `[q, v]`)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise LlmkitError(
                f"Override '{item}' is not KEY=VALUE.",
                hint="write dotted keys, e.g. train.epochs=1 data.max_train_samples=2000",
            )
        try:
            value = load_yaml_value(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise LlmkitError(f"Override '{item}' conflicts with an earlier override of '{part}'.")
            node = child
        node[leaf] = value
    return tree


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = _task_as_mapping(base)
    for key, value in _task_as_mapping(update).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _task_as_mapping(tree: dict[str, Any]) -> dict[str, Any]:
    """`task: NAME` read as `task: {name: NAME}`, so options set by a base recipe, a bench file or
    an override (task.seqeval_mode=...) merge with the task a recipe names."""
    task = tree.get("task")
    return {**tree, "task": {"name": task}} if isinstance(task, str) else dict(tree)


def _resolve_input_paths(tree: dict[str, Any], base: Path, in_file: bool) -> None:
    """Paths in `tree` made absolute against `base`: the recipe file's directory (`in_file`), or
    the current directory for the command line, where a relative output_dir stays as given."""
    keys = [*INPUT_PATH_KEYS, CHECKPOINT_KEY, *([OUTPUT_KEY] if in_file else [])]
    for key in keys:
        *parents, leaf = key
        holder: Any = tree
        for part in parents:
            holder = holder.get(part) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and isinstance(holder.get(leaf), str):
            holder[leaf] = resolve_path_value(key, holder[leaf], base)


def resolve_path_value(key: KeyPath, value: Any, base: Path) -> Any:
    """A path-valued key's value made absolute against `base`; a checkpoint only when it names a
    local file or directory (or looks like a path), not a hub id or an installed package."""
    if not isinstance(value, str) or not value.strip():
        return value
    if key == CHECKPOINT_KEY and not is_local_checkpoint(value, base):
        return value
    return str((base / Path(value).expanduser()).resolve())


def is_local_checkpoint(value: str, base: Path) -> bool:
    if value.startswith(PACKAGE_PREFIX):
        return False
    path = Path(value).expanduser()
    return (
        path.is_absolute()
        or value.startswith(".")
        or value.lower().endswith(".gguf")
        or (base / path).exists()
    )


def leaf_paths(tree: dict[str, Any], prefix: KeyPath = ()) -> list[KeyPath]:
    leaves: list[KeyPath] = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            leaves.extend(leaf_paths(value, (*prefix, key)))
        else:
            leaves.append((*prefix, key))
    return leaves


def validate_recipe(
    tree: dict[str, Any],
    source: str,
    lines: dict[KeyPath, int] | None = None,
    sources: dict[KeyPath, str] | None = None,
) -> Recipe:
    try:
        return Recipe.model_validate(tree)
    except ValidationError as exc:
        problems = [_describe(error, tree, source, lines or {}, sources or {}) for error in exc.errors()]
        raise RecipeError(sorted(set(problems), key=problems.index), source) from None


def _describe(
    error: Any,
    tree: dict[str, Any],
    source: str,
    lines: dict[KeyPath, int],
    sources: dict[KeyPath, str],
) -> str:
    kind = error["type"]
    loc = _user_path(tuple(str(part) for part in error["loc"]))
    if kind == "union_tag_invalid":
        loc = (*loc, "name")
    key = ".".join(loc) or "(top level)"
    where = _where(loc, source, lines, sources)
    if kind == "extra_forbidden":
        return f"{where}{key}: unknown key. {_suggest(loc, tree)}"
    if kind == "missing":
        return f"{where}{key}: required, but missing."
    if kind == "union_tag_invalid":
        name = str(error["input"].get("name")) if isinstance(error["input"], dict) else "?"
        close = difflib.get_close_matches(name, list(METHODS), n=1)
        guess = f" Did you mean '{close[0]}'?" if close else ""
        return f"{where}{key}: unknown method '{name}'.{guess} Choose from: {', '.join(METHODS)}."
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind not in ("value_error", "assertion_error") and not isinstance(error["input"], dict):
        message += f" (got {error['input']!r})"
    return f"{where}{key}: {message}"


def _user_path(loc: KeyPath) -> KeyPath:
    # Pydantic puts the discriminator value in the path of a tagged union: method.lora.r -> method.r
    if len(loc) >= 2 and loc[0] == "method" and loc[1] in METHODS:
        return (loc[0], *loc[2:])
    return loc


def _where(loc: KeyPath, source: str, lines: dict[KeyPath, int], sources: dict[KeyPath, str]) -> str:
    # An override can create a key the file lacks (trian.epochs=1 makes 'trian'): look below too.
    below = [origin for key, origin in sources.items() if key[: len(loc)] == loc and loc]
    # Or it made a mapping of a value the file sets (train.epochs.x=1): blame the command line.
    made_mapping = [
        origin for key, origin in sources.items() if key[: len(loc)] == loc and len(key) > len(loc)
    ]
    if below and (loc not in lines or (made_mapping and not _is_section(loc))):
        return f"[{(made_mapping or below)[0]}] "
    for end in range(len(loc), 0, -1):
        prefix = loc[:end]
        if prefix in sources:
            return f"[{sources[prefix]}] "
        if prefix in lines:
            return f"[{source}:{lines[prefix]}] "
    return ""


def _is_section(loc: KeyPath) -> bool:
    """A key whose value is a mapping in the schema (a section): its errors are about the section."""
    return len(loc) == 1 or loc == ("method",)


def _suggest(loc: KeyPath, tree: dict[str, Any]) -> str:
    *parent, unknown = loc
    siblings = _field_names(tuple(parent), tree)
    if tuple(parent) == ("method",):
        return _suggest_method_option(unknown, siblings, tree)
    close = difflib.get_close_matches(unknown, siblings, n=1, cutoff=0.6)
    if close:
        return f"Did you mean '{'.'.join((*parent, close[0]))}'?"
    elsewhere = _other_homes(unknown, tuple(parent), tree)
    if elsewhere:
        return f"'{unknown}' belongs to {elsewhere}."
    return f"Valid keys here: {', '.join(siblings)}." if siblings else ""


def _suggest_method_option(unknown: str, options: list[str], tree: dict[str, Any]) -> str:
    method = tree.get("method")
    current = method.get("name", "full") if isinstance(method, dict) else "full"
    close = difflib.get_close_matches(unknown, options, n=1, cutoff=0.6)
    if close:
        return f"Did you mean 'method.{close[0]}'?"
    owners = [name for name, spec in METHODS.items() if unknown in spec.options.model_fields]
    valid = ", ".join(o for o in options if o != "name") or "none"
    if owners:
        return (
            f"It is an option of method {' and '.join(repr(o) for o in owners)}, not of "
            f"'{current}' (whose options are: {valid})."
        )
    return f"Method '{current}' takes: {valid}."


def _field_names(parent: KeyPath, tree: dict[str, Any]) -> list[str]:
    model = _model_at(parent, tree)
    return list(model.model_fields) if model is not None else []


def _model_at(parent: KeyPath, tree: dict[str, Any]) -> type[BaseModel] | None:
    if parent == ():
        return Recipe
    if parent == ("method",):
        method = tree.get("method")
        name = method.get("name", "full") if isinstance(method, dict) else "full"
        spec = METHODS.get(name)
        return spec.options if spec else None
    if parent == ("task",):
        task = tree.get("task")
        name = task.get("name", DEFAULT_TASK) if isinstance(task, dict) else DEFAULT_TASK
        task_spec = TASKS.get(name)
        return task_spec.options if task_spec else None
    model: type[BaseModel] | None = Recipe
    for name in parent:  # a section, or a section inside one (train.distributed)
        field = model.model_fields.get(name) if model is not None else None
        annotation = field.annotation if field is not None else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model


def _other_homes(key: str, parent: KeyPath, tree: dict[str, Any]) -> str:
    """Where a misplaced key does exist: another section, or another method's options."""
    homes = []
    for section in Recipe.model_fields:
        model = _model_at((section,), tree)
        if (
            section != "method"
            and key != "name"  # a task's name is set as `task: NAME`, not a misplaced key
            and model is not None
            and key in model.model_fields
            and (section,) != parent
        ):
            homes.append(f"the {section} section ({section}.{key})")
    owners = [name for name, spec in METHODS.items() if key in spec.options.model_fields and key != "name"]
    if owners:
        homes.append(f"the method section (method.{key}, for {' and '.join(repr(o) for o in owners)})")
    return " and ".join(homes)
