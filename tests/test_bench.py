"""`llmkit bench` on the tiny checkpoints: bench-file errors, a 2-run x 2-seed bench end to end
(files, aggregated numbers, plots, a peer run through a fake peer script), regressions caught by
expectations (a run that stops learning, a run slowed down) and by `--baseline`, `--dry-run`, and
every shipped bench file."""

from __future__ import annotations

import csv
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from helpers import DataFiles, explain, invoke, results_of, write_recipe

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "recipes" / "benchmarks"
REGRESSION = 3
USER_ERROR = 2

# Close to the full and LoRA settings of the method matrix (tests/helpers.py), which learn the
# synthetic task.
LEARNS = {
    "full": {"epochs": 8, "learning_rate": 1e-3},
    "lora": {"epochs": 8, "learning_rate": 1e-2},
}
FAKE_PEER_SPEED = 1000.0  # samples/s the fake peer script reports

FAKE_PEER = f"""
import argparse, json, sys
parser = argparse.ArgumentParser()
for flag in ("--model", "--train", "--dev", "--text", "--label", "--limit", "--epochs", "--bs",
             "--lr", "--max-len", "--method"):
    parser.add_argument(flag, required=True)
for flag in ("--group-by-length", "--bf16"):
    parser.add_argument(flag, action="store_true")
args = parser.parse_args()
open("args.json", "w").write(json.dumps(vars(args)))  # the run directory is the working directory
print("a warning the real script might print", file=sys.stderr)
import time; time.sleep(0.6)  # a real peer trains for minutes; the bench polls its memory meanwhile
print(json.dumps({{"method": args.method, "train_samples": int(args.limit) or 200,
    "epochs": float(args.epochs), "train_s": 1.0,
    "train_samples_per_s": {FAKE_PEER_SPEED} * (2 if args.group_by_length else 1),
    "eval_s": 0.1, "accuracy": 0.75 if float(args.lr) < 0.05 else 0.5, "f1": 0.7}}))
"""


@pytest.fixture(autouse=True, scope="module")
def quick_matmul_peak() -> Any:
    """The bench measures the machine's matmul peak for a few seconds; a glimpse does for tests."""
    import llmkit.bench.machine as machine

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(machine, "CPU_SIZES", (128,))
        patch.setattr(machine, "SECONDS_PER_SIZE", 0.05)
        yield


def write_bench(path: Path, tree: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tsv_data(sentiment_data: DataFiles, tmp_path_factory: pytest.TempPathFactory) -> DataFiles:
    """The sentiment data as tab-separated files, the format the peer script reads."""
    root = tmp_path_factory.mktemp("sentiment-tsv")
    paths = {}
    for split in ("train", "validation"):
        with getattr(sentiment_data, split).open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        paths[split] = root / f"{split}.tsv"
        paths[split].write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    return DataFiles(paths["train"], paths["validation"], None)


@pytest.fixture(scope="session")
def fake_peer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("peer") / "fake_peer.py"
    path.write_text(FAKE_PEER, encoding="utf-8")
    return path


def bench_recipe(root: Path, checkpoint: Path, data: DataFiles, method: str, name: str, **train: Any) -> Path:
    """A recipe of the tiny BERT with settings that learn, changed by `train`."""
    return write_recipe(root / name, checkpoint, data, method, train={**LEARNS[method], **train})


# ----------------------------------------------------------------------------- bench file errors


@pytest.fixture
def small_bench(tmp_path: Path, bert_checkpoint: Path, sentiment_data: DataFiles) -> Callable[..., Path]:
    """`small_bench(runs=[...], **top)` writes a bench file beside a tiny recipe (recipe.yaml)."""
    bench_recipe(tmp_path, bert_checkpoint, sentiment_data, "full", "recipe.yaml", epochs=1)

    def make(runs: list[dict[str, Any]] | None = None, **top: Any) -> Path:
        runs = runs if runs is not None else [{"name": "a", "recipe": "recipe.yaml"}]
        return write_bench(tmp_path / "bench.yaml", {"runs": runs, **top})

    return make


@pytest.mark.parametrize(
    ("runs", "top", "expected"),
    [
        (
            [{"name": "a", "recipe": "recipe.yaml", "overides": {"train.epochs": 1}}],
            {},
            ["bench.yaml:4] runs[0].overides: unknown key. Did you mean 'overrides'?"],
        ),
        (
            [{"name": "a", "recipe": "recipe.yaml", "min_accuracy": 0.8}],
            {},
            ["runs[0].min_accuracy: unknown key. Expectations go under expect: (expect.min_accuracy)."],
        ),
        (
            [{"name": "a", "recipe": "recipe.yaml", "train": {"epochs": 1}}],
            {},
            ["runs[0].train: unknown key. Recipe settings go under overrides:"],
        ),
        (
            [{"name": "a", "recipe": "recipe.yaml"}],
            {"seed": [1, 2]},
            ["seed: unknown key. Did you mean 'seeds'?"],
        ),
        (
            [{"name": "a", "recipe": "recipe.yaml"}, {"kind": "peer", "like": "b"}],
            {},
            ["b-peer: like: 'b' is not a run of this bench (llmkit runs: a)"],
        ),
        (
            [{"name": "a", "recipe": "recipe.yaml"}, {"name": "a", "recipe": "recipe.yaml"}],
            {},
            ["run names must be distinct; used more than once: a"],
        ),
        (
            [{"name": "a", "recipe": "recipe.yaml", "expect": {"min_speed_ratio": 0.8}}],
            {},
            ["a: expect.min_speed_ratio needs expect.speed_reference (no peer run is like this run)"],
        ),
        (
            [{"name": "a", "recipe": "recipe.yaml", "kind": "trainer"}],
            {},
            ["runs[0].kind: unknown run kind 'trainer'; choose llmkit, peer or untuned."],
        ),
        (
            [{"name": "a", "recipe": "missing.yaml"}],
            {},
            ["recipe 'missing.yaml' does not exist", "relative to the bench file"],
        ),
        (
            [{"name": "a", "recipe": "recipe.yaml"}, {"kind": "peer", "like": "a", "seeds": [1, 1]}],
            {},
            ["seeds must be a non-empty list of distinct integers"],
        ),
        (
            [{"name": "a", "recipe": "recipe.yaml", "expect": {"min_inference_ratio": 2}}],
            {},
            ["expect.min_inference_ratio needs measure_inference: true"],
        ),
        (
            [{"name": "a", "recipe": "recipe.yaml"}, {"kind": "peer", "like": "a", "seeds": [3]}],
            {"seeds": [1, 2]},
            ["run a-peer: seeds [3] are not seeds of a (1, 2)"],
        ),
        (  # a misspelt recipe key in a bench override is reported at the bench file's line
            [{"name": "a", "recipe": "recipe.yaml", "overrides": {"trian.epochs": 1}}],
            {},
            ["run a:", "bench.yaml:5] trian: unknown key. Did you mean 'train'?"],
        ),
    ],
    ids=[
        "misspelt-key",
        "expectation-outside-expect",
        "recipe-section-in-run",
        "misspelt-top-key",
        "peer-of-unknown-run",
        "duplicate-names",
        "speed-ratio-without-reference",
        "unknown-kind",
        "missing-recipe",
        "repeated-peer-seed",
        "inference-ratio-without-measuring",
        "peer-seed-of-no-run",
        "misspelt-recipe-override",
    ],
)
def test_bench_file_errors_are_reported_with_their_place(
    small_bench: Callable[..., Path], runs: list[dict[str, Any]], top: dict[str, Any], expected: list[str]
) -> None:
    bench = small_bench(runs, **top)
    result = invoke("bench", bench, "--dry-run")
    assert result.exit_code == USER_ERROR, explain(result)
    for text in expected:
        assert text in result.stderr, explain(result)
    assert "Traceback" not in result.output


def test_every_problem_in_a_bench_file_is_reported_at_once(small_bench: Callable[..., Path]) -> None:
    bench = small_bench([{"name": "a", "recipe": "recipe.yaml", "overides": {}, "expect": {"min_acc": 1}}])
    result = invoke("bench", bench, "--dry-run", "tolerances.sped=0.3")
    assert result.exit_code == USER_ERROR, explain(result)
    assert "3 problems in the bench file" in result.stderr
    assert "expect.min_acc: unknown key. Did you mean 'min_accuracy'?" in result.stderr
    assert "[command line] tolerances.sped: unknown key. Did you mean 'speed'?" in result.stderr


# ----------------------------------------------------------------------------- --dry-run


def test_dry_run_prints_the_matrix_and_trains_nothing(
    small_bench: Callable[..., Path], tmp_path: Path, fake_peer: Path
) -> None:
    bench = small_bench(
        [
            {"name": "a", "recipe": "recipe.yaml", "seeds": [3, 4], "expect": {"min_accuracy": 0.9}},
            {"name": "b", "recipe": "recipe.yaml", "overrides": {"method.name": "lora"}},
        ],
        seeds=[7],
    )
    out = tmp_path / "out"
    started = time.perf_counter()
    result = invoke("bench", bench, "--dry-run", "--output-dir", out, "train.batch_size=4")
    assert result.exit_code == 0, explain(result)
    assert time.perf_counter() - started < 10
    assert not out.exists()
    lines = result.stdout.splitlines()
    assert "3 runs into" in lines[0]
    matrix = [line.split(" | ") for line in lines if line.startswith("| ") and line[2].isdigit()]
    # Seeds outermost: each run's first seed, then the second seeds, so load bursts spread out.
    assert [(row[1], row[3], row[5], row[8]) for row in matrix] == [
        ("a", "3", "full", "4"),
        ("b", "7", "lora", "4"),
        ("a", "4", "full", "4"),
    ]
    assert "a: validation accuracy >= 0.9" in result.stdout


def test_dry_run_checks_data_files_and_the_peer_script(
    tmp_path: Path, bert_checkpoint: Path, sentiment_data: DataFiles
) -> None:
    bench_recipe(tmp_path, bert_checkpoint, sentiment_data, "full", "recipe.yaml")
    bench = write_bench(
        tmp_path / "bench.yaml",
        {
            "peer_script": "no-such-script.py",
            "overrides": {"data.validation_file": "missing.csv"},
            "runs": [{"name": "a", "recipe": "recipe.yaml"}, {"kind": "peer", "like": "a"}],
        },
    )
    result = invoke("bench", bench, "--dry-run")
    assert result.exit_code == USER_ERROR, explain(result)
    assert f"data file '{tmp_path / 'missing.csv'}' does not exist" in result.stderr  # relative to the bench
    assert "the peer script" in result.stderr and "no-such-script.py' does not exist" in result.stderr
    assert "the peer script reads tab-separated files" in result.stderr


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def two_by_two(
    tmp_path_factory: pytest.TempPathFactory, bert_checkpoint: Path, tsv_data: DataFiles, fake_peer: Path
) -> tuple[Path, Any]:
    """Full fine-tuning and LoRA, two seeds each, and a (fake) peer run beside the full run."""
    root = tmp_path_factory.mktemp("bench-2x2")
    # Few epochs, to stay quick: this bench is about the files and numbers, not about learning.
    bench_recipe(root / "recipes", bert_checkpoint, tsv_data, "full", "full.yaml", epochs=2)
    bench_recipe(root / "recipes", bert_checkpoint, tsv_data, "lora", "lora.yaml", epochs=2)
    bench = write_bench(
        root / "recipes" / "benchmarks" / "tiny.yaml",
        {
            "peer_script": str(fake_peer),
            "seeds": [1, 2],
            "overrides": {"data.quoting": "none"},
            "runs": [
                {"name": "full", "recipe": "../full.yaml", "expect": {"min_accuracy": 0.2}},
                {"name": "full-peer", "kind": "peer", "like": "full"},
                {
                    "name": "lora",
                    "recipe": "../lora.yaml",
                    "measure_inference": True,
                    "expect": {"max_peak_memory_mb": 100000, "min_inference_ratio": 0.01},
                },
            ],
        },
    )
    out = root / "out"
    return out, invoke("bench", bench, "--output-dir", out)


def test_bench_runs_every_seed_and_writes_its_files(two_by_two: tuple[Path, Any]) -> None:
    out, result = two_by_two
    assert result.exit_code == 0, explain(result)
    for name in ("bench.json", "bench.csv", "bench.md"):
        assert (out / name).is_file()
    for name in ("accuracy-vs-params.png", "throughput.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for prefix in ("[1/6] full seed 1", "[2/6] full-peer seed 1", "[3/6] lora seed 1", "[6/6] lora seed 2"):
        assert prefix in result.stdout
    document = json.loads((out / "bench.json").read_text())
    assert [(r["name"], r["seed"], r["status"]) for r in document["runs"]] == [
        ("full", 1, "completed"),
        ("full-peer", 1, "completed"),
        ("lora", 1, "completed"),
        ("full", 2, "completed"),
        ("full-peer", 2, "completed"),
        ("lora", 2, "completed"),
    ]
    assert document["bench"]["complete"] is True
    assert document["regressions"] == []
    # Each llmkit run is a complete `llmkit finetune` run directory with its seed.
    for record in document["runs"]:
        if record["name"] != "full-peer":
            run_dir = Path(record["run_dir"])
            assert run_dir == out / "runs" / f"{record['name']}-seed{record['seed']}"
            # bench.json adds the prediction-speed measurement to what the run wrote.
            assert results_of(run_dir) == {k: v for k, v in record["results"].items() if k != "inference"}
            assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["train"]["seed"] == record["seed"]


def test_bench_aggregates_mean_and_std_over_seeds(two_by_two: tuple[Path, Any]) -> None:
    out, result = two_by_two
    assert result.exit_code == 0, explain(result)
    document = json.loads((out / "bench.json").read_text())
    summaries = {entry["name"]: entry for entry in document["summary"]}
    for name in ("full", "lora"):
        runs = [r["results"] for r in document["runs"] if r["name"] == name]
        summary = summaries[name]
        for figure, path in (
            ("accuracy", ("metrics", "validation", "accuracy")),
            ("f1", ("metrics", "validation", "f1")),
            ("samples_per_second", ("train", "samples_per_second")),
            ("tokens_per_second", ("train", "tokens_per_second")),
        ):
            values = [_dig(r, path) for r in runs]
            assert summary[figure]["mean"] == pytest.approx(statistics.fmean(values))
            assert summary[figure]["std"] == pytest.approx(statistics.stdev(values))
        assert summary["trainable_parameters"] == runs[0]["parameters"]["trainable"]
        assert summary["peak_memory_mb"] == max(r["train"]["peak_memory_mb"] for r in runs)
        assert summary["seeds"] == [1, 2]
    # Same data and model: a seed changes the numbers, not the parameter counts.
    assert summaries["lora"]["trainable_percent"] < summaries["full"]["trainable_percent"] == 100
    full = summaries["full"]
    assert full["peer"] == "full-peer"
    assert full["speed_ratio_vs_peer"] == pytest.approx(
        full["samples_per_second"]["mean"] / FAKE_PEER_SPEED, rel=1e-3
    )
    assert summaries["lora"]["speed_ratio_vs_peer"] is None

    rows = {row["run"]: row for row in csv.DictReader((out / "bench.csv").open())}
    assert float(rows["full"]["accuracy_mean"]) == pytest.approx(full["accuracy"]["mean"])
    assert float(rows["full"]["speed_ratio_vs_peer"]) == pytest.approx(full["speed_ratio_vs_peer"])

    markdown = (out / "bench.md").read_text()
    assert "| x peer |" in markdown
    full_row = next(line for line in markdown.splitlines() if line.startswith("| full |"))
    assert f"{full['accuracy']['mean']:.4f} ± {full['accuracy']['std']:.4f}" in full_row
    assert f"| {full['speed_ratio_vs_peer']:.2f} |" in full_row
    assert "| 200 x 2 |" in full_row
    assert "No regressions" in markdown


def test_bench_reports_mfu_against_the_measured_matmul_peak(two_by_two: tuple[Path, Any]) -> None:
    out, result = two_by_two
    assert result.exit_code == 0, explain(result)
    document = json.loads((out / "bench.json").read_text())
    peak = document["bench"]["matmul_peak"]["fp32"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert peak["flops_per_second"] > 1e8 and peak["device"] == device
    assert f"matmul peak of this machine ({device}): fp32" in result.stdout
    summaries = {entry["name"]: entry for entry in document["summary"]}
    for name in ("full", "lora"):
        runs = [r["results"]["train"] for r in document["runs"] if r["name"] == name]
        achieved = statistics.fmean(train["model_flops_per_second"] for train in runs)
        assert summaries[name]["mfu"] == pytest.approx(achieved / peak["flops_per_second"], rel=1e-3)
        assert 0 < summaries[name]["mfu"] < 1
    # The peer trains the same FLOPs per sample at its own samples/s.
    full, peer = summaries["full"], summaries["full-peer"]
    per_sample = full["model_flops_per_second"]["mean"] / full["samples_per_second"]["mean"]
    assert peer["model_flops_per_second"]["mean"] == pytest.approx(
        per_sample * peer["samples_per_second"]["mean"], rel=1e-6
    )
    table = (out / "bench.md").read_text()
    assert "| MFU |" in table and "% (fp32) |" in table and "fp32" in table and "GFLOP/s" in table


def test_bench_measures_prediction_against_a_transformers_pipeline(two_by_two: tuple[Path, Any]) -> None:
    out, result = two_by_two
    assert result.exit_code == 0, explain(result)
    document = json.loads((out / "bench.json").read_text())
    lora = {r["seed"]: r["results"] for r in document["runs"] if r["name"] == "lora"}
    assert "inference" not in lora[2]  # once per run: speed does not depend on the seed
    inference = lora[1]["inference"]
    assert inference["rows"] == lora[1]["data"]["validation_rows"]
    assert inference["label_agreement"] == 1.0  # the same model, so the same labels
    assert inference["llmkit_rows_per_second"] > 0 and inference["pipeline_rows_per_second"] > 0
    ratio = inference["llmkit_rows_per_second"] / inference["pipeline_rows_per_second"]
    assert inference["ratio"] == pytest.approx(ratio, rel=0.05)
    summary = next(entry for entry in document["summary"] if entry["name"] == "lora")
    assert summary["inference"] == inference
    row = next(r for r in csv.DictReader((out / "bench.csv").open()) if r["run"] == "lora")
    assert float(row["predict_ratio_vs_pipeline"]) == inference["ratio"]


def test_slow_prediction_fails_the_bench_naming_run_and_figure(
    small_bench: Callable[..., Path], tmp_path: Path
) -> None:
    runs = [
        {
            "name": "a",
            "recipe": "recipe.yaml",
            "measure_inference": True,
            "expect": {"min_inference_ratio": 1000},
        }
    ]
    result = invoke("bench", small_bench(runs, seeds=[1]), "--output-dir", tmp_path / "out")
    assert result.exit_code == REGRESSION, explain(result)
    assert "a seed 1: prediction" in result.stderr and "< expected minimum 1000x" in result.stderr
    regressions = json.loads((tmp_path / "out" / "bench.json").read_text())["regressions"]
    assert [r["figure"] for r in regressions] == ["prediction speed ratio to pipeline"]


@pytest.fixture
def peer_bench(tmp_path: Path, bert_checkpoint: Path, tsv_data: DataFiles) -> Callable[..., Path]:
    """`peer_bench(runs, **top)`: a bench file beside a tiny recipe (recipe.yaml) on the
    tab-separated data the peer script reads."""
    bench_recipe(tmp_path, bert_checkpoint, tsv_data, "full", "recipe.yaml", epochs=1)
    top = {"overrides": {"data.quoting": "none"}}
    return lambda runs, **more: write_bench(tmp_path / "bench.yaml", {**top, "runs": runs, **more})


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_expert_peer_is_the_speed_reference_and_both_ratios_are_reported(
    peer_bench: Callable[..., Path], fake_peer: Path, tmp_path: Path, precision: str
) -> None:
    runs = [
        {"name": "a", "recipe": "recipe.yaml", "expect": {"min_speed_ratio": 1000}},
        {"kind": "peer", "like": "a"},
        {"kind": "peer", "like": "a", "expert": True},
    ]
    bench = peer_bench(runs, seeds=[1], peer_script=str(fake_peer))
    result = invoke("bench", bench, f"train.precision={precision}", "--output-dir", tmp_path / "out")
    assert result.exit_code == REGRESSION, explain(result)
    # The ratio a speed claim must win is the one against the expert peer (the fake's grouped
    # batches report twice its plain speed).
    assert "a: train samples/s" in result.stderr and "x a-expert-peer's 2000.0" in result.stderr
    document = json.loads((tmp_path / "out" / "bench.json").read_text())
    summary = {entry["name"]: entry for entry in document["summary"]}
    speed = summary["a"]["samples_per_second"]["mean"]
    assert summary["a"]["peer"] == "a-peer" and summary["a"]["expert_peer"] == "a-expert-peer"
    assert summary["a"]["speed_ratio_vs_peer"] == pytest.approx(speed / FAKE_PEER_SPEED, rel=1e-3)
    assert summary["a"]["speed_ratio_vs_expert_peer"] == pytest.approx(speed / FAKE_PEER_SPEED / 2, rel=1e-3)
    runs_dir = tmp_path / "out" / "runs"
    expert_args = json.loads((runs_dir / "a-expert-peer-seed1" / "args.json").read_text())
    plain_args = json.loads((runs_dir / "a-peer-seed1" / "args.json").read_text())
    assert expert_args["group_by_length"] and not plain_args["group_by_length"]
    # bf16 only where llmkit trains in it: the expert does what llmkit does, no more.
    assert expert_args["bf16"] is (precision == "bf16") and plain_args["bf16"] is False
    table = (tmp_path / "out" / "bench.md").read_text()
    assert "| x peer | x expert peer |" in table and "a-expert-peer (expert peer script)" in table


def test_time_to_target_for_llmkit_runs_and_a_sweep_of_peers(
    peer_bench: Callable[..., Path], fake_peer: Path, tmp_path: Path
) -> None:
    runs = [
        # Epochs enough for the tiny model to learn whatever the seed's draws (LEARNS has 8).
        {"name": "a", "recipe": "recipe.yaml", "overrides": {"eval.every_steps": 5, "train.epochs": 4}},
        {"kind": "peer", "like": "a", "expert": True},
        # The fake script reaches accuracy 0.75 below lr 0.05, 0.5 above.
        {"kind": "peer", "like": "a", "name": "fast-lr", "overrides": {"train.learning_rate": 0.1}},
        {"kind": "peer", "like": "a", "name": "slow", "overrides": {"train.epochs": 3}},
    ]
    bench = peer_bench(runs, seeds=[1], peer_script=str(fake_peer), time_to_target={"accuracy": 0.0})
    result = invoke("bench", bench, "--output-dir", tmp_path / "out", "time_to_target={accuracy: 0.6}")
    assert result.exit_code == 0, explain(result)
    out = tmp_path / "out"
    assert json.loads((out / "runs" / "fast-lr-seed1" / "args.json").read_text())["lr"] == "0.1"
    assert json.loads((out / "runs" / "slow-seed1" / "args.json").read_text())["epochs"] == "3"
    document = json.loads((out / "bench.json").read_text())
    summary = {entry["name"]: entry for entry in document["summary"]}
    run = next(r for r in document["runs"] if r["name"] == "a")
    evaluations = run["results"]["train"]["evaluations"]
    first = next(e for e in evaluations if e["accuracy"] >= 0.6)  # the tiny model learns
    assert summary["a"]["time_to_target_s"]["mean"] == first["training_s"]
    assert summary["a"]["reached_target"] == 1
    # Peers: their whole training when the final figures reach the target (the fake's train_s 1.0).
    assert summary["a-expert-peer"]["time_to_target_s"]["mean"] == 1.0
    assert (
        summary["fast-lr"]["reached_target"] == 0 and summary["fast-lr"]["time_to_target_s"]["mean"] is None
    )
    assert summary["a"]["fastest_peer_to_target"] in ("a-expert-peer", "slow")
    assert summary["a"]["time_to_target_ratio_vs_fastest_peer"] == pytest.approx(
        1.0 / first["training_s"], rel=1e-3
    )
    # A sweep's peers train other settings: the speed ratio is against the expert peer only.
    assert summary["a"]["expert_peer"] == "a-expert-peer" and summary["a"]["peer"] is None
    table = (out / "bench.md").read_text()
    assert "## Time to validation accuracy >= 0.6" in table and "| fast-lr (peer script) | " in table


def test_a_peer_sweep_sets_only_what_the_script_takes(small_bench: Callable[..., Path]) -> None:
    runs = [
        {"name": "a", "recipe": "recipe.yaml"},
        {"kind": "peer", "like": "a", "overrides": {"train.warmup_ratio": 0.1}},
    ]
    result = invoke("bench", small_bench(runs), "--dry-run")
    assert result.exit_code == 2
    assert "a peer run's overrides set what its script takes (train.learning_rate" in result.stderr
    assert "not train.warmup_ratio" in result.stderr


def test_a_run_has_at_most_one_peer_of_each_kind(small_bench: Callable[..., Path], fake_peer: Path) -> None:
    runs = [
        {"name": "a", "recipe": "recipe.yaml"},
        {"kind": "peer", "like": "a", "name": "one", "expert": True},
        {"kind": "peer", "like": "a", "name": "two", "expert": True},
    ]
    result = invoke("bench", small_bench(runs), "--dry-run")
    assert result.exit_code == 2
    assert "a: more than one of its expert peer runs without overrides; keep one" in result.stderr


def test_a_peer_run_can_be_limited_to_some_seeds(small_bench: Callable[..., Path], fake_peer: Path) -> None:
    from llmkit.bench.loading import plan_bench

    runs = [{"name": "a", "recipe": "recipe.yaml"}, {"kind": "peer", "like": "a", "seeds": [2]}]
    plan = plan_bench(small_bench(runs, seeds=[1, 2], peer_script=str(fake_peer)))
    assert [(run.name, run.seed) for run in plan.runs] == [("a", 1), ("a", 2), ("a-peer", 2)]


def test_a_peer_notes_the_dropout_it_keeps(small_bench: Callable[..., Path], fake_peer: Path) -> None:
    from llmkit.bench.loading import plan_bench
    from llmkit.bench.peer import peer_notes

    runs = [
        {"name": "a", "recipe": "recipe.yaml", "overrides": {"model.dropout": 0.0}},
        {"kind": "peer", "like": "a"},
    ]
    peer = plan_bench(small_bench(runs, peer_script=str(fake_peer))).runs[-1]
    assert "the script keeps the checkpoint's dropout (llmkit here: 0)" in peer_notes(peer.recipe)


def test_a_peer_run_gets_the_resolved_recipe(
    two_by_two: tuple[Path, Any], bert_checkpoint: Path, tsv_data: DataFiles
) -> None:
    out, result = two_by_two
    assert result.exit_code == 0, explain(result)
    args = json.loads((out / "runs" / "full-peer-seed1" / "args.json").read_text())
    assert args == {
        "model": str(bert_checkpoint),
        "train": str(tsv_data.train),
        "dev": str(tsv_data.validation),
        "text": "text",
        "label": "label",
        "limit": "0",  # every row
        "epochs": "2",
        "bs": "8",
        "lr": "0.001",
        "max_len": "128",
        "method": "full",
        "group_by_length": False,  # the plain peer: Trainer's defaults
        "bf16": False,
    }
    peer = json.loads((out / "runs" / "full-peer-seed1" / "results.json").read_text())
    assert peer["train"]["samples_per_second"] == FAKE_PEER_SPEED
    assert peer["train"]["peak_memory_mb"] > 0  # the script's own process, measured by wait4
    assert (
        "a warning the real script might print" in (out / "runs" / "full-peer-seed1" / "peer.log").read_text()
    )


def test_an_existing_bench_output_is_kept_without_overwrite(two_by_two: tuple[Path, Any]) -> None:
    out, _ = two_by_two
    bench = Path(json.loads((out / "bench.json").read_text())["bench"]["file"])
    result = invoke("bench", bench, "--output-dir", out)
    assert result.exit_code == USER_ERROR
    assert "already exists" in result.stderr and "--overwrite" in result.stderr


# ----------------------------------------------------------------------------- regressions


def test_a_run_that_stops_learning_fails_the_bench_naming_run_and_figure(
    tmp_path: Path, bert_checkpoint: Path, sentiment_data: DataFiles
) -> None:
    bench_recipe(tmp_path, bert_checkpoint, sentiment_data, "full", "good.yaml")
    # The deliberately broken change: a learning rate that leaves the random head as it starts.
    bench_recipe(
        tmp_path, bert_checkpoint, sentiment_data, "full", "broken.yaml", epochs=1, learning_rate=1e-12
    )
    expect = {"min_accuracy": 0.8, "min_f1": 0.8}
    bench = write_bench(
        tmp_path / "bench.yaml",
        {
            "seeds": [1],
            "runs": [
                {"name": "good", "recipe": "good.yaml", "expect": expect},
                {"name": "broken", "recipe": "broken.yaml", "expect": expect},
            ],
        },
    )
    result = invoke("bench", bench, "--output-dir", tmp_path / "out")
    assert result.exit_code == REGRESSION, explain(result)
    document = json.loads((tmp_path / "out" / "bench.json").read_text())
    accuracy = document["runs"][1]["results"]["metrics"]["validation"]["accuracy"]
    assert f"broken seed 1: validation accuracy {accuracy:.4f} < expected minimum 0.8" in result.stderr
    assert {r["run"] for r in document["regressions"]} == {"broken"}
    assert "validation accuracy" in {r["figure"] for r in document["regressions"]}
    assert "broken seed 1: validation accuracy" in (tmp_path / "out" / "bench.md").read_text()


def test_a_slowed_down_run_fails_its_speed_ratio(
    tmp_path: Path, bert_checkpoint: Path, sentiment_data: DataFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The deliberately broken change, in one run only (<out>/runs/slowed-seed1/checkpoints), made
    # in the run's own process: a sitecustomize module that every new Python process imports.
    patches = tmp_path / "slowed"
    patches.mkdir()
    (patches / "sitecustomize.py").write_text(
        "import time\n"
        "from pathlib import Path\n"
        "import llmkit.training.trainer as trainer\n"
        "original = trainer.LlmkitTrainer.training_step\n"
        "def slowed_step(self, *args, **kwargs):\n"
        "    if Path(self.args.output_dir).parent.name.startswith('slowed-'):\n"
        "        time.sleep(0.4)\n"
        "    return original(self, *args, **kwargs)\n"
        "trainer.LlmkitTrainer.training_step = slowed_step\n",
        encoding="utf-8",
    )
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(patches), os.environ.get("PYTHONPATH")]))
    )
    bench_recipe(tmp_path, bert_checkpoint, sentiment_data, "full", "recipe.yaml", epochs=1)
    expect = {"min_speed_ratio": 0.7, "speed_reference": "reference"}
    bench = write_bench(
        tmp_path / "bench.yaml",
        {
            "seeds": [1],
            "runs": [
                {"name": "reference", "recipe": "recipe.yaml"},
                {"name": "slowed", "recipe": "recipe.yaml", "expect": expect},
            ],
        },
    )
    result = invoke("bench", bench, "--output-dir", tmp_path / "out")
    assert result.exit_code == REGRESSION, explain(result)
    assert "slowed: train samples/s" in result.stderr
    assert "x reference's" in result.stderr and "< expected minimum 0.7x" in result.stderr
    document = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert [r["figure"] for r in document["regressions"]] == ["speed ratio to reference"]


def test_baseline_comparison_with_configurable_tolerances(
    small_bench: Callable[..., Path], tmp_path: Path
) -> None:
    bench = small_bench(seeds=[1])
    baseline = tmp_path / "baseline.json"
    earlier = {
        "name": "a",
        "accuracy": {"mean": 0.999},
        "f1": {"mean": 0.0},
        "samples_per_second": {"mean": 1e9},
        "peak_memory_mb": 1.0,
    }
    baseline.write_text(json.dumps({"summary": [earlier, {"name": "gone"}]}))
    result = invoke(
        "bench", bench, "--output-dir", tmp_path / "out", "--baseline", baseline, "tolerances.accuracy=1"
    )
    assert result.exit_code == REGRESSION, explain(result)
    figures = {r["figure"] for r in json.loads((tmp_path / "out" / "bench.json").read_text())["regressions"]}
    # Accuracy fell, but within the tolerance given on the command line; F1 rose.
    assert figures == {"train samples/s", "peak memory"}
    assert (
        "a: train samples/s" in result.stderr and "< baseline 1000000000.00 samples/s - 15%" in result.stderr
    )
    assert "a: peak memory" in result.stderr and "> baseline 1 MB + 10%" in result.stderr
    assert "gone: in the baseline only, not compared" in result.stdout


def test_baseline_speed_is_compared_as_the_ratio_to_the_peer() -> None:
    from llmkit.bench.aggregate import RunSummary, Stat
    from llmkit.bench.checks import compare_with_baseline
    from llmkit.bench.schema import Tolerances

    def summary(ratio: float | None, speed: float) -> RunSummary:
        stat = Stat(0.9, None, [0.9])
        return RunSummary(
            "a", "llmkit", "m", "lora", [1], [], 100, 1.0, 10, stat, stat, 1, 2, 50.0,
            Stat(speed, None, [speed]), Stat(None, None), 100.0, Stat(1.0, None, [1.0]), "a-peer", ratio,
            "fp32", Stat(None, None), None, None,
        )  # fmt: skip

    baseline = {"a": {"name": "a", "speed_ratio_vs_peer": 1.0, "samples_per_second": {"mean": 10.0}}}
    # Half the samples/s on a busier machine, the same ratio to the peer measured beside it: fine.
    found, _ = compare_with_baseline([summary(1.0, 5.0)], baseline, Tolerances())
    assert found == []
    found, _ = compare_with_baseline([summary(0.8, 10.0)], baseline, Tolerances())
    assert [r.message for r in found] == ["a: speed ratio to peer 0.80x peer < baseline 1.00x peer - 15%"]
    found, _ = compare_with_baseline([summary(0.8, 10.0)], baseline, Tolerances(speed=0.25))
    assert found == []


def test_baseline_that_is_not_a_bench_file_is_a_user_error(
    small_bench: Callable[..., Path], tmp_path: Path
) -> None:
    baseline = tmp_path / "results.json"
    baseline.write_text(json.dumps({"metrics": {}}))
    result = invoke("bench", small_bench(), "--output-dir", tmp_path / "out", "--baseline", baseline)
    assert result.exit_code == USER_ERROR
    assert "is not a bench.json written by `llmkit bench`" in result.stderr
    assert not (tmp_path / "out").exists()  # checked before any run


# ----------------------------------------------------------------------------- units


def test_recipe_settings_merge_in_one_order(small_bench: Callable[..., Path], tmp_path: Path) -> None:
    from llmkit.bench.loading import plan_bench

    bench = small_bench(
        [{"name": "a", "recipe": "recipe.yaml", "overrides": {"train.epochs": 2, "data.test_file": "t.csv"}}],
        overrides={"train.epochs": 5, "train.batch_size": 4, "data.max_length": 16},
        seeds=[11, 12],
    )
    plan = plan_bench(bench, ["data.max_length=32"])
    first = plan.runs[0].recipe
    assert first.train.epochs == 2  # the run's over the bench's
    assert first.train.batch_size == 4  # the bench's over the recipe's
    assert first.data.max_length == 32  # the command line's over all
    assert first.data.test_file == tmp_path / "t.csv"  # relative to the bench file
    assert [run.recipe.train.seed for run in plan.runs] == [11, 12]
    assert plan.runs[1].recipe.output_dir == Path("runs/bench/bench/runs/a-seed12")


def test_a_failing_peer_script_is_a_failed_run(
    tmp_path: Path, bert_checkpoint: Path, tsv_data: DataFiles
) -> None:
    from llmkit.bench.loading import plan_bench
    from llmkit.bench.runner import run_one

    bench_recipe(tmp_path, bert_checkpoint, tsv_data, "lora", "recipe.yaml")
    script = tmp_path / "crash.py"
    script.write_text("import sys\nprint('Traceback: out of luck', file=sys.stderr)\nsys.exit(1)\n")
    bench = write_bench(
        tmp_path / "bench.yaml",
        {
            "peer_script": "crash.py",
            "runs": [{"name": "a", "recipe": "recipe.yaml"}, {"kind": "peer", "like": "a"}],
        },
    )
    plan = plan_bench(bench, [], tmp_path / "out")
    record = run_one(plan.runs[1], plan.peer_script)
    assert record.status == "failed" and record.name == "a-peer"
    assert "exited with code 1" in (record.error or "") and "out of luck" in (record.error or "")


# ------------------------------------------------------------------------- generation's peer, untuned runs

FAKE_SFT_SPEED = 500.0
# peer_sft.py's options (TRL's SFTTrainer), every one this fake takes, none required but --model:
# a flag the bench passes that the real script lacks fails here as it would there.
FAKE_SFT_PEER = f"""
import argparse, json
p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
for flag in ("--train", "--test", "--input-col", "--output-col", "--template", "--limit", "--eval-limit",
             "--epochs", "--bs", "--lr", "--method", "--max-len", "--max-new-tokens"):
    p.add_argument(flag)
p.add_argument("--packing", action="store_true"); p.add_argument("--bf16", action="store_true")
a = p.parse_args()
open("args.json", "w").write(json.dumps(vars(a)))
print(json.dumps({{"method": a.method, "task": "generation", "packing": a.packing,
    "train_samples": int(a.limit), "epochs": float(a.epochs), "train_s": 1.0,
    "train_samples_per_s": {FAKE_SFT_SPEED}, "generate_s": 0.5, "eval_inputs": int(a.eval_limit),
    "bleu": 12.5, "rougeL": 40.0, "stopped_at_eos": 3, "example": "x"}}))
"""
DESCRIBE = "Describe: {mr}\n"


def _descriptions(count: int, seed: int) -> list[list[str]]:
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        subject, mood = rng.choice(("movie", "plot", "show")), rng.choice(("great", "terrible"))
        rows.append([f"subject[{subject}] mood[{mood}]", f"{rng.choice(('the', 'a'))} {subject} was {mood}"])
    return rows


@pytest.fixture(scope="module")
def generation_bench(
    tmp_path_factory: pytest.TempPathFactory, gpt2_checkpoint: Path
) -> tuple[Path, Path, Any]:
    """A generation run on tiny GPT-2 with LoRA, its (fake) TRL peer and its untuned model."""
    from helpers import write_csv

    root = tmp_path_factory.mktemp("bench-generation")
    train = write_csv(root / "train.csv", ["mr", "ref"], _descriptions(40, 1))
    validation = write_csv(root / "validation.csv", ["mr", "ref"], _descriptions(16, 2))
    (root / "fake_peer_sft.py").write_text(FAKE_SFT_PEER, encoding="utf-8")
    recipe = {
        "model": {"checkpoint": str(gpt2_checkpoint)},
        "data": {
            "train_file": str(train),
            "validation_file": str(validation),
            "max_length": 64,
            "max_train_samples": 32,
            "max_eval_samples": 4,
        },
        "task": {
            "name": "generation",
            "template": DESCRIBE,
            "completion_column": "ref",
            "generate": {"max_new_tokens": 8},
        },
        "method": {"name": "lora"},
        "train": {"epochs": 2, "learning_rate": 2e-2, "batch_size": 8, "eval_batch_size": 8},
    }
    (root / "generation.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    bench = write_bench(
        root / "bench.yaml",
        {
            "seeds": [1, 2],
            "runs": [
                {"name": "gen", "recipe": "generation.yaml", "expect": {"min_metrics": {"perplexity": 1}}},
                {
                    "name": "gen-peer",
                    "kind": "peer",
                    "like": "gen",
                    "script": "fake_peer_sft.py",
                    "seeds": [1],
                },
                {"name": "gen-untuned", "kind": "untuned", "like": "gen"},
            ],
        },
    )
    out = root / "out"
    return bench, out, invoke("bench", bench, "--output-dir", out)


def test_a_generation_peer_gets_the_recipe_as_peer_sft_arguments(
    generation_bench: tuple[Path, Path, Any], gpt2_checkpoint: Path
) -> None:
    import sys

    from llmkit.bench.loading import plan_bench
    from llmkit.bench.peer import peer_command

    bench, out, result = generation_bench
    assert result.exit_code == 0, explain(result)
    root = bench.parent
    plan = plan_bench(bench, ["task.packing=true"])
    peer = next(run for run in plan.runs if run.kind == "peer")
    script = plan.script_of(peer)
    assert script == root / "fake_peer_sft.py"
    assert peer_command(script, peer.recipe, "MODEL") == [
        sys.executable, str(script),
        "--model", "MODEL",
        "--train", str(root / "train.csv"),
        "--test", str(root / "validation.csv"),
        "--input-col", "mr",
        "--output-col", "ref",
        "--template", "Describe: {}\n",
        "--eval-limit", "4",
        "--max-new-tokens", "8",
        "--packing",
        "--limit", "32",
        "--epochs", "2",
        "--bs", "8",
        "--lr", "0.02",
        "--max-len", "64",
        "--method", "lora",
    ]  # fmt: skip
    # What the script was given in the bench (no packing there), as it parsed it.
    args = json.loads((out / "runs" / "gen-peer-seed1" / "args.json").read_text())
    assert args == {
        "model": str(gpt2_checkpoint),
        "train": str(root / "train.csv"),
        "test": str(root / "validation.csv"),
        "input_col": "mr",
        "output_col": "ref",
        "template": "Describe: {}\n",
        "limit": "32",
        "eval_limit": "4",
        "epochs": "2",
        "bs": "8",
        "lr": "0.02",
        "method": "lora",
        "max_len": "64",
        "max_new_tokens": "8",
        "packing": False,
        "bf16": False,
    }


def test_the_peers_bleu_rouge_and_speed_land_in_the_same_table(
    generation_bench: tuple[Path, Path, Any],
) -> None:
    _, out, result = generation_bench
    assert result.exit_code == 0, explain(result)
    summaries = {s["name"]: s for s in json.loads((out / "bench.json").read_text())["summary"]}
    peer = summaries["gen-peer"]
    assert peer["metrics"]["bleu"]["mean"] == 12.5
    assert peer["metrics"]["rouge_l"]["mean"] == 0.4  # the script's percent, as llmkit's fraction
    assert peer["metrics"]["stopped_at_eos"]["mean"] == 3
    assert peer["metrics"]["hit_length_limit"]["mean"] == 1  # 4 inputs generated, 3 stopped
    assert peer["samples_per_second"]["mean"] == FAKE_SFT_SPEED
    gen = summaries["gen"]
    assert gen["speed_ratio_vs_peer"] == pytest.approx(
        gen["samples_per_second"]["mean"] / FAKE_SFT_SPEED, rel=1e-3
    )
    table = (out / "bench.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| run |"))
    assert "val BLEU" in header and "val ROUGE-L" in header and "val exact match" in header
    row = next(line for line in table.splitlines() if line.startswith("| gen-peer (peer script) |"))
    assert "| 12.5000 |" in row and "| 0.4000 |" in row and f"| {FAKE_SFT_SPEED:.1f} |" in row


def test_an_untuned_run_evaluates_the_model_as_loaded(generation_bench: tuple[Path, Path, Any]) -> None:
    _, out, result = generation_bench
    assert result.exit_code == 0, explain(result)
    document = json.loads((out / "bench.json").read_text())
    untuned = [r for r in document["runs"] if r["name"] == "gen-untuned"]
    assert [(r["seed"], r["status"]) for r in untuned] == [(1, "completed")]  # once: nothing trains
    summaries = {s["name"]: s for s in document["summary"]}
    summary, trained = summaries["gen-untuned"], summaries["gen"]
    assert summary["method"] == "untuned" and summary["trainable_parameters"] == 0
    assert summary["total_parameters"] == trained["total_parameters"] - trained["trainable_parameters"]
    assert summary["samples_per_second"]["mean"] is None
    # The same validation prompts, scored with the same metrics, by the model before training.
    assert summary["validation_rows"] == trained["validation_rows"]
    assert set(summary["metrics"]) == set(trained["metrics"])
    assert summary["metrics"]["perplexity"]["mean"] > trained["metrics"]["perplexity"]["mean"]
    table = (out / "bench.md").read_text()
    (row,) = [line for line in table.splitlines() if line.startswith("| gen-untuned (untuned) | ")]
    assert row.split(" | ")[3] == "-"  # trained rows x epochs: none
    assert "[3/4] gen-untuned seed 1 (untuned model, evaluation only)" in result.stdout


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("method.name=prefix", "the task's peer script trains full or lora, not prefix"),
        ("task.generate.num_beams=2", "the peer script generates greedily"),
        ("task.train_on_prompt=true", "the peer script trains on the completion only"),
        ("task.template=Describe: {mr} {ref}\n", "the peer script's template fills in one column"),
    ],
)
def test_a_generation_recipe_the_peer_cannot_run_is_refused(
    generation_bench: tuple[Path, Path, Any], override: str, problem: str
) -> None:
    from llmkit.bench.loading import plan_bench
    from llmkit.bench.peer import peer_problems

    bench, _, _ = generation_bench
    peer = next(run for run in plan_bench(bench, [override]).runs if run.kind == "peer")
    assert any(problem in found for found in peer_problems(peer.recipe)), peer_problems(peer.recipe)


def test_min_metrics_must_name_metrics_of_the_task(small_bench: Callable[..., Path]) -> None:
    bench = small_bench([{"name": "a", "recipe": "recipe.yaml", "expect": {"min_metrics": {"bleu": 20}}}])
    result = invoke("bench", bench, "--dry-run")
    assert result.exit_code == USER_ERROR, explain(result)
    assert "run a: expect.min_metrics: 'bleu' is not a metric of the run's task (it reports: accuracy" in (
        result.stderr
    )


def test_an_untuned_run_must_be_like_an_llmkit_run(small_bench: Callable[..., Path]) -> None:
    runs = [
        {"name": "a", "recipe": "recipe.yaml"},
        {"name": "p", "kind": "peer", "like": "a"},
        {"kind": "untuned", "like": "p"},
    ]
    result = invoke("bench", small_bench(runs), "--dry-run")
    assert result.exit_code == USER_ERROR, explain(result)
    assert "p-untuned: like: 'p' is a peer run; name the llmkit run it mirrors" in result.stderr


# ----------------------------------------------------------------------------- shipped bench files


def shipped_benches() -> list[Path]:
    return sorted(BENCH_DIR.glob("*.yaml")) + sorted(BENCH_DIR.glob("*.yml"))


def test_the_ci_and_cpu_benches_are_shipped() -> None:
    assert {path.name for path in shipped_benches()} >= {"ci.yaml", "sst2-cpu.yaml"}


@pytest.mark.parametrize("path", shipped_benches(), ids=lambda p: p.name)
def test_shipped_bench_file_validates(path: Path) -> None:
    from llmkit.bench.loading import plan_bench

    plan = plan_bench(path)  # every recipe it names loads, with the bench's overrides
    assert plan.runs
    text = path.read_text(encoding="utf-8")
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert text.startswith("#") and f"llmkit bench {path.relative_to(REPO).as_posix()}" in header
    for run in plan.bench.runs:
        if run.kind == "llmkit":
            assert run.expect.min_accuracy is not None or run.expect.min_metrics, (
                f"{run.label}: a shipped run states what it must reach"
            )
    for run in (run for run in plan.runs if run.kind == "peer"):
        # Beside the checkout: the task's script in ../shared/bench (peer_trainer.py, peer_ner.py,
        # peer_sft.py), named by the bench's peer_script or the run's own script.
        assert plan.script_of(run).parent == (REPO.parent / "shared" / "bench").resolve()
    if (REPO.parent / "shared" / "data").is_dir():
        from llmkit.bench.command import check_plan

        check_plan(plan)  # every run's data read as its task reads it, as `llmkit bench` does first


def _dig(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


@pytest.mark.parametrize(("precision", "shown"), [("fp32", "1.5x"), ("bf16", "2.5x")])
def test_floors_per_precision_apply_to_the_precision_the_run_trains_in(
    small_bench: Callable[..., Path], precision: str, shown: str
) -> None:
    # CI runs on machines with and without native bf16, whose speed ratios differ: the bench file
    # states floors per precision and each machine is held to its own.
    expect = {
        "min_accuracy": 0.6,
        "speed_reference": "b",
        "by_precision": {"fp32": {"min_speed_ratio": 1.5}, "bf16": {"min_speed_ratio": 2.5}},
    }
    bench = small_bench(
        runs=[
            {"name": "a", "recipe": "recipe.yaml", "expect": expect},
            {"name": "b", "recipe": "recipe.yaml"},
        ]
    )
    result = invoke("bench", bench, f"train.precision={precision}", "--dry-run")
    assert result.exit_code == 0, explain(result)
    line = next(line for line in result.stdout.splitlines() if line.startswith("  a: "))
    assert "validation accuracy >= 0.6" in line
    assert f"train samples/s >= {shown} b's" in line
    assert f"({precision} floors: the run trains in {precision} on this machine)" in line


def test_plan_expectations_merge_the_precision_floors_over_the_common_ones() -> None:
    from llmkit.bench.schema import Expectations

    expect = Expectations(
        min_accuracy=0.7,
        min_speed_ratio=1.0,
        by_precision={"bf16": Expectations(min_speed_ratio=2.0, min_inference_ratio=2.3)},
    )
    assert expect.for_precision("bf16").min_speed_ratio == 2.0
    assert expect.for_precision("bf16").min_inference_ratio == 2.3
    assert expect.for_precision("bf16").min_accuracy == 0.7
    assert expect.for_precision("fp32").min_speed_ratio == 1.0
    assert expect.for_precision("fp32").min_inference_ratio is None
    with pytest.raises(ValueError, match="not another by_precision"):
        Expectations(by_precision={"bf16": Expectations(by_precision={"fp32": Expectations()})})


# ----------------------------------------------------------------------------- runs using runs


def test_a_run_can_use_an_earlier_runs_directory(
    tmp_path: Path, bert_checkpoint: Path, sentiment_data: DataFiles
) -> None:
    """A distillation student names its teacher by run name; each seed of the student gets the
    teacher's directory at that seed, or at the teacher's first seed when it has no such seed."""
    from llmkit.bench.loading import plan_bench

    bench_recipe(tmp_path, bert_checkpoint, sentiment_data, "full", "recipe.yaml", epochs=1)
    student = {"train.distill": {"weight": 1.0}}
    bench = write_bench(
        tmp_path / "bench.yaml",
        {
            "runs": [
                {"name": "teacher", "recipe": "recipe.yaml", "seeds": [1], "overrides": {"train.epochs": 3}},
                {
                    "name": "student",
                    "recipe": "recipe.yaml",
                    "seeds": [1, 2],
                    "overrides": student,
                    "uses": {"train.distill.teacher": "teacher"},
                },
            ]
        },
    )
    plan = plan_bench(bench, [], tmp_path / "out")
    assert [(run.name, run.seed) for run in plan.runs] == [("teacher", 1), ("student", 1), ("student", 2)]
    teacher_dir = (tmp_path / "out" / "runs" / "teacher-seed1").resolve()
    for run in plan.runs[1:]:
        assert run.recipe.train.distill is not None
        assert Path(run.recipe.train.distill.teacher) == teacher_dir

    result = invoke("bench", bench, "--output-dir", tmp_path / "out")
    assert result.exit_code == 0, explain(result)
    for seed in (1, 2):
        distill = results_of(tmp_path / "out" / "runs" / f"student-seed{seed}")["distill"]
        assert distill["teacher"]["source"] == str(teacher_dir)
        assert distill["teacher"]["validation_metrics"] == results_of(teacher_dir)["metrics"]["validation"]


def test_a_run_cannot_use_a_run_made_after_it(small_bench: Callable[..., Path]) -> None:
    bench = small_bench(
        [
            {"name": "student", "recipe": "recipe.yaml", "uses": {"train.distill.teacher": "teacher"}},
            {"name": "teacher", "recipe": "recipe.yaml"},
        ]
    )
    result = invoke("bench", bench, "--dry-run")
    assert result.exit_code == USER_ERROR, explain(result)
    assert (
        "student: uses.train.distill.teacher: 'teacher' is listed after it; name an llmkit run listed "
        "before student (runs are made in the order listed)" in result.stderr
    )
