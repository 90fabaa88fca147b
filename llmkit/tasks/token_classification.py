"""Token classification (named entities, any word tagging): one tag per word, read from a head on
every token. Encoders see the whole sentence; decoders label each word with causal attention only
(what comes before it), which is weaker, and is said so in the README.

Words come pre-split (CoNLL columns, lists of words) or as raw text split at whitespace; sub-word
alignment, windows for long sentences and stitching are in llmkit/data/words.py, reading and tag
checks in llmkit/data/tagged.py, entity scoring in llmkit/metrics/entities.py (seqeval)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, NonNegativeInt

from llmkit.errors import LlmkitError, ModelError
from llmkit.tasks.registry import Task, TaskEvaluation, TaskOptions, TaskReport, register_task

if TYPE_CHECKING:
    from pathlib import Path

    from datasets import Dataset
    from rich.console import Console
    from transformers import PreTrainedTokenizerBase

    from llmkit.data.loading import LabelledSplits
    from llmkit.data.tagged import TagColumns
    from llmkit.distill.cache import TeacherRequest, TeacherTargets
    from llmkit.methods import MethodOptions
    from llmkit.recipe.schema import DataSection, EvalSection

METRIC_LABELS = {
    "precision": "entity precision",
    "recall": "entity recall",
    "f1": "entity F1",
    "accuracy": "token accuracy",
}
# Sentences `merge` checks the merged model on, pre-split into words.
PROBE_SENTENCES = [
    ["ok"],
    ["Peter", "Blackburn", "flew", "from", "Brussels", "to", "New", "York", "on", "Monday"],
    ["the", "European", "Commission", "said", "on", "Thursday", "it", "disagreed"],
]
MISSED, SPURIOUS = "(missed)", "(spurious)"
WORD = re.compile(r"\S+")


class TokenClassificationOptions(TaskOptions):
    name: Literal["token_classification"] = "token_classification"
    tokens_column: str = Field("tokens", description="json/jsonl/parquet/hub: the list-of-words column.")
    tags_column: str = Field("tags", description="json/jsonl/parquet/hub: the list-of-tags column.")
    conll_tag_column: int = Field(
        -1,
        description="CoNLL column files: the tag's column, from 0 (the word); negative counts from the end.",
    )
    scheme: Literal["IOB2", "IOB1", "BIOES"] = Field(
        "IOB2", description="Tag scheme: checked in the data, and used by strict entity scoring."
    )
    seqeval_mode: Literal["strict", "conlleval"] = Field(
        "strict",
        description="strict: entities must follow the scheme exactly; conlleval: seqeval's default, "
        "conlleval-compatible reading (what run_ner reports).",
    )
    label_all_tokens: bool = Field(
        False,
        description="Train every sub-token of a word (B- tags as I- after the first), not only the first.",
    )
    window_overlap: NonNegativeInt = Field(
        32,
        description="Sub-tokens of context that consecutive windows share when a sentence is longer "
        "than data.max_length.",
    )
    summary = "one tag per word (named entities, CoNLL-style data)"


@dataclass
class EntityReport(TaskReport):
    mode: str
    per_type: dict[str, dict[str, float]]
    confusion: dict[str, dict[str, int]]  # true type -> predicted type -> entities

    def to_json(self) -> dict[str, Any]:
        return {
            "seqeval_mode": self.mode,
            "per_type": self.per_type,
            "entity_confusion": {
                "rows": "true entity type (or (spurious): a predicted entity with no true one)",
                "columns": "predicted type for the same words (or (missed): none predicted)",
                "counts": self.confusion,
            },
        }

    def print(self, console: Console) -> None:
        from rich.table import Table

        scores = Table()
        for column in ("entity type", "precision", "recall", "f1", "support"):
            scores.add_column(column, justify="left" if column == "entity type" else "right")
        for kind, score in self.per_type.items():
            scores.add_row(
                kind,
                f"{score['precision']:.4f}",
                f"{score['recall']:.4f}",
                f"{score['f1']:.4f}",
                str(int(score["support"])),
            )
        console.print(f"per entity type (seqeval, {self.mode} mode):")
        console.print(scores)
        rows = list(self.confusion)
        columns = sorted({kind for row in self.confusion.values() for kind in row}, key=_missed_last)
        confusion = Table()
        confusion.add_column("")
        for kind in columns:
            confusion.add_column(kind, justify="right")
        for kind in rows:
            confusion.add_row(kind, *(str(self.confusion[kind].get(c, 0)) for c in columns))
        console.print("entity confusion (rows: true type, columns: predicted type of the same words):")
        console.print(confusion)


def _missed_last(kind: str) -> tuple[bool, str]:
    return (kind in (MISSED, SPURIOUS), kind)


class TokenClassification(Task):
    peft_task_type = "TOKEN_CLS"
    hub_pipeline_tag = "token-classification"
    token_level_loss = True
    # A softened teacher slowed what a student learns from the tags: MiniLM LoRA on CoNLL-2003
    # with a 0.854-F1 teacher (weight 0.5) reached dev F1 0.586 at T 2, 0.632 at T 1 and 0.627
    # with no teacher (1000 rows x 2 epochs, four seeds; T 2 lower in each), 0.812 / 0.821 /
    # 0.821 at 4000 rows (docs/distill-conll2003-cpu.md).
    distill_temperature = 1.0
    options: TokenClassificationOptions

    def auto_model_class(self) -> Any:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def pipeline_example(self, text_columns: list[str]) -> str:
        # The pipeline splits raw text itself and merges sub-word tags into entities.
        return 'classifier("George Washington went to Washington.", aggregation_strategy="first")'

    def check_model_type(self, model_type: str, reference: str) -> None:
        from transformers.models.auto.modeling_auto import MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES

        if model_type not in MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES:
            raise ModelError(
                f"'{reference}' is a '{model_type}' model, which transformers cannot use for token "
                "classification.",
                hint="use an encoder such as BERT or a decoder such as GPT-2 or Llama",
            )

    def adapt_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
        from llmkit.data.words import with_prefix_space

        return with_prefix_space(tokenizer)

    # ---------------------------------------------------------------- data
    def _columns(self) -> TagColumns:
        from llmkit.data.tagged import TagColumns

        options = self.options
        return TagColumns(options.tokens_column, options.tags_column, options.conll_tag_column)

    def load_splits(
        self, data: DataSection, seed: int, teacher_labels: list[str] | None = None
    ) -> LabelledSplits:
        """Tagged sentences in every split, also when a teacher trains alone (the tags of the
        training sentences are read and checked, though only the teacher's distribution is learnt)."""
        from llmkit.data.tagged import load_tagged_splits

        return load_tagged_splits(data, self._columns(), self.options.scheme, seed)

    def read_labelled_file(self, path: Path, data: DataSection, label_names: list[str]) -> Dataset:
        from llmkit.data.tagged import encode_tags, read_tagged_file, report

        notes: list[str] = []
        dataset = encode_tags(read_tagged_file(path, data, self._columns()), label_names, f"'{path}'", notes)
        report(notes)
        cap = data.max_eval_samples
        return dataset.select(range(cap)) if cap is not None and len(dataset) > cap else dataset

    def read_unlabelled(self, source: str, data: DataSection, id_column: str | None) -> Dataset:
        from llmkit.data.inputs import read_sentences

        return read_sentences(source, data, self._columns(), id_column)

    def tokenize(
        self,
        dataset: Dataset,
        tokenizer: PreTrainedTokenizerBase,
        data: DataSection,
        split: str,
        label_names: list[str],
    ) -> Dataset:
        from datasets import Dataset

        from llmkit.data.tagged import TAG_IDS, TOKENS
        from llmkit.data.words import encode_sentences

        encoded = encode_sentences(
            tokenizer,
            list(dataset[TOKENS]),
            list(dataset[TAG_IDS]) if TAG_IDS in dataset.column_names else None,
            data.max_length,
            self.options.window_overlap,
            self.options.label_all_tokens,
            inside_of=_inside_of(label_names),
            # Training labels every window's words; scoring counts each word once.
            score_owned_only=split != "train",
        )
        return Dataset.from_dict(encoded)

    def collator(
        self, tokenizer: PreTrainedTokenizerBase, method: MethodOptions | None = None
    ) -> Callable[[list[Any]], Any]:
        virtual = method.virtual_tokens if method is not None and method.virtual_tokens_in_input else 0
        return TaggedCollator(tokenizer, virtual)

    # ---------------------------------------------------------------- metrics
    def metric_names(self, evaluation: EvalSection) -> tuple[str, ...]:
        return ("precision", "recall", "f1", "accuracy")

    def metric_label(self, name: str) -> str:
        return METRIC_LABELS.get(name, name)

    def check_metrics(self, evaluation: EvalSection, label_names: list[str]) -> None:
        if evaluation.model_fields_set:
            raise LlmkitError(
                f"The eval section ({', '.join(sorted(evaluation.model_fields_set))}) sets sequence "
                "classification metrics; token classification reports entity precision/recall/F1 and "
                "token accuracy.",
                hint="drop the eval section; task.seqeval_mode chooses strict or conlleval scoring",
            )

    def logits_for_metrics(self) -> Callable[[Any, Any], Any]:
        return tags_and_loss

    def compute_metrics(
        self, evaluation: EvalSection, label_names: list[str]
    ) -> Callable[[Any], dict[str, float]]:
        import numpy as np

        def compute(prediction: Any) -> dict[str, float]:
            kept = np.asarray(prediction.predictions)  # columns: loss sum, token count, tag ids
            labels = np.asarray(prediction.label_ids)
            predicted = kept[:, 2 : 2 + labels.shape[1]].astype("int64")
            scores = self.scores(list(predicted), list(labels), label_names)
            return {**_headline(scores), "loss": float(kept[:, 0].sum() / max(kept[:, 1].sum(), 1))}

        return compute

    def scores(self, predicted: list[Any], labels: list[Any], label_names: list[str]) -> dict[str, Any]:
        """seqeval's figures over rows of tag ids, where `labels` is not -100."""
        from llmkit.metrics import load_metric

        gold, guess = _tag_sequences(predicted, labels, label_names)
        return (
            load_metric("entities").compute(
                predictions=guess, references=gold, mode=self.options.seqeval_mode, scheme=self.options.scheme
            )
            or {}
        )

    # ---------------------------------------------------------------- trained runs
    def probe_batch(
        self,
        tokenizer: PreTrainedTokenizerBase,
        data: DataSection,
        rows: Dataset | None,
        method: MethodOptions | None = None,
    ) -> dict[str, Any]:
        from datasets import Dataset

        if rows is None:
            rows = Dataset.from_dict({"tokens": PROBE_SENTENCES})
        tokenised = self.tokenize(rows, tokenizer, data, "train", [])
        features = [tokenised[i] for i in range(len(tokenised))]
        return dict(self.collator(tokenizer, method)(features))

    def evaluate(
        self,
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        dataset: Dataset,
        data: DataSection,
        evaluation: EvalSection,
        label_names: list[str],
        batch_size: int,
        precision: str,
        split: str,
    ) -> TaskEvaluation:
        from llmkit.data.tokenize import sorted_by_length
        from llmkit.inference import token_logits

        tokenised = sorted_by_length(self.tokenize(dataset, tokenizer, data, split, label_names))
        # Batched in the order and size training's evaluation used, so the figures match.
        logits = token_logits(
            model,
            tokenizer,
            tokenised,
            batch_size,
            sort_by_length=False,
            description=f"Evaluating {split}",
            precision=precision,
        )
        labels = list(tokenised["labels"])
        predicted = [row.argmax(axis=-1) for row in logits]
        scores = self.scores(predicted, labels, label_names)
        metrics = {"loss": _token_loss(logits, labels), **_headline(scores)}
        gold, guess = _tag_sequences(predicted, labels, label_names)
        report = EntityReport(
            mode=self.options.seqeval_mode,
            per_type=scores.get("per_type", {}),
            confusion=entity_confusion(gold, guess, self.options.seqeval_mode, self.options.scheme),
        )
        return TaskEvaluation(metrics=metrics, rows=len(dataset), report=report)

    def predict(
        self,
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        dataset: Dataset,
        data: DataSection,
        label_names: list[str],
        batch_size: int,
        precision: str,
    ) -> Iterator[dict[str, Any]]:
        from llmkit.inference import token_logits

        tokenised = self.tokenize(dataset.select_columns(["tokens"]), tokenizer, data, "input", label_names)
        logits = token_logits(model, tokenizer, tokenised, batch_size, precision=precision)
        tags = stitch(
            [len(words) for words in dataset["tokens"]],
            list(tokenised["sentence"]),
            list(tokenised["word_ids"]),
            [row.argmax(axis=-1) for row in logits],
            label_names,
        )
        for index, row_tags in enumerate(tags):
            words, offsets, text = dataset[index]["tokens"], dataset[index]["offsets"], dataset[index]["text"]
            entities = []
            for kind, start, end in entity_spans(row_tags, self.options.seqeval_mode, self.options.scheme):
                first, last = offsets[start][0], offsets[end - 1][1]
                entities.append(
                    {
                        "type": kind,
                        "text": text[first:last],
                        "words": words[start:end],
                        "start": first,
                        "end": last,
                    }
                )
            yield {"text": text, "entities": entities, "tokens": words, "tags": row_tags}

    def describe_example(
        self, row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, label_names: list[str]
    ) -> list[str]:
        tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
        shown = [
            f"{token}/{label_names[label]}" if label >= 0 else f"{token}/-"
            for token, label in zip(tokens, row["labels"], strict=True)
        ]
        words = sum(1 for label in row["labels"] if label >= 0)
        return [
            f"example (train row 1, {len(tokens)} tokens, {words} tagged): each token/its tag; '-' is "
            "not trained (special tokens, a word's later sub-tokens)",
            "  " + " ".join(shown),
        ]

    # ---------------------------------------------------------------- distillation
    def distillation_positions(self, row: dict[str, Any]) -> list[int]:
        # Each word's first sub-token, in the window that owns the word.
        return [position for position, word in enumerate(row["word_ids"]) if word >= 0]

    def teacher_targets(self, request: TeacherRequest) -> TeacherTargets:
        """Per word: the teacher tokenizes the sentences with its own tokenizer and windows, its
        logits are read at each word's first sub-token and given to the student's first sub-token
        of the same word. A word the teacher's tokenizer drops has no teacher value (NaN)."""
        import numpy as np

        from llmkit.distill.cache import TeacherTargets
        from llmkit.inference import token_logits

        teacher, order, raw_train, train, data, batch_size = (
            request.teacher,
            request.order,
            request.raw_train,
            request.train,
            request.data,
            request.batch_size,
        )

        own = self.tokenize(
            raw_train,
            teacher.tokenizer,
            data.model_copy(update={"max_length": teacher.max_length}),
            "input",
            [],
        )
        logits = token_logits(
            teacher.model,
            teacher.tokenizer,
            own,
            batch_size,
            description="Teacher",
            precision=teacher.precision,
        )
        per_word: dict[tuple[int, int], np.ndarray] = {}
        for row_logits, sentence, word_ids in zip(logits, own["sentence"], own["word_ids"], strict=True):
            for position, word in enumerate(word_ids):
                if word >= 0:
                    values = row_logits[position]
                    per_word[(sentence, word)] = values[order] if order is not None else values
        width = len(order) if order is not None else logits[0].shape[-1]
        missing = np.full(width, np.nan, dtype=np.float32)
        positions, values = [], []
        for sentence, word_ids in zip(train["sentence"], train["word_ids"], strict=True):
            kept = [(p, w) for p, w in enumerate(word_ids) if w >= 0]
            positions.append(np.array([p for p, _ in kept], dtype=np.int32))
            values.append(np.array([per_word.get((sentence, w), missing) for _, w in kept], dtype=np.float32))
        return TeacherTargets(positions=positions, logits=values)


class TaggedCollator:
    """Pads inputs (the tokenizer's padding side) and labels with -100 to the batch's longest row.
    With prompt tuning, PEFT prepends virtual tokens to the inputs but not to the labels
    (peft 0.21: "Expected input batch_size (22) to match target batch_size (14)"): the labels get
    as many -100 in front, so every logit has its label and the virtual positions are not scored."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, virtual_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.virtual_tokens = virtual_tokens

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        import torch

        from llmkit.data.words import IGNORED
        from llmkit.inference import MODEL_INPUTS

        inputs = [{k: v for k, v in f.items() if k in MODEL_INPUTS} for f in features]
        batch = self.tokenizer.pad(inputs, return_tensors="pt")
        if "labels" in features[0]:
            width = batch["input_ids"].shape[1]
            rows = []
            for feature in features:
                labels = list(feature["labels"])
                padding = [IGNORED] * (width - len(labels))
                labels = labels + padding if self.tokenizer.padding_side == "right" else padding + labels
                rows.append([IGNORED] * self.virtual_tokens + labels)
            batch["labels"] = torch.tensor(rows, dtype=torch.long)
        return batch


def tags_and_loss(logits: Any, labels: Any) -> Any:
    """Per row: its token loss sum and labelled-token count, then the predicted tag id of every
    position. Summed (not averaged per batch), the loss is a mean over labelled tokens."""
    import torch

    if isinstance(logits, tuple):
        logits = logits[0]
    flat = logits.float().reshape(-1, logits.shape[-1])
    losses = torch.nn.functional.cross_entropy(flat, labels.reshape(-1), reduction="none", ignore_index=-100)
    losses = losses.reshape(labels.shape)
    counts = (labels != -100).sum(dim=1).to(losses.dtype)
    return torch.cat(
        [losses.sum(dim=1, keepdim=True), counts[:, None], logits.argmax(dim=-1).to(losses.dtype)], 1
    )


def _token_loss(logits: list[Any], labels: list[list[int]]) -> float:
    import numpy as np
    import torch

    total, count = 0.0, 0
    for row_logits, row_labels in zip(logits, labels, strict=True):
        target = torch.tensor(row_labels, dtype=torch.long)
        losses = torch.nn.functional.cross_entropy(
            torch.from_numpy(np.asarray(row_logits, dtype=np.float32)),
            target,
            reduction="none",
            ignore_index=-100,
        )
        total += float(losses.double().sum())
        count += int((target != -100).sum())
    return total / max(count, 1)


def _headline(scores: dict[str, Any]) -> dict[str, float]:
    return {name: float(scores.get(name, 0.0)) for name in ("precision", "recall", "f1", "accuracy")}


def _tag_sequences(
    predicted: list[Any], labels: list[Any], label_names: list[str]
) -> tuple[list[list[str]], list[list[str]]]:
    gold, guess = [], []
    for row_predicted, row_labels in zip(predicted, labels, strict=True):
        pairs = [(int(p), int(t)) for p, t in zip(row_predicted, row_labels, strict=False) if int(t) != -100]
        if pairs:
            gold.append([label_names[t] for _, t in pairs])
            guess.append([label_names[p] if 0 <= p < len(label_names) else "O" for p, _ in pairs])
    return gold, guess


def _inside_of(label_names: list[str]) -> dict[int, int]:
    ids = {name: index for index, name in enumerate(label_names)}
    return {
        index: ids[f"I-{name[2:]}"]
        for index, name in enumerate(label_names)
        if name.startswith("B-") and f"I-{name[2:]}" in ids
    }


def stitch(
    word_counts: list[int],
    sentences: list[int],
    word_ids: list[list[int]],
    predicted: list[Any],
    label_names: list[str],
) -> list[list[str]]:
    """Per sentence, the tag of every word, from the window that owns it ('O' for a word no window
    predicted, which only a word the tokenizer maps to nothing can be)."""
    tags = [["O"] * count for count in word_counts]
    for sentence, row_words, row_predicted in zip(sentences, word_ids, predicted, strict=True):
        for word, tag in zip(row_words, row_predicted, strict=False):
            if word >= 0:
                tags[sentence][word] = label_names[int(tag)]
    return tags


def entity_spans(tags: list[str], mode: str, scheme: str) -> list[tuple[str, int, int]]:
    """(type, first word, one past the last word) of each entity, read as the metric reads them."""
    if mode == "strict":
        from seqeval import scheme as schemes

        entities = schemes.Entities([tags], getattr(schemes, scheme)).entities[0]
        return [(entity.tag, entity.start, entity.end) for entity in entities]
    from seqeval.metrics.sequence_labeling import get_entities

    return [(kind, start, end + 1) for kind, start, end in get_entities(tags)]


def entity_confusion(
    gold: list[list[str]], guess: list[list[str]], mode: str, scheme: str
) -> dict[str, dict[str, int]]:
    """How the true entities were predicted: the type of a predicted entity over the same words, or
    (missed); predicted entities over words with no true entity count as (spurious)."""
    confusion: dict[str, dict[str, int]] = {}
    for true_tags, predicted_tags in zip(gold, guess, strict=True):
        predicted = {(start, end): kind for kind, start, end in entity_spans(predicted_tags, mode, scheme)}
        true = {(start, end): kind for kind, start, end in entity_spans(true_tags, mode, scheme)}
        for span, kind in true.items():
            found = predicted.get(span, MISSED)
            confusion.setdefault(kind, {}).setdefault(found, 0)
            confusion[kind][found] += 1
        for span, kind in predicted.items():
            if span not in true:
                confusion.setdefault(SPURIOUS, {}).setdefault(kind, 0)
                confusion[SPURIOUS][kind] += 1
    return dict(sorted(confusion.items(), key=lambda item: _missed_last(item[0])))


register_task(TokenClassificationOptions, TokenClassification)
