"""Reading a bench file: YAML -> `Bench` (every problem reported at once, by file and line, with a
"did you mean" for unknown keys), then every run's recipe resolved for each of its seeds, so a
mistake in the last run is reported before the first one trains.

Recipe settings merge in one order: defaults < recipe file < the bench's `overrides` < the run's
`overrides` < the seed < command-line `KEY=VALUE`. Command-line keys outside the recipe sections
(`seeds=[1]`, `tolerances.speed=0.3`) set bench keys instead."""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from llmkit.bench.schema import Bench, DerivedRun, Expectations, LlmkitRun, PeerRun, Tolerances, UntunedRun
from llmkit.errors import LlmkitError
from llmkit.recipe.loading import (
    CHECKPOINT_KEY,
    CLI,
    INPUT_PATH_KEYS,
    KeyPath,
    apply_overrides,
    deep_merge,
    leaf_paths,
    parse_overrides,
    read_recipe_tree,
    read_yaml_file,
    resolve_path_value,
)
from llmkit.recipe.schema import Recipe

RECIPE_SECTIONS = ("model", "data", "task", "method", "train", "eval")
PATH_KEYS = (*INPUT_PATH_KEYS, CHECKPOINT_KEY)  # relative to the bench file
RUNS_DIR = "runs"


class BenchFileError(LlmkitError):
    """One or more problems in a bench file, reported together."""

    def __init__(self, problems: list[str], source: str) -> None:
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        body = "\n".join("  - " + p.replace("\n", "\n    ") for p in problems)
        super().__init__(f"{source}: {len(problems)} {noun} in the bench file:\n{body}")


@dataclass(frozen=True)
class PlannedRun:
    """One training of the matrix: a run of the bench file at one seed, its recipe resolved."""

    index: int  # 1-based position in the order runs are made
    name: str
    kind: str  # "llmkit", "peer" or "untuned"
    seed: int
    recipe: Recipe  # output_dir is the run's own directory
    recipe_file: Path
    like: str | None = None  # a peer or untuned run: the llmkit run whose recipe it was given
    measure_inference: bool = False  # prediction speed against a pipeline, after training
    script: Path | None = None  # a peer run's own script (its `script:`), else the bench's
    expert: bool = False  # the expert peer: the script with an expert's Trainer options


@dataclass(frozen=True)
class BenchPlan:
    bench: Bench
    path: Path
    name: str
    output_dir: Path
    peer_script: Path
    runs: list[PlannedRun]
    overrides: list[str]  # from the command line

    def script_of(self, run: PlannedRun) -> Path:
        """The peer script a peer run runs: its own `script:`, or the bench's `peer_script`."""
        return run.script or self.peer_script

    def precision(self, name: str) -> str:
        """The precision run `name` trains in on this machine (train.precision resolved)."""
        from llmkit.training.precision import resolve_precision

        planned = next(run for run in self.runs if run.name == name)
        return resolve_precision(planned.recipe.train.precision)

    def expectations(self, name: str) -> Expectations:
        """Run `name`'s expectations for the precision it trains in on this machine."""
        return self.bench.run(name).expect.for_precision(self.precision(name))


def plan_bench(path: Path, overrides: list[str] | None = None, output_dir: Path | None = None) -> BenchPlan:
    """The bench file at `path` read, validated and expanded into its run matrix."""
    recipe_overrides = [item for item in overrides or [] if _is_recipe_key(item)]
    bench_overrides = [item for item in overrides or [] if not _is_recipe_key(item)]
    bench, lines = load_bench(path, bench_overrides)
    name = bench.name or path.stem
    output_dir = output_dir or Path(RUNS_DIR) / "bench" / name
    if any(item.startswith("train.seed=") for item in recipe_overrides):
        raise LlmkitError(
            "train.seed is set per run by the bench's seeds.", hint="give seeds=[1,2] on the command line"
        )
    peer_script = bench.peer_script
    if not peer_script.is_absolute() and ("peer_script",) in lines:
        peer_script = (path.parent / peer_script).resolve()
    problems: list[str] = []
    seeds: dict[str, list[int]] = {}

    def used_dirs(run: LlmkitRun, seed: int | None) -> dict[str, str]:
        """The directories of the runs `run` uses, at `seed` (see LlmkitRun.uses)."""
        found = {}
        for key, name in run.uses.items():
            their = seeds.get(name, [])
            chosen = seed if seed in their else their[0] if their else seed
            found[key] = str((output_dir / RUNS_DIR / f"{name}-seed{chosen}").resolve())
        return found

    for index, run in enumerate(bench.runs):
        if isinstance(run, LlmkitRun):
            try:
                recipe = _resolve(
                    path, lines, bench, index, run, None, recipe_overrides, output_dir, used_dirs(run, None)
                )
            except LlmkitError as exc:
                problems.append(f"run {run.label}: {exc}")
            else:
                seeds[run.label] = run.seeds or bench.seeds or [recipe.train.seed]
    for run in bench.runs:
        if isinstance(run, PeerRun) and run.seeds is not None and run.like in seeds:
            unknown = [seed for seed in run.seeds if seed not in seeds[run.like]]
            if unknown:
                problems.append(
                    f"run {run.label}: seeds {unknown} are not seeds of {run.like} "
                    f"({', '.join(map(str, seeds[run.like]))})"
                )
    if problems:
        raise BenchFileError(problems, str(path))

    # Seed by seed: every run's first seed, then every run's second, so a burst of load from other
    # work on the machine spreads over runs rather than hitting all seeds of one.
    planned: list[PlannedRun] = []
    for position in range(max(len(run_seeds) for run_seeds in seeds.values())):
        for run in bench.runs:
            # Peer and untuned runs are given the recipe of the run they are like.
            source = bench.run(run.like) if isinstance(run, DerivedRun) else run
            assert isinstance(source, LlmkitRun)
            if position >= len(seeds[source.label]):
                continue
            seed = seeds[source.label][position]
            if isinstance(run, PeerRun) and run.seeds is not None and seed not in run.seeds:
                continue
            if isinstance(run, UntunedRun) and position > 0:
                continue  # nothing is trained: the seeds would repeat one evaluation
            run_dir = output_dir / RUNS_DIR / f"{run.label}-seed{seed}"
            index = bench.runs.index(source)
            used = used_dirs(source, seed)
            own = run.overrides if isinstance(run, PeerRun) else None  # a peer sweep's settings
            recipe = _resolve(path, lines, bench, index, source, seed, recipe_overrides, run_dir, used, own)
            like = run.like if isinstance(run, DerivedRun) else None
            # Once per run: prediction speed does not depend on the training seed.
            inference = isinstance(run, LlmkitRun) and run.measure_inference and position == 0
            number = len(planned) + 1
            own_script = run.script if isinstance(run, PeerRun) else None
            script = (path.parent / own_script).resolve() if own_script is not None else None
            planned.append(
                PlannedRun(
                    number,
                    run.label,
                    run.kind,
                    seed,
                    recipe,
                    path.parent / source.recipe,
                    like,
                    inference,
                    script,
                    isinstance(run, PeerRun) and run.expert,
                )
            )
    return BenchPlan(bench, path, name, output_dir, peer_script, planned, list(overrides or []))


def _is_recipe_key(item: str) -> bool:
    return item.partition("=")[0].split(".")[0] in RECIPE_SECTIONS


# ----------------------------------------------------------------------------- the bench file


def load_bench(path: Path, overrides: list[str] | None = None) -> tuple[Bench, dict[KeyPath, int]]:
    """The validated bench file, and the line of each key written in it."""
    document, lines = read_bench_file(path)
    cli_tree = parse_overrides(overrides or [])
    if isinstance(cli_tree.get("peer_script"), str):
        cli_tree["peer_script"] = str(Path.cwd() / cli_tree["peer_script"])
    merged = deep_merge(document, cli_tree)
    try:
        return Bench.model_validate(merged), lines
    except ValidationError as exc:
        cli_keys = set(leaf_paths(cli_tree))
        problems = [
            problem
            for error in exc.errors()
            for problem in _describe(error, merged, str(path), lines, cli_keys)
        ]
        raise BenchFileError(sorted(set(problems), key=problems.index), str(path)) from None


def read_bench_file(path: Path) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    document, lines = read_yaml_file(
        path,
        "Bench",
        hint="give the path to a bench .yaml file; `ls recipes/benchmarks/` lists the shipped ones",
    )
    if not isinstance(document, dict):
        raise BenchFileError(["the top level must be a mapping with a `runs:` list"], str(path))
    return document, lines


def _describe(
    error: Any, tree: dict[str, Any], source: str, lines: dict[KeyPath, int], cli_keys: set[KeyPath]
) -> list[str]:
    loc = tuple(str(part) for part in error["loc"])
    if len(loc) >= 3 and loc[0] == "runs" and loc[2] in ("llmkit", "peer", "untuned"):
        loc = loc[:2] + loc[3:]  # pydantic puts the union tag in the path: runs.0.peer.like
    kind = error["type"]
    if kind == "union_tag_invalid":
        loc = (*loc, "kind")
    key = _display(loc)
    where = _where(loc, source, lines, cli_keys)
    if kind == "extra_forbidden":
        return [f"{where}{key}: unknown key. {_suggest(loc, tree)}".rstrip()]
    if kind == "missing":
        return [f"{where}{key}: required, but missing."]
    if kind == "union_tag_invalid":
        return [
            f"{where}{key}: unknown run kind {error['input'].get('kind')!r}; choose llmkit, peer or untuned."
        ]
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind not in ("value_error", "assertion_error") and not isinstance(error["input"], dict | list):
        message += f" (got {error['input']!r})"
    # The bench's cross-run checks report one problem a line, each naming its run.
    return [f"{where}{key}: {line}" if key else f"{where}{line}" for line in message.splitlines()]


def _display(loc: KeyPath) -> str:
    parts: list[str] = []
    for part in loc:
        if part.isdigit() and parts:
            parts[-1] += f"[{part}]"
        else:
            parts.append(part)
    return ".".join(parts)


def _where(loc: KeyPath, source: str, lines: dict[KeyPath, int], cli_keys: set[KeyPath]) -> str:
    if loc and any(key[: len(loc)] == loc or loc[: len(key)] == key for key in cli_keys):
        return f"[{CLI}] "
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return f"[{source}:{lines[loc[:end]]}] "
    return ""


def _suggest(loc: KeyPath, tree: dict[str, Any]) -> str:
    *parent, unknown = loc
    model = _model_at(tuple(parent), tree)
    fields = [name for name in model.model_fields if name != "kind"] if model else []
    close = difflib.get_close_matches(unknown, fields, n=1, cutoff=0.6)
    if close:
        return f"Did you mean '{close[0]}'?"
    if model in (LlmkitRun, PeerRun, UntunedRun) and unknown in Expectations.model_fields:
        return f"Expectations go under expect: (expect.{unknown})."
    if model is LlmkitRun and unknown in RECIPE_SECTIONS:
        return f"Recipe settings go under overrides:, e.g. overrides: {{{unknown}.KEY: VALUE}}."
    if model is Bench and unknown in Expectations.model_fields:
        return f"Expectations belong to a run: runs[N].expect.{unknown}."
    return f"Valid keys here: {', '.join(fields)}." if fields else ""


def _model_at(parent: KeyPath, tree: dict[str, Any]) -> type[BaseModel] | None:
    if parent == ():
        return Bench
    if parent == ("tolerances",):
        return Tolerances
    if len(parent) >= 2 and parent[0] == "runs" and parent[1].isdigit():
        runs = tree.get("runs")
        run = runs[int(parent[1])] if isinstance(runs, list) and int(parent[1]) < len(runs) else {}
        kind = run.get("kind") if isinstance(run, dict) else None
        run_models: dict[str, type[BaseModel]] = {"peer": PeerRun, "untuned": UntunedRun}
        run_model = run_models.get(str(kind), LlmkitRun)
        if len(parent) == 2:
            return run_model
        if parent[2:] == ("expect",):
            return Expectations
    return None


# ----------------------------------------------------------------------------- recipes


def _resolve(
    path: Path,
    lines: dict[KeyPath, int],
    bench: Bench,
    index: int,
    run: LlmkitRun,
    seed: int | None,
    cli_overrides: list[str],
    output_dir: Path,
    used: dict[str, str] | None = None,
    peer_overrides: dict[str, Any] | None = None,
) -> Recipe:
    """The run's recipe with the bench's, the run's, the seed's and the command line's settings;
    `used`: dotted keys set to the directories of the runs this run uses, over the run's overrides;
    `peer_overrides`: a peer run's own settings, over the run's (its like run's) overrides."""
    recipe_file = path.parent / run.recipe
    if not recipe_file.is_file():
        line = lines.get(("runs", str(index), "recipe"))
        raise LlmkitError(
            f"[{path}:{line}] recipe '{run.recipe}' does not exist (looked for {recipe_file}; recipe "
            "paths are relative to the bench file)"
        )
    document, recipe_lines, inherited = read_recipe_tree(recipe_file)
    tree = copy.deepcopy(document)
    sources = dict(inherited)
    for overrides, where in (
        (bench.overrides, ("overrides",)),
        (run.overrides, ("runs", str(index), "overrides")),
    ):
        for dotted, value in overrides.items():
            keys = tuple(dotted.split("."))
            if not all(keys):
                raise LlmkitError(f"[{path}:{lines.get(where)}] override key '{dotted}' is not a dotted key")
            value = resolve_path_value(keys, value, path.parent) if keys in PATH_KEYS else value
            tree = deep_merge(tree, _nest(keys, value))
            sources[keys] = f"{path}:{lines.get((*where, dotted), lines.get(where))}"
    for dotted, value in (peer_overrides or {}).items():
        tree = deep_merge(tree, _nest(tuple(dotted.split(".")), value))
    for dotted, directory in (used or {}).items():
        keys = tuple(dotted.split("."))
        tree = deep_merge(tree, _nest(keys, directory))
        sources[keys] = f"{path}:{lines.get(('runs', str(index), 'uses', dotted))}"
    if seed is not None:
        tree = deep_merge(tree, {"train": {"seed": seed}})
    tree["output_dir"] = str(output_dir)
    return apply_overrides(tree, cli_overrides, str(recipe_file), lines=recipe_lines, sources=sources)


def _nest(keys: KeyPath, value: Any) -> dict[str, Any]:
    tree: dict[str, Any] = {keys[-1]: value}
    for key in reversed(keys[:-1]):
        tree = {key: tree}
    return tree
