"""Making the runs of a bench: each llmkit run through `llmkit.pipeline.finetune` (the code path
of `llmkit finetune`, into its own run directory), each peer run through the peer script, each
untuned run as an evaluation of the untrained model, one after another, with a progress line per
run and for the bench as a whole.

Every run gets a process of its own (llmkit and untuned runs a fresh Python process started with
`spawn`, peer runs the script's), so its peak memory, thread pools, allocator caches and imported
state are its own: in one shared process a run's peak counted what the runs before it left
resident (+9-13% on the CI bench's second run), and a crash in one run (out of memory, a fault in
a native library) took the bench down with it."""

from __future__ import annotations

import multiprocessing
import queue
import time
import traceback
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
    """One run, in a process of its own; an exception other than an interruption, or the death of
    that process, is recorded as a failed run."""
    run_dir = Path(planned.recipe.output_dir or ".")
    start = time.perf_counter()
    try:
        results = _run_peer(planned, peer_script) if planned.kind == "peer" else _in_own_process(planned)
    except Exception as exc:
        return _record(planned, run_dir, "failed", start, error=_reason(exc))
    return _record(planned, run_dir, "completed", start, results=results)


class RunProcessFailed(Exception):
    """The run's process raised (its message and the traceback's last lines) or died."""


def _in_own_process(planned: PlannedRun) -> dict[str, Any]:
    """The run made by a fresh Python process (`spawn`: nothing of this process's memory, threads
    or imports is inherited), which sends back its results or the error that ended it."""
    context = multiprocessing.get_context("spawn")
    channel = context.Queue()
    process = context.Process(target=_run_in_child, args=(planned, channel), name=f"bench-{planned.name}")
    process.start()
    try:
        while True:
            try:
                outcome, payload = channel.get(timeout=1.0)
                break
            except queue.Empty:
                if not process.is_alive():
                    raise RunProcessFailed(
                        f"the run's process ended without a result (exit code {process.exitcode}"
                        + (": killed by a signal, out of memory?)" if (process.exitcode or 0) < 0 else ")")
                    ) from None
        process.join()
    except BaseException:
        # Interrupted (Ctrl-C reaches the child too, which stops as `llmkit finetune` stops):
        # give it a moment to finish writing, then make sure it is gone.
        process.join(timeout=30)
        if process.is_alive():
            process.terminate()
            process.join()
        raise
    if outcome == "failed":
        raise RunProcessFailed(payload)
    results: dict[str, Any] = payload
    return results


def _run_in_child(planned: PlannedRun, channel: Any) -> None:
    """The body of a run's process: make the run, send ("completed", results) or ("failed", why)."""
    try:
        results = _run_untuned(planned) if planned.kind == "untuned" else _run_llmkit(planned)
    except KeyboardInterrupt:
        channel.put(("failed", "interrupted"))
        raise
    except BaseException as exc:
        # The error's own message first (what the table shows), then where it came from.
        where = "".join(traceback.format_exception(exc)[-3:]).rstrip()
        channel.put(("failed", f"{_reason(exc)}\n{where}"))
        return
    channel.put(("completed", results))


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


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

    results = finetune(planned.recipe)
    if planned.measure_inference:
        from llmkit.bench.inference_speed import compare_with_pipeline

        validation = planned.recipe.data.validation_file
        assert validation is not None  # check_plan refuses measure_inference without one
        results["inference"] = compare_with_pipeline(Path(planned.recipe.output_dir or "."), validation)
    return results


def _run_peer(planned: PlannedRun, peer_script: Path) -> dict[str, Any]:
    from llmkit.bench.peer import run_peer

    return run_peer(peer_script, planned.recipe, Path(planned.recipe.output_dir or "."), planned.expert)


def _run_untuned(planned: PlannedRun) -> dict[str, Any]:
    from llmkit.bench.untuned import evaluate_untuned

    return evaluate_untuned(planned.recipe, Path(planned.recipe.output_dir or "."))


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
