"""The summary a person reads at the end of a run."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def print_summary(results: dict[str, Any], run_dir: str, console: Console | None = None) -> None:
    console = console or Console()
    metrics: dict[str, dict[str, float]] = results["metrics"]
    splits = list(metrics)
    table = Table(title=f"llmkit run: {run_dir}", title_justify="left")
    table.add_column("metric")
    for split in splits:
        table.add_column(split, justify="right")
    names = dict.fromkeys(name for values in metrics.values() for name in values)
    for name in names:
        table.add_row(name, *(f"{metrics[s][name]:.4f}" if name in metrics[s] else "-" for s in splits))
    console.print(table)
    params, train = results["parameters"], results["train"]
    method = results["method"]["name"]
    console.print(
        f"method {method} on {results['model']['architecture']}: trainable parameters "
        f"{_count(params['trainable'])} of {_count(params['total'])} ({params['trainable_percent']:.2f}%)"
    )
    console.print(
        f"trained {train['epochs']:g} epochs ({train['steps']} steps) in {train['runtime_s']:.1f}s: "
        f"{train['samples_per_second']:.1f} samples/s, {train['tokens_per_second']:.0f} tokens/s, "
        f"peak memory {train['peak_memory_mb']:.0f} MB"
    )
    processes, device = train["world_size"], str(train["device"]).split(":")[0]
    devices = f"{processes} GPUs, one per process" if device == "cuda" and processes > 1 else device
    console.print(f"processes: {processes}, devices: {devices}")
    console.print(f"results: {run_dir}/results.json  model: {run_dir}/model")
