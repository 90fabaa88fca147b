"""The commands that use a trained run (`evaluate`, `predict`, `merge`) and `finetune --dry-run`,
through the CLI on the tiny checkpoints: the numbers they give, the files they write, and the
messages for inputs they reject."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import ARCHITECTURES, METHODS, explain, invoke, write_csv, write_recipe

NOT_A_RUN = "is not a completed llmkit run"


def completed(matrix_runs: Any, arch: str, method: str) -> Any:
    run = matrix_runs(arch, method)
    assert run.result.exit_code == 0, explain(run.result)
    return run


def evaluate_json(*args: Any) -> dict[str, Any]:
    result = invoke("evaluate", *args, "--format", "json")
    assert result.exit_code == 0, explain(result)
    return json.loads(result.stdout)


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_column(path: Path, column: str) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [row[column] for row in csv.DictReader(handle)]


# ----------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_evaluate_reproduces_the_runs_metrics(matrix_runs: Any, arch: str, method: str) -> None:
    run = completed(matrix_runs, arch, method)
    recorded = run.results["metrics"]
    for split in ("validation", "test"):
        report = evaluate_json(run.run_dir, "--split", split)
        metrics = report["metrics"]
        assert report["rows"] == run.results["data"][f"{split}_rows"]
        assert metrics["accuracy"] == recorded[split]["accuracy"]
        assert metrics["f1"] == recorded[split]["f1"]
        assert metrics["loss"] == pytest.approx(recorded[split]["loss"], abs=1e-6)


def test_evaluate_reports_per_class_scores_and_confusion(matrix_runs: Any) -> None:
    run = completed(matrix_runs, "bert", "full")
    report = evaluate_json(run.run_dir)
    matrix = report["confusion_matrix"]["matrix"]
    assert report["confusion_matrix"]["labels"] == ["0", "1"]
    assert sum(map(sum, matrix)) == report["rows"] == 41
    hits = matrix[0][0] + matrix[1][1]
    assert hits / report["rows"] == report["metrics"]["accuracy"]
    positive = report["per_class"]["1"]
    assert positive["support"] == sum(matrix[1])
    assert positive["precision"] == pytest.approx(matrix[1][1] / (matrix[0][1] + matrix[1][1]))
    assert positive["recall"] == pytest.approx(matrix[1][1] / sum(matrix[1]))
    assert positive["f1"] == pytest.approx(report["metrics"]["f1"])  # binary F1 is the positive class's

    table = invoke("evaluate", run.run_dir)
    assert table.exit_code == 0, explain(table)
    for text in ("precision", "recall", "confusion matrix", "accuracy"):
        assert text in table.stdout


def test_evaluate_writes_the_json_report(matrix_runs: Any, tmp_path: Path) -> None:
    run = completed(matrix_runs, "bert", "lora")
    target = tmp_path / "reports" / "validation.json"
    result = invoke("evaluate", run.run_dir, "--output", target)
    assert result.exit_code == 0, explain(result)
    written = json.loads(target.read_text())
    assert written["split"] == "validation"
    assert written["metrics"]["accuracy"] == run.results["metrics"]["validation"]["accuracy"]


def test_evaluate_a_file_uses_the_trained_label_ids(
    bert_checkpoint: Path, three_label_data: Any, tmp_path: Path
) -> None:
    """A file with only some of the labels is scored against the labels the model was trained with,
    not against ids derived from the file's own (smaller) label set."""
    recipe = write_recipe(tmp_path / "three.yaml", bert_checkpoint, three_label_data, "full")
    run_dir = tmp_path / "run"
    trained = invoke("finetune", recipe, "--output-dir", run_dir)
    assert trained.exit_code == 0, explain(trained)
    rows = [[f"the movie {i}", "positive"] for i in range(3)] + [["the plot", "neutral"]]
    subset = write_csv(tmp_path / "subset.csv", ["review", "sentiment"], rows)

    report = evaluate_json(run_dir, "--data", subset)
    assert report["split"] == "file"
    assert report["confusion_matrix"]["labels"] == ["negative", "neutral", "positive"]
    supports = {name: scores["support"] for name, scores in report["per_class"].items()}
    assert supports == {"negative": 0, "neutral": 1, "positive": 3}

    # The run's own validation file, given as --data, scores as the validation split does.
    as_file = evaluate_json(run_dir, "--data", three_label_data.validation)
    assert as_file["metrics"] == evaluate_json(run_dir)["metrics"]


def test_evaluate_reproduces_a_carved_validation_split(
    bert_checkpoint: Path, sentiment_data: Any, tmp_path: Path
) -> None:
    recipe = write_recipe(tmp_path / "carved.yaml", bert_checkpoint, sentiment_data, "full")
    tree = yaml.safe_load(recipe.read_text())
    tree["data"].pop("test_file")
    tree["data"]["validation_file"] = None  # carved from train, seeded
    recipe.write_text(yaml.safe_dump(tree))
    run_dir = tmp_path / "run"
    trained = invoke("finetune", recipe, "--output-dir", run_dir)
    assert trained.exit_code == 0, explain(trained)
    recorded = json.loads((run_dir / "results.json").read_text())
    assert recorded["data"]["validation_carved_from_train"]

    report = evaluate_json(run_dir)
    assert report["rows"] == recorded["data"]["validation_rows"]
    assert report["metrics"]["accuracy"] == recorded["metrics"]["validation"]["accuracy"]
    assert "carved" in report["source"]

    no_test = invoke("evaluate", run_dir, "--split", "test")
    assert no_test.exit_code == 2
    assert "has no test split" in no_test.stderr


def test_evaluate_takes_data_overrides(matrix_runs: Any) -> None:
    run = completed(matrix_runs, "bert", "full")
    report = evaluate_json(run.run_dir, f"data.validation_file={run.data.test}", "data.max_eval_samples=10")
    assert report["rows"] == 10
    assert report["source"] == str(run.data.test)


def test_evaluate_rejects_other_overrides(matrix_runs: Any) -> None:
    run = completed(matrix_runs, "bert", "full")
    result = invoke("evaluate", run.run_dir, "method.r=4")
    assert result.exit_code == 2
    assert "data overrides only" in result.stderr


def test_evaluate_rejects_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    result = invoke("evaluate", tmp_path)
    assert result.exit_code == 2
    assert NOT_A_RUN in result.stderr
    assert "Traceback" not in result.output


def test_evaluate_rejects_a_file_with_the_wrong_columns(matrix_runs: Any, tmp_path: Path) -> None:
    run = completed(matrix_runs, "bert", "full")
    wrong = write_csv(tmp_path / "wrong.csv", ["sentence", "label"], [["a great movie", 1]])
    result = invoke("evaluate", run.run_dir, "--data", wrong)
    assert result.exit_code == 2
    assert "has no column 'text'; its columns are: sentence, label" in result.stderr
    assert "hint:" in result.stderr


def test_evaluate_rejects_labels_the_model_never_saw(matrix_runs: Any, tmp_path: Path) -> None:
    run = completed(matrix_runs, "bert", "full")
    unseen = write_csv(tmp_path / "unseen.csv", ["text", "label"], [["a great movie", 7]])
    result = invoke("evaluate", run.run_dir, "--data", unseen)
    assert result.exit_code == 2
    assert "never occur in the training data: 7" in result.stderr


# ----------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Texts of very different lengths, with ids out of order: batches sorted by length must be
    put back in input order."""
    words = ["the", "movie", "was", "great", "and", "the", "plot", "was", "awful", "but", "the", "music"]
    rows = [[100 - i, " ".join(words[: 1 + (i * 7) % len(words)])] for i in range(23)]
    return write_csv(tmp_path_factory.mktemp("predict") / "inputs.csv", ["id", "text"], rows)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_predict_keeps_order_and_ids(matrix_runs: Any, inputs: Path, arch: str) -> None:
    run = completed(matrix_runs, arch, "lora")
    batched = invoke("predict", run.run_dir, "--input", inputs, "--batch-size", "4")
    one_by_one = invoke("predict", run.run_dir, "--input", inputs, "--batch-size", "1")
    assert batched.exit_code == 0, explain(batched)
    assert one_by_one.exit_code == 0, explain(one_by_one)
    rows, reference = jsonl(batched.stdout), jsonl(one_by_one.stdout)

    assert [row["id"] for row in rows] == [int(i) for i in read_column(inputs, "id")]
    for row, alone in zip(rows, reference, strict=True):
        probabilities = row["probabilities"]
        assert set(probabilities) == {"0", "1"}
        assert sum(probabilities.values()) == pytest.approx(1, abs=1e-5)
        assert row["label"] == max(probabilities, key=probabilities.get)
        # Padding and batch neighbours do not change a row's scores.
        for name, p in probabilities.items():
            assert p == pytest.approx(alone["probabilities"][name], abs=1e-5)


def test_predict_writes_csv_and_reads_jsonl(matrix_runs: Any, tmp_path: Path) -> None:
    run = completed(matrix_runs, "bert", "full")
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(["great", "awful"]))
    )
    target = tmp_path / "out" / "predictions.csv"
    result = invoke("predict", run.run_dir, "--input", source, "--output", target)
    assert result.exit_code == 0, explain(result)
    with target.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["id", "label", "prob_0", "prob_1"]
    assert [row["id"] for row in rows] == ["r0", "r1"]
    assert "predicted 2 rows" in result.stderr


def test_predict_reads_stdin(matrix_runs: Any) -> None:
    from typer.testing import CliRunner

    from llmkit.cli import app

    run = completed(matrix_runs, "gpt2", "prompt")
    result = CliRunner().invoke(
        app, ["predict", str(run.run_dir), "--input", "-"], input="a great movie\n\nan awful plot\n"
    )
    assert result.exit_code == 0, explain(result)
    rows = jsonl(result.stdout)
    assert [row["text"] for row in rows] == ["a great movie", "an awful plot"]
    assert all(row["label"] in ("0", "1") for row in rows)


def test_predict_rejects_a_file_with_the_wrong_columns(matrix_runs: Any, tmp_path: Path) -> None:
    run = completed(matrix_runs, "bert", "full")
    wrong = write_csv(tmp_path / "wrong.csv", ["id", "review"], [[1, "a great movie"]])
    result = invoke("predict", run.run_dir, "--input", wrong)
    assert result.exit_code == 2
    assert "has no column 'text'; its columns are: id, review" in result.stderr
    assert "data.text_columns" in result.stderr  # the hint


def test_predict_rejects_bad_arguments(matrix_runs: Any, inputs: Path, tmp_path: Path) -> None:
    run = completed(matrix_runs, "bert", "full")
    checks = [
        (("predict", tmp_path, "--input", inputs), NOT_A_RUN),
        (("predict", run.run_dir, "--input", tmp_path / "missing.csv"), "does not exist"),
        (("predict", run.run_dir, "--input", inputs, "--output", tmp_path / "out.xlsx"), "output format"),
        (("predict", run.run_dir, "--input", inputs, "--id-column", "key"), "has no column 'key'"),
    ]
    for args, message in checks:
        result = invoke(*args)
        assert result.exit_code == 2, explain(result)
        assert message in result.stderr, explain(result)


# ----------------------------------------------------------------------------- merge

MERGE_TOLERANCE = 1e-4  # largest logit difference allowed between the adapter and the merged model


def validation_texts(run: Any) -> list[str]:
    return read_column(run.data.validation, "text")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_merge_lora_gives_a_plain_checkpoint_with_the_same_predictions(
    matrix_runs: Any, tmp_path: Path, arch: str
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmkit.models.loading import load_trained

    run = completed(matrix_runs, arch, "lora")
    merged_dir = tmp_path / "merged"
    result = invoke("merge", run.run_dir, "--output-dir", merged_dir)
    assert result.exit_code == 0, explain(result)
    assert "merged the lora adapter" in result.stdout
    assert not (merged_dir / "adapter_config.json").exists()

    texts = validation_texts(run)
    adapter = load_trained(run.run_dir / "model", str(run.checkpoint))
    plain = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    plain_tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    with torch.inference_mode():
        expected = adapter.model.eval()(**adapter.tokenizer(texts, padding=True, return_tensors="pt")).logits
        got = plain(**plain_tokenizer(texts, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(got, expected, atol=MERGE_TOLERANCE, rtol=0)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    assert plain.config.id2label == {0: "0", 1: "1"}

    # The merged checkpoint evaluates to the run's own metrics through `llmkit evaluate --model`.
    reports = [
        invoke("evaluate", run.run_dir, "--split", "test", "--format", "json", *extra)
        for extra in ([], ["--model", merged_dir])
    ]
    assert all(r.exit_code == 0 for r in reports), [explain(r) for r in reports]
    own, merged = (json.loads(r.stdout)["metrics"] for r in reports)
    assert merged["accuracy"] == own["accuracy"] and merged["f1"] == own["f1"]
    assert merged["loss"] == pytest.approx(own["loss"], abs=MERGE_TOLERANCE)


def test_a_merge_that_fails_its_check_leaves_nothing(
    matrix_runs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = completed(matrix_runs, "bert", "lora")
    monkeypatch.setattr("llmkit.merging.LOGIT_TOLERANCE", -1.0)  # no merge can pass
    result = invoke("merge", run.run_dir, "--output-dir", tmp_path / "merged")
    assert result.exit_code == 2
    assert "not faithful" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_merge_explains_why_prefix_and_prompt_cannot_be_merged(
    matrix_runs: Any, tmp_path: Path, method: str
) -> None:
    run = completed(matrix_runs, "bert", method)
    result = invoke("merge", run.run_dir, "--output-dir", tmp_path / "merged")
    assert result.exit_code == 2
    assert f"A {method} run cannot be merged" in result.stderr
    assert "not changes to existing weights" in result.stderr
    assert not (tmp_path / "merged").exists()


def test_merge_copies_a_full_run(matrix_runs: Any, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    run = completed(matrix_runs, "bert", "full")
    result = invoke("merge", run.run_dir, "-o", tmp_path / "merged")
    assert result.exit_code == 0, explain(result)
    assert "plain transformers checkpoint already" in result.stdout
    AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")


def test_merge_rejects_bad_targets(matrix_runs: Any, tmp_path: Path) -> None:
    run = completed(matrix_runs, "bert", "full")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("keep me")
    checks = [
        (("merge", tmp_path / "taken", "-o", tmp_path / "out"), NOT_A_RUN),
        (("merge", run.run_dir, "-o", tmp_path / "taken"), "already exists"),
        (("merge", run.run_dir, "-o", run.run_dir / "merged"), "inside the run directory"),
    ]
    for args, message in checks:
        result = invoke(*args)
        assert result.exit_code == 2, explain(result)
        assert message in result.stderr, explain(result)
    assert (tmp_path / "taken" / "file").read_text() == "keep me"


# ----------------------------------------------------------------------------- finetune --dry-run


@pytest.mark.parametrize(("arch", "method"), [("bert", "lora"), ("gpt2", "prompt")])
def test_dry_run_describes_the_run_without_training(
    matrix_runs: Any, tmp_path: Path, arch: str, method: str
) -> None:
    run = completed(matrix_runs, arch, method)
    target = tmp_path / "never-written"
    result = invoke("finetune", run.recipe, "--dry-run", "--output-dir", target)
    assert result.exit_code == 0, explain(result)
    assert not target.exists()
    out = result.stdout
    results = run.results
    # The numbers training reported, predicted before training.
    assert f"{results['train']['steps']} optimizer steps" in out
    assert f"({results['parameters']['trainable_percent']:.2f}%)" in out
    assert f"method {method}: trainable parameters" in out
    assert "estimated peak memory" in out and "an estimate" in out
    example = out.split("example (train row 1", 1)[1].splitlines()[1]
    first_text = read_column(run.data.train, "text")[0]
    assert first_text.split()[0] in example  # the first training row, decoded back to text


def test_dry_run_memory_estimate_counts_weights_gradients_and_optimizer() -> None:
    import torch

    from llmkit.dryrun import estimate_memory

    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 4))
    model[0].requires_grad_(False)
    model.config = type("Config", (), {})()  # no transformer layers: no activation term
    estimate = estimate_memory(model, micro_batch=8, tokens=16)
    total, trainable = 256 * 256 + 256 + 256 * 4 + 4, 256 * 4 + 4
    assert estimate.weights == pytest.approx(total * 4 / 2**20)
    assert estimate.gradients == pytest.approx(trainable * 4 / 2**20)
    assert estimate.optimizer == pytest.approx(2 * trainable * 4 / 2**20)
    assert estimate.activations == 0


def test_dry_run_reports_recipe_errors(bert_checkpoint: Path, sentiment_data: Any, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", bert_checkpoint, sentiment_data, "lora")
    result = invoke("finetune", recipe, "--dry-run", "method.target_modules=[nonexistent]")
    assert result.exit_code == 2
    assert "nonexistent" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_h_is_help_everywhere(cli) -> None:
    for args in ([], ["finetune"], ["recipes"], ["recipes", "schema"]):
        short, long = cli(*args, "-h"), cli(*args, "--help")
        assert short.exit_code == 0 and short.stdout == long.stdout
        assert "-h, --help" in short.stdout


def test_shell_completion_is_offered(cli) -> None:
    help_text = cli("--help").stdout
    assert "--install-completion" in help_text and "--show-completion" in help_text
    script = cli("--show-completion", "bash")
    assert script.exit_code == 0, script.output
    assert "COMPREPLY" in script.stdout and "complete " in script.stdout  # a bash completion function
