"""Issue 12: llmkit never destroys a user's files, never lets two processes share a run directory,
never calls a broken run complete, and every message points the right way. Each test asserts the
message a user sees, the exit code, and that every file that was there before is there byte for
byte afterwards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import DataFiles, explain, invoke, write_csv, write_recipe

USER_ERROR = 2


def snapshot(*roots: Path) -> dict[Path, bytes]:
    """Every file under `roots` with its bytes."""
    found: dict[Path, bytes] = {}
    for root in roots:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        found.update({path: path.read_bytes() for path in files})
    return found


def refused(result: Any, *phrases: str, code: int = USER_ERROR) -> str:
    message = result.stderr
    assert result.exit_code == code, explain(result)
    assert "Traceback" not in result.output and "error: unexpected" not in message, message
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in:\n{message}"
    return message


def strict_json(text: str) -> Any:
    def no_constants(name: str) -> Any:
        raise AssertionError(f"not strict JSON: bare {name}")

    return json.loads(text, parse_constant=no_constants)


@pytest.fixture
def recipe(make_recipe: Any, bert_checkpoint: Path, sentiment_data: DataFiles) -> Path:
    return make_recipe(bert_checkpoint, sentiment_data, "lora", train={"max_steps": 2})


@pytest.fixture(scope="module")
def lora_run(matrix_runs: Any) -> Any:
    run = matrix_runs("bert", "lora")
    assert run.result.exit_code == 0, explain(run.result)
    return run


def unfinished_run(lora_run: Any, path: Path, state: str, **details: Any) -> Path:
    """A run directory as a failed or killed run leaves it: its recipe and status, no model."""
    from llmkit.rundir import RunDirectory

    path.mkdir(parents=True)
    shutil.copy(lora_run.run_dir / "recipe.yaml", path / "recipe.yaml")
    RunDirectory(path).set_status(state, **details)
    return path


# ----------------------------------------------------------------------------- data loss


def test_overwrite_never_replaces_a_directory_llmkit_did_not_make(
    cli: Any, recipe: Path, sentiment_data: DataFiles, tmp_path: Path
) -> None:
    mydata = tmp_path / "mydata"
    mydata.mkdir()
    for name in ("train.csv", "validation.csv"):
        shutil.copy(getattr(sentiment_data, name.removesuffix(".csv")), mydata / name)
    (mydata / "notes.txt").write_text("my notes")
    before = snapshot(mydata)
    result = cli("finetune", recipe, "-o", mydata, "--overwrite")
    refused(
        result,
        f"Run directory '{mydata}' already exists and was not made by llmkit (it has no .llmkit "
        "marker), so --overwrite does not replace it; it holds: notes.txt, train.csv, validation.csv.",
        "give a new or empty directory",
    )
    assert snapshot(mydata) == before


def test_an_output_that_holds_the_inputs_is_refused(
    cli: Any, make_recipe: Any, bert_checkpoint: Path, sentiment_data: DataFiles, tmp_path: Path
) -> None:
    data_dir = tmp_path / "project" / "data"
    data_dir.mkdir(parents=True)
    train = shutil.copy(sentiment_data.train, data_dir / "train.csv")
    files = DataFiles(Path(train), sentiment_data.validation, None)
    recipe = make_recipe(bert_checkpoint, files, "lora", train={"max_steps": 2})
    before = snapshot(tmp_path / "project")
    result = cli("finetune", recipe, "-o", tmp_path / "project", "--overwrite")
    refused(
        result,
        f"Run directory '{tmp_path / 'project'}' holds '{train}', an input of this command; it would "
        "be destroyed.",
    )
    assert snapshot(tmp_path / "project") == before


def test_overwrite_replaces_an_earlier_run(cli: Any, recipe: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert cli("finetune", recipe, "-o", run_dir).exit_code == 0
    marker = json.loads((run_dir / ".llmkit").read_text())
    assert marker["made_by"] == "llmkit" and marker["kind"] == "run"
    again = cli("finetune", recipe, "-o", run_dir)
    refused(again, f"Run directory '{run_dir}' already exists.", "pass --overwrite to replace it")
    assert "--resume" not in again.stderr  # a completed run cannot be resumed
    replaced = cli("finetune", recipe, "-o", run_dir, "--overwrite")
    assert replaced.exit_code == 0, explain(replaced)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"


def test_merge_into_an_ancestor_of_the_run_is_refused(lora_run: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_dir = out / "run"
    shutil.copytree(lora_run.run_dir, run_dir)
    (out / "sibling.txt").write_text("keep me")
    before = snapshot(out)
    result = invoke("merge", run_dir, "-o", out, "--overwrite")
    refused(result, f"Output directory '{out}' holds '{run_dir}', an input of this command")
    assert snapshot(out) == before


def test_merge_never_replaces_a_run_or_a_users_directory(lora_run: Any, tmp_path: Path) -> None:
    other = tmp_path / "other-run"
    shutil.copytree(lora_run.run_dir, other)
    before = snapshot(other)
    result = invoke("merge", lora_run.run_dir, "-o", other, "--overwrite")
    refused(result, f"'{other}' is an llmkit run directory", "replaces only an earlier merge output")
    assert snapshot(other) == before

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "weights.bin").write_bytes(b"\x00\x01")
    result = invoke("merge", lora_run.run_dir, "-o", mine, "--overwrite")
    refused(result, "was not made by llmkit", "it holds: weights.bin")
    assert (mine / "weights.bin").read_bytes() == b"\x00\x01"

    merged = tmp_path / "merged"
    assert invoke("merge", lora_run.run_dir, "-o", merged).exit_code == 0
    again = invoke("merge", lora_run.run_dir, "-o", merged, "--overwrite")
    assert again.exit_code == 0, explain(again)  # an earlier merge is replaced


def test_predict_never_writes_over_its_input_or_an_existing_file(lora_run: Any, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "a.csv", ["id", "text"], [[1, "a great film"], [2, "awful"]])
    before = snapshot(source)
    result = invoke("predict", lora_run.run_dir, "-i", source, "-o", source)
    refused(result, f"Output file '{source}' is also the input; writing it would destroy the input.")
    assert snapshot(source) == before

    existing = tmp_path / "out.csv"
    existing.write_text("old results\n")
    result = invoke("predict", lora_run.run_dir, "-i", source, "-o", existing)
    refused(result, f"Output file '{existing}' already exists.", "pass --overwrite to replace it")
    assert existing.read_text() == "old results\n"
    result = invoke("predict", lora_run.run_dir, "-i", source, "-o", existing, "--overwrite")
    assert result.exit_code == 0, explain(result)
    assert existing.read_text().startswith("id,label,prob_0,prob_1\n")


def test_bench_overwrite_never_replaces_a_users_directory(
    tmp_path: Path, bert_checkpoint: Path, sentiment_data: DataFiles
) -> None:
    write_recipe(tmp_path / "recipe.yaml", bert_checkpoint, sentiment_data, "full")
    bench = tmp_path / "bench.yaml"
    bench.write_text(yaml.safe_dump({"runs": [{"name": "a", "recipe": "recipe.yaml"}]}))
    out = tmp_path / "results"
    out.mkdir()
    (out / "paper.tex").write_text("draft")
    result = invoke("bench", bench, "-o", out, "--overwrite")
    refused(result, f"Bench output directory '{out}' already exists and was not made by llmkit")
    assert (out / "paper.tex").read_text() == "draft"
    assert sorted(p.name for p in out.iterdir()) == ["paper.tex"]


# ----------------------------------------------------------------------------- two processes, one run


def _start(recipe: Path, run_dir: Path, *flags: str) -> Any:
    import signal
    import subprocess
    import sys

    command = [sys.executable, "-m", "llmkit", "finetune", str(recipe), "--output-dir", str(run_dir), *flags]
    # A test suite started in the background inherits SIGINT ignored; the run gets Python's default.
    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(condition: Any, process: Any, what: str, timeout_s: float = 180) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"the run ended before {what}: {process.stderr.read()}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.05)


def _status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def test_a_run_in_progress_is_refused_by_every_command(
    make_recipe: Any, bert_checkpoint: Path, sentiment_data: DataFiles, tmp_path: Path
) -> None:
    # 25 steps an epoch: long enough to try every command while it trains.
    epochs = 12
    recipe = make_recipe(
        bert_checkpoint, sentiment_data, "lora", train={"epochs": epochs, "checkpoint_every": 5}
    )
    run_dir = tmp_path / "run"
    first = _start(recipe, run_dir)
    _wait_for(lambda: _status(run_dir).get("state") == "running", first, "status running")
    inputs = write_csv(tmp_path / "in.csv", ["text"], [["a great film"]])
    attempts = {
        "finetune": ("finetune", recipe, "-o", run_dir),
        "finetune --overwrite": ("finetune", recipe, "-o", run_dir, "--overwrite"),
        "finetune --resume": ("finetune", recipe, "-o", run_dir, "--resume"),
        "evaluate": ("evaluate", run_dir),
        "predict": ("predict", run_dir, "-i", inputs),
        "merge": ("merge", run_dir, "-o", tmp_path / "merged"),
    }
    for name, args in attempts.items():
        result = invoke(*args)
        message = refused(result, f"'{run_dir}': run in progress (pid {first.pid}, started ")
        assert "--resume" not in message, f"{name} suggests --resume for a live run:\n{message}"
    assert not (tmp_path / "merged").exists()

    assert first.wait(timeout=600) == 0, first.stderr.read()
    assert _status(run_dir)["state"] == "completed"
    log = [strict_json(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    steps = [entry["step"] for entry in log]
    assert steps == sorted(steps), "one run's log, in order"
    assert len([entry for entry in log if "eval_loss" in entry]) == epochs
    assert invoke("evaluate", run_dir).exit_code == 0  # the lock went with the process


# ----------------------------------------------------------------------------- kills

RESUMABLE = {"epochs": 2, "batch_size": 8, "learning_rate": 1e-2, "checkpoint_every": 5, "logging_steps": 5}


@pytest.fixture(scope="module")
def straight_run(
    tmp_path_factory: Any, bert_checkpoint: Path, sentiment_data: DataFiles
) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("straight")
    recipe = write_recipe(
        root / "recipe.yaml", bert_checkpoint, sentiment_data, {"name": "lora", "r": 4}, RESUMABLE
    )
    result = invoke("finetune", recipe, "--output-dir", root / "run")
    assert result.exit_code == 0, explain(result)
    return recipe, root / "run"


@pytest.mark.parametrize(
    ("signal_name", "exit_code", "reason"),
    [("SIGTERM", 143, "terminated (SIGTERM)"), ("SIGINT", 130, "interrupted (Ctrl-C)")],
)
def test_sigterm_and_sigint_record_a_failed_run_that_resume_completes(
    straight_run: tuple[Path, Path], tmp_path: Path, signal_name: str, exit_code: int, reason: str
) -> None:
    import signal

    from safetensors.torch import load_file
    from torch.testing import assert_close

    recipe, straight = straight_run
    run_dir = tmp_path / "killed"
    process = _start(recipe, run_dir)
    checkpoint = run_dir / "checkpoints" / "checkpoint-10"
    _wait_for(checkpoint.is_dir, process, "checkpoint-10")
    process.send_signal(getattr(signal, signal_name))
    assert process.wait(timeout=120) == exit_code
    stderr = process.stderr.read()
    assert (
        f"error: Training stopped: {reason}; status.json records the run in '{run_dir}' as failed." in stderr
    )
    status = _status(run_dir)
    assert status["state"] == "failed" and status["reason"] == reason
    last = Path(status["last_checkpoint"])
    assert last.parent == run_dir / "checkpoints" and last.name.startswith("checkpoint-")
    assert (
        f"--resume continues it from {last.name}: llmkit finetune {run_dir / 'recipe.yaml'} "
        f"--output-dir {run_dir} --resume" in stderr
    )
    assert not (run_dir / "model").exists() and not (run_dir / "results.json").exists()

    resumed = invoke("finetune", run_dir / "recipe.yaml", "--output-dir", run_dir, "--resume")  # the hint
    assert resumed.exit_code == 0, explain(resumed)
    first, second = (json.loads((d / "results.json").read_text()) for d in (straight, run_dir))
    assert second["metrics"] == first["metrics"]
    before, after = (load_file(d / "model" / "adapter_model.safetensors") for d in (straight, run_dir))
    for name in before:
        assert_close(after[name], before[name], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- broken runs


def test_non_finite_weights_fail_the_run_and_publish_no_model(
    cli: Any, make_recipe: Any, bert_checkpoint: Path, sentiment_data: DataFiles, tmp_path: Path
) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, "full", train={"max_steps": 2})
    run_dir = tmp_path / "run"
    result = cli("finetune", recipe, "method.name=full", "train.learning_rate=1e39", "-o", run_dir)
    refused(
        result,
        "Training produced a broken model: the final evaluation gives validation loss nan",
        "trained weight tensors hold NaN or infinite values",
        "(learning rate 1e+39); no model was saved.",
        "hint: lower train.learning_rate",
    )
    status = strict_json((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and "broken model" in status["reason"]
    assert not (run_dir / "model").exists() and not (run_dir / "results.json").exists()
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        strict_json(line)  # a NaN loss is logged as null


def test_commands_on_unfinished_runs_say_what_happened(lora_run: Any, tmp_path: Path) -> None:
    failed = unfinished_run(
        lora_run,
        tmp_path / "failed",
        "failed",
        reason="Out of memory while training",
        last_checkpoint=str(tmp_path / "failed" / "checkpoints" / "checkpoint-5"),
    )
    killed = unfinished_run(lora_run, tmp_path / "killed", "running")
    inputs = write_csv(tmp_path / "in.csv", ["text"], [["a great film"]])
    for args in (("evaluate",), ("predict", "-i", inputs), ("merge", "-o", tmp_path / "merged")):
        command, *rest = args
        result = invoke(command, failed, *rest)
        refused(
            result,
            f"The run in '{failed}' failed (Out of memory while training); it has no trained model.",
            f"continue it from checkpoint-5 with: llmkit finetune {failed / 'recipe.yaml'} --output-dir "
            f"{failed} --resume, or train it again with --overwrite",
        )
        result = invoke(command, killed, *rest)
        refused(
            result,
            f"The run in '{killed}' did not finish: its status says running, but no process is running "
            "it (it was killed); it has no trained model.",
            "train it again with --overwrite",
        )


def test_unwritable_run_directory_is_refused_before_training(cli: Any, recipe: Path) -> None:
    result = cli("finetune", recipe, "-o", "/proc/llmkit-run")
    refused(result, "Cannot write the run directory '/proc/llmkit-run': '/proc' is not writable")


def test_a_model_that_cannot_be_written_late_is_kept_elsewhere(
    cli: Any, recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmkit.rundir import RunDirectory

    def disk_full(self: Any, write: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RunDirectory, "save_model", disk_full)
    run_dir = tmp_path / "run"
    result = cli("finetune", recipe, "-o", run_dir)
    message = refused(
        result,
        f"Could not write the trained model to '{run_dir / 'model'}' (No space left on device); the "
        "trained model was saved to ",
    )
    rescued = Path(message.split("saved to ")[1].split(" instead")[0])
    assert (rescued / "adapter_model.safetensors").is_file()
    shutil.rmtree(rescued)
    assert _status(run_dir)["state"] == "failed"


# ----------------------------------------------------------------------------- silent nonsense


def test_a_checkpoint_without_tokenizer_files_is_refused_before_training(
    cli: Any, recipe: Path, bert_checkpoint: Path, tmp_path: Path
) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(bert_checkpoint / name, bare / name)
    result = cli("finetune", recipe, f"model.checkpoint={bare}", "-o", tmp_path / "run")
    refused(
        result,
        f"The tokenizer of '{bare}' cannot encode the training text: every word becomes an unknown token",
        "vocabulary of 5 tokens",
        "lacks its tokenizer files",
    )
    assert not (tmp_path / "run").exists()


def test_every_path_in_a_recipe_is_relative_to_it_and_stored_absolute(
    cli: Any,
    bert_checkpoint: Path,
    sentiment_data: DataFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = tmp_path / "project"
    shutil.copytree(bert_checkpoint, project / "models" / "tiny")
    shutil.copy(sentiment_data.train, project / "train.csv")
    shutil.copy(sentiment_data.validation, project / "validation.csv")
    recipe = project / "recipes" / "r.yaml"
    recipe.parent.mkdir()
    recipe.write_text(
        "model:\n  checkpoint: ../models/tiny\n"
        "data:\n  train_file: ../train.csv\n  validation_file: ../validation.csv\n"
        "method:\n  name: lora\ntrain:\n  max_steps: 2\noutput_dir: ../runs/r\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = cli("finetune", recipe)
    assert result.exit_code == 0, explain(result)
    stored = yaml.safe_load((project / "runs" / "r" / "recipe.yaml").read_text())
    assert stored["model"]["checkpoint"] == str((project / "models" / "tiny").resolve())
    assert stored["data"]["train_file"] == str((project / "train.csv").resolve())
    assert stored["output_dir"] == str((project / "runs" / "r").resolve())
    monkeypatch.chdir(tmp_path)  # the run's commands work from anywhere
    assert invoke("evaluate", project / "runs" / "r").exit_code == 0


def test_nan_and_empty_labels_are_missing_labels_with_row_numbers(
    cli: Any, recipe: Path, tmp_path: Path
) -> None:
    train = tmp_path / "nan.csv"
    train.write_text("text,label\ngood,1\nbad,NaN\nfine,1\nawful,nan\nmeh,0\nso so, \n")
    result = cli("finetune", recipe, f"data.train_file={train}", "-o", tmp_path / "run")
    refused(result, f"3 rows of the training data ('{train}') have no 'label' label (data rows 2, 4, 6).")


def test_a_duplicate_csv_header_is_an_error(cli: Any, recipe: Path, tmp_path: Path) -> None:
    train = tmp_path / "dup.csv"
    train.write_text("text,label,text\ngood,1,x\nbad,0,y\n")
    result = cli("finetune", recipe, f"data.train_file={train}", "-o", tmp_path / "run")
    refused(result, f"'{train}' names the column 'text' twice in its header (columns 1 and 3).", "rename one")


def test_a_duplicate_yaml_key_is_an_error(cli: Any, recipe: Path, tmp_path: Path) -> None:
    text = recipe.read_text()
    doubled = tmp_path / "doubled.yaml"
    doubled.write_text(text + "train:\n  epochs: 5\n")
    first = text.splitlines().index("train:") + 1
    second = len(text.splitlines()) + 1
    result = cli("finetune", doubled, "-o", tmp_path / "run")
    refused(
        result,
        f"{doubled}: a key written twice:",
        f"{doubled}:{second}: the key 'train' is written twice in one mapping (first at line {first})",
    )


def test_values_of_the_wrong_kind_are_found_while_reading(
    make_recipe: Any, bert_checkpoint: Path, sentiment_data: DataFiles, tmp_path: Path
) -> None:
    texts = tmp_path / "texts.jsonl"
    texts.write_text(
        '{"text": "good", "label": 1}\n{"text": 5, "label": 0}\n{"text": {"a": 1}, "label": 1}\n'
        '{"text": "bad", "label": 0}\n'
    )
    lists = tmp_path / "lists.jsonl"
    lists.write_text('{"text": "good", "label": [1]}\n{"text": "bad", "label": 0}\n')
    first = make_recipe(bert_checkpoint, sentiment_data, "lora", name="a.yaml")
    first.write_text(first.read_text().replace(str(sentiment_data.train), str(texts)))
    second = make_recipe(bert_checkpoint, sentiment_data, "lora", name="b.yaml")
    second.write_text(second.read_text().replace(str(sentiment_data.train), str(lists)))
    result = invoke("recipes", "validate", first, second)
    assert result.exit_code == 1, explain(result)
    assert "error: unexpected" not in result.stderr
    assert f"'{texts}' has 2 value(s) of the wrong kind:" in result.stderr
    assert "data row 2, column 'text': a number (5), not text" in result.stderr
    assert """data row 3, column 'text': an object ({"a": 1}), not text""" in result.stderr
    assert f"'{lists}' has 1 value(s) of the wrong kind:" in result.stderr
    assert "data row 1, column 'label': a list ([1]), not a single label" in result.stderr
    assert "2 of 2 recipes have problems" in result.stderr


def test_a_single_example_label_cannot_be_carved_into_validation(
    cli: Any, recipe: Path, tmp_path: Path
) -> None:
    rows = [[f"film {i}", i % 2] for i in range(20)] + [["odd one", 2]]
    train = write_csv(tmp_path / "train.csv", ["text", "label"], rows)
    result = cli(
        "finetune", recipe, f"data.train_file={train}", "data.validation_file=null", "-o", tmp_path / "r"
    )
    refused(
        result,
        f"Cannot carve a validation split from the training data ('{train}'): label '2' has a single "
        "example, and a stratified split needs at least two of each label",
        "give a validation file (data.validation_file)",
    )
    rows = [[f"film {i}", i % 2] for i in range(18)] + [["odd one", 2], ["odd two", 2]]
    train = write_csv(tmp_path / "few.csv", ["text", "label"], rows)
    result = cli(
        "finetune", recipe, f"data.train_file={train}", "data.validation_file=null", "-o", tmp_path / "r"
    )
    refused(
        result,
        f"Cannot carve a validation split from the training data ('{train}'): data.validation_fraction "
        "0.1 of 20 rows gives 2 validation rows, fewer than the 3 labels.",
        "raise data.validation_fraction",
    )


# ----------------------------------------------------------------------------- errors pointing the right way


def test_predicts_missing_column_hint_works_as_written(lora_run: Any, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "reviews.csv", ["id", "review"], [[1, "a great film"]])
    result = invoke("predict", lora_run.run_dir, "-i", source)
    refused(
        result,
        "has no column 'text'; its columns are: id, review",
        "add data.text_columns=NAME to the predict command (NAME: the file's column holding the text)",
    )
    followed = invoke("predict", lora_run.run_dir, "-i", source, "data.text_columns=review")
    assert followed.exit_code == 0, explain(followed)
    assert strict_json(followed.stdout)["id"] == 1


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.csv", "", "is empty: it has no header and no rows."),
        ("header.csv", "text,label\n", "has a header (text, label) but no data rows."),
        ("notes.txt", "a great film\n", "has a header (a great film) but no data rows."),
        ("folder", None, "is a directory, not a data file;"),
    ],
)
def test_empty_header_only_txt_and_directory_inputs(
    cli: Any, recipe: Path, tmp_path: Path, name: str, content: str | None, expected: str
) -> None:
    path = tmp_path / name
    if content is None:
        path.mkdir()
        shutil.copy(recipe, path / "train.csv")
    else:
        path.write_text(content)
    result = cli("finetune", recipe, f"data.train_file={path}", "-o", tmp_path / "run")
    message = refused(result, f"'{path}' {expected.removesuffix('.')}")
    assert "quoting" not in message
    if name == "notes.txt":
        assert "a .txt file is read as comma-separated values" in message
    if name == "folder":
        assert "give one of the files in it: train.csv" in message


def test_bench_checks_every_runs_data_before_the_first_trains(
    tmp_path: Path, bert_checkpoint: Path, sentiment_data: DataFiles
) -> None:
    write_recipe(tmp_path / "good.yaml", bert_checkpoint, sentiment_data, "full", train={"max_steps": 1})
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9 au lait,1\nthe film,0\n".encode("latin-1"))
    write_recipe(tmp_path / "bad.yaml", bert_checkpoint, sentiment_data, "full", train={"max_steps": 1})
    bench = tmp_path / "bench.yaml"
    bench.write_text(
        yaml.safe_dump(
            {
                "runs": [
                    {"name": "first", "recipe": "good.yaml"},
                    {
                        "name": "last",
                        "recipe": "bad.yaml",
                        "overrides": {"data.validation_file": "latin.csv"},
                    },
                ]
            }
        )
    )
    result = invoke("bench", bench, "-o", tmp_path / "out")
    refused(result, "the bench cannot run", f"run last: '{latin}' is not valid utf-8 text", "data.encoding")
    assert not (tmp_path / "out").exists(), "no run trained"


def test_outputs_that_cannot_be_written_are_refused_before_the_work(
    lora_run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "reports"
    folder.mkdir()
    result = invoke("evaluate", lora_run.run_dir, "--output", folder)
    refused(result, f"Report file '{folder}' is a directory.", f"name a file, e.g. {folder / 'report.json'}")
    result = invoke("evaluate", lora_run.run_dir, "--output", "/proc/llmkit/report.json")
    refused(result, "Cannot write the report file '/proc/llmkit/report.json': '/proc' is not writable")
    result = invoke("merge", lora_run.run_dir, "-o", "/proc/llmkit-merged")
    refused(result, "Cannot write the output directory '/proc/llmkit-merged'")

    cache = tmp_path / "cache-file"
    cache.write_text("not a directory")
    monkeypatch.setenv("LLMKIT_CACHE", str(cache))
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    result = invoke("finetune", lora_run.recipe, f"model.checkpoint={model}", "-o", tmp_path / "run")
    refused(
        result,
        f"The llmkit cache '{cache}' (LLMKIT_CACHE, for converted GGUF checkpoints) cannot be used",
        "is a file, not a directory",
        "set LLMKIT_CACHE to a directory you can write",
    )


def test_a_computed_report_is_never_lost_to_a_failing_write(
    lora_run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmkit import fsutil

    def broken_disk(path: Path, text: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fsutil, "write_text", broken_disk)
    target = tmp_path / "report.json"
    result = invoke("evaluate", lora_run.run_dir, "--output", target, "--format", "json")
    message = refused(
        result, f"Could not write the evaluation report to '{target}' (Input/output error); it is saved in "
    )
    rescued = Path(message.split("it is saved in ")[1].split(".\n")[0].rstrip("."))
    assert strict_json(rescued.read_text())["metrics"] == strict_json(result.stdout)["metrics"]
    rescued.unlink()


def test_command_line_mistakes_are_blamed_on_the_command_line(cli: Any, recipe: Path, tmp_path: Path) -> None:
    refused(
        cli("finetune", recipe, "train.epochs.x=1", "-o", tmp_path / "run"), "[command line] train.epochs:"
    )
    result = cli("finetune", recipe, "--num-processes", "64", "-o", tmp_path / "run")
    refused(
        result,
        "train.batch_size (8) is smaller than the number of processes (64): each process needs at least "
        "one example per step.",
        "use at most 8 processes (--num-processes 8), or raise train.batch_size to a multiple of 64",
    )
    assert not (tmp_path / "run").exists()


def test_dry_run_honours_num_processes(cli: Any, recipe: Path, tmp_path: Path) -> None:
    one = cli("finetune", recipe, "train.max_steps=null", "--dry-run")
    two = cli("finetune", recipe, "train.max_steps=null", "--dry-run", "--num-processes", "2")
    assert one.exit_code == 0 and two.exit_code == 0, explain(two)
    # 200 rows in batches of 8: 25 steps in one process; 2 processes take micro batches of 4 each.
    assert "25 per epoch, batch 8," in one.stdout
    assert "25 per epoch, batch 8 (micro batch 4 x 2 processes)" in two.stdout


def test_quoting_auto_reads_tsv_quotes_as_text_unless_the_file_needs_them(
    make_recipe: Any, bert_checkpoint: Path, tmp_path: Path
) -> None:
    from llmkit.data.loading import read_file
    from llmkit.recipe.schema import DataSection

    glue = tmp_path / "glue.tsv"
    glue.write_text('text\tlabel\n" a great film\t1\nit \'s "awful\t0\n')
    quoted = tmp_path / "quoted.tsv"
    quoted.write_text('text\tlabel\n"a great\tfilm"\t1\nawful\t0\n')
    data = DataSection(train_file=glue, quoting="auto")
    # Quote processing would swallow the rows into one field; auto leaves quotes as text.
    assert read_file(glue, data)["text"] == ['" a great film', "it 's \"awful"]
    assert read_file(quoted, data)["text"] == ["a great\tfilm", "awful"]

    recipe = make_recipe(bert_checkpoint, DataFiles(glue, glue, None), "lora", train={"max_steps": 1})
    result = invoke("finetune", recipe, "data.quoting=auto", "--dry-run")
    assert result.exit_code == 0, explain(result)
    note = f"data.quoting auto: reading '{glue}' with quoting none (every row has the header's fields)"
    assert note in result.stderr


def test_a_directory_given_as_the_recipe_is_named_as_such(cli: Any, tmp_path: Path) -> None:
    refused(cli("finetune", tmp_path), f"Recipe file '{tmp_path}' is a directory, not a file.")
