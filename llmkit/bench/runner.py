"""Making the runs of a bench: each llmkit run through `llmkit.pipeline.finetune` in this process
(the code path of `llmkit finetune`, into its own run directory), each peer run through the
peer script, each untuned run as an evaluation of the untrained model, one after another, with a
progress line per run and for the bench as a whole."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmkit.bench.loading import BenchPlan, PlannedRun

Echo = Callable[[str], None]


@dataclass
class RunRecord:
    """One run of the matrix as it went: its results.json content, or why it failed."""

    index: int
    name: str
    kind: str
    seed: int
    recipe_file: str
    run_dir: str
    status: str  # "completed" or "failed"
    wall_s: float
    results: dict[str, Any] | None = None
    error: str | None = None

    def figure(self, *path: str) -> Any:
        """A figure of the results (`figure('metrics', 'validation', 'accuracy')`), None if absent."""
        node: Any = self.results
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def execute(plan: BenchPlan, echo: Echo, done: Callable[[list[RunRecord]], None]) -> list[RunRecord]:
    """Make every run in order; `done(records so far)` is called after each (to save progress)."""
    records: list[RunRecord] = []
    started, total = time.perf_counter(), len(plan.runs)
    for planned in plan.runs:
        elapsed = time.perf_counter() - started
        left = elapsed / (planned.index - 1) * (total - planned.index + 1) if records else None
        timing = f"bench {_clock(elapsed)} elapsed" + (f", about {_clock(left)} left" if left else "")
        script = {"peer": " (peer script)", "untuned": " (untuned model, evaluation only)"}.get(
            planned.kind, ""
        )
        echo(f"{_prefix(planned, total)}{script}  ({timing})")
        record = run_one(planned, plan.script_of(planned))
        records.append(record)
        echo(f"{_prefix(planned, total)}: {_outcome(record)}")
        done(records)
    return records


def run_one(planned: PlannedRun, peer_script: Path) -> RunRecord:
    """One run; an exception other than an interruption is recorded as a failed run."""
    run_dir = Path(planned.recipe.output_dir or ".")
    start = time.perf_counter()
    try:
        if planned.kind == "peer":
            results = _run_peer(planned, peer_script)
        elif planned.kind == "untuned":
            results = _run_untuned(planned)
        else:
            results = _run_llmkit(planned)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
        return _record(planned, run_dir, "failed", start, error=reason)
    return _record(planned, run_dir, "completed", start, results=results)


def _record(planned: PlannedRun, run_dir: Path, status: str, start: float, **found: Any) -> RunRecord:
    return RunRecord(
        index=planned.index,
        name=planned.name,
        kind=planned.kind,
        seed=planned.seed,
        recipe_file=str(planned.recipe_file),
        run_dir=str(run_dir),
        status=status,
        wall_s=round(time.perf_counter() - start, 1),
        **found,
    )


def _run_llmkit(planned: PlannedRun) -> dict[str, Any]:
    from llmkit.pipeline import finetune

    reset_peak_memory()
    results = finetune(planned.recipe)
    if planned.measure_inference:
        from llmkit.bench.inference_speed import compare_with_pipeline

        validation = planned.recipe.data.validation_file
        assert validation is not None  # check_plan refuses measure_inference without one
        results["inference"] = compare_with_pipeline(Path(planned.recipe.output_dir or "."), validation)
    return results


def _run_peer(planned: PlannedRun, peer_script: Path) -> dict[str, Any]:
    from llmkit.bench.peer import run_peer

    return run_peer(peer_script, planned.recipe, Path(planned.recipe.output_dir or "."))


def _run_untuned(planned: PlannedRun) -> dict[str, Any]:
    from llmkit.bench.untuned import evaluate_untuned

    reset_peak_memory()
    return evaluate_untuned(planned.recipe, Path(planned.recipe.output_dir or "."))


def reset_peak_memory() -> bool:
    """Start the process's peak-memory figure afresh, so each in-process run reports its own peak
    rather than the largest of the runs before it. False where the platform cannot (then each
    run's figure is the peak so far)."""
    import torch

    gc.collect()  # the previous run's model and data, before the peak restarts from here
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so it does not count
    except (OSError, AttributeError):
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        # Linux: writing 5 resets the peak resident set size that getrusage reports.
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _prefix(planned: PlannedRun, total: int) -> str:
    return f"[{planned.index}/{total}] {planned.name} seed {planned.seed}"


def _outcome(record: RunRecord) -> str:
    if record.status != "completed":
        return f"FAILED after {record.wall_s:.0f} s: {(record.error or '').splitlines()[0]}"
    validation = record.figure("metrics", "validation") or {}
    shown = [f"{name} {value:.4f}" for name, value in validation.items() if name != "loss"]
    speed = record.figure("train", "samples_per_second")
    if speed is not None:
        shown.append(f"{speed:.1f} samples/s")
    return "  ".join([*shown, f"{record.wall_s:.0f} s"])


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"
