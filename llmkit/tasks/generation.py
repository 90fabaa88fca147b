"""Generation: supervised fine-tuning of a causal LM on prompt/completion pairs (data-to-text,
instructions, answers in a format), the loss on the completion and its end-of-sequence token, and
evaluation by generating: loss and perplexity every epoch, then text for every distinct validation
and test prompt, scored against all of its references."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt, model_validator

from llmkit.errors import DataError, LlmkitError, ModelError
from llmkit.generation.data import IGNORED, PROMPT, PromptFormat
from llmkit.tasks.registry import Task, TaskEvaluation, TaskOptions, TaskReport, register_task

if TYPE_CHECKING:
    from pathlib import Path

    from datasets import Dataset
    from rich.console import Console
    from transformers import PreTrainedTokenizerBase

    from llmkit.data.loading import LabelledSplits
    from llmkit.distill.cache import TeacherRequest, TeacherTargets
    from llmkit.distill.teacher import Teacher
    from llmkit.generation.engine import Generation
    from llmkit.methods import MethodOptions
    from llmkit.recipe.schema import DataSection, EvalSection, Recipe

GenerationMetric = Literal["exact_match", "bleu", "rouge_l"]
# Prompts `merge` compares the adapter and the merged checkpoint on.
PROBE_PROMPTS = ["ok", "Describe the restaurant: name[The Eagle], food[French]\n", "Answer: 2 + 2 ="]
EXAMPLES_SHOWN = 3  # generations `llmkit evaluate` prints beside the metrics


class GenerateOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: PositiveInt = Field(64, description="Most tokens generated per prompt.")
    num_beams: PositiveInt = Field(1, description="Beam search width; 1: greedy (or sampling).")
    do_sample: bool = Field(False, description="Sample instead of taking the likeliest token.")
    temperature: NonNegativeFloat = Field(1.0, description="Sampling temperature; needs do_sample.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass; needs do_sample.")

    @model_validator(mode="after")
    def _sampling_options_need_sampling(self) -> GenerateOptions:
        if not self.do_sample and (self.temperature != 1.0 or self.top_p != 1.0):
            raise ValueError("temperature and top_p only apply when sampling; set do_sample: true")
        return self


class GenerationOptions(TaskOptions):
    name: Literal["generation"] = "generation"
    summary = "a completion for each prompt (data-to-text, instructions, answers); causal LMs only"
    prompt_column: str = Field("prompt", description="Column holding the prompt, when no template is given.")
    template: str | None = Field(
        None,
        description="Prompt built from columns by name, e.g. 'Describe the restaurant: {mr}\\n'.",
    )
    completion_column: str = Field("completion", description="Column holding the reference completion.")
    messages_column: str | None = Field(
        None,
        description="Column of chat message lists, rendered with the tokenizer's chat template; the "
        "last assistant turn is the completion.",
    )
    train_on_prompt: bool = Field(
        False, description="Train on the prompt tokens too (else only the completion)."
    )
    packing: bool = Field(
        False,
        description="Join short training examples into rows of up to data.max_length tokens, each "
        "attending only to itself (block-diagonal mask; SDPA attention, methods without virtual tokens).",
    )
    metrics: list[GenerationMetric] = Field(
        default=["exact_match", "bleu", "rouge_l"],
        description="Scores of the generated text against every reference: normalised exact match, "
        "sacrebleu BLEU (0-100), ROUGE-L F (0-1).",
    )
    generate: GenerateOptions = Field(default_factory=GenerateOptions)

    @model_validator(mode="after")
    def _one_prompt_source(self) -> GenerationOptions:
        if self.messages_column is not None and self.template is not None:
            raise ValueError(
                "task.messages_column renders prompts with the chat template; drop task.template"
            )
        if self.template is not None:
            from llmkit.generation.data import template_fields

            try:
                fields = template_fields(self.template)
            except ValueError as exc:
                raise ValueError(f"task.template is not a valid format string: {exc}") from exc
            if not fields:
                raise ValueError("task.template names no column; write them in braces, e.g. '{mr}'")
        return self

    def prompt_format(self, completion_names: list[str] | None = None) -> PromptFormat:
        names = tuple(completion_names) if completion_names is not None else None
        return PromptFormat(
            self.prompt_column, self.completion_column, self.template, self.messages_column, names
        )


@dataclass
class GenerationReport(TaskReport):
    stopped_at_eos: int
    hit_length_limit: int
    examples: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "generations": {"stopped_at_eos": self.stopped_at_eos, "hit_length_limit": self.hit_length_limit},
            "examples": self.examples,
        }

    def print(self, console: Console) -> None:
        console.print(
            f"generations: {self.stopped_at_eos} stopped at the end-of-sequence token, "
            f"{self.hit_length_limit} reached task.generate.max_new_tokens"
        )
        for example in self.examples:  # markup off: prompts such as E2E's hold [brackets]
            console.print(f"prompt:     {example['prompt']!r}", markup=False)
            console.print(f"generated:  {example['generation']!r}", markup=False)
            console.print(f"reference:  {example['references'][0]!r}", markup=False)


class GenerationTask(Task):
    peft_task_type = "CAUSAL_LM"
    hub_pipeline_tag = "text-generation"
    model_loss_counts_items = True
    options: GenerationOptions

    def auto_model_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def pipeline_example(self, text_columns: list[str]) -> str:
        # The pipeline continues a prompt; without return_full_text=False it repeats it.
        return 'classifier("an example prompt", max_new_tokens=64, return_full_text=False)'

    def check_model_type(self, model_type: str, reference: str) -> None:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        )

        # BERT-family encoders have causal-LM heads in transformers too, but were never trained to
        # continue text from the left: generation takes decoders only.
        if (
            model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
            or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        ):
            raise ModelError(
                f"'{reference}' is a '{model_type}' model; the generation task needs a decoder (a causal "
                "language model such as GPT-2, Llama or SmolLM2).",
                hint="choose a GPT-style checkpoint; encoders such as BERT classify: drop task: generation "
                "for sequence classification",
            )

    def adapt_model(self, model: Any, traits: Any) -> None:
        # Packing keeps examples apart through a 4D mask, which only SDPA attention takes as given.
        attention = getattr(model.config, "_attn_implementation", None)
        if self.options.packing and attention != "sdpa":
            raise ModelError(
                "task.packing needs SDPA attention to keep packed examples apart; this model uses "
                f"{attention!r}.",
                hint="set task.packing=false",
            )

    # ---------------------------------------------------------------- data
    def load_splits(
        self, data: DataSection, seed: int, teacher_labels: list[str] | None = None
    ) -> LabelledSplits:
        """Prompts with their completions, also when a teacher trains alone: the teacher's
        distribution is taken over the reference completion's tokens."""
        from llmkit.data.loading import LabelledSplits, read_hub
        from llmkit.generation.data import read_split_files

        prompt_format = self.options.prompt_format()
        raw = read_split_files(data, prompt_format) if data.train_file is not None else read_hub(data)
        carved = "validation" not in raw
        if carved:
            # Carved by prompt, so an input's references never sit on both sides.
            raw.update(_carve_by_prompt(raw.pop("train"), prompt_format, data.validation_fraction, seed))
        if data.max_train_samples is not None and len(raw["train"]) > data.max_train_samples:
            raw["train"] = raw["train"].select(range(data.max_train_samples))
        for split in ("validation", "test"):
            if split in raw and data.max_eval_samples is not None:
                raw[split] = _first_prompts(raw[split], prompt_format, data.max_eval_samples)
        return LabelledSplits(splits=raw, label_names=[], validation_carved=carved)

    def read_labelled_file(self, path: Path, data: DataSection, label_names: list[str]) -> Dataset:
        from llmkit.data.inputs import read_table

        prompt_format = self.options.prompt_format()
        dataset = read_table(
            path,
            data.model_copy(update={"text_columns": prompt_format.text_columns(prompt_format.columns())}),
            prompt_format.columns(),
            hint="the run reads " + ", ".join(repr(c) for c in prompt_format.columns()),
        )
        if data.max_eval_samples is not None:
            dataset = _first_prompts(dataset, prompt_format, data.max_eval_samples)
        return dataset

    def read_unlabelled(self, source: str, data: DataSection, id_column: str | None) -> Dataset:
        raise use_generate_instead()

    def rendered(self, dataset: Dataset, tokenizer: PreTrainedTokenizerBase, data: DataSection) -> Dataset:
        from llmkit.generation.data import check_chat_template, rendered

        if self.options.messages_column is not None:
            check_chat_template(tokenizer)
        return rendered(dataset, self.options.prompt_format(data.label_names), tokenizer)

    def tokenize(
        self,
        dataset: Dataset,
        tokenizer: PreTrainedTokenizerBase,
        data: DataSection,
        split: str,
        label_names: list[str] | None = None,
    ) -> Dataset:
        from llmkit.generation.data import pack_examples, tokenize_examples

        tokenised = tokenize_examples(
            self.rendered(dataset, tokenizer, data),
            tokenizer,
            self.options.prompt_format().chat,
            data.max_length,
            self.options.train_on_prompt,
            split,
        )
        # Only training is packed: evaluation's loss and generation take one example at a time.
        return (
            pack_examples(tokenised, data.max_length)
            if self.options.packing and split == "train"
            else tokenised
        )

    def collator(
        self, tokenizer: PreTrainedTokenizerBase, method: MethodOptions | None = None
    ) -> Callable[[list[Any]], Any]:
        from functools import partial

        from llmkit.generation.data import pad_batch

        # Labels are built per example (prompt masked, EOS kept); PEFT's causal-LM wrapper adds -100
        # for prompt-tuning's virtual tokens itself (tested). Logits are computed for the
        # completions only where every prompt position is without loss and the model's logits line
        # up with the batch's positions (no virtual tokens; packed rows hold prompts throughout).
        completion_logits_only = (
            not self.options.train_on_prompt
            and not self.options.packing
            and method is not None
            and not method.virtual_tokens
        )
        return partial(
            pad_batch, pad_token_id=tokenizer.pad_token_id, completion_logits_only=completion_logits_only
        )

    # ---------------------------------------------------------------- metrics
    def metric_names(self, evaluation: EvalSection) -> tuple[str, ...]:
        return ("perplexity", *self.options.metrics, "stopped_at_eos", "hit_length_limit")

    def metric_label(self, name: str) -> str:
        return {"bleu": "BLEU", "rouge_l": "ROUGE-L", "exact_match": "exact match"}.get(name, name)

    def logits_for_metrics(self) -> Callable[[Any, Any], Any]:
        return summed_token_loss

    def compute_metrics(
        self, evaluation: EvalSection, label_names: list[str]
    ) -> Callable[[Any], dict[str, float]]:
        import numpy as np

        def compute(prediction: Any) -> dict[str, float]:
            per_example = np.asarray(prediction.predictions, dtype=np.float64)  # loss sum, tokens
            return perplexity_metrics(per_example[:, 0].sum(), per_example[:, 1].sum())

        return compute

    def final_metrics(
        self, model: Any, tokenizer: PreTrainedTokenizerBase, dataset: Dataset, recipe: Recipe
    ) -> dict[str, float]:
        generations, references = self._generate_for(
            model,
            tokenizer,
            dataset,
            recipe.data.max_length,
            recipe.train.precision,
            recipe.train.eval_batch_size,
        )
        from llmkit.generation.engine import generation_scores

        return generation_scores(generations, references, tuple(self.options.metrics))

    def _generate_for(
        self,
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        tokenised: Dataset,
        max_length: int,
        precision: str,
        batch_size: int,
    ) -> tuple[list[Generation], list[list[str]]]:
        from llmkit.generation.data import grouped_references
        from llmkit.generation.engine import generate_texts

        prompts, references = grouped_references(tokenised)
        generations = generate_texts(
            model,
            tokenizer,
            prompts,
            self.options.generate,
            self.options.prompt_format().chat,
            max_prompt_tokens=max_length,
            batch_size=batch_size,
            precision=precision,
        )
        return generations, references

    # ---------------------------------------------------------------- trained runs
    def probe_batch(
        self,
        tokenizer: PreTrainedTokenizerBase,
        data: DataSection,
        rows: Dataset | None,
        method: MethodOptions | None = None,
    ) -> dict[str, Any]:
        from llmkit.generation.data import pad_batch, prompt_ids

        if rows is None:
            encoded = [prompt_ids(tokenizer, prompt, chat=False) for prompt in PROBE_PROMPTS]
            batch = pad_batch(
                [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids} for ids in encoded],
                tokenizer.pad_token_id,
            )
            del batch["labels"]
            return batch
        # The forward check (given the method) runs a packed batch when training packs; the
        # tokenizer check (no method) reads plain rows.
        packed = self.options.packing and method is not None
        if packed and method is not None and method.virtual_tokens:
            raise LlmkitError(
                "task.packing cannot be used with a method that adds virtual tokens: its block-diagonal "
                "mask does not cover their positions.",
                hint="set task.packing=false, or use method full or lora",
            )
        tokenised = self.tokenize(rows, tokenizer, data, "train" if packed else "probe")
        return pad_batch(list(tokenised), tokenizer.pad_token_id)

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
        from llmkit.generation.engine import generation_scores

        tokenised = self.tokenize(dataset, tokenizer, data, split)
        loss_sum, tokens = token_loss(model, tokenised, tokenizer, batch_size, precision)
        generations, references = self._generate_for(
            model, tokenizer, tokenised, data.max_length, precision, batch_size
        )
        scores = generation_scores(generations, references, tuple(self.options.metrics))
        metrics = {**perplexity_metrics(loss_sum, tokens), **scores}
        prompts = list(dict.fromkeys(tokenised[PROMPT]))
        examples = [
            {"prompt": p, "generation": g.text, "references": r}
            for p, g, r in list(zip(prompts, generations, references, strict=True))[:EXAMPLES_SHOWN]
        ]
        report = GenerationReport(
            stopped_at_eos=int(scores["stopped_at_eos"]),
            hit_length_limit=int(scores["hit_length_limit"]),
            examples=examples,
        )
        return TaskEvaluation(metrics=metrics, rows=len(tokenised), report=report)

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
        raise use_generate_instead()

    def csv_columns(self, label_names: list[str]) -> list[str] | None:
        # `predict` asks this before reading anything: the place to point at `generate`.
        raise use_generate_instead()

    # ---------------------------------------------------------------- the bench's peer
    # shared/bench/peer_sft.py: TRL's SFTTrainer on prompt/completion pairs from a CSV (one input
    # column through a `{}` template), then greedy generation once per distinct input of --test,
    # scored with multi-reference BLEU and ROUGE-L.
    def peer_arguments(self, recipe: Recipe) -> list[str]:
        options, data = self.options, recipe.data
        assert data.validation_file is not None  # peer_problems says when it is missing
        input_column, template = self._peer_template()
        # The script generates for its first --eval-limit inputs (100 when not given), as
        # data.max_eval_samples keeps the first distinct prompts.
        inputs = data.max_eval_samples or _distinct_values(data.validation_file, input_column)
        return [
            "--test", str(data.validation_file),
            "--input-col", input_column,
            "--output-col", options.completion_column,
            "--template", template,
            "--eval-limit", str(inputs),
            "--max-new-tokens", str(options.generate.max_new_tokens),
            *(["--packing"] if options.packing else []),
        ]  # fmt: skip

    def peer_expert_arguments(self, recipe: Recipe) -> list[str]:
        # TRL's script has no length grouping; its speed option, packing, follows task.packing
        # (peer_arguments), so that both sides compute the same sequences.
        return []

    def _peer_template(self) -> tuple[str, str]:
        """The script's --input-col and --template (its one field written `{}`)."""
        import string

        if self.options.template is None:
            return self.options.prompt_column, "{}"
        written, column = [], ""
        for literal, field_name, spec, conversion in string.Formatter().parse(self.options.template):
            written.append(literal.replace("{", "{{").replace("}", "}}"))
            if field_name is not None:
                column = field_name
                written.append(
                    "{" + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                )
        return column, "".join(written)

    def peer_problems(self, recipe: Recipe) -> list[str]:
        from llmkit.generation.data import template_fields

        options, data, problems = self.options, recipe.data, []
        if options.messages_column is not None:
            problems.append("the peer script builds prompts from a column and a template, not chat messages")
        elif options.template is not None and len(template_fields(options.template)) != 1:
            problems.append(
                "the peer script's template fills in one column; task.template names "
                f"{', '.join(template_fields(options.template))}"
            )
        if data.label_names is not None:
            problems.append(
                "the peer script trains on the completion column as written; data.label_names turns it "
                "into label words"
            )
        if options.train_on_prompt:
            problems.append("the peer script trains on the completion only (task.train_on_prompt)")
        if options.generate.num_beams != 1 or options.generate.do_sample:
            problems.append("the peer script generates greedily (task.generate.num_beams 1, do_sample false)")
        if not {"bleu", "rouge_l"} & set(options.metrics):
            problems.append("the peer script reports BLEU and ROUGE-L only; task.metrics names neither")
        problems += [
            f"the peer script reads comma-separated files; '{path}' is not one"
            for path in (data.train_file, data.validation_file)
            if path is not None and data.field_delimiter(path) != ","
        ]
        return problems

    def peer_notes(self, recipe: Recipe) -> list[str]:
        notes = [
            "the script puts a space before each completion, and reports neither validation loss nor "
            "perplexity"
        ]
        if "exact_match" in self.options.metrics:
            notes.append("the script does not report exact match")
        return notes

    def peer_metrics(self, reported: dict[str, Any], evaluation: EvalSection) -> dict[str, float]:
        figures: dict[str, float | None] = {
            "bleu": reported.get("bleu"),
            # The script reports ROUGE-L F in percent; llmkit's is a fraction.
            "rouge_l": reported["rougeL"] / 100 if "rougeL" in reported else None,
            "stopped_at_eos": reported.get("stopped_at_eos"),
            "hit_length_limit": (
                reported["eval_inputs"] - reported["stopped_at_eos"]
                if "eval_inputs" in reported and "stopped_at_eos" in reported
                else None
            ),
        }
        return {
            name: value for name in self.metric_names(evaluation) if (value := figures.get(name)) is not None
        }

    def describe_example(
        self, row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, label_names: list[str]
    ) -> list[str]:
        ids, labels = row["input_ids"], row["labels"]
        masked = sum(label == IGNORED for label in labels)
        trained_from = next((i for i, label in enumerate(labels) if label != IGNORED), len(ids))
        return [
            f"example (train row 1, {len(ids)} tokens: {masked} without loss, {len(ids) - masked} trained):",
            f"  no loss:  {tokenizer.decode(ids[:trained_from])!r}",
            f"  trained:  {tokenizer.decode(ids[trained_from:])!r}",
        ]

    # ---------------------------------------------------------------- distillation
    def align_teacher(
        self, teacher: Teacher, tokenizer: PreTrainedTokenizerBase, model: Any, label_names: list[str]
    ) -> list[int] | None:
        from llmkit.distill.teacher import check_same_vocabulary

        check_same_vocabulary(teacher, tokenizer, model)
        return None

    def distilled_logits(self, logits: Any, input_width: int) -> Any:
        # Completion-only logits (logits_to_keep) cover the batch's last positions only; the
        # teacher's are laid out from the first position: put the student's where they belong
        # (the positions before carry no trained token, so the teacher's mask is off there).
        import torch

        missing = input_width - logits.shape[1]
        if missing > 0:
            logits = torch.nn.functional.pad(logits, (0, 0, missing, 0))
        return logits[:, -input_width:]

    def distillation_positions(self, row: dict[str, Any]) -> list[int]:
        # Every position whose next token is trained: where the loss is taken.
        labels = row["labels"]
        return [position for position in range(len(labels) - 1) if labels[position + 1] != IGNORED]

    def teacher_targets(self, request: TeacherRequest) -> TeacherTargets:
        """The teacher reads the student's own tokenised rows (the vocabularies are the same),
        packed rows included; its top-k next-token logits are kept at every trained position."""
        import numpy as np

        from llmkit.distill.cache import TeacherTargets
        from llmkit.generation.data import pad_batch
        from llmkit.training.precision import inference_precision

        teacher, train, batch_size, top_k = request.teacher, request.train, request.batch_size, request.top_k

        model = teacher.model
        device = next(model.parameters()).device
        columns = [
            c for c in ("input_ids", "attention_mask", "labels", "position_ids") if c in train.column_names
        ]
        rows = list(train.select_columns(columns))
        positions: list[np.ndarray] = []
        values: list[np.ndarray] = []
        indices: list[np.ndarray] = []
        with inference_precision(model, teacher.precision, device.type):
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                batch = pad_batch(chunk, teacher.tokenizer.pad_token_id)
                del batch["labels"]
                width = batch["input_ids"].shape[1]
                logits = model(**{k: v.to(device) for k, v in batch.items()}).logits[:, -width:]
                for i, row in enumerate(chunk):
                    where = self.distillation_positions(row)
                    top = logits[i, where].float().topk(min(top_k, logits.shape[-1]), dim=-1)
                    positions.append(np.array(where, dtype=np.int32))
                    values.append(top.values.cpu().numpy())
                    indices.append(top.indices.cpu().numpy().astype(np.int32))
        return TeacherTargets(positions=positions, logits=values, indices=indices)


def use_generate_instead() -> LlmkitError:
    return LlmkitError(
        "This is a generation run: it writes text, not labels, so `llmkit predict` does not apply.",
        hint="use `llmkit generate RUN --input FILE|-` (one JSON line per prompt)",
    )


def _distinct_values(path: Path, column: str) -> int:
    """How many distinct values `column` of the CSV file has (how many inputs generate)."""
    import csv

    with open(path, encoding="utf-8", newline="") as handle:
        return len({row.get(column) for row in csv.DictReader(handle)})


def perplexity_metrics(loss_sum: float, tokens: float) -> dict[str, float]:
    import math

    loss = float(loss_sum / tokens) if tokens else 0.0
    return {"loss": loss, "perplexity": math.exp(loss)}


def summed_token_loss(logits: Any, labels: Any) -> Any:
    """Per example: the summed next-token loss over its trained positions and their count, so the
    split's loss is a mean over tokens, whatever the batching. Prompt tuning's logits carry the
    virtual tokens first; the last positions are the example's."""
    import torch

    if isinstance(logits, tuple):
        logits = logits[0]
    logits = logits[:, -labels.shape[1] :]
    shifted, targets = logits[:, :-1].float(), labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=IGNORED, reduction="none"
    ).view(targets.shape)
    counts = (targets != IGNORED).sum(dim=1)
    return torch.stack([losses.sum(dim=1), counts.to(losses.dtype)], dim=1)


def token_loss(
    model: Any, tokenised: Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int, precision: str
) -> tuple[float, float]:
    """Summed loss and trained-token count of a tokenised split (for `evaluate`)."""

    from llmkit.generation.data import pad_batch
    from llmkit.training.precision import inference_precision

    device = next(model.parameters()).device
    rows = [
        {k: row[k] for k in ("input_ids", "attention_mask", "labels")}
        for row in tokenised.select_columns(["input_ids", "attention_mask", "labels"])
    ]
    loss_sum, tokens = 0.0, 0.0
    with inference_precision(model, precision, device.type):
        for start in range(0, len(rows), batch_size):
            batch = {
                k: v.to(device)
                for k, v in pad_batch(rows[start : start + batch_size], tokenizer.pad_token_id).items()
            }
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            summed = summed_token_loss(logits, batch["labels"]).double()
            loss_sum += float(summed[:, 0].sum())
            tokens += float(summed[:, 1].sum())
    return loss_sum, tokens


def _first_prompts(dataset: Dataset, prompt_format: PromptFormat, count: int) -> Dataset:
    """Rows of the first `count` distinct prompts, all of their references kept."""
    keys = _prompt_keys(dataset, prompt_format)
    chosen = set(list(dict.fromkeys(keys))[:count])
    return dataset.select([i for i, key in enumerate(keys) if key in chosen])


def _prompt_keys(dataset: Dataset, prompt_format: PromptFormat) -> list[str]:
    import json

    columns = prompt_format.input_columns()
    values = zip(*(dataset[c] for c in columns), strict=True)
    if prompt_format.chat:  # a conversation's prompt is everything before its last assistant turn
        return [
            json.dumps(v[0][:-1] if v[0] and v[0][-1].get("role") == "assistant" else v[0]) for v in values
        ]
    return [json.dumps(v) for v in values]


def _carve_by_prompt(
    train: Dataset, prompt_format: PromptFormat, fraction: float, seed: int
) -> dict[str, Dataset]:
    import random

    keys = _prompt_keys(train, prompt_format)
    distinct = list(dict.fromkeys(keys))
    if len(distinct) < 2:
        raise DataError(
            "The training data has a single distinct prompt; a validation split cannot be carved from it.",
            hint="set data.validation_file",
        )
    held = set(random.Random(seed).sample(distinct, max(1, round(len(distinct) * fraction))))
    return {
        "train": train.select([i for i, k in enumerate(keys) if k not in held]),
        "validation": train.select([i for i, k in enumerate(keys) if k in held]),
    }


register_task(GenerationOptions, GenerationTask)
