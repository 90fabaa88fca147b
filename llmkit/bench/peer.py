"""The peer baseline: the task's hand-written script (`shared/bench/peer_trainer.py` for sequence
classification, `peer_ner.py` for tokens, `peer_sft.py`, TRL's SFTTrainer, for generation) run as a
subprocess, given the settings of an llmkit run's resolved recipe (model, data files, rows, epochs,
batch size, learning rate, max length, method, and what the task adds: columns, template, packing,
generation settings), so both train the same model on the same rows and their speeds can be
compared within one bench.

The script prints one JSON line; it is turned into the shape of llmkit's results.json (the figures
it has, under the task's metric names), so peer runs aggregate, tabulate and plot like llmkit runs.
Which arguments a task's script takes and how its figures read back is the task's to say
(`Task.peer_arguments`, `Task.peer_metrics`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from llmkit.errors import LlmkitError
from llmkit.fsutil import write_json
from llmkit.memory import peak_resident_kb
from llmkit.recipe.schema import Recipe

# What the script hard-codes for each method; a recipe asking for other options is still run (for
# speed), and the difference is noted.
SCRIPT_METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "lora": {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": None, "bias": "none"},
    "prefix": {"num_virtual_tokens": 20, "projection": False},
    "prompt": {"num_virtual_tokens": 20, "init": "random"},
}
LOG_FILE = "peer.log"
POLL_SECONDS = 0.2


class PeerError(LlmkitError):
    """A peer run that cannot be set up from its recipe, or whose script failed."""


def peer_problems(recipe: Recipe) -> list[str]:
    """Why the script cannot train what the recipe describes (empty when it can)."""
    from llmkit.tasks import task_for

    data, problems = recipe.data, []
    task = task_for(recipe.task)
    if data.train_file is None or data.validation_file is None:
        problems.append("the peer script reads local train and validation files; the recipe names none")
    if recipe.method.name not in task.peer_methods:
        problems.append(
            f"the task's peer script trains {' or '.join(task.peer_methods)}, not {recipe.method.name}"
        )
    problems += task.peer_problems(recipe)
    if recipe.train.max_steps is not None:
        problems.append("the peer script trains whole epochs; the recipe sets train.max_steps")
    return problems


def peer_notes(recipe: Recipe, expert: bool = False) -> list[str]:
    """Differences between what the script trains and the recipe, which do not change its speed."""
    from llmkit.tasks import task_for

    notes = []
    options = recipe.method.model_dump()
    differing = [
        f"{key} {options.get(key)!r} (script: {value!r})"
        for key, value in SCRIPT_METHOD_OPTIONS[recipe.method.name].items()
        if options.get(key) != value
    ]
    if differing:
        notes.append(f"the script's {recipe.method.name} options differ: {', '.join(differing)}")
    notes += task_for(recipe.task).peer_notes(recipe)
    if recipe.model.dropout is not None:
        notes.append(f"the script keeps the checkpoint's dropout (llmkit here: {recipe.model.dropout:g})")
    from llmkit.training.precision import resolve_precision

    precision = resolve_precision(recipe.train.precision)
    if precision != "fp32" and not (expert and precision == "bf16"):
        notes.append(f"the script trains in fp32 (llmkit here: {precision})")
    return notes


def expert_arguments(recipe: Recipe) -> list[str]:
    """What the expert peer adds to the script's command line: the task's expert options (length
    grouping), and bf16 mixed precision where llmkit trains in bf16 (every peer script has --bf16)."""
    from llmkit.tasks import task_for
    from llmkit.training.precision import resolve_precision

    bf16 = ["--bf16"] if resolve_precision(recipe.train.precision) == "bf16" else []
    return [*task_for(recipe.task).peer_expert_arguments(recipe), *bf16]


def peer_command(script: Path, recipe: Recipe, model: str, expert: bool = False) -> list[str]:
    """The script's command line: the training settings every peer script takes, then the task's,
    then the expert's options for the expert peer."""
    from llmkit.tasks import task_for

    data, train = recipe.data, recipe.train
    return [
        sys.executable,
        str(script),
        "--model", model,
        "--train", str(data.train_file),
        *task_for(recipe.task).peer_arguments(recipe),
        "--limit", str(data.max_train_samples or 0),  # 0: every row
        "--epochs", f"{train.epochs:g}",
        "--bs", str(train.batch_size),
        "--lr", f"{recipe.learning_rate:g}",
        "--max-len", str(data.max_length),
        "--method", recipe.method.name,
        *(expert_arguments(recipe) if expert else []),
    ]  # fmt: skip


def model_directory(recipe: Recipe) -> str:
    """What the script's --model gets: a plain checkpoint directory (a GGUF file dequantised once,
    as llmkit does: Trainer cannot train GGUF-quantised weights), or a hub id."""
    from llmkit.models.checkpoint import dequantised_checkpoint, locate_checkpoint

    location = locate_checkpoint(recipe.model.checkpoint)
    if location.gguf_file is not None:
        return str(dequantised_checkpoint(location.gguf_file))
    return location.path


def run_peer(script: Path, recipe: Recipe, run_dir: Path, expert: bool = False) -> dict[str, Any]:
    """Run the script in `run_dir` (its output goes to peer.log) and return results.json content;
    `expert`: with the expert's options (`expert_arguments`)."""
    problems = peer_problems(recipe)
    if problems:
        raise PeerError("; ".join(problems))
    command = peer_command(script, recipe, model_directory(recipe), expert)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / LOG_FILE
    with log.open("w", encoding="utf-8") as handle:
        handle.write(" ".join(command) + "\n")
        handle.flush()
        returncode, peak_kb = _run_measured(command, run_dir, handle)
    output = log.read_text(encoding="utf-8")
    reported = _last_json_line(output)
    if returncode != 0 or reported is None:
        tail = "\n".join(output.strip().splitlines()[-5:])
        raise PeerError(f"the peer script exited with code {returncode}; {log} ends with:\n{tail}")
    results = _as_results(recipe, reported, peak_kb, expert)
    results["peer"] = {
        "command": command,
        "expert": expert,
        "reported": reported,
        "notes": peer_notes(recipe, expert),
    }
    write_json(run_dir / "results.json", results)  # strict JSON, written whole
    return results


def _run_measured(command: list[str], cwd: Path, log: Any) -> tuple[int, int]:
    """Exit code and peak resident memory (kB) of the script's process.

    Read from the child's own high-water mark while it runs (it only rises, so the last reading
    before exit holds the peak). wait4's ru_maxrss would not do: across fork and exec the child
    inherits the bench process's own peak, larger than the script's."""
    process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    peak_kb = 0
    try:
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak_kb = max(peak_kb, peak_resident_kb(process.pid))
            time.sleep(POLL_SECONDS)
    except BaseException:
        process.kill()
        process.wait()
        raise
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait
    if not peak_kb:  # no /proc (macOS): the rusage figure, an upper bound
        peak_kb = usage.ru_maxrss // 1024 if sys.platform == "darwin" else usage.ru_maxrss
    return process.returncode, peak_kb


def _last_json_line(output: str) -> dict[str, Any] | None:
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if isinstance(parsed, dict) and "train_samples_per_s" in parsed:
                return parsed
    return None


def _as_results(recipe: Recipe, reported: dict[str, Any], peak_kb: int, expert: bool) -> dict[str, Any]:
    from llmkit.tasks import task_for

    samples = round(reported["train_samples"] * reported["epochs"])
    return {
        "status": "completed",
        "model": {"checkpoint": recipe.model.checkpoint},
        "method": {"name": reported.get("method", recipe.method.name)},
        "data": {"train_rows": reported["train_samples"]},
        # The figures the script reports under the names of the task's metrics.
        "metrics": {"validation": task_for(recipe.task).peer_metrics(reported, recipe.eval)},
        "train": {
            "epochs": reported["epochs"],
            "samples": samples,
            "learning_rate": recipe.learning_rate,
            "batch_size": recipe.train.batch_size,
            "runtime_s": reported["train_s"],
            "samples_per_second": reported["train_samples_per_s"],
            "tokens_per_second": None,  # the script does not count tokens
            "peak_memory_mb": round(peak_kb / 1024, 1),
            "precision": "bf16" if "--bf16" in (expert_arguments(recipe) if expert else []) else "fp32",
        },
        "parameters": None,  # nor parameters
    }
