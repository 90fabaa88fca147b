"""`llmkit generate`: text from a trained generation run for every input row, one JSON line per
prompt, in input order, with the settings of the run's `task.generate` section."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import DataError, LlmkitError
from llmkit.runs import load_model, read_run

if TYPE_CHECKING:
    from datasets import Dataset

    from llmkit.generation.data import PromptFormat
    from llmkit.recipe.schema import DataSection

STDIN = "-"
ID_COLUMN = "id"


def generate_to_file(
    run_dir: Path, source: str, output: Path | None = None, batch_size: int | None = None
) -> int:
    """Generate for every row of `source` (a data file with the run's prompt columns, or `-`: one
    prompt per line, or one JSON object per line) and write JSON lines to `output` (stdout when
    None). Returns the number of rows."""
    from llmkit.generation.engine import generate_texts
    from llmkit.tasks.generation import GenerationOptions

    trained = read_run(run_dir)
    options = trained.recipe.task
    if not isinstance(options, GenerationOptions):
        raise LlmkitError(
            f"'{run_dir}' is a {options.name} run; `llmkit generate` takes generation runs.",
            hint=f"use `llmkit predict {run_dir} --input FILE` for its labels",
        )
    if output is not None and output.suffix.lower() not in (".jsonl", ".json"):
        raise DataError(
            f"'{output}' is not a .jsonl file.", hint="generate writes JSON lines: name it .jsonl"
        )
    prompt_format = options.prompt_format()
    rows = _read_inputs(source, trained.recipe.data, prompt_format)
    loaded = load_model(trained)
    prompts = [prompt_format.render(row, loaded.tokenizer)[0] for row in rows]
    generations = generate_texts(
        loaded.model,
        loaded.tokenizer,
        prompts,
        options.generate,
        prompt_format.chat,
        max_prompt_tokens=trained.recipe.data.max_length,
        batch_size=batch_size or trained.recipe.train.eval_batch_size,
        precision=trained.recipe.train.precision,
    )
    records = [
        {
            **({ID_COLUMN: row[ID_COLUMN]} if ID_COLUMN in row else {}),
            "prompt": prompt,
            "generation": generation.text,
            "stopped_at_eos": generation.stopped_at_eos,
        }
        for row, prompt, generation in zip(rows, prompts, generations, strict=True)
    ]
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    if output is None:
        sys.stdout.write(lines)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(lines, encoding="utf-8")
    return len(records)


def _read_inputs(source: str, data: DataSection, prompt_format: PromptFormat) -> list[dict[str, Any]]:
    columns = prompt_format.input_columns()
    if source == STDIN:
        rows = [_stdin_row(line, columns) for line in sys.stdin.read().splitlines() if line.strip()]
    else:
        rows = list(_read_table(Path(source), data, columns, prompt_format.text_columns(columns)))
    if not rows:
        raise DataError(f"'{source}' has no rows to generate for.")
    return rows


def _stdin_row(line: str, columns: list[str]) -> dict[str, Any]:
    """A JSON object is a row; any other line is the value of the one column the prompt reads."""
    if line.lstrip().startswith("{"):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"A line of standard input is not valid JSON: {exc}") from exc
        missing = [c for c in columns if c not in row]
        if missing:
            raise DataError(
                f"A JSON line of standard input has no {', '.join(repr(c) for c in missing)}.",
                hint=f"the run's prompt reads {', '.join(repr(c) for c in columns)}",
            )
        return dict(row)
    if len(columns) != 1:
        raise DataError(
            f"The run's prompt reads {len(columns)} columns ({', '.join(columns)}); a plain line gives one.",
            hint='give one JSON object per line, e.g. {"' + '": "...", "'.join(columns) + '": "..."}',
        )
    return {columns[0]: line}


def _read_table(path: Path, data: DataSection, columns: list[str], text_columns: list[str]) -> Dataset:
    from llmkit.data.inputs import read_table

    return read_table(
        path,
        data.model_copy(update={"text_columns": text_columns}),
        columns,
        hint=f"the run's prompt reads {', '.join(repr(c) for c in columns)}: rename the file's columns",
    )
