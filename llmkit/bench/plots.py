"""The bench's two PNG plots: validation accuracy against trainable parameters (one point per
llmkit run, log scale), and train throughput per run with the ratio to its peer."""

from __future__ import annotations

from pathlib import Path

from llmkit.bench.aggregate import RunSummary
from llmkit.bench.report import short_model

ACCURACY_PLOT, THROUGHPUT_PLOT = "accuracy-vs-params.png", "throughput.png"
MARKERS = {"full": "s", "lora": "o", "prefix": "^", "prompt": "D"}


def draw_plots(output_dir: Path, summaries: list[RunSummary], title: str) -> list[Path]:
    """Write both plots into `output_dir` and return their paths."""
    return [
        _accuracy_vs_parameters(output_dir / ACCURACY_PLOT, summaries, title),
        _throughput(output_dir / THROUGHPUT_PLOT, summaries, title),
    ]


def _accuracy_vs_parameters(path: Path, summaries: list[RunSummary], title: str) -> Path:
    # The Figure API draws without pyplot's global state or a display (no backend to choose).
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    points = [
        s for s in summaries if s.kind == "llmkit" and s.accuracy.mean is not None and s.trainable_parameters
    ]
    models = sorted({s.model for s in points})
    colours = {model: f"C{i}" for i, model in enumerate(models)}
    for s in points:
        x, y = float(s.trainable_parameters or 0), float(s.accuracy.mean or 0.0)
        style = MARKERS.get(s.method, "o")
        axes.errorbar(x, y, yerr=s.accuracy.std or 0.0, fmt=style, color=colours[s.model], capsize=3)
        axes.annotate(s.name, (x, y), xytext=(5, 4), textcoords="offset points", fontsize=8)
    for model in models:  # legend entries: one per model
        axes.plot([], [], "o", color=colours[model], label=short_model(model))
    axes.set_xscale("log")
    axes.margins(x=0.2, y=0.15)  # room for the run names beside the points
    axes.set_xlabel("trainable parameters (log scale)")
    axes.set_ylabel("validation accuracy (mean ± std over seeds)")
    axes.set_title(f"{title}: accuracy against trainable parameters")
    axes.grid(True, which="both", alpha=0.3)
    if models:
        axes.legend(
            fontsize=8, title="model; marker: method (■ full ● lora ▲ prefix ◆ prompt)", title_fontsize=7
        )
    figure.savefig(path, dpi=120)
    return path


def _throughput(path: Path, summaries: list[RunSummary], title: str) -> Path:
    from matplotlib.figure import Figure

    shown = [s for s in summaries if s.samples_per_second.mean is not None]
    figure = Figure(figsize=(7, 0.9 + 0.45 * max(len(shown), 1)), layout="constrained")
    axes = figure.subplots()
    positions = list(range(len(shown)))
    axes.barh(
        positions,
        [s.samples_per_second.mean or 0.0 for s in shown],
        xerr=[s.samples_per_second.std or 0.0 for s in shown],
        color=["0.65" if s.kind == "peer" else "C0" for s in shown],
        capsize=3,
    )
    for position, s in zip(positions, shown, strict=True):
        label = f" {s.samples_per_second.mean:.1f}"
        if s.speed_ratio_vs_peer is not None:
            label += f"  ({s.speed_ratio_vs_peer:.2f}x peer)"
        axes.text(s.samples_per_second.mean or 0.0, position, label, va="center", fontsize=8)
    axes.set_yticks(
        positions, [f"{s.name}{' (peer)' if s.kind == 'peer' else ''}" for s in shown], fontsize=8
    )
    axes.invert_yaxis()  # the bench file's order, top to bottom
    axes.set_xlabel("train samples/s (mean ± std over seeds; grey: peer script)")
    axes.set_title(f"{title}: training throughput")
    axes.margins(x=0.3)
    figure.savefig(path, dpi=120)
    return path
