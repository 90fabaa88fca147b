"""Checks of a finished bench: the expectations written in the bench file, and the comparison with
an earlier bench.json (`--baseline`). Every regression names the run and the figure."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmkit.bench.aggregate import RunSummary, speed_ratio
from llmkit.bench.loading import BenchPlan
from llmkit.bench.runner import RunRecord
from llmkit.bench.schema import Tolerances
from llmkit.errors import LlmkitError

# `llmkit bench` exits with this code when it finds a regression (2 is a user error, 1 a crash).
REGRESSION_EXIT_CODE = 3


@dataclass(frozen=True)
class Regression:
    run: str
    figure: str
    message: str  # names the run and the figure, with the measured and the expected value

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def check_expectations(
    plan: BenchPlan, records: list[RunRecord], summaries: list[RunSummary]
) -> list[Regression]:
    by_name = {summary.name: summary for summary in summaries}
    found = [
        Regression(r.name, "status", f"{r.name} seed {r.seed}: the run failed: {_first_line(r.error)}")
        for r in records
        if r.status != "completed"
    ]
    for run in plan.bench.runs:
        name = run.label
        expect = plan.expectations(name)
        labels = by_name[name].metric_labels
        for record in (r for r in records if r.name == name and r.status == "completed"):
            where = f"{name} seed {record.seed}"
            for metric, label, floor in (
                ("accuracy", f"validation {labels.get('accuracy', 'accuracy')}", expect.min_accuracy),
                ("f1", f"validation {labels.get('f1', 'F1')}", expect.min_f1),
                *(
                    (metric, f"validation {labels.get(metric, metric)}", least)
                    for metric, least in expect.min_metrics.items()
                ),
            ):
                value = record.figure("metrics", "validation", metric)
                if floor is not None and (value is None or value < floor):
                    shown = "missing" if value is None else f"{value:.4f}"
                    found.append(
                        Regression(name, label, f"{where}: {label} {shown} < expected minimum {floor:g}")
                    )
            inference, least = record.figure("inference", "ratio"), expect.min_inference_ratio
            if least is not None and inference is not None and inference < least:
                rows = record.figure("inference", "llmkit_rows_per_second")
                theirs = record.figure("inference", "pipeline_rows_per_second")
                message = (
                    f"{where}: prediction {rows:.1f} rows/s is {inference:.2f}x the transformers "
                    f"pipeline's {theirs:.1f} < expected minimum {least:g}x"
                )
                found.append(Regression(name, "prediction speed ratio to pipeline", message))
            peak = record.figure("train", "peak_memory_mb")
            ceiling = expect.max_peak_memory_mb
            if ceiling is not None and peak is not None and peak > ceiling:
                message = f"{where}: peak memory {peak:.0f} MB > expected maximum {ceiling:g} MB"
                found.append(Regression(name, "peak memory", message))
        if expect.min_speed_ratio is not None:
            reference = expect.speed_reference or plan.bench.speed_reference(name)
            assert reference is not None  # the bench file's check: a ratio needs a reference
            found.extend(_check_speed(by_name[name], by_name[reference], expect.min_speed_ratio))
    return found


def _check_speed(run: RunSummary, reference: RunSummary, minimum: float) -> list[Regression]:
    figure = f"speed ratio to {reference.name}"
    ratio = speed_ratio(run, reference)
    if ratio is None:
        message = f"{run.name}: {figure} not measured (no completed run of one of them)"
        return [Regression(run.name, figure, message)]
    if ratio >= minimum:
        return []
    mine, theirs = run.samples_per_second.mean, reference.samples_per_second.mean
    message = (
        f"{run.name}: train samples/s {mine:.1f} is {ratio:.2f}x {reference.name}'s {theirs:.1f} "
        f"< expected minimum {minimum:g}x"
    )
    return [Regression(run.name, figure, message)]


# ----------------------------------------------------------------------------- --baseline


def read_baseline(path: Path) -> dict[str, dict[str, Any]]:
    """The run summaries of an earlier bench.json, by run name."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LlmkitError(f"Baseline '{path}' does not exist.") from None
    except (OSError, ValueError) as exc:
        raise LlmkitError(f"Baseline '{path}' is not readable JSON: {exc}") from exc
    summary = document.get("summary") if isinstance(document, dict) else None
    if not isinstance(summary, list) or not all(isinstance(e, dict) and "name" in e for e in summary):
        raise LlmkitError(
            f"Baseline '{path}' is not a bench.json written by `llmkit bench` (it has no run summary)."
        )
    return {entry["name"]: entry for entry in summary}


def compare_with_baseline(
    summaries: list[RunSummary], baseline: dict[str, dict[str, Any]], tolerances: Tolerances
) -> tuple[list[Regression], list[str]]:
    """Regressions of llmkit runs against the baseline's run of the same name, and notes on what
    could not be compared. Peer runs are not compared: their speed is the machine's, not llmkit's."""
    found: list[Regression] = []
    notes: list[str] = []
    for summary in (s for s in summaries if s.kind == "llmkit"):
        old = baseline.get(summary.name)
        if old is None:
            notes.append(f"{summary.name}: not in the baseline, not compared")
            continue
        labels = summary.metric_labels
        for metric, label in (
            ("accuracy", f"validation {labels.get('accuracy', 'accuracy')}"),
            ("f1", f"validation {labels.get('f1', 'F1')}"),
        ):
            new, before = getattr(summary, metric).mean, _mean(old, metric)
            tolerance = getattr(tolerances, metric)
            if new is not None and before is not None and new < before - tolerance:
                message = (
                    f"{summary.name}: {label} {new:.4f} < baseline {before:.4f} - tolerance {tolerance:g}"
                )
                found.append(Regression(summary.name, label, message))
        found.extend(_compare_speed(summary, old, tolerances.speed))
        peak, before_peak = summary.peak_memory_mb, old.get("peak_memory_mb")
        if peak is not None and before_peak and peak > before_peak * (1 + tolerances.peak_memory):
            message = (
                f"{summary.name}: peak memory {peak:.0f} MB > baseline {before_peak:.0f} MB "
                f"+ {tolerances.peak_memory:.0%}"
            )
            found.append(Regression(summary.name, "peak memory", message))
    current = {summary.name for summary in summaries}
    notes.extend(f"{name}: in the baseline only, not compared" for name in baseline if name not in current)
    return found, notes


def _compare_speed(summary: RunSummary, old: dict[str, Any], tolerance: float) -> list[Regression]:
    # The ratio to a peer measured in the same bench cancels most of the machine's speed and load
    # (the expert peer's where both benches have one); bare samples/s are compared only when
    # either bench lacks a ratio.
    candidates = [
        (summary.speed_ratio_vs_expert_peer, old.get("speed_ratio_vs_expert_peer"), "x expert peer",
         "speed ratio to expert peer"),
        (summary.speed_ratio_vs_peer, old.get("speed_ratio_vs_peer"), "x peer", "speed ratio to peer"),
    ]  # fmt: skip
    new, before, unit, figure = next(
        (found for found in candidates if found[0] is not None and found[1]),
        (summary.samples_per_second.mean, _mean(old, "samples_per_second"), " samples/s", "train samples/s"),
    )
    if new is None or not before or new >= before * (1 - tolerance):
        return []
    message = f"{summary.name}: {figure} {new:.2f}{unit} < baseline {before:.2f}{unit} - {tolerance:.0%}"
    return [Regression(summary.name, figure, message)]


def _mean(entry: dict[str, Any], figure: str) -> float | None:
    value = entry.get(figure)
    return value.get("mean") if isinstance(value, dict) else None


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else "unknown error"
