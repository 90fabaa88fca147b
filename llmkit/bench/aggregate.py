"""One summary per run of the bench file: mean and standard deviation over its seeds of each
figure, and its speed as a ratio to its peer runs (the plain one and the expert one)."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from llmkit.bench.loading import BenchPlan
from llmkit.bench.runner import RunRecord


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation of a figure over the seeds that reported it."""

    mean: float | None
    std: float | None  # None for fewer than two values
    values: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, values: list[Any]) -> Stat:
        numbers = [float(v) for v in values if v is not None]
        if not numbers:
            return cls(None, None, [])
        std = statistics.stdev(numbers) if len(numbers) > 1 else None
        return cls(statistics.fmean(numbers), std, numbers)


@dataclass(frozen=True)
class RunSummary:
    name: str
    kind: str
    model: str
    method: str
    seeds: list[int]  # those that completed
    failed_seeds: list[int]
    train_rows: int | None
    epochs: float | None
    validation_rows: int | None
    # Validation accuracy and F1: the two figures every classification task reports (token
    # classification: token accuracy and entity F1), which expectations and baselines compare.
    accuracy: Stat
    f1: Stat
    trainable_parameters: int | None
    total_parameters: int | None
    trainable_percent: float | None
    samples_per_second: Stat
    tokens_per_second: Stat
    peak_memory_mb: float | None  # the largest over seeds
    wall_s: Stat
    peer: str | None  # the peer run given this run's recipe
    speed_ratio_vs_peer: float | None  # mean samples/s over the peer's
    precision: str | None  # what training computed in (the peer script: fp32)
    model_flops_per_second: Stat  # llmkit/training/flops.py; a peer's: its like-run's per sample
    mfu: float | None  # mean model FLOP/s over the machine's matmul peak in that precision
    inference: dict[str, Any] | None  # prediction speed against a pipeline (measure_inference)
    task: str = "sequence_classification"
    expert_peer: str | None = None  # the expert peer run (the script with an expert's options)
    speed_ratio_vs_expert_peer: float | None = None
    expert: bool = False  # this run is an expert peer
    # The bench's time_to_target: training seconds until the validation figures first reached
    # every target (mean over the seeds that reached them), how many seeds did, and for an llmkit
    # run its fastest peer's time over its own (above 1: llmkit reached the target sooner).
    time_to_target_s: Stat = field(default_factory=lambda: Stat(None, None))
    reached_target: int | None = None
    fastest_peer_to_target: str | None = None
    time_to_target_ratio_vs_fastest_peer: float | None = None
    # Every validation metric of the run's task, by the task's metric names (accuracy and f1 too),
    # and how tables name them.
    metrics: dict[str, Stat] = field(default_factory=dict)
    metric_labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    plan: BenchPlan, records: list[RunRecord], matmul_peaks: dict[str, float] | None = None
) -> list[RunSummary]:
    """Summaries in the bench file's order of runs; MFU where `matmul_peaks` (FLOP/s by
    precision) has the run's precision."""
    summaries = {run.label: _summary(run.label, run.kind, plan, records) for run in plan.bench.runs}
    for run in plan.bench.runs:
        for peer_run in plan.bench.peers_of(run.label):
            mine, peer = summaries[run.label], summaries[peer_run.label]
            summaries[peer.name] = replace(peer, model_flops_per_second=_peer_flops(mine, peer))
            if peer_run.overrides:  # a sweep's peer trains other settings: no speed reference
                continue
            ratio = speed_ratio(mine, peer)
            if peer_run.expert:
                mine = replace(mine, expert_peer=peer.name, speed_ratio_vs_expert_peer=ratio)
            else:
                mine = replace(mine, peer=peer.name, speed_ratio_vs_peer=ratio)
            summaries[run.label] = mine
    targets = plan.bench.time_to_target
    if targets:
        for name in summaries:
            done = [record for record in records if record.name == name and record.status == "completed"]
            times = [time_to_target(record, targets) for record in done]
            reached = [t for t in times if t is not None]
            summaries[name] = replace(
                summaries[name], time_to_target_s=Stat.of(reached), reached_target=len(reached)
            )
        for run in plan.bench.runs:
            summaries[run.label] = _against_fastest_peer(summaries, run.label, plan)
    peaks = matmul_peaks or {}
    for name, summary in summaries.items():
        achieved, peak = summary.model_flops_per_second.mean, peaks.get(summary.precision or "")
        if achieved is not None and peak:
            summaries[name] = replace(summary, mfu=float(f"{achieved / peak:.4g}"))
    return list(summaries.values())


def time_to_target(record: RunRecord, targets: dict[str, float]) -> float | None:
    """Training seconds until the run's validation figures first reached every target (None: never):
    an llmkit run's first such evaluation during training (results.json train.evaluations), a peer
    script's whole training when its final figures reach them (it evaluates only at the end)."""
    from llmkit.training.stopping import target_reached

    if record.kind == "peer":
        final = record.figure("metrics", "validation") or {}
        return record.figure("train", "runtime_s") if target_reached(final, targets, prefix="") else None
    for evaluation in record.figure("train", "evaluations") or []:
        if target_reached(evaluation, targets, prefix=""):
            found: float = evaluation["training_s"]
            return found
    return None


def _against_fastest_peer(summaries: dict[str, RunSummary], name: str, plan: BenchPlan) -> RunSummary:
    """An llmkit run's time to target against the fastest of its peers whose every seed reached it."""
    mine = summaries[name]
    timed = [
        peer
        for peer in (summaries[run.label] for run in plan.bench.peers_of(name))
        if peer.seeds and not peer.failed_seeds and peer.reached_target == len(peer.seeds)
    ]
    if not timed:
        return mine
    fastest = min(timed, key=lambda peer: peer.time_to_target_s.mean or 0.0)
    own = mine.time_to_target_s.mean
    all_seeds = bool(mine.seeds) and mine.reached_target == len(mine.seeds)
    ratio = float(f"{(fastest.time_to_target_s.mean or 0.0) / own:.4g}") if own and all_seeds else None
    return replace(mine, fastest_peer_to_target=fastest.name, time_to_target_ratio_vs_fastest_peer=ratio)


def _peer_flops(run: RunSummary, peer: RunSummary) -> Stat:
    """The peer script trains the same model on the same rows: the same model FLOPs per sample
    (the script does not count them), at its own samples/s."""
    flops, samples = run.model_flops_per_second.mean, run.samples_per_second.mean
    if flops is None or not samples:
        return peer.model_flops_per_second
    return Stat.of([flops / samples * speed for speed in peer.samples_per_second.values])


def speed_ratio(run: RunSummary, reference: RunSummary) -> float | None:
    mine, theirs = run.samples_per_second.mean, reference.samples_per_second.mean
    return float(f"{mine / theirs:.4g}") if mine is not None and theirs else None


def _summary(name: str, kind: str, plan: BenchPlan, records: list[RunRecord]) -> RunSummary:
    from llmkit.tasks import task_for

    mine = [record for record in records if record.name == name]
    done = [record for record in mine if record.status == "completed"]
    planned = next(run for run in plan.runs if run.name == name)
    first = done[0] if done else None
    parameters = first.figure("parameters") if first else None
    peaks = [p for record in done if (p := record.figure("train", "peak_memory_mb")) is not None]
    task = task_for(planned.recipe.task)
    names = task.metric_names(planned.recipe.eval)
    metrics = {n: Stat.of([record.figure("metrics", "validation", n) for record in done]) for n in names}
    return RunSummary(
        name=name,
        kind=kind,
        model=planned.recipe.model.checkpoint,
        # What the run reports it trained (an untuned run: none) over what its recipe names.
        method=(first.figure("method", "name") if first else None) or planned.recipe.method.name,
        seeds=[record.seed for record in done],
        failed_seeds=[record.seed for record in mine if record.status != "completed"],
        train_rows=first.figure("data", "train_rows") if first else None,
        epochs=first.figure("train", "epochs") if first else None,
        validation_rows=first.figure("data", "validation_rows") if first else None,
        accuracy=Stat.of([record.figure("metrics", "validation", "accuracy") for record in done]),
        f1=Stat.of([record.figure("metrics", "validation", "f1") for record in done]),
        trainable_parameters=parameters["trainable"] if parameters else None,
        total_parameters=parameters["total"] if parameters else None,
        trainable_percent=parameters["trainable_percent"] if parameters else None,
        samples_per_second=Stat.of([record.figure("train", "samples_per_second") for record in done]),
        tokens_per_second=Stat.of([record.figure("train", "tokens_per_second") for record in done]),
        peak_memory_mb=max(peaks) if peaks else None,
        wall_s=Stat.of([record.wall_s for record in done]),
        peer=None,
        speed_ratio_vs_peer=None,
        precision=first.figure("train", "precision") or "fp32" if first else None,
        model_flops_per_second=Stat.of([record.figure("train", "model_flops_per_second") for record in done]),
        mfu=None,
        inference=next((found for r in done if (found := r.figure("inference")) is not None), None),
        task=planned.recipe.task.name,
        expert=planned.expert,
        metrics=metrics,
        metric_labels={n: task.metric_label(n) for n in names},
    )
