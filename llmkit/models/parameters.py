"""Counting a (possibly wrapped) model's parameters, as results.json and `--dry-run` report them,
and the places each one is read from."""

from __future__ import annotations

from collections import Counter
from typing import Any


def base_model(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def parameter_counts(model: Any) -> dict[str, Any]:
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "trainable_percent": round(100 * trainable / total, 4)}


def readers_per_parameter(model: Any) -> Counter[int]:
    """How many of the model's modules hold each parameter (by id): more than one for a weight
    tied between modules, such as a language-model head tied to the input embedding."""
    return Counter(id(parameter) for _, parameter in model.named_parameters(remove_duplicate=False))
