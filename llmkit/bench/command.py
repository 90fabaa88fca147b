"""What `llmkit bench` does: check the whole plan (every recipe resolved, data, checkpoints and the
peer script found) before the first run, make the runs, then write bench.json, bench.csv,
bench.md and the plots, and check the expectations and the baseline."""

from __future__ import annotations

import os
import platform
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.bench.aggregate import RunSummary, summarize
from llmkit.bench.checks import Regression, check_expectations, compare_with_baseline, read_baseline
from llmkit.bench.loading import BenchPlan, PlannedRun
from llmkit.bench.peer import peer_command, peer_notes, peer_problems
from llmkit.bench.report import (
    CSV_FILE,
    JSON_FILE,
    MARKDOWN_FILE,
    markdown_table,
    short_model,
    write_csv,
    write_json,
    write_markdown,
)
from llmkit.bench.runner import Echo, RunRecord, execute
from llmkit.errors import LlmkitError
from llmkit.fsutil import MARKER, check_replaceable, clear_dir
from llmkit.rundir import now
from llmkit.runlock import RunLock, check_not_in_use
from llmkit.versions import run_versions

BENCH_KIND = "bench"


@dataclass(frozen=True)
class BenchOutcome:
    output_dir: Path
    summaries: list[RunSummary]
    regressions: list[Regression]
    notes: list[str]
    files: list[Path]


def check_plan(plan: BenchPlan) -> None:
    """Everything that can be checked without training: every run's data files read as its recipe
    reads them (encoding, fields, columns, labels), checkpoints exist, and the peer script can train
    what its runs' recipes describe. Problems are input errors (exit 2), found before any run."""
    from llmkit.models.checkpoint import locate_checkpoint

    problems = []
    checked: dict[str, str | None] = {}  # runs sharing data are read once
    for run in _first_of_each(plan):
        data = run.recipe.data
        absent = [
            file for file in (data.train_file, data.validation_file, data.test_file)
            if file is not None and not Path(file).is_file()
        ]  # fmt: skip
        problems += [f"run {run.name}: data file '{file}' does not exist" for file in absent]
        if not absent:
            key = data.model_dump_json() + str(run.recipe.train.seed)
            if key not in checked:
                checked[key] = _data_problem(run)
            if checked[key] is not None:
                problems.append(f"run {run.name}: {checked[key]}")
        try:
            locate_checkpoint(run.recipe.model.checkpoint)
        except LlmkitError as exc:
            problems.append(f"run {run.name}: {exc}")
        if run.kind == "peer":
            script = plan.script_of(run)
            if not script.is_file():
                problems.append(
                    f"run {run.name}: the peer script '{script}' does not exist (set "
                    "peer_script: in the bench file, relative to it)"
                )
            problems += [f"run {run.name}: {problem}" for problem in peer_problems(run.recipe)]
        problems += [f"run {run.name}: {problem}" for problem in _metric_problems(plan, run)]
        if run.measure_inference and data.validation_file is None:
            problems.append(
                f"run {run.name}: measure_inference predicts the rows of data.validation_file; the "
                "recipe names none"
            )
    if problems:
        raise LlmkitError(f"{plan.path}: the bench cannot run:\n" + "\n".join(f"  - {p}" for p in problems))


def _metric_problems(plan: BenchPlan, run: PlannedRun) -> list[str]:
    """expect.min_metrics names that the run's task does not report."""
    from llmkit.tasks import task_for

    reported = task_for(run.recipe.task).metric_names(run.recipe.eval)
    expect = plan.bench.run(run.name).expect
    named = {m for e in (expect, *(expect.by_precision or {}).values()) for m in e.min_metrics}
    return [
        f"expect.min_metrics: '{name}' is not a metric of the run's task (it reports: {', '.join(reported)})"
        for name in sorted(named - set(reported))
    ]


def _data_problem(run: PlannedRun) -> str | None:
    from llmkit.tasks import task_for

    try:  # read as the run's task reads it (CoNLL columns, prompt/completion pairs, ...)
        task_for(run.recipe.task).load_splits(run.recipe.data, seed=run.recipe.train.seed)
    except LlmkitError as exc:
        return str(exc)
    return None


def describe_plan(plan: BenchPlan) -> str:
    """The run matrix `--dry-run` prints."""
    rows = [
        [
            str(run.index),
            run.name,
            run.kind,
            str(run.seed),
            short_model(run.recipe.model.checkpoint),
            run.recipe.method.name,
            str(run.recipe.data.max_train_samples or "all"),
            f"{run.recipe.train.epochs:g}",
            str(run.recipe.train.batch_size),
            f"{run.recipe.learning_rate:g}",
            str(run.recipe.data.max_length),
        ]
        for run in plan.runs
    ]
    headers = (
        "#",
        "run",
        "kind",
        "seed",
        "model",
        "method",
        "train rows",
        "epochs",
        "batch",
        "lr",
        "max length",
    )
    lines = [
        f"bench {plan.name} ({plan.path}): {len(plan.runs)} runs into {plan.output_dir}",
        "",
        markdown_table(headers, rows),
    ]
    expectations = [_expectations(plan, run.label) for run in plan.bench.runs]
    if any(expectations):
        lines += ["", "expectations:"]
        lines += [
            f"  {run.label}: {text}" for run, text in zip(plan.bench.runs, expectations, strict=True) if text
        ]
    peers = [run for run in _first_of_each(plan) if run.kind == "peer"]
    if peers:
        lines += ["", "peer runs:"]
        for run in peers:
            command = peer_command(plan.script_of(run), run.recipe, _model_shown(run), run.expert)
            lines.append(f"  {run.name}: {shlex.join(command[1:])}")
            lines += [f"    note: {note}" for note in peer_notes(run.recipe, run.expert)]
    return "\n".join(lines)


def run_bench(plan: BenchPlan, overwrite: bool, baseline_path: Path | None, echo: Echo) -> BenchOutcome:
    baseline = read_baseline(baseline_path) if baseline_path is not None else None
    check_plan(plan)
    with _prepared_output(plan, overwrite):
        return _run_bench(plan, baseline, baseline_path, echo)


def _run_bench(
    plan: BenchPlan, baseline: dict[str, Any] | None, baseline_path: Path | None, echo: Echo
) -> BenchOutcome:
    output_dir = plan.output_dir
    started, started_at = time.perf_counter(), now()
    meta: dict[str, Any] = {
        "name": plan.name,
        "file": str(plan.path),
        "command": " ".join(["llmkit bench", str(plan.path), *plan.overrides]),
        "output_dir": str(output_dir),
        "peer_script": str(plan.peer_script),
        "baseline": str(baseline_path) if baseline_path else None,
        "started_at": started_at,
        "run_count": len(plan.runs),
        "peak_memory": _peak_memory_meaning(),
        "host": _host(),
        "versions": run_versions(),
        "matmul_peak": _measure_peaks(plan, echo),
        "time_to_target": plan.bench.time_to_target,
        "complete": False,
    }

    def save_progress(records: list[RunRecord]) -> None:
        document = {"bench": meta, "runs": [r.to_json() for r in records]}
        write_json(output_dir / JSON_FILE, document)

    records = execute(plan, echo, save_progress)
    peaks = {precision: found["flops_per_second"] for precision, found in meta["matmul_peak"].items()}
    summaries = summarize(plan, records, peaks)
    regressions = check_expectations(plan, records, summaries)
    peers = [run for run in _first_of_each(plan) if run.kind == "peer"]
    notes = [f"{run.name}: {note}" for run in peers for note in peer_notes(run.recipe, run.expert)]
    if baseline is not None:
        found, compared = compare_with_baseline(summaries, baseline, plan.bench.tolerances)
        regressions += found
        notes += compared
    meta.update(finished_at=now(), wall_s=round(time.perf_counter() - started, 1), complete=True)
    write_json(
        output_dir / JSON_FILE,
        {
            "bench": meta,
            "runs": [r.to_json() for r in records],
            "summary": [s.to_json() for s in summaries],
            "regressions": [r.to_json() for r in regressions],
            "notes": notes,
        },
    )
    write_csv(output_dir / CSV_FILE, summaries)
    write_markdown(output_dir / MARKDOWN_FILE, meta, summaries, regressions, notes)
    from llmkit.bench.plots import draw_plots

    plots = draw_plots(output_dir, summaries, plan.name)
    files = [output_dir / name for name in (JSON_FILE, CSV_FILE, MARKDOWN_FILE)] + plots
    return BenchOutcome(output_dir, summaries, regressions, notes, files)


def _measure_peaks(plan: BenchPlan, echo: Echo) -> dict[str, dict[str, Any]]:
    """The machine's matmul rate in each precision the runs train in (peer runs: fp32, an expert
    peer bf16 where its like run trains in bf16), measured now, in this process, with the threads
    the runs get."""
    from llmkit.bench.machine import matmul_peak
    from llmkit.training.precision import resolve_precision

    def precision(run: PlannedRun) -> str:
        trained = resolve_precision(run.recipe.train.precision)
        return trained if run.kind != "peer" or (run.expert and trained == "bf16") else "fp32"

    precisions = {precision(run) for run in plan.runs}
    peaks = {precision: matmul_peak(precision) for precision in sorted(precisions)}
    shown = ", ".join(
        f"{precision} {found['flops_per_second'] / 1e9:,.0f} GFLOP/s" for precision, found in peaks.items()
    )
    echo(f"matmul peak of this machine ({next(iter(peaks.values()))['device']}): {shown}")
    return peaks


def _first_of_each(plan: BenchPlan) -> list[PlannedRun]:
    """One planned run per run of the bench file (seeds differ only in train.seed)."""
    seen: dict[str, PlannedRun] = {}
    for run in plan.runs:
        seen.setdefault(run.name, run)
    return list(seen.values())


def _expectations(plan: BenchPlan, name: str) -> str:
    from llmkit.tasks import task_for

    expect = plan.expectations(name)
    task = task_for(next(run.recipe.task for run in plan.runs if run.name == name))
    parts = []
    if expect.min_accuracy is not None:
        parts.append(f"validation {task.metric_label('accuracy')} >= {expect.min_accuracy:g}")
    if expect.min_f1 is not None:
        parts.append(f"validation {task.metric_label('f1')} >= {expect.min_f1:g}")
    parts += [f"validation {task.metric_label(m)} >= {least:g}" for m, least in expect.min_metrics.items()]
    if expect.min_speed_ratio is not None:
        reference = expect.speed_reference or plan.bench.speed_reference(name)
        parts.append(f"train samples/s >= {expect.min_speed_ratio:g}x {reference}'s")
    if expect.max_peak_memory_mb is not None:
        parts.append(f"peak memory <= {expect.max_peak_memory_mb:g} MB")
    if expect.min_inference_ratio is not None:
        parts.append(f"predict rows/s >= {expect.min_inference_ratio:g}x the transformers pipeline's")
    shown = ", ".join(parts)
    if parts and plan.bench.run(name).expect.by_precision:
        shown += f" ({plan.precision(name)} floors: the run trains in {plan.precision(name)} on this machine)"
    return shown


def _model_shown(run: PlannedRun) -> str:
    from llmkit.models.checkpoint import locate_checkpoint

    location = locate_checkpoint(run.recipe.model.checkpoint)
    if location.gguf_file is not None:
        return f"<{location.gguf_file.name} dequantised>"  # converted only when the bench runs
    return location.path


@contextmanager
def _prepared_output(plan: BenchPlan, overwrite: bool) -> Iterator[None]:
    """The output directory, new or emptied (only an earlier bench's, with --overwrite; never one
    holding the bench's inputs), locked for this bench while it runs."""
    output_dir = plan.output_dir
    inputs = [plan.path, *{run.recipe_file for run in plan.runs}]
    inputs += [
        Path(file)
        for run in plan.runs
        for file in (run.recipe.data.train_file, run.recipe.data.validation_file, run.recipe.data.test_file)
        if file is not None
    ]
    what, hint = (
        "bench output directory",
        "pass --overwrite to replace it, or --output-dir DIR to write elsewhere",
    )
    if output_dir.is_dir():
        check_not_in_use(output_dir)
    check_replaceable(output_dir, overwrite, what, BENCH_KIND, inputs, exists_hint=hint)
    with RunLock.acquire(output_dir, kind=BENCH_KIND):
        check_replaceable(output_dir, overwrite, what, BENCH_KIND, inputs, exists_hint=hint)
        clear_dir(output_dir, keep=[MARKER])
        yield


def _peak_memory_meaning() -> str:
    import torch

    if torch.cuda.is_available():
        return (
            "peak GPU memory allocated by the run's own process; peer runs: peak resident memory of "
            "the script's process"
        )
    return (
        "peak resident memory (VmHWM) of the run's own process (each run is made by a fresh "
        "process); peer runs: of the script's process"
    )


def _host() -> dict[str, Any]:
    import torch

    from llmkit.training.precision import cpu_features

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu_count": cores,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "cpu_features": cpu_features(),
    }
