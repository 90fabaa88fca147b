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

    batch = task.probe_batch(tokenizer, recipe.data, train.select(range(min(2, len(train)))), recipe.method)
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


def check_tokenizer(tokenizer: Any, train: Any, recipe: Recipe, task: Task) -> None:
    """The tokenizer turns training text into real tokens. A checkpoint directory without its
    tokenizer files still loads one (transformers builds it from the config, with a vocabulary of
    special tokens only), which makes every word unknown: a model trained on that learns nothing."""
    rows = train.select(range(min(16, len(train))))
    encoded = task.probe_batch(tokenizer, recipe.data, rows)
    ids, mask = encoded["input_ids"], encoded.get("attention_mask")
    tokens = ids[mask.bool()] if mask is not None else ids.flatten()
    unknown = tokenizer.unk_token_id
    structural = set(tokenizer.all_special_ids) - {unknown}
    content = [int(token) for token in tokens if int(token) not in structural]
    if content and any(token != unknown for token in content):
        return
    first_row = ids[0][mask[0].bool()] if mask is not None else ids[0]
    first = [int(token) for token in first_row]
    raise ModelError(
        f"The tokenizer of '{recipe.model.checkpoint}' cannot encode the training text: every word "
        f"becomes an unknown token (row 1 -> {' '.join(tokenizer.convert_ids_to_tokens(first))}; "
        f"vocabulary of {len(tokenizer)} tokens).",
        hint="the checkpoint directory probably lacks its tokenizer files (tokenizer.json, "
        "tokenizer_config.json, vocab.txt or vocab.json and merges.txt): copy them from the model "
        "it was saved from",
    )
