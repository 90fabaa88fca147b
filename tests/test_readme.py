"""The README's recipe key reference is generated from the schema; it must match the code."""

from __future__ import annotations

from pathlib import Path

from llmkit.recipe.reference import BEGIN, END, reference_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_key_reference_matches_the_schema() -> None:
    text = README.read_text(encoding="utf-8")
    assert BEGIN in text and END in text
    embedded = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert embedded == reference_markdown(), (
        "run `python -m llmkit.recipe.reference` and paste it into README.md"
    )


def test_readme_documents_every_command() -> None:
    from typer.main import get_command

    from llmkit.cli import app

    text = README.read_text(encoding="utf-8")
    for name in get_command(app).commands:  # type: ignore[attr-defined]
        assert f"llmkit {name}" in text, f"`llmkit {name}` is not documented in README.md"
