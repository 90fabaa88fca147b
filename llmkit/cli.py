"""The `llmkit` command. Commands only parse arguments and call library functions; heavy
imports (torch, transformers) happen inside them so `llmkit --help` stays instant."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from llmkit import __version__
from llmkit.errors import LlmkitError

app = typer.Typer(
    name="llmkit",
    help="Fine-tune BERT- and GPT-style models from recipe files for sequence classification, token "
    "classification or generation: full fine-tuning, LoRA, prefix or prompt tuning.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

DebugOption = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]
NumProcessesOption = Annotated[
    int | None,
    typer.Option(
        "--num-processes",
        min=1,
        help="Run in N processes through accelerate's launcher (one per GPU; CPU processes without "
        "CUDA). With --num-machines: N on each machine.",
    ),
]
NumMachinesOption = Annotated[
    int | None,
    typer.Option(
        "--num-machines",
        min=1,
        help="Machines in the run: start the same command on each, with its own --machine-rank.",
    ),
]
MachineRankOption = Annotated[
    int,
    typer.Option("--machine-rank", min=0, help="This machine's rank (0: the main machine)."),
]
MainProcessIpOption = Annotated[
    str | None,
    typer.Option(
        "--main-process-ip",
        help="Address of the machine with rank 0, where the machines meet.",
    ),
]
MainProcessPortOption = Annotated[
    int | None,
    typer.Option(
        "--main-process-port",
        help="Port on the main machine to meet at (default 29500).",
    ),
]
AccelerateConfigOption = Annotated[
    Path | None,
    typer.Option("--accelerate-config", help="An `accelerate config` file for the launcher."),
]


def _version(value: bool) -> None:
    if value:
        from llmkit.versions import version_report

        typer.echo(f"llmkit {__version__}\n{version_report()}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Print the version and those of the key libraries.",
        ),
    ] = False,
) -> None:
    """llmkit: config-driven fine-tuning for sequence and token classification and generation."""


@contextmanager
def user_errors(debug: bool) -> Iterator[None]:
    """Print user mistakes as one clear message with a non-zero exit, not a traceback."""
    try:
        yield
    except LlmkitError as exc:
        if debug:
            raise
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.RED, err=True)
        raise typer.Exit(130) from None
    except Exception as exc:
        if debug:
            raise
        typer.secho(
            f"error: unexpected {type(exc).__name__}: {exc}\n  (run again with --debug for the traceback)",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1) from None


@app.command()
def finetune(
    recipe: Annotated[Path, typer.Argument(help="Recipe file (YAML).", show_default=False)],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="Dotted KEY=VALUE overrides, e.g. train.epochs=1 data.max_train_samples=2000.",
            show_default=False,
        ),
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option("--output-dir", "-o", help="Run directory (default: the recipe's output_dir)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing run directory.")
    ] = False,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue an unfinished run from its latest complete checkpoint."),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Check and describe the run (steps, parameters, memory); train nothing."
        ),
    ] = False,
    num_processes: NumProcessesOption = None,
    accelerate_config: AccelerateConfigOption = None,
    num_machines: NumMachinesOption = None,
    machine_rank: MachineRankOption = 0,
    main_process_ip: MainProcessIpOption = None,
    main_process_port: MainProcessPortOption = None,
    debug: DebugOption = False,
) -> None:
    """Fine-tune a model as RECIPE says, evaluate it, and write a run directory."""
    with user_errors(debug):
        from llmkit.launch import Machines, is_main_process, launched_by_accelerate, relaunch
        from llmkit.recipe.loading import load_recipe

        resolved = load_recipe(recipe, overrides or [])
        if output_dir is not None:
            resolved = resolved.model_copy(update={"output_dir": output_dir})
        if dry_run:
            from llmkit import dryrun

            typer.echo(dryrun.describe(dryrun.dry_run(resolved, num_processes or 1)))
            return
        machines = Machines(num_machines or 1, machine_rank, main_process_ip, main_process_port)
        distributed = resolved.train.distributed
        launch = num_processes or accelerate_config or num_machines or distributed.strategy != "ddp"
        if launch and not launched_by_accelerate():
            # The recipe was checked above, so a mistake is reported once, not by every process.
            from llmkit.training.batching import BatchPlan
            from llmkit.training.strategies import check_strategy

            machines.check()
            check_strategy(distributed)
            BatchPlan.for_recipe(resolved, machines.processes(num_processes))
            command = ["finetune", str(recipe), *(overrides or [])]
            command += ["--output-dir", str(resolved.output_dir)]
            command += [flag for flag, on in (("--overwrite", overwrite), ("--resume", resume)) if on]
            command += ["--debug"] if debug else []
            relaunch(num_processes, accelerate_config, command, machines, distributed)
            return

        from llmkit.pipeline import finetune as run_finetune
        from llmkit.report import print_summary

        results = run_finetune(resolved, overwrite=overwrite, resume=resume)
        if is_main_process():
            from llmkit.models.card import run_loading_code

            print_summary(results, str(resolved.output_dir))
            model_dir = Path(str(resolved.output_dir)) / "model"
            typer.echo(f"load it with transformers/PEFT (also in {model_dir}/README.md):\n")
            typer.echo(run_loading_code(resolved, results, model_dir))


# ----------------------------------------------------------------------------- trained runs

RunDirArgument = Annotated[
    Path, typer.Argument(help="A run directory written by `llmkit finetune`.", show_default=False)
]
OverwriteFileOption = Annotated[bool, typer.Option("--overwrite", help="Replace an existing --output file.")]
BatchSizeOption = Annotated[
    int | None,
    typer.Option(
        "--batch-size", min=1, help="Rows per forward pass (default: the recipe's train.eval_batch_size)."
    ),
]


class Split(str, Enum):
    train = "train"
    validation = "validation"
    test = "test"


class ReportFormat(str, Enum):
    table = "table"
    json = "json"


@app.command()
def evaluate(
    run_dir: RunDirArgument,
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="data.KEY=VALUE overrides of the run's data, e.g. data.test_file=new.csv.",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="A labelled csv/tsv/jsonl/parquet file to evaluate instead of a split."),
    ] = None,
    split: Annotated[
        Split, typer.Option("--split", help="The recipe's split to evaluate.")
    ] = Split.validation,
    output_format: Annotated[ReportFormat, typer.Option("--format", help="Print a table or JSON.")] = (
        ReportFormat.table
    ),
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the JSON report here.")
    ] = None,
    overwrite: OverwriteFileOption = False,
    batch_size: BatchSizeOption = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Evaluate this checkpoint (e.g. `llmkit merge` output) instead of the run's model.",
        ),
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Metrics of a trained run on a split of its data or on any labelled file: the task's
    metrics and loss (on the run's validation split, exactly those in results.json), then per-class
    precision/recall/F1 and the confusion matrix (sequence classification) or per-entity-type
    scores and the confusion of entity types (token classification)."""
    with user_errors(debug):
        from llmkit.evaluation import evaluate_run, print_evaluation
        from llmkit.fsutil import check_output_file, dumps, write_or_rescue

        if output is not None:  # checked before the work, which is then never lost to it
            inputs = [path for path in (data, model) if path is not None]
            check_output_file(output, overwrite, "report file", inputs, example="report.json")
        result = evaluate_run(run_dir, data, overrides or [], split.value, batch_size, model)
        report = dumps(result.to_json(), indent=2)
        if output_format is ReportFormat.json:
            typer.echo(report)
        else:
            print_evaluation(result)
        if output is not None:
            write_or_rescue(output, report + "\n", "evaluation report")


@app.command()
def predict(
    run_dir: RunDirArgument,
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="data.KEY=VALUE overrides of how the input is read, e.g. data.text_columns=review.",
            show_default=False,
        ),
    ] = None,
    *,
    input_file: Annotated[
        str,
        typer.Option(
            "--input",
            "-i",
            help="csv/tsv/jsonl/parquet file with the run's text column(s), or - for stdin "
            "(one text per line). Token classification also reads a .txt file (one sentence per "
            "line), a tokens column of pre-split words, or a .conll file.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write .jsonl, .csv or .tsv here (default: JSON lines on stdout)."
        ),
    ] = None,
    id_column: Annotated[
        str | None,
        typer.Option(
            "--id-column", help="Input column copied to each output row (default: 'id', if present)."
        ),
    ] = None,
    overwrite: OverwriteFileOption = False,
    batch_size: BatchSizeOption = None,
    debug: DebugOption = False,
) -> None:
    """Label each input row with a trained run, one output row per input row, in input order:
    the predicted label and every label's probability (sequence classification), or the
    entities with their words and character offsets, and every word's tag (token classification)."""
    with user_errors(debug):
        from llmkit.prediction import predict_to_file

        count = predict_to_file(
            run_dir, input_file, output, id_column, batch_size, overrides or [], overwrite
        )
        if output is not None:
            typer.echo(f"predicted {count} rows: {output}", err=True)


@app.command()
def generate(
    run_dir: RunDirArgument,
    input_file: Annotated[
        str,
        typer.Option(
            "--input",
            "-i",
            help="csv/tsv/jsonl/parquet file with the run's prompt column(s), or - for stdin (one "
            "prompt per line, or one JSON object per line).",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write .jsonl here (default: JSON lines on stdout)."),
    ] = None,
    batch_size: BatchSizeOption = None,
    debug: DebugOption = False,
) -> None:
    """Generate text with a trained generation run: one JSON line per input row (its prompt, the
    generated text and whether it stopped at the end-of-sequence token), in input order, with the
    run's task.generate settings."""
    with user_errors(debug):
        from llmkit.generation.command import generate_to_file

        count = generate_to_file(run_dir, input_file, output, batch_size)
        if output is not None:
            typer.echo(f"generated for {count} prompts: {output}", err=True)


@app.command()
def merge(
    run_dir: RunDirArgument,
    output_dir: Annotated[
        Path,
        typer.Option("--output-dir", "-o", help="Where to write the merged checkpoint.", show_default=False),
    ],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output directory.")
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Fold a LoRA run's adapter into the base weights and save a plain transformers checkpoint
    (the task's auto class loads it: AutoModelForSequenceClassification or
    AutoModelForTokenClassification). Prefix and prompt runs cannot be merged; full runs are plain
    checkpoints already and are copied."""
    with user_errors(debug):
        from llmkit.merging import LOGIT_TOLERANCE, merge_run

        result = merge_run(run_dir, output_dir, overwrite)
        typer.echo(result.message)
        if result.max_logit_difference is not None:
            typer.echo(
                f"checked: logits of the reloaded checkpoint match the adapter's within "
                f"{result.max_logit_difference:.1e} (tolerance {LOGIT_TOLERANCE:g})"
            )


# ----------------------------------------------------------------------------- recipes

recipes_app = typer.Typer(
    name="recipes",
    help="List, show, validate and create recipe files; print the recipe JSON Schema.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(recipes_app)

RecipeNameArgument = Annotated[
    str,
    typer.Argument(
        help="A recipe name (recipes/**/NAME.yaml) or the path of a recipe file.", show_default=False
    ),
]


@recipes_app.command("list")
def recipes_list(debug: DebugOption = False) -> None:
    """The recipes under ./recipes: name, task, model, method and description."""
    with user_errors(debug):
        from llmkit.recipe.tools import print_recipe_list

        print_recipe_list()


@recipes_app.command("show")
def recipes_show(
    name: RecipeNameArgument,
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted KEY=VALUE overrides.", show_default=False)
    ] = None,
    debug: DebugOption = False,
) -> None:
    """The fully resolved recipe: defaults, base recipes and overrides merged."""
    with user_errors(debug):
        from llmkit.recipe.tools import resolve_recipe, show_recipe

        typer.echo(show_recipe(resolve_recipe(name), overrides or []), nl=False)


@recipes_app.command("validate")
def recipes_validate(
    files: Annotated[list[Path], typer.Argument(help="Recipe files.", show_default=False)],
    debug: DebugOption = False,
) -> None:
    """Every check that runs without training: the schema, the checkpoint and the data files
    (present, readable, with the columns and labels the recipe names). Exits 1 on any problem."""
    with user_errors(debug):
        from llmkit.recipe.tools import validate_file

        results = [validate_file(path) for path in files]
    for result in results:
        if result.ok:
            typer.secho(f"ok: {result.path}", fg=typer.colors.GREEN)
            for note in result.notes:
                typer.echo(f"  {note}")
        else:
            typer.secho(f"FAILED: {result.path}", fg=typer.colors.RED, err=True)
            for problem in result.problems:
                typer.echo("  " + problem.replace("\n", "\n  "), err=True)
    failed = sum(not result.ok for result in results)
    if failed:
        typer.secho(f"{failed} of {len(files)} recipes have problems", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


@recipes_app.command("new")
def recipes_new(
    name: Annotated[str, typer.Argument(help="Name (or path) of the new recipe.", show_default=False)],
    source: Annotated[
        str, typer.Option("--from", help="The recipe to copy (name or path).", show_default=False)
    ],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file.")] = False,
    debug: DebugOption = False,
) -> None:
    """Copy a recipe to a new file, its header updated to name the new file."""
    with user_errors(debug):
        from llmkit.recipe.tools import new_recipe, resolve_recipe

        target = new_recipe(name, resolve_recipe(source), overwrite)
        typer.echo(f"wrote {target}; edit it, then: llmkit finetune {target}")


@recipes_app.command("schema")
def recipes_schema(
    bench_files: Annotated[
        bool, typer.Option("--bench", help="The bench file format (recipes/benchmarks/) instead.")
    ] = False,
) -> None:
    """The recipe format (or with --bench the bench file format) as JSON Schema, for editor
    completion and checking."""
    import json

    from llmkit.recipe.tools import bench_json_schema, json_schema

    typer.echo(json.dumps(bench_json_schema() if bench_files else json_schema(), indent=2))


# ----------------------------------------------------------------------------- bench


@app.command()
def bench(
    bench_file: Annotated[
        Path, typer.Argument(help="Bench file (YAML), e.g. recipes/benchmarks/ci.yaml.", show_default=False)
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="KEY=VALUE overrides: recipe keys (train.epochs=1) apply to every run; other keys "
            "set the bench file's (seeds=[1], tolerances.speed=0.3).",
            show_default=False,
        ),
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option("--output-dir", "-o", help="Where to write (default: runs/bench/<bench name>)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the output of an earlier bench there.")
    ] = False,
    baseline: Annotated[
        Path | None,
        typer.Option(
            "--baseline", help="An earlier bench.json to compare with (tolerances in the bench file)."
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Resolve and check every run, print the run matrix; train nothing."),
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Make the runs a bench file lists (each recipe at each seed, through the same code as
    finetune, plus runs of the hand-written peer script), write bench.json, bench.csv, bench.md
    and plots, and check the bench file's expectations. Exits 3 when a run regressed."""
    with user_errors(debug):
        from llmkit.bench.checks import REGRESSION_EXIT_CODE
        from llmkit.bench.command import check_plan, describe_plan, run_bench
        from llmkit.bench.loading import plan_bench
        from llmkit.bench.report import summary_table

        plan = plan_bench(bench_file, overrides or [], output_dir)
        if dry_run:
            check_plan(plan)
            typer.echo(describe_plan(plan))
            return
        outcome = run_bench(plan, overwrite, baseline, echo=typer.echo)
    typer.echo("\n" + summary_table(outcome.summaries) + "\n")
    typer.echo(f"wrote {', '.join(path.name for path in outcome.files)} in {outcome.output_dir}")
    for note in outcome.notes:
        typer.echo(f"note: {note}")
    if outcome.regressions:
        count = len(outcome.regressions)
        typer.secho(f"{count} regression{'s' if count > 1 else ''}:", fg=typer.colors.RED, err=True)
        for regression in outcome.regressions:
            typer.secho(f"  {regression.message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(REGRESSION_EXIT_CODE)
    typer.secho("no regressions", fg=typer.colors.GREEN)
