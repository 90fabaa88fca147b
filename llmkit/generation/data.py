"""Generation data: rows of a prompt and a completion, rendered from columns through a template or
from chat `messages` through the tokenizer's chat template, tokenised with the loss on the
completion (and the end-of-sequence token after it) only."""

from __future__ import annotations

import string
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmkit.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

    from llmkit.recipe.schema import DataSection

PROMPT = "prompt"  # the rendered prompt text, kept in tokenised splits for generating
COMPLETION = "completion"  # the reference completion
IGNORED = -100  # label of positions without loss (PyTorch's cross-entropy ignore_index)


@dataclass(frozen=True)
class PromptFormat:
    """How a row becomes a prompt and a completion (the task's options, as plain values)."""

    prompt_column: str
    completion_column: str
    template: str | None
    messages_column: str | None
    # data.label_names: integer completions 0..n-1 written as these words (SST-2's 0/1 as
    # negative/positive), so a classification file trains a model to answer with the label word.
    completion_names: tuple[str, ...] | None = None

    @property
    def chat(self) -> bool:
        return self.messages_column is not None

    def input_columns(self) -> list[str]:
        """The columns a row needs to render its prompt."""
        if self.messages_column is not None:
            return [self.messages_column]
        if self.template is not None:
            return template_fields(self.template)
        return [self.prompt_column]

    def columns(self) -> list[str]:
        """Every column a labelled row needs."""
        extra = [] if self.chat else [self.completion_column]
        return [*dict.fromkeys([*self.input_columns(), *extra])]

    def text_columns(self, columns: list[str]) -> list[str]:
        """Of `columns`, those holding text (the reader checks each value is text; a messages
        column holds lists)."""
        return [c for c in columns if c != self.messages_column]

    def render(
        self, row: dict[str, Any], tokenizer: PreTrainedTokenizerBase | None
    ) -> tuple[str, str | None]:
        """(prompt, completion) of a row; completion is None for a row without one (generate)."""
        if self.messages_column is not None:
            return render_chat(row[self.messages_column], tokenizer)
        if self.template is not None:
            prompt = self.template.format(
                **{name: _text(row[name]) for name in template_fields(self.template)}
            )
        else:
            prompt = _text(row[self.prompt_column])
        completion = row.get(self.completion_column)
        return prompt, None if completion is None else self._completion_text(completion)

    def _completion_text(self, value: Any) -> str:
        if self.completion_names is None:
            return _text(value)
        text = _text(value).strip()
        if not text.isdigit() or int(text) >= len(self.completion_names):
            raise DataError(
                f"data.label_names names {len(self.completion_names)} completions, so the completion "
                f"column must hold integers 0..{len(self.completion_names) - 1}; it holds {text!r}.",
                hint="drop data.label_names to train on the completions as written",
            )
        return self.completion_names[int(text)]


def template_fields(template: str) -> list[str]:
    return [*dict.fromkeys(field for _, field, _, _ in string.Formatter().parse(template) if field)]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def check_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "task.messages_column names chat messages, but this model's tokenizer has no chat template "
            "to render them with.",
            hint="use an instruction-tuned checkpoint that ships one (e.g. SmolLM2-Instruct), or give "
            "prompt and completion columns (task.prompt_column / task.template and task.completion_column)",
        )


def render_chat(messages: Any, tokenizer: PreTrainedTokenizerBase | None) -> tuple[str, str | None]:
    """The conversation up to the last assistant turn as the prompt (with the template's generation
    header), that turn's content as the completion. A conversation not ending with an assistant
    turn is a prompt alone."""
    if tokenizer is None:
        raise DataError("chat messages need the model's tokenizer to render")
    check_chat_template(tokenizer)
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and "role" in m and "content" in m for m in messages
    ):
        raise DataError(
            "A messages value is not a list of {role, content} objects.",
            hint='write each row as [{"role": "user", "content": "..."}, {"role": "assistant", ...}]',
        )
    completion = None
    if messages and messages[-1]["role"] == "assistant":
        completion, messages = str(messages[-1]["content"]), messages[:-1]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return str(prompt), completion


def rendered(
    dataset: Dataset, prompt_format: PromptFormat, tokenizer: PreTrainedTokenizerBase | None
) -> Dataset:
    """`prompt` and `completion` text columns from a read split."""

    def render(row: dict[str, Any]) -> dict[str, Any]:
        prompt, completion = prompt_format.render(row, tokenizer)
        return {PROMPT: prompt, COMPLETION: completion if completion is not None else ""}

    return dataset.map(render, remove_columns=dataset.column_names, desc="Rendering prompts")


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, chat: bool) -> list[int]:
    # A chat template writes its special tokens as text; plain prompts get the tokenizer's own
    # (a BOS token for Llama-style tokenizers, nothing for GPT-2).
    return list(tokenizer(prompt, add_special_tokens=not chat)["input_ids"])


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_length: int
    cut: bool


def encode_example(
    prompt: list[int], completion: list[int], eos_token_id: int, max_length: int, train_on_prompt: bool
) -> Encoded:
    """Prompt then completion then EOS, labels set here rather than by a collator masking pad ids:
    when the pad token is the EOS token (GPT-2, most Llama-style models) a collator would mask the
    EOS too, and the model would never learn to stop. Too long an example loses the start of its
    prompt (the completion and EOS are what is trained); only a completion longer than max_length
    alone is cut itself."""
    completion = [*completion, eos_token_id]
    cut = len(prompt) + len(completion) > max_length
    if cut:
        completion = completion[: max_length - 1]
        prompt = prompt[len(prompt) - (max_length - len(completion)) :]
    labels = [*(prompt if train_on_prompt else [IGNORED] * len(prompt)), *completion]
    return Encoded([*prompt, *completion], labels, len(prompt), cut)


def tokenize_examples(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    chat: bool,
    max_length: int,
    train_on_prompt: bool,
    split: str,
) -> Dataset:
    """input_ids, attention_mask and labels (prompt -100 unless train_on_prompt), keeping the
    prompt and completion text for generating; says how many rows were cut."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("The tokenizer has no end-of-sequence token, which generation training appends.")

    def encode(batch: dict[str, list[str]]) -> dict[str, list[Any]]:
        completions = tokenizer(batch[COMPLETION], add_special_tokens=False)["input_ids"]
        rows = [
            encode_example(prompt_ids(tokenizer, p, chat), list(c), eos, max_length, train_on_prompt)
            for p, c in zip(batch[PROMPT], completions, strict=True)
        ]
        return {
            "input_ids": [r.input_ids for r in rows],
            "attention_mask": [[1] * len(r.input_ids) for r in rows],
            "labels": [r.labels for r in rows],
            "prompt_length": [r.prompt_length for r in rows],
            "cut": [r.cut for r in rows],
        }

    encoded = dataset.map(encode, batched=True, desc=f"Tokenising {split}")
    cut = sum(encoded["cut"])
    if cut:
        print(
            f"note: {cut} of {len(encoded)} {split} rows are longer than data.max_length {max_length}; "
            "their prompts were cut from the start, completions kept",
            file=sys.stderr,
        )
    return encoded


def pack_examples(dataset: Dataset, max_length: int) -> Dataset:
    """Consecutive tokenised examples joined into rows of at most `max_length` tokens, each
    example's positions numbered from 0 (`position_ids`), which is how the collator finds where
    one ends and the next begins. An example's first label is never trained (nothing precedes
    it), so it stays -100 and no loss crosses from one example into the next."""
    from datasets import Dataset

    packed: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": []}
    row: dict[str, list[int]] = {key: [] for key in packed}
    for ids, labels in zip(dataset["input_ids"], dataset["labels"], strict=True):
        if row["input_ids"] and len(row["input_ids"]) + len(ids) > max_length:
            for key in packed:
                packed[key].append(row[key])
            row = {key: [] for key in packed}
        row["input_ids"] += ids
        row["labels"] += [IGNORED, *labels[1:]]
        row["position_ids"] += list(range(len(ids)))
    if row["input_ids"]:
        for key in packed:
            packed[key].append(row[key])
    packed["attention_mask"] = [[1] * len(ids) for ids in packed["input_ids"]]
    return Dataset.from_dict(packed)


def pad_batch(
    rows: list[dict[str, Any]], pad_token_id: int, completion_logits_only: bool = False
) -> dict[str, Any]:
    """Right-padded input_ids, attention_mask and labels (-100 on padding) of tokenised rows.
    Packed rows (with position_ids) get a block-diagonal causal mask instead: each token attends
    to the earlier tokens of its own example only. `completion_logits_only`: see
    `keep_completion_logits`."""
    import torch

    width = max(len(row["input_ids"]) for row in rows)

    def padded(key: str, value: int) -> Any:
        return torch.tensor([[*row[key], *[value] * (width - len(row[key]))] for row in rows])

    batch = {
        "input_ids": padded("input_ids", pad_token_id),
        "attention_mask": padded("attention_mask", 0),
        "labels": padded("labels", IGNORED),
    }
    if "position_ids" in rows[0]:
        positions = padded("position_ids", 0)
        batch["attention_mask"] = block_diagonal_mask(positions, batch["attention_mask"])
        batch["position_ids"] = positions
    elif completion_logits_only:
        keep_completion_logits(batch)
    return batch


def keep_completion_logits(batch: dict[str, Any]) -> None:
    """Have the model compute logits only from the position before the batch's first trained
    label on (`logits_to_keep`, the last positions of every row), the labels cut to match. The
    prompt's positions carry no loss, yet their logits cost the vocabulary projection and its
    softmax, forward and backward: for SmolLM2-135M a fifth of the forward arithmetic per token
    (its 49,152 x 576 head), on half of E2E's tokens. The loss is unchanged: every label cut is
    -100 (before every row's first trained label)."""
    labels = batch["labels"]
    trained = labels != IGNORED
    rows_trained = trained.any(dim=1)
    if not bool(rows_trained.any()):
        return
    first = int(trained.int().argmax(dim=1)[rows_trained].min())  # earliest trained label
    width = labels.shape[1]
    keep = min(width, width - first + 1)  # the logit at first - 1 predicts the label at first
    batch["labels"] = labels[:, width - keep :]
    batch["logits_to_keep"] = keep


def block_diagonal_mask(positions: Any, padding_mask: Any) -> Any:
    """(batch, 1, tokens, tokens) boolean mask, True where attention is allowed: causal within each
    example (a new example starts where its position is 0). SDPA takes it as given; padding
    tokens attend to themselves only, so no row of the mask is empty (an empty one yields NaN)."""
    import torch

    real = padding_mask.bool()
    segments = torch.cumsum((positions == 0) & real, dim=1) * real  # 0 on padding
    tokens = positions.shape[1]
    causal = torch.tril(torch.ones(tokens, tokens, dtype=torch.bool, device=positions.device))
    same = (segments[:, :, None] == segments[:, None, :]) & real[:, :, None]
    diagonal = torch.eye(tokens, dtype=torch.bool, device=positions.device)
    return ((same & causal) | diagonal)[:, None]


def grouped_references(dataset: Dataset) -> tuple[list[str], list[list[str]]]:
    """Distinct prompts in first-seen order and every reference completion of each: E2E has about
    eight references per input, and an input is generated for once."""
    references: dict[str, list[str]] = {}
    for prompt, completion in zip(dataset[PROMPT], dataset[COMPLETION], strict=True):
        references.setdefault(prompt, []).append(completion)
    return list(references), list(references.values())


def read_split_files(data: DataSection, prompt_format: PromptFormat) -> dict[str, Dataset]:
    """Every split's file, read with the recipe's reader options and checked for the task's columns;
    all problems are reported together."""
    from llmkit.data.loading import SPLITS, read_file

    # The csv reader keeps the named text columns as text ('NA' stays a word).
    reader = data.model_copy(update={"text_columns": prompt_format.text_columns(prompt_format.columns())})
    read: dict[str, Dataset] = {}
    problems: list[str] = []
    for split in SPLITS:
        path = getattr(data, f"{split}_file")
        if path is None:
            continue
        try:
            dataset = read_file(path, reader)
        except DataError as exc:
            problems.append(str(exc))
            continue
        missing = [c for c in prompt_format.columns() if c not in dataset.column_names]
        if missing:
            problems.append(
                f"'{path}' has no column {', '.join(repr(c) for c in missing)}; its columns are: "
                f"{', '.join(dataset.column_names)}"
            )
            continue
        read[split] = dataset
    if problems:
        raise DataError(
            "\n".join(problems),
            hint="set task.prompt_column / task.template fields / task.completion_column (or "
            "task.messages_column) to columns the files have",
        )
    return read
