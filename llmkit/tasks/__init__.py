"""Tasks. Importing this package registers every built-in task."""

from llmkit.tasks import (  # noqa: F401  (registration)
    generation,
    sequence_classification,
    token_classification,
)
from llmkit.tasks.registry import (
    DEFAULT_TASK,
    TASKS,
    Task,
    TaskEvaluation,
    TaskOptions,
    TaskReport,
    TaskSpec,
    get_task,
    register_task,
    task_for,
)

__all__ = [
    "DEFAULT_TASK",
    "TASKS",
    "Task",
    "TaskEvaluation",
    "TaskOptions",
    "TaskReport",
    "TaskSpec",
    "get_task",
    "register_task",
    "task_for",
]
