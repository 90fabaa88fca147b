"""The global batch as micro batches per process and accumulation steps (no heavy imports, so the
CLI can check it before launching processes)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmkit.errors import LlmkitError
from llmkit.recipe.schema import Recipe


@dataclass(frozen=True)
class BatchPlan:
    """How the global batch is made: micro batches in each process, accumulated over steps.

    A recipe means the same training whatever the number of processes: train.batch_size is the
    global batch, so micro_batch_size x processes x accumulation_steps == batch_size."""

    world_size: int
    micro_batch_size: int
    accumulation_steps: int

    def optimizer_steps(self, rows: int, epochs: float) -> int:
        """The optimizer steps of `epochs` over `rows` as Trainer counts them: each process's
        micro batches of its share of the rows, over the accumulation steps."""
        micro_batches = math.ceil(math.ceil(rows / self.world_size) / self.micro_batch_size)
        return math.ceil(max(micro_batches // self.accumulation_steps, 1) * epochs)

    @classmethod
    def for_recipe(cls, recipe: Recipe, world_size: int) -> BatchPlan:
        batch, micro = recipe.train.batch_size, recipe.train.micro_batch_size
        if micro is None:
            micro = batch // world_size
        if batch < world_size:
            raise LlmkitError(
                f"train.batch_size ({batch}) is smaller than the number of processes ({world_size}): "
                "each process needs at least one example per step.",
                hint=f"use at most {batch} processes (--num-processes {batch}), or raise "
                f"train.batch_size to a multiple of {world_size}",
            )
        if micro < 1 or batch % (micro * world_size):
            raise LlmkitError(
                f"train.batch_size ({batch}) must be a multiple of train.micro_batch_size ({micro}) "
                f"x processes ({world_size}).",
                hint=f"with {world_size} processes, use a batch_size that is a multiple of "
                f"{world_size}, or set train.micro_batch_size so that it divides batch_size / {world_size}",
            )
        return cls(world_size, micro, batch // (micro * world_size))
