"""What a tuning method needs to know about the model it wraps, found when the model is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelTraits:
    model_type: str
    is_decoder: bool
    # Modules whose weights were absent from the checkpoint (the task's head, usually).
    # They start random, so every method must train them and save them with the adapter.
    new_modules: tuple[str, ...] = field(default_factory=tuple)
    linear_module_names: tuple[str, ...] = field(default_factory=tuple)
    # PEFT's name for the model's task (peft.TaskType): it picks the PeftModel class, which
    # decides how virtual tokens and labels meet the model's forward pass.
    peft_task_type: str = "SEQ_CLS"
