"""Trainer assembly: the recipe's training knobs as TrainingArguments, one Trainer for every
method and task (the task supplies the collator and the metrics), and the callbacks that write the
run's step log."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

from llmkit.data.loading import LABELS
from llmkit.errors import LlmkitError
from llmkit.fsutil import dumps, move_into_place
from llmkit.methods import get_method
from llmkit.training.batching import BatchPlan
from llmkit.training.embedding_rows import USED_ROWS_ENV, follow_optimizer
from llmkit.training.precision import resolve_precision, training_attention_kernels
from llmkit.training.stopping import target_reached
from llmkit.training.strategies import (
    prompt_encoder_is_sharded,
    trainer_arguments,
    unsharded_prompt_encoder,
)
from llmkit.training.tracking import place_tracker_files, report_to

# Trainer writes a checkpoint's files one by one; they are written here and renamed into place
# when complete, so a kill while saving never leaves a checkpoint that looks complete.
STAGING_DIR = ".staging"
# In a checkpoint: the random-number state its epoch's batch order was drawn from.
SAMPLER_STATE_FILE = "llmkit_sampler_state.pt"
# Trainer's timing figures in an evaluation's metrics (kept out of train.evaluations).
TIMING_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second")


class TrainingDiverged(LlmkitError):
    """The loss became NaN or infinite."""


if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase, TrainerControl, TrainerState

    from llmkit.distill.loss import Distiller
    from llmkit.distill.run import Distillation
    from llmkit.recipe.schema import Recipe, TrainSection
    from llmkit.tasks import Task


class ShuffledLengthGroupedSampler(LengthGroupedSampler):
    """Batches of examples of nearly one length, handed out in random order. As Trainer's length
    grouping: the training set in random order, cut into chunks of CHUNK_BATCHES batches, each
    chunk sorted by length and cut into batches. Two differences, both measured on SST-2
    (docs/bench-time-to-accuracy-sst2-cpu.md, docs/bench-sst2-expert-cpu.md):
    - Trainer also caps a chunk at a quarter of the training set, which on small sets leaves much
      padding (9 batches a chunk on 600 rows x 16: 19% of the computed tokens) and is not kept:
      a set of at most CHUNK_BATCHES batches is sorted whole (7%).
    - Trainer hands the batches out longest to shortest within each chunk (a length curriculum
      that restarts every chunk and, on a short run, ends on the shortest examples); here they
      come in random order, the longest batch first (running out of memory happens at once) and a
      partial batch last.
    Sorting the whole of a large set instead (0.2% padding on SST-2's 67,349 rows against 4.6%)
    made MiniLM need 1.35x the steps to reach 0.85 dev accuracy (225 against 304 on average over
    six seeds, later in every one; the batches' label balance was the same, so why is open): a
    batch of one exact length learns less than one of a chunk's narrow length window."""

    CHUNK_BATCHES = 50  # Trainer's mega-batch

    # The order of an epoch is drawn from the process's random numbers as the epoch begins, which
    # a run resumed in the middle of a later epoch no longer has (Trainer restores them from the
    # checkpoint only after skipping that epoch's trained batches): it would train the rest of the
    # epoch on another order, some examples twice and others never. So each checkpoint keeps the
    # random-number state its epoch's order was drawn from (`drawn`, SAMPLER_STATE_FILE), and
    # the resumed run draws that epoch's order from it again (`replay`).
    epoch = 0
    drawn: tuple[int, torch.Tensor] | None = None  # (epoch, random-number state) of this epoch's order
    replay: tuple[int, torch.Tensor] | None = None  # the same, read from the checkpoint resumed

    def set_epoch(self, epoch: int) -> None:
        """Trainer (through accelerate's data loader) says which epoch is next."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = self.generator
        if self.replay is not None and self.replay[0] == self.epoch:
            generator = torch.Generator()
            generator.set_state(self.replay[1])
        self.replay = None
        self.drawn = (self.epoch, generator.get_state() if generator is not None else torch.get_rng_state())
        size = self.batch_size
        chunk_batches = max(1, min(self.CHUNK_BATCHES, len(self.lengths) // size))
        indices = get_length_grouped_indices(
            self.lengths, size, mega_batch_mult=chunk_batches, generator=generator
        )
        batches = [indices[start : start + size] for start in range(0, len(indices), size)]
        if not batches:
            return iter([])
        tail = [batches.pop()] if len(batches[-1]) < size else []
        first, rest = batches[:1], batches[1:]
        order = torch.randperm(len(rest), generator=generator).tolist()
        return iter([i for batch in [*first, *(rest[k] for k in order), *tail] for i in batch])


class LlmkitTrainer(Trainer):
    """Trainer that keeps evaluation time out of the training throughput it reports, stops on a
    non-finite loss, writes checkpoints atomically, and batches examples of nearly one length."""

    evaluation_seconds: float = 0.0
    # Set for tasks with a token-level loss (Task.token_level_loss): the training set's mean
    # labelled tokens per micro-batch, the fixed divisor of each micro-batch's summed token loss.
    labelled_tokens_per_micro_batch: float | None = None
    distiller: Distiller | None = None  # set when a teacher's cached logits come with the batches
    # Every evaluation made during training: step, epoch, the training time before it (evaluation
    # excluded) and the validation figures (results.json train.evaluations: time to accuracy).
    evaluations: list[dict[str, Any]]
    training_started: float | None = None  # when Trainer's training loop began (its train_runtime's start)
    resuming_from: Path | None = None  # the checkpoint this train() call resumes from
    length_sampler: ShuffledLengthGroupedSampler | None = None  # the training batches', if length-grouped

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.evaluations = []
        self.add_callback(_TrainingClock(self))

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if self.model is not None:
            follow_optimizer(self.model, optimizer)
        optimizer.register_load_state_dict_post_hook(self._check_resumed_optimizer_state)
        return optimizer

    def _check_resumed_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """A checkpoint's optimizer state must fit the weights it steps: torch loads moments of
        another shape without a word, and the first step then fails on a size mismatch."""
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                moment = optimizer.state.get(parameter, {}).get("exp_avg")
                if moment is not None and moment.shape != parameter.shape:
                    raise LlmkitError(
                        f"Cannot resume from '{self.resuming_from}': its optimizer state has a moment of "
                        f"shape {tuple(moment.shape)} for a weight of shape {tuple(parameter.shape)}.",
                        hint=f"a checkpoint of an llmkit that stepped the whole word-embedding table "
                        f"resumes with {USED_ROWS_ENV}=0 (and one that stepped only the rows its data "
                        f"uses, without it); otherwise start over with --overwrite",
                    )

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        self.resuming_from = Path(resume_from_checkpoint) if isinstance(resume_from_checkpoint, str) else None
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            sampler = ShuffledLengthGroupedSampler(
                sampler.batch_size, lengths=sampler.lengths, generator=sampler.generator
            )
            self.length_sampler = sampler
            saved = self.resuming_from / SAMPLER_STATE_FILE if self.resuming_from else None
            if saved is not None and saved.is_file():
                sampler.replay = torch.load(saved, weights_only=True)
        return sampler

    def _task_loss(
        self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        """The task's loss (compute_loss without a teacher). Training a token-level loss: the
        micro-batch's summed token losses over the mean number of labelled tokens a micro-batch
        has, so every token weighs the same in every batch, as random batches weigh them on
        average. Trainer's per-batch mean (the model's own loss) over-weighs the tokens of short
        batches, which length grouping makes common: on CoNLL-2003 (MiniLM LoRA, whole training
        set, 2 epochs) it cost 1.7 points of entity F1 against random batches. Evaluation keeps
        the model's own loss."""
        divisor = self.labelled_tokens_per_micro_batch
        if divisor is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop(LABELS)
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        summed = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        if not self._divides_loss_by_accumulation(num_items_in_batch):
            divisor *= self.current_gradient_accumulation_steps
        loss = summed / divisor
        return (loss, outputs) if return_outputs else loss

    def _divides_loss_by_accumulation(self, num_items_in_batch: Any) -> bool:
        """Whether Trainer.training_step divides compute_loss's result by the accumulation steps
        (its rule: not when it believes the model or compute_loss_func normalised it already)."""
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (
                self.model_accepts_loss_kwargs and num_items_in_batch is not None
            ) or self.compute_loss_func is not None
        return not scaled

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not bool(torch.isfinite(loss).all()):
            step = self.state.global_step + 1
            raise TrainingDiverged(
                f"Training diverged: the loss is {loss.item()} at step {step} "
                f"(learning rate {self._get_learning_rate():.3g}).",
                hint="lower train.learning_rate, raise train.warmup_ratio, or lower "
                "train.max_grad_norm; check the data for empty or extreme inputs",
            )
        return loss

    def compute_loss_context_manager(self) -> contextlib.ExitStack:
        """Trainer's (autocast is accelerate's, around the forward), plus the attention kernels
        a training forward on this device and precision should use."""
        stack = super().compute_loss_context_manager()
        if self.model is not None and self.model.training:
            stack.enter_context(training_attention_kernels(self.args.bf16, self.args.device.type))
        return stack

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        from llmkit.distill.cache import TEACHER_INDICES, TEACHER_LOGITS, TEACHER_MASK

        if self.distiller is None or TEACHER_LOGITS not in inputs:  # no teacher, or evaluation
            return self._task_loss(model, inputs, return_outputs, num_items_in_batch)
        teacher = {
            key: inputs.pop(key) for key in (TEACHER_LOGITS, TEACHER_INDICES, TEACHER_MASK) if key in inputs
        }
        if LABELS in inputs:  # the task's loss exactly as without a teacher
            task_loss, outputs = self._task_loss(model, inputs, True, num_items_in_batch)
        else:  # rows the teacher alone labels
            task_loss, outputs = None, model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        # The distillation term is averaged as the task loss is (Distiller says over what), and
        # divided by the accumulation steps as it is (by Trainer, or already when it does not).
        divided_later = self._divides_loss_by_accumulation(num_items_in_batch)
        accumulation = 1 if divided_later else self.current_gradient_accumulation_steps
        loss = self.distiller.loss(task_loss, logits, inputs["input_ids"].shape[1], teacher, accumulation)
        return (loss, outputs) if return_outputs else loss

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        final_root = Path(str(self.args.output_dir))
        staging_root = final_root / STAGING_DIR
        self.args.output_dir = str(staging_root)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        try:
            super()._save_checkpoint(model, trial)
            if self.args.should_save and self.length_sampler is not None and self.length_sampler.drawn:
                torch.save(self.length_sampler.drawn, staging_root / name / SAMPLER_STATE_FILE)
        finally:
            self.args.output_dir = str(final_root)
        # Every process writes its own random-number state into the checkpoint (and FSDP's
        # sharded saves write from every process): all must be done before it is moved into place.
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            move_into_place(staging_root / name, final_root / name)
            rotate_checkpoints(str(final_root), save_total_limit=self.args.save_total_limit)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not prompt_encoder_is_sharded(self.model):
            super().save_model(output_dir, _internal_call)
            return
        # Trainer's own FSDP saving (state dict gathered by every process, written by the main
        # one), with the prompt encoder whole while PEFT computes what it saves.
        state_dict = self.accelerator.get_state_dict(self.model)
        with unsharded_prompt_encoder(self.model):
            if self.args.should_save:
                self._save(output_dir or self.args.output_dir, state_dict=state_dict)

    def evaluate(self, eval_dataset: Any = None, *args: Any, **kwargs: Any) -> dict[str, float]:
        start = time.perf_counter()
        trained_s = start - (self.training_started or start) - self.evaluation_seconds
        try:
            metrics = super().evaluate(eval_dataset, *args, **kwargs)
        finally:
            self.evaluation_seconds += time.perf_counter() - start
        if self.is_in_train and eval_dataset is None:  # the validation split, during training
            self.evaluations.append(
                {
                    "step": self.state.global_step,
                    "epoch": round(self.state.epoch or 0.0, 4),
                    "training_s": round(trained_s, 3),
                    **{
                        key.removeprefix("eval_"): value
                        for key, value in metrics.items()
                        if key.startswith("eval_") and not key.endswith(TIMING_SUFFIXES)
                    },
                }
            )
        return metrics


class _TrainingClock(TrainerCallback):
    """Notes when the training loop begins, where Trainer starts the clock of its train_runtime."""

    def __init__(self, trainer: LlmkitTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.trainer.evaluations = []
        self.trainer.training_started = time.perf_counter()


class StopAtTarget(TrainerCallback):
    """Ends training once an evaluation reaches every target of eval.stop_at."""

    def __init__(self, targets: dict[str, float]) -> None:
        self.targets = targets

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if metrics and target_reached(metrics, self.targets):
            control.should_training_stop = True


class StepLog(TrainerCallback):
    """Appends every Trainer log entry (loss, learning rate, evaluations) to log.jsonl."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if state.is_world_process_zero and logs:
            entry = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs}
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(dumps(entry) + "\n")  # strict JSON: a NaN loss is null


class QuietProgress(ProgressCallback):
    """Progress bars, plus one line per evaluation with the task's metrics; step logs go to
    log.jsonl, not the terminal."""

    def __init__(self, metric_names: tuple[str, ...]) -> None:
        super().__init__()
        self.metric_names = ("loss", *metric_names)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs or "eval_loss" not in logs:
            return
        shown = "  ".join(
            f"{k.removeprefix('eval_')} {v:.4f}"
            for k, v in logs.items()
            if k.removeprefix("eval_") in self.metric_names
        )
        message = f"epoch {state.epoch or 0:.2f}  validation  {shown}"
        if self.training_bar is not None:
            self.training_bar.write(message)
        else:
            print(message)


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest complete checkpoint (partial ones stay under the staging directory)."""
    if not checkpoints_dir.is_dir():
        return None
    found = get_last_checkpoint(str(checkpoints_dir))
    return Path(found) if found else None


def warmup_steps(train: TrainSection, training_steps: int | None) -> float | int:
    """Trainer's warmup_steps: the ratio (Trainer makes it ceil(ratio x its steps)), or
    train.max_warmup_steps where the ratio of the run's `training_steps` would be longer."""
    limit = train.max_warmup_steps
    total = train.max_steps or training_steps
    if limit is None or total is None or math.ceil(train.warmup_ratio * total) <= limit:
        return train.warmup_ratio
    return limit


def training_arguments(
    recipe: Recipe,
    output_dir: Path,
    plan: BatchPlan,
    strategy: dict[str, Any] | None = None,
    keep_columns: bool = False,
    training_steps: int | None = None,
) -> TrainingArguments:
    """`strategy`: the arguments of train.distributed.strategy (llmkit.training.strategies);
    `keep_columns`: hand every column of the training split to the collator (the teacher's cache
    index), which then picks what the model takes."""
    train = recipe.train
    every = train.checkpoint_every
    precision = resolve_precision(train.precision)
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=train.epochs,
        max_steps=train.max_steps or -1,
        learning_rate=recipe.learning_rate,
        per_device_train_batch_size=plan.micro_batch_size,
        # Trainer's LengthGroupedSampler: random mega-batches of 50 batches, sorted by length
        # inside, so each batch pads to a length close to its examples' own.
        train_sampling_strategy="group_by_length" if train.group_by_length else "random",
        gradient_accumulation_steps=plan.accumulation_steps,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        # Without CUDA, processes started by accelerate's launcher train on CPU over gloo.
        use_cpu=not torch.cuda.is_available(),
        per_device_eval_batch_size=train.eval_batch_size,
        weight_decay=train.weight_decay,
        warmup_steps=warmup_steps(train, training_steps),
        lr_scheduler_type=train.lr_scheduler,
        max_grad_norm=train.max_grad_norm,
        seed=train.seed,
        data_seed=train.seed,
        eval_strategy="steps" if recipe.eval.every_steps else "epoch",
        eval_steps=recipe.eval.every_steps,
        save_strategy="no" if every is None else "epoch" if every == "epoch" else "steps",
        save_steps=every if isinstance(every, int) else 500,
        save_total_limit=train.keep_checkpoints,
        logging_strategy="steps",
        logging_steps=train.logging_steps,
        report_to=report_to(train.report_to),
        disable_tqdm=False,  # its default follows the logging level, which llmkit lowers
        label_names=[LABELS],
        # On by default in transformers 5, it multiplies each process's loss by the number of
        # processes, which is right for token-summed LM losses only: a classification loss is
        # already a per-example mean, so it would scale gradients (and the eval loss) by N.
        average_tokens_across_devices=False,
        # Trainer searches for unused parameters whenever the model is not a plain transformers
        # model (a PeftModel): every method here uses all its trainable parameters in each step
        # (tested with 2 processes), so the search would only cost an extra graph traversal.
        ddp_find_unused_parameters=get_method(recipe.method.name).options.may_leave_parameters_unused,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=not keep_columns,
        **(strategy or {}),
    )


def _per_micro_batch(total: int, plan: BatchPlan, rows: int) -> float:
    """The mean number a training micro-batch holds of something the training rows hold `total` of."""
    return max(total, 1) * plan.micro_batch_size / max(rows, 1)


def build_trainer(
    recipe: Recipe,
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Dataset,
    eval_dataset: Dataset,
    task: Task,
    label_names: list[str],
    output_dir: Path,
    log_path: Path,
    plan: BatchPlan,
    distillation: Distillation | None = None,
) -> LlmkitTrainer:
    """`distillation`: the teacher's settings and cached logits (`cache_logits` has run), which
    the collator adds to training batches and the loss learns from."""
    from llmkit.distill.cache import DistillationCollator
    from llmkit.distill.loss import Distiller

    strategy = trainer_arguments(recipe.train.distributed, model)
    collator = task.collator(tokenizer, recipe.method)
    if distillation is not None:
        assert distillation.logits is not None, "the teacher's logits are cached before training"
        collator = DistillationCollator(collator, distillation.logits)
    trainer = LlmkitTrainer(
        model=model,
        args=training_arguments(
            recipe,
            output_dir,
            plan,
            strategy,
            keep_columns=distillation is not None,
            training_steps=plan.optimizer_steps(len(train_dataset), recipe.train.epochs),
        ),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        compute_metrics=task.compute_metrics(recipe.eval, label_names),
        preprocess_logits_for_metrics=task.logits_for_metrics(),
        callbacks=[StepLog(log_path), *([StopAtTarget(recipe.eval.stop_at)] if recipe.eval.stop_at else [])],
    )
    # Trainer passes a model whose forward takes **kwargs the batch's item count and then leaves
    # the loss undivided by the accumulation steps; a classification head ignores the count.
    trainer.model_accepts_loss_kwargs = trainer.model_accepts_loss_kwargs and task.model_loss_counts_items
    if task.token_level_loss:
        labelled = sum(sum(1 for label in row if label != -100) for row in train_dataset[LABELS])
        trainer.labelled_tokens_per_micro_batch = _per_micro_batch(labelled, plan, len(train_dataset))
    if distillation is not None:
        trainer.distiller = Distiller(distillation.options, task)
        if task.token_level_loss:
            trainer.distiller.positions_per_micro_batch = _per_micro_batch(
                distillation.positions, plan, len(train_dataset)
            )
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(QuietProgress(task.metric_names(recipe.eval)))
    place_tracker_files(trainer, log_path.parent)
    return trainer
