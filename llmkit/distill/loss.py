"""The distillation objective:

    loss = (1 - weight) * task loss + weight * T^2 * KL(teacher_T || student_T)

where X_T = softmax(logits / T), the KL divergence is taken at every position the task distils
(the example for sequence classification, each word's first sub-token for token classification,
each trained next token for generation) and averaged over them: over the batch's positions for
sequence classification, over the mean number a micro-batch has for the token-level tasks (as
their task loss averages over the mean number of labelled tokens). The T^2 factor (Hinton et al.,
2015) keeps the gradients of the softened term at the scale of the task loss's whatever T is.

For generation the teacher's distribution is its top-k tokens, renormalised over them; the
student's log-probabilities at those tokens come from its full softmax."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from llmkit.recipe.schema import DistillSection
    from llmkit.tasks import Task


def kl_sum(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed KL(teacher_T || student_T) over the masked positions, and their count.
    student: (rows, positions, classes); teacher: (rows, positions, classes or top_k);
    indices: (rows, positions, top_k) token ids of the teacher's values, for top-k teachers."""
    import torch

    student_log = torch.log_softmax(student.float() / temperature, dim=-1)
    if indices is not None:
        student_log = student_log.gather(-1, indices)
    teacher_log = torch.log_softmax(teacher.float() / temperature, dim=-1)
    per_position = (teacher_log.exp() * (teacher_log - student_log)).sum(dim=-1)
    mask = mask.to(per_position.device)
    return (per_position * mask).sum(), mask.sum()


def distillation_loss(
    task_loss: torch.Tensor | None,
    kl_total: torch.Tensor,
    positions: torch.Tensor | float,
    temperature: float,
    weight: float,
    accumulation: int = 1,
) -> torch.Tensor:
    """The objective above, the KL averaged over `positions` (and divided by the `accumulation`
    steps when the task loss already is); `task_loss` None (unlabelled rows) only at weight 1.0."""
    distilled = weight * temperature**2 * (kl_total / max(float(positions), 1.0)) / accumulation
    if task_loss is None:
        assert weight == 1.0, "rows without labels train on the teacher alone"
        return distilled
    return (1 - weight) * task_loss + distilled


@dataclass
class Distiller:
    """Computes the objective of one training batch from the student's output and the teacher's
    cached values, with the task choosing the student's positions."""

    options: DistillSection
    task: Task
    # Token-level tasks: the mean number of positions a training micro-batch distils. The KL sum
    # of a batch is divided by it, as the task loss is by the mean labelled tokens, so that every
    # position weighs the same in every batch; by the batch's own count, length-grouped batches
    # of short rows would weigh each of their positions several times as much.
    positions_per_micro_batch: float | None = None

    def loss(
        self,
        task_loss: torch.Tensor | None,
        logits: torch.Tensor,
        input_width: int,
        teacher: dict[str, torch.Tensor],
        accumulation: int = 1,
    ) -> torch.Tensor:
        """`accumulation`: the gradient accumulation steps the task loss is already divided by
        (1 when Trainer divides the returned loss itself)."""
        from llmkit.distill.cache import TEACHER_INDICES, TEACHER_LOGITS, TEACHER_MASK

        values = teacher[TEACHER_LOGITS]
        student = self.task.distilled_logits(logits, input_width)[:, : values.shape[1]]
        total, count = kl_sum(
            student,
            values.to(student.device),
            teacher[TEACHER_MASK],
            self.options.resolved_temperature,
            teacher[TEACHER_INDICES].to(student.device) if TEACHER_INDICES in teacher else None,
        )
        options = self.options
        positions = count if self.positions_per_micro_batch is None else self.positions_per_micro_batch
        return distillation_loss(
            task_loss, total, positions, options.resolved_temperature, options.weight, accumulation
        )
