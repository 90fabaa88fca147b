"""Errors a user can fix. The CLI prints them without a traceback and exits non-zero."""

from __future__ import annotations


class LlmkitError(Exception):
    """A problem with the user's input or environment, with a hint on what to do."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\n  hint: {self.hint}"


class RecipeError(LlmkitError):
    """One or more problems in a recipe, reported together."""

    def __init__(self, problems: list[str], source: str) -> None:
        self.problems = problems
        self.source = source
        noun = "problem" if len(problems) == 1 else "problems"
        body = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} {noun} in the recipe:\n{body}")


class DataError(LlmkitError):
    """Data files that cannot be used as given."""


class ModelError(LlmkitError):
    """A checkpoint that cannot be loaded or used for the chosen method."""


class RunDirectoryError(LlmkitError):
    """A run directory that is in the way or is not a run."""
