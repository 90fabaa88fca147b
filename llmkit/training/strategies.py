"""How several processes share the training (`train.distributed.strategy`): DDP, FSDP or DeepSpeed
ZeRO. llmkit writes no engine of its own: each strategy becomes Trainer arguments, which hand it to
accelerate. What llmkit adds is a check before launching that this machine can run the strategy,
and a gather of sharded weights at the end, so a sharded run saves the same files as one process.

No heavy imports at module level: the CLI checks a strategy before it launches processes."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from llmkit.errors import LlmkitError
from llmkit.recipe.schema import DistributedSection

# DeepSpeed's stage when the recipe names none: 3 shards parameters too, as FSDP does.
DEFAULT_ZERO_STAGE = 3


class StrategyUnavailable(LlmkitError):
    """The strategy cannot run with the installed packages or on this hardware."""


def check_strategy(distributed: DistributedSection, launched: bool = True) -> None:
    """Refuse, before anything is launched or loaded, a strategy this machine cannot run.

    FSDP needs CUDA: accelerate 1.15 turns its FSDP plugin on only for GPU process groups, and on
    CPU silently trains plain DDP instead, so llmkit refuses rather than report a sharded run that
    was not. DeepSpeed needs its package, and runs on GPUs or CPUs: without CUDA, accelerate
    starts a gloo process group for the CPU processes and hands Trainer the DeepSpeed engine over
    it (DeepSpeed's CPU accelerator). Both need the processes accelerate's launcher starts
    (`launched`): a lone process has no group to shard over."""
    import torch

    strategy = distributed.strategy
    if strategy == "ddp":
        return
    if strategy == "fsdp" and not torch.cuda.is_available():
        raise StrategyUnavailable(
            "train.distributed.strategy=fsdp needs CUDA GPUs "
            "(accelerate runs it only on GPU process groups).",
            hint="on CPU use train.distributed.strategy=ddp (the default), or deepspeed (ZeRO sharding, "
            "with the deepspeed package)",
        )
    if strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        alternative = "fsdp, which needs only torch" if torch.cuda.is_available() else "ddp (the default)"
        raise StrategyUnavailable(
            "train.distributed.strategy=deepspeed needs the deepspeed package (`pip install deepspeed`, "
            "or llmkit's `deepspeed` extra).",
            hint=f"install deepspeed, or use train.distributed.strategy={alternative}",
        )
    if not launched:
        raise StrategyUnavailable(
            f"train.distributed.strategy={strategy} runs in processes started by accelerate's launcher.",
            hint="run it with `llmkit finetune`, which launches them (--num-processes N), or with "
            "`accelerate launch -m llmkit finetune ...`",
        )


def launcher_arguments(distributed: DistributedSection, world_size: int | None) -> list[str]:
    """accelerate launch's flags for the strategy (`world_size` None: an accelerate config file's).
    FSDP and DeepSpeed start through torchrun even for one process (a GPU process group of one
    runs the same sharded code); their settings reach accelerate through Trainer's arguments, so a
    user's own `accelerate launch` gets the same."""
    if distributed.strategy == "fsdp":
        return ["--use_fsdp", "--fsdp_version", "2"]
    if distributed.strategy == "deepspeed":
        stage = distributed.zero_stage or DEFAULT_ZERO_STAGE
        # torchrun-style rendezvous on every machine, as for the other strategies (not pdsh).
        return ["--use_deepspeed", "--zero_stage", str(stage), "--deepspeed_multinode_launcher", "standalone"]
    return ["--multi_gpu"] if world_size is not None and world_size > 1 else []


def set_process_environment(distributed: DistributedSection) -> None:
    """What accelerate's launcher sets for the strategy, set in this process before its process
    group starts, so `accelerate launch -m llmkit` without the flags behaves the same (DeepSpeed,
    for one, must start the group itself)."""
    if distributed.strategy == "fsdp":
        os.environ.setdefault("ACCELERATE_USE_FSDP", "true")
        os.environ.setdefault("FSDP_VERSION", "2")
        os.environ.setdefault("FSDP_STATE_DICT_TYPE", "FULL_STATE_DICT")
        # Every process loads the checkpoint and builds the new head and adapters from the seed.
        # accelerate's launcher turns on loading the weights in the main process only, where
        # transformers gives the other processes empty (meta) tensors to be filled from the main
        # one, and the freshly made classifier head of those stays empty (FSDP then refuses).
        os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
    elif distributed.strategy == "deepspeed":
        os.environ.setdefault("ACCELERATE_USE_DEEPSPEED", "true")


def trainer_arguments(distributed: DistributedSection, model: Any) -> dict[str, Any]:
    """TrainingArguments for the strategy (ddp needs none: accelerate wraps a process group's
    model in DDP by itself)."""
    if distributed.strategy == "fsdp":
        return {
            "fsdp": True,
            "fsdp_config": {
                "version": 2,
                # Full shard: parameters, gradients and optimizer state split over the processes;
                # each transformer layer is gathered only while it computes.
                "reshard_after_forward": True,
                "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                "transformer_layer_cls_to_wrap": transformer_layer_classes(model),
                # Checkpoints hold whole tensors, so a run can resume on another number of processes
                # and its weights load like any other.
                "state_dict_type": "FULL_STATE_DICT",
            },
        }
    if distributed.strategy == "deepspeed":
        stage = distributed.zero_stage or DEFAULT_ZERO_STAGE
        return {
            "deepspeed": {
                # "auto": Trainer fills these from its own arguments, so the recipe stays the truth.
                "train_batch_size": "auto",
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "gradient_clipping": "auto",
                "bf16": {"enabled": "auto"},
                "fp16": {"enabled": "auto"},
                "zero_optimization": {
                    "stage": stage,
                    "stage3_gather_16bit_weights_on_model_save": True,
                    # ZeRO-3 keeps whole on every process each parameter at most this big: Trainer
                    # makes it 10 x the hidden size, so vectors stay whole and every weight matrix
                    # is sharded (DeepSpeed's own 100k elements keeps a small model's all whole).
                    "stage3_param_persistence_threshold": "auto",
                },
            }
        }
    return {}


def transformer_layer_classes(model: Any) -> list[str]:
    """The model's repeated layer classes (what transformers keeps whole when splitting a model
    over devices): FSDP wraps each such layer as one unit."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    classes = list(getattr(base, "_no_split_modules", None) or [])
    if not classes:
        raise StrategyUnavailable(
            f"FSDP wraps each transformer layer, and {type(base).__name__} does not name its layer class.",
            hint="use train.distributed.strategy=ddp for this model",
        )
    return classes


def gathered_state_dict(trainer: Any, distributed: DistributedSection) -> dict[str, Any] | None:
    """The whole model's weights when they are sharded over the processes (None otherwise: each
    process already holds them). A collective: every process must call it; the main process gets
    the tensors, the others an empty dict."""
    if not distributed.shards:
        return None
    # As Trainer.save_model does: after training, Trainer's model_wrapped no longer is DeepSpeed's
    # engine (kept as trainer.deepspeed); FSDP2 shards the model itself, in place.
    sharded = trainer.deepspeed if distributed.strategy == "deepspeed" else trainer.model
    state: dict[str, Any] = trainer.accelerator.get_state_dict(sharded)
    return state


def engine_tensors_at_rest(trainer: Any, distributed: DistributedSection) -> list[Any]:
    """What a sharding engine holds beside the model's parameters and the optimizer's state
    between training steps, for the training state a run reports (llmkit.memory). DeepSpeed's
    ZeRO keeps its optimizer's fp32 copy of this process's partition of the trained weights, and
    at stage 3 this process's partition of every parameter (`ds_tensor`; the parameters
    themselves hold data only while gathered). ZeRO-3 keeps the parameters an evaluation
    gathered until the next step releases them: they are released here first, as that step
    would. FSDP2 (which reshards after every forward) and DDP hold nothing more."""
    if distributed.strategy != "deepspeed":
        return []
    trainer.deepspeed.empty_partition_cache()
    zero = trainer.deepspeed.optimizer
    partitions = [
        p.ds_tensor for p in trainer.model.parameters() if getattr(p, "ds_tensor", None) is not None
    ]
    masters = getattr(zero, "single_partition_of_fp32_groups", None) or getattr(
        zero, "fp32_partitioned_groups_flat", []
    )
    return [*partitions, *masters]


def prompt_encoder_is_sharded(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule) and getattr(model, "prompt_encoder", None) is not None


@contextmanager
def unsharded_prompt_encoder(model: Any) -> Iterator[None]:
    """A prompt or prefix adapter's encoder whole (not sharded) while PEFT saves it: PEFT computes
    the vectors it saves by running the encoder outside any forward pass, on the live weights
    rather than the gathered state dict, and FSDP2 holds them in shards there. Enter it after
    gathering the state dict (which reshards). A collective: every process enters it."""
    from torch.distributed.fsdp import FSDPModule

    if not prompt_encoder_is_sharded(model):
        yield
        return
    units = [model, *(m for m in model.prompt_encoder.modules() if isinstance(m, FSDPModule))]
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()


def plain_class_name(model: Any) -> str:
    """The model's class as a one-process run names it: FSDP2 wraps a module's class in a subclass
    called FSDP<name>."""
    return type(model).__name__.removeprefix("FSDP")
