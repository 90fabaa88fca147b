"""Checks of a loaded, wrapped model before anything trains: the input fits its positions, and one
forward pass runs, so a method the architecture cannot run fails in seconds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmkit.errors import ModelError

if TYPE_CHECKING:
    from llmkit.recipe.schema import Recipe
    from llmkit.tasks import Task


def check_positions(config: Any, recipe: Recipe) -> None:
    """Tokens per example plus prompt tokens must fit the model's position embeddings."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    method = recipe.method
    virtual = method.virtual_tokens if method.virtual_tokens_in_input else 0
    if limit and recipe.data.max_length + virtual > limit:
        prompt = f" + method.num_virtual_tokens ({virtual})" if virtual else ""
        raise ModelError(
            f"data.max_length ({recipe.data.max_length}){prompt} exceeds the {limit} positions this "
            f"{config.model_type} model has.",
            hint=f"lower data.max_length{' or method.num_virtual_tokens' if virtual else ''} so the "
            f"total is at most {limit}",
        )


def check_forward(
    model: Any, tokenizer: Any, train: Any, recipe: Recipe, task: Task, model_type: str
) -> None:
    """One forward pass on the task's probe batch from the first training rows."""
    import torch

    batch = task.probe_batch(tokenizer, recipe.data, train.select(range(min(2, len(train)))), model)
    try:
        with torch.no_grad():
            model(**batch)
    except Exception as exc:
        from llmkit.versions import version_hint

        # Tested architectures fail here mostly after a library upgrade: say so before anything else.
        hint = version_hint() or (
            "tested: every method on BERT-family encoders, GPT-2 and Llama-architecture decoders, "
            "with the library versions in llmkit's requirements.lock; for other architectures try "
            "method full or lora"
        )
        raise ModelError(
            f"Method '{recipe.method.name}' does not work with this {model_type} model: {first_line(exc)}",
            hint=hint,
        ) from exc


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
