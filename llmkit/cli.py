"""The `llmkit` command. Commands only parse arguments and call library functions; heavy
imports (torch, transformers) happen inside them so `llmkit --help` stays instant."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from llmkit import __version__
from llmkit.errors import LlmkitError

app = typer.Typer(
    name="llmkit",
    help="Fine-tune BERT- and GPT-style classifiers from recipe files: full fine-tuning, LoRA, "
    "prefix or prompt tuning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

DebugOption = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmkit {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """llmkit: config-driven fine-tuning for sequence classification."""


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
    debug: DebugOption = False,
) -> None:
    """Fine-tune a model as RECIPE says, evaluate it, and write a run directory."""
    with user_errors(debug):
        from llmkit.recipe.loading import load_recipe

        resolved = load_recipe(recipe, overrides or [])
        if output_dir is not None:
            resolved = resolved.model_copy(update={"output_dir": output_dir})

        from llmkit.pipeline import finetune as run_finetune
        from llmkit.report import print_summary

        results = run_finetune(resolved, overwrite=overwrite)
        print_summary(results, str(resolved.output_dir))


def run() -> None:  # console-script entry point
    sys.exit(app())
