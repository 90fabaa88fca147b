"""Sequence classification: one label per text (or text pair), read from a head on [CLS] for
encoders and on the last real token for decoders. The task of every recipe without a `task:`
section."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from llmkit.errors import DataError, ModelError
from llmkit.tasks.registry import Task, TaskEvaluation, TaskOptions, TaskReport, register_task

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    from datasets import Dataset
    from rich.console import Console
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from llmkit.data.loading import LabelledSplits
    from llmkit.distill.cache import TeacherRequest, TeacherTargets
    from llmkit.methods import MethodOptions
    from llmkit.metrics.per_class import PerClassReport
    from llmkit.models.traits import ModelTraits
    from llmkit.recipe.schema import DataSection, EvalSection, Recipe

# Texts `merge` checks the merged model on: varied lengths, no data files needed.
PROBE_TEXTS = [
    "ok",
    "the order arrived two weeks late and nobody answered my emails",
    "how do I change the password on my account",
    "I was charged twice this month, please refund one payment",
]
METRIC_LABELS = {"accuracy": "accuracy", "f1": "F1"}
DIGITS = 6  # probabilities rounded for reading; argmax is taken before rounding


class SequenceClassificationOptions(TaskOptions):
    name: Literal["sequence_classification"] = "sequence_classification"
    summary = "one label per text or text pair (sentiment, intent, NLI)"


@dataclass
class PerClassTaskReport(TaskReport):
    report: PerClassReport

    def to_json(self) -> dict[str, Any]:
        return self.report.to_json()

    def print(self, console: Console) -> None:
        from rich.table import Table

        report = self.report
        scores = Table()
        for column in ("label", "precision", "recall", "f1", "support"):
            scores.add_column(column, justify="left" if column == "label" else "right")
        for name, score in report.scores.items():
            scores.add_row(
                name, f"{score.precision:.4f}", f"{score.recall:.4f}", f"{score.f1:.4f}", str(score.support)
            )
        console.print("per class:")
        console.print(scores)
        confusion = Table()
        confusion.add_column("")
        for name in report.label_names:
            confusion.add_column(name, justify="right")
        for name, row in zip(report.label_names, report.confusion, strict=True):
            confusion.add_row(name, *map(str, row))
        console.print("confusion matrix (rows: true label, columns: predicted label):")
        console.print(confusion)


class SequenceClassification(Task):
    peft_task_type = "SEQ_CLS"
    peer_methods = ("full", "lora", "prefix", "prompt")  # peer_trainer.py trains all four
    hub_pipeline_tag = "text-classification"

    def auto_model_class(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def pipeline_example(self, text_columns: list[str]) -> str:
        if len(text_columns) == 2:
            return 'classifier({"text": "first sentence", "text_pair": "second sentence"}, truncation=True)'
        return 'classifier(["an example to classify"], truncation=True)'

    def check_model_type(self, model_type: str, reference: str) -> None:
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

        if model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
            raise ModelError(
                f"'{reference}' is a '{model_type}' model, which transformers cannot use for sequence "
                "classification.",
                hint="use an encoder such as BERT or a decoder such as GPT-2 or Llama",
            )

    def adapt_model(self, model: PreTrainedModel, traits: ModelTraits) -> None:
        from llmkit.models.first_position import compute_only_first_position
        from llmkit.models.pooling import use_last_real_token

        if traits.is_decoder:
            use_last_real_token(model)
        else:
            # Only the logits are read here, so an encoder's last layer can skip the positions
            # its head never reads.
            compute_only_first_position(model)

    # ---------------------------------------------------------------- data
    def load_splits(
        self, data: DataSection, seed: int, teacher_labels: list[str] | None = None
    ) -> LabelledSplits:
        from llmkit.data.loading import load_splits

        return load_splits(data, seed, unlabelled_train_names=teacher_labels)

    def read_labelled_file(self, path: Path, data: DataSection, label_names: list[str]) -> Dataset:
        from llmkit.data.inputs import read_labelled_file

        return read_labelled_file(path, data, label_names)

    def read_unlabelled(self, source: str, data: DataSection, id_column: str | None) -> Dataset:
        from llmkit.data.inputs import read_unlabelled

        return read_unlabelled(source, data, id_column)

    def tokenize(
        self,
        dataset: Dataset,
        tokenizer: PreTrainedTokenizerBase,
        data: DataSection,
        split: str,
        label_names: list[str],
    ) -> Dataset:
        from llmkit.data.tokenize import tokenize_split

        return tokenize_split(dataset, tokenizer, data.text_columns, data.max_length, split)

    def collator(
        self, tokenizer: PreTrainedTokenizerBase, method: MethodOptions | None = None
    ) -> Callable[[list[Any]], Any]:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    # ---------------------------------------------------------------- metrics
    def metric_names(self, evaluation: EvalSection) -> tuple[str, ...]:
        return tuple(evaluation.metrics)

    def metric_label(self, name: str) -> str:
        return METRIC_LABELS.get(name, name)

    def check_metrics(self, evaluation: EvalSection, label_names: list[str]) -> None:
        from llmkit.metrics import MetricSuite

        MetricSuite.for_recipe(evaluation, label_names)

    def logits_for_metrics(self) -> Callable[[Any, Any], Any]:
        return label_and_loss

    def compute_metrics(
        self, evaluation: EvalSection, label_names: list[str]
    ) -> Callable[[Any], dict[str, float]]:
        import numpy as np

        from llmkit.metrics import MetricSuite

        suite = MetricSuite.for_recipe(evaluation, label_names)

        def compute(prediction: Any) -> dict[str, float]:
            per_example = np.asarray(prediction.predictions)  # columns: predicted label, loss
            scores = suite.compute(per_example[:, 0].astype("int64"), prediction.label_ids)
            # Returned as "loss", this replaces Trainer's eval loss, a mean of per-batch means that
            # counts the examples the distributed sampler repeats to pad the last batch.
            return {**scores, "loss": float(per_example[:, 1].mean())}

        return compute

    # ---------------------------------------------------------------- trained runs
    def probe_batch(
        self,
        tokenizer: PreTrainedTokenizerBase,
        data: DataSection,
        rows: Dataset | None,
        method: MethodOptions | None = None,
    ) -> dict[str, Any]:
        if rows is None:
            texts = [PROBE_TEXTS] * len(data.text_columns)  # a pair task reads each text against itself
            return dict(tokenizer(*texts, padding=True, return_tensors="pt"))
        columns = [list(rows[column]) for column in data.text_columns]
        return dict(
            tokenizer(
                *columns, truncation=True, max_length=data.max_length, padding=True, return_tensors="pt"
            )
        )

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
        from llmkit.inference import mean_cross_entropy, predict_logits
        from llmkit.metrics import MetricSuite
        from llmkit.metrics.per_class import per_class_report

        tokenised = sorted_by_length(self.tokenize(dataset, tokenizer, data, split, label_names))
        # Sorted and batched as training's evaluation sorts and batches them: the logits are then
        # bit-identical to training's, and the metrics equal results.json exactly.
        logits = predict_logits(
            model,
            tokenizer,
            tokenised,
            batch_size,
            sort_by_length=False,
            description=f"Evaluating {split}",
            precision=precision,
        )
        labels = list(tokenised["labels"])
        predictions = logits.argmax(axis=-1)
        suite = MetricSuite.for_recipe(evaluation, label_names)
        metrics = {"loss": mean_cross_entropy(logits, labels), **suite.compute(predictions, labels)}
        report = PerClassTaskReport(per_class_report(predictions, labels, label_names))
        return TaskEvaluation(metrics=metrics, rows=len(labels), report=report)

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
        probabilities = predict_probabilities(model, tokenizer, dataset, data, batch_size, precision)
        for row in probabilities:
            yield {
                "label": label_names[int(row.argmax())],
                "probabilities": {
                    name: round(float(p), DIGITS) for name, p in zip(label_names, row, strict=True)
                },
            }

    def csv_columns(self, label_names: list[str]) -> list[str] | None:
        return ["label", *(f"prob_{name}" for name in label_names)]

    def csv_values(self, record: dict[str, Any], label_names: list[str]) -> list[Any]:
        return [record["label"], *(record["probabilities"][name] for name in label_names)]

    def peer_arguments(self, recipe: Recipe) -> list[str]:
        data = recipe.data
        return [
            *super().peer_arguments(recipe),
            "--text",
            ",".join(data.text_columns),
            "--label",
            data.label_column,
        ]

    def peer_problems(self, recipe: Recipe) -> list[str]:
        data = recipe.data
        if data.train_file is None or data.validation_file is None:
            return []
        return [
            f"the peer script reads tab-separated files; '{path}' is not one"
            for path in (data.train_file, data.validation_file)
            if data.field_delimiter(path) != "\t"
        ]

    def describe_example(
        self, row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, label_names: list[str]
    ) -> list[str]:
        label = (
            f"label {label_names[row['labels']]!r}" if "labels" in row else "no label: the teacher labels it"
        )
        return [
            f"example (train row 1, {label}, {len(row['input_ids'])} tokens):",
            f"  {tokenizer.decode(row['input_ids'])}",
        ]

    # ---------------------------------------------------------------- distillation
    def distillation_positions(self, row: dict[str, Any]) -> list[int]:
        return [0]  # the example

    def distilled_logits(self, logits: Any, input_width: int) -> Any:
        return logits[:, None, :]

    def teacher_targets(self, request: TeacherRequest) -> TeacherTargets:
        """Per example: the teacher reads the text with its own tokenizer and length limit."""
        import numpy as np

        from llmkit.data.tokenize import tokenize_split
        from llmkit.distill.cache import TeacherTargets
        from llmkit.inference import predict_logits

        teacher, order, raw_train, data, batch_size = (
            request.teacher,
            request.order,
            request.raw_train,
            request.data,
            request.batch_size,
        )

        texts = raw_train.select_columns(data.text_columns)
        tokenised = tokenize_split(texts, teacher.tokenizer, data.text_columns, teacher.max_length, "teacher")
        logits = predict_logits(
            teacher.model,
            teacher.tokenizer,
            tokenised,
            batch_size,
            description="Teacher",
            precision=teacher.precision,
        )
        logits = logits[:, order] if order is not None else logits
        first = np.zeros(1, dtype=np.int32)
        return TeacherTargets(positions=[first] * len(logits), logits=list(logits[:, None, :]))


def predict_probabilities(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    data: DataSection,
    batch_size: int,
    precision: str,
) -> np.ndarray:
    """Per-label probabilities (rows x labels) of the texts in `dataset`'s text columns, in order:
    tokenised as training tokenised, batched by similar length, computed in `precision`."""
    from llmkit.data.tokenize import encode_texts
    from llmkit.inference import NO_ROWS, predict_logits, softmax

    if len(dataset) == 0:
        raise DataError(NO_ROWS)  # before the tokenizer, which fails on no texts

    # Tokenised in one call, not through a datasets map: rows to predict are read once, and the
    # map's arrow writing took as long as tokenising (27 of the map's 59 ms on SST-2's 872 dev
    # rows; the tokenizer 26).
    columns = dataset.select_columns(data.text_columns).to_dict()
    encoded = encode_texts(tokenizer, [columns[column] for column in data.text_columns], data.max_length)
    logits = predict_logits(model, tokenizer, encoded, batch_size, precision=precision)
    return softmax(logits)


def label_and_loss(logits: Any, labels: Any) -> Any:
    """Per example: the predicted label and its cross-entropy loss.

    Kept per example so that gathering across processes can drop the padding duplicates exactly;
    storing every logit for a large eval set would cost memory for nothing."""
    import torch

    if isinstance(logits, tuple):
        logits = logits[0]
    losses = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
    return torch.stack([logits.argmax(dim=-1).to(losses.dtype), losses], dim=1)


register_task(SequenceClassificationOptions, SequenceClassification)
