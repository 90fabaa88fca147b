"""The bench's files: bench.json (every run's results.json content, the summaries, the checks and
the bench's metadata), bench.csv (one row per run of the bench file) and bench.md (the table a
person reads)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from llmkit import fsutil
from llmkit.bench.aggregate import RunSummary, Stat
from llmkit.bench.checks import Regression

JSON_FILE, CSV_FILE, MARKDOWN_FILE = "bench.json", "bench.csv", "bench.md"


def write_json(path: Path, document: dict[str, Any]) -> None:
    fsutil.write_json(path, document)  # a reader never sees half a file, even while the bench runs


CSV_LEADING = ("run", "kind", "task", "model", "method", "train_rows", "epochs", "seeds", "failed_seeds")
CSV_TRAILING = (
    "trainable_parameters", "total_parameters", "trainable_percent",
    "samples_per_second_mean", "samples_per_second_std", "speed_ratio_vs_peer", "peer",
    "speed_ratio_vs_expert_peer", "expert_peer",
    "tokens_per_second_mean", "tokens_per_second_std", "precision", "model_flops_per_second_mean", "mfu",
    "predict_rows_per_second", "pipeline_rows_per_second", "predict_ratio_vs_pipeline",
    "peak_memory_mb", "wall_s_mean", "time_to_target_s_mean", "time_to_target_s_std", "reached_target",
    "time_to_target_ratio_vs_fastest_peer", "fastest_peer_to_target",
)  # fmt: skip


def metric_names(summaries: list[RunSummary]) -> list[str]:
    """The validation metrics of the runs' tasks, in the tasks' order, each once."""
    names: dict[str, None] = {}
    for summary in summaries:
        names.update(dict.fromkeys(_metrics(summary)))
    return list(names)


def csv_columns(summaries: list[RunSummary]) -> list[str]:
    metrics = [f"{name}_{part}" for name in metric_names(summaries) for part in ("mean", "std")]
    return [*CSV_LEADING, *metrics, *CSV_TRAILING]


def write_csv(path: Path, summaries: list[RunSummary]) -> None:
    columns = csv_columns(summaries)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(csv_row(summary, columns) for summary in summaries)


def csv_row(s: RunSummary, columns: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "run": s.name,
        "seeds": " ".join(map(str, s.seeds)),
        "failed_seeds": " ".join(map(str, s.failed_seeds)),
        "wall_s_mean": s.wall_s.mean,
        "predict_rows_per_second": (s.inference or {}).get("llmkit_rows_per_second"),
        "pipeline_rows_per_second": (s.inference or {}).get("pipeline_rows_per_second"),
        "predict_ratio_vs_pipeline": (s.inference or {}).get("ratio"),
    }
    metrics = _metrics(s)
    for name in metric_names([s]):
        row.update({f"{name}_mean": metrics[name].mean, f"{name}_std": metrics[name].std})
    for figure in ("samples_per_second", "tokens_per_second", "model_flops_per_second", "time_to_target_s"):
        stat = getattr(s, figure)
        row.update({f"{figure}_mean": stat.mean, f"{figure}_std": stat.std})
    return {column: row[column] if column in row else getattr(s, column, None) for column in columns}


def _metrics(s: RunSummary) -> dict[str, Stat]:
    return s.metrics or {"accuracy": s.accuracy, "f1": s.f1}


def _metric_label(summaries: list[RunSummary], name: str) -> str:
    labels = {s.metric_labels[name] for s in summaries if name in s.metric_labels}
    return " / ".join(sorted(labels)) if labels else {"f1": "F1"}.get(name, name)


TABLE_LEADING = ("run", "model", "method", "train rows x epochs", "seeds")
TABLE_TRAILING = (
    "trainable params", "trainable %", "train samples/s", "x peer", "x expert peer", "tokens/s", "MFU",
    "predict rows/s",
    "x pipeline", "peak MB", "wall s",
)  # fmt: skip


def summary_table(summaries: list[RunSummary]) -> str:
    """One row per run; a column per validation metric of the runs' tasks, named as the task names it."""
    names = metric_names(summaries)
    headers = [*TABLE_LEADING, *(f"val {_metric_label(summaries, name)}" for name in names), *TABLE_TRAILING]
    missing = Stat(None, None)
    rows = [
        [
            _run_label(s),
            short_model(s.model),
            s.method,
            f"{s.train_rows} x {s.epochs:g}" if s.train_rows and s.epochs else "-",  # untuned: none
            str(len(s.seeds)) + (f" ({len(s.failed_seeds)} failed)" if s.failed_seeds else ""),
            *(_stat(_metrics(s).get(name, missing), 4) for name in names),
            count(s.trainable_parameters),
            f"{s.trainable_percent:.2f}" if s.trainable_percent is not None else "-",
            _stat(s.samples_per_second, 1),
            f"{s.speed_ratio_vs_peer:.2f}" if s.speed_ratio_vs_peer is not None else "-",
            f"{s.speed_ratio_vs_expert_peer:.2f}" if s.speed_ratio_vs_expert_peer is not None else "-",
            _stat(s.tokens_per_second, 0),
            f"{s.mfu:.{1 if s.mfu >= 0.01 else 2}%} ({s.precision})" if s.mfu is not None else "-",
            f"{s.inference['llmkit_rows_per_second']:.0f}" if s.inference else "-",
            f"{s.inference['ratio']:.2f}" if s.inference else "-",
            f"{s.peak_memory_mb:.0f}" if s.peak_memory_mb is not None else "-",
            f"{s.wall_s.mean:.0f}" if s.wall_s.mean is not None else "-",
        ]
        for s in summaries
    ]
    return markdown_table(headers, rows)


def _run_label(s: RunSummary) -> str:
    if s.kind == "peer":
        return f"{s.name} ({'expert ' if s.expert else ''}peer script)"
    return f"{s.name} (untuned)" if s.kind == "untuned" else s.name


def write_markdown(
    path: Path,
    meta: dict[str, Any],
    summaries: list[RunSummary],
    regressions: list[Regression],
    notes: list[str],
) -> None:
    host = meta["host"]
    validation = sorted({s.validation_rows for s in summaries if s.validation_rows is not None})
    metrics_named = ", ".join(_metric_label(summaries, name) for name in metric_names(summaries))
    lines = [
        f"# Bench `{meta['name']}`",
        "",
        f"`{meta['command']}`: {meta['run_count']} runs in {_clock(meta['wall_s'])} "
        f"(started {meta['started_at']}) on {host['platform']}, {host['cpu_count']} CPU cores "
        f"(torch threads {host['torch_threads']}; {host.get('cpu_features', 'CPU features not recorded')}), "
        f"device {host['device']}; llmkit "
        f"{meta['versions'].get('llmkit')}, torch {meta['versions'].get('torch')}, transformers "
        f"{meta['versions'].get('transformers')}, peft {meta['versions'].get('peft')}.",
        "",
        summary_table(summaries),
        "",
        f"Validation {metrics_named} on {' / '.join(map(str, validation)) or '?'} validation rows, "
        "mean ± standard deviation over seeds (± only with two or more). Train samples/s and "
        "tokens/s (real tokens, padding excluded) count training time only, evaluation excluded. "
        "**x peer**: train samples/s over those of the run's peer: the task's hand-written script "
        "(Trainer + PEFT `peer_trainer.py`, `peer_ner.py`; TRL SFTTrainer `peer_sft.py` for "
        "generation) given the same model, data rows, epochs, batch size, learning rate and max "
        "length (and the task's settings: columns, template, packing, generation length), measured "
        "in this bench on the same machine. **x expert peer**: the same against the expert peer, the "
        "script with what a user who knows Trainer turns on by hand (length-grouped batches; bf16 "
        "where llmkit trains in bf16): the ratio a speed claim must win. **untuned** runs: the model "
        "evaluated as loaded, before any training. **MFU**: model FLOP/s "
        "(the model's arithmetic in training: per real token 6 FLOPs per weight for full "
        "fine-tuning, 4 for LoRA/prefix/prompt, whose gradients still cross the frozen backbone, "
        "plus attention; see llmkit/training/flops.py; the peer's: the same FLOPs per sample at its "
        f"samples/s) over this machine's matmul peak in the run's precision, {_peaks(meta)}. "
        "**predict rows/s**, **x pipeline**: `llmkit predict`'s rows/s on the validation rows "
        "(first seed's model) and its ratio to a transformers `pipeline('text-classification')` "
        "on the same model as plain transformers computes it (llmkit's last-layer shortcut taken "
        "off), rows and batch size. Peak MB: "
        f"{meta['peak_memory']}. Wall s: the whole run (loading, tokenising, training, "
        "evaluation, saving).",
        "",
        *_time_to_target_section(meta, summaries),
        "## Checks",
        "",
    ]
    if regressions:
        noun = "regression" if len(regressions) == 1 else "regressions"
        lines += [f"{len(regressions)} {noun}:", "", *(f"- {r.message}" for r in regressions)]
    else:
        baseline = f" and no regression against `{meta['baseline']}`" if meta.get("baseline") else ""
        lines.append(f"No regressions: every expectation of the bench file met{baseline}.")
    if notes:
        lines += ["", "Notes:", "", *(f"- {note}" for note in notes)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _time_to_target_section(meta: dict[str, Any], summaries: list[RunSummary]) -> list[str]:
    """The time-to-target table (the bench's time_to_target), or nothing."""
    targets = meta.get("time_to_target") or {}
    if not targets:
        return []
    goal = " and ".join(f"{_metric_label(summaries, name)} >= {value:g}" for name, value in targets.items())
    rows = [
        [
            _run_label(s),
            f"{s.train_rows} x {s.epochs:g}" if s.train_rows and s.epochs else "-",
            f"{s.reached_target or 0}/{len(s.seeds)}",
            _stat(s.time_to_target_s, 1),
            f"{s.time_to_target_ratio_vs_fastest_peer:.2f} ({s.fastest_peer_to_target})"
            if s.time_to_target_ratio_vs_fastest_peer is not None
            else "-",
        ]
        for s in summaries
        if s.kind != "untuned"
    ]
    headers = ("run", "trained rows x epochs", "seeds reaching it", "training s to it", "x fastest peer")
    return [
        f"## Time to validation {goal}",
        "",
        markdown_table(headers, rows),
        "",
        "Training seconds (evaluation excluded) until the validation figures first reached the target: "
        "an llmkit run's first evaluation that did (it evaluates every eval.every_steps steps, so the "
        "figure is at most that many steps late), a peer script's whole training when its final "
        "figures did (it evaluates only at its end; a sweep of peer settings finds its fastest). "
        "**x fastest peer**: the fastest peer's time (every seed reaching the target) over the run's; "
        "above 1, llmkit got there sooner. Trained rows x epochs: what the run did before it stopped.",
        "",
    ]


def _peaks(meta: dict[str, Any]) -> str:
    found = meta.get("matmul_peak") or {}
    shown = [
        f"{precision} {peak['flops_per_second'] / 1e9:,.0f} GFLOP/s ({peak['matrix_size']}-square products)"
        for precision, peak in found.items()
    ]
    return "measured by the bench: " + ", ".join(shown) if shown else "not measured"


def markdown_table(headers: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def short_model(checkpoint: str) -> str:
    """A checkpoint reference short enough for a table: the file stem of a .gguf, else the last
    path part that is not a generic 'model'."""
    path = Path(checkpoint.removeprefix("package:"))
    if path.suffix.lower() == ".gguf":
        return path.stem
    parts = [part for part in path.parts if part not in ("model", "/")]
    return parts[-1] if parts else checkpoint


def count(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _stat(stat: Stat, digits: int) -> str:
    if stat.mean is None:
        return "-"
    shown = f"{stat.mean:.{digits}f}"
    return shown if stat.std is None else f"{shown} ± {stat.std:.{digits}f}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
