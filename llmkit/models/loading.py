"""Loading a checkpoint with a fresh head for the task, ready for any tuning method, and loading a
trained one back from a run directory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import ModelError
from llmkit.models.checkpoint import CheckpointLocation, dequantised_checkpoint, locate_checkpoint
from llmkit.models.traits import ModelTraits

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from llmkit.tasks import Task

LABELS_FILE = "labels.json"


@dataclass
class LoadedModel:
    model: Any  # a PreTrainedModel, or a PeftModel once a method has wrapped it
    tokenizer: PreTrainedTokenizerBase
    traits: ModelTraits


# Weights are kept in fp32 whatever the checkpoint stores (transformers 5 would keep a bf16 hub
# checkpoint in bf16): optimizer updates need fp32 master weights, and bf16/fp16 training is mixed
# precision (autocast) over them.
WEIGHTS_DTYPE = "float32"


def load_classifier(
    reference: str,
    label_names: list[str],
    revision: str | None = None,
    task: Task | None = None,
    dropout: float | None = None,
) -> LoadedModel:
    """The checkpoint with a fresh head for `label_names`, built by the task's auto class
    (sequence classification when `task` is None); every dropout at `dropout` unless None."""
    from transformers import AutoConfig

    from llmkit.models.dropout import set_dropout

    task = _task_or_default(task)
    location = locate_checkpoint(reference)
    source = str(dequantised_checkpoint(location.gguf_file)) if location.gguf_file else location.path
    with _explained_load_errors(location):
        config = AutoConfig.from_pretrained(source, revision=revision)
        task.check_model_type(config.model_type, reference)
        config.num_labels = len(label_names)
        config.id2label = dict(enumerate(label_names))
        config.label2id = {name: index for index, name in enumerate(label_names)}
        if dropout is not None:
            set_dropout(config, dropout, reference)
        tokenizer = task.adapt_tokenizer(load_tokenizer(source, revision))
        config.pad_token_id = tokenizer.pad_token_id
        model, info = task.auto_model_class().from_pretrained(
            source, config=config, revision=revision, output_loading_info=True, dtype=WEIGHTS_DTYPE
        )
    new_modules = sorted({key.rsplit(".", 1)[0] for key in info["missing_keys"]})
    return _ready(model, tokenizer, task, new_modules)


def _task_or_default(task: Task | None) -> Task:
    from llmkit.tasks import task_for

    return task if task is not None else task_for()


def load_tokenizer(source: str, revision: str | None = None) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    if tokenizer.pad_token is None:
        # GPT-style tokenizers have no pad token. Padding is masked out and the classifier reads
        # the last real token, so any existing token serves; end-of-text is the convention.
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelError("The tokenizer has no pad, end-of-text or unknown token to pad with.")
        tokenizer.pad_token = fallback
    # Right padding keeps every real token at the position it has alone (GPT-2 and Llama number
    # positions 0..n-1 whatever the mask), so a sentence scores the same alone and in a batch.
    tokenizer.padding_side = "right"
    return tokenizer


def is_decoder(model_type: str) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    # Encoders (BERT family) have masked-LM heads and classify from [CLS]; decoders do not.
    return model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _ready(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    new_modules: list[str],
) -> LoadedModel:
    model_type = str(model.config.model_type)
    traits = ModelTraits(
        model_type=model_type,
        is_decoder=is_decoder(model_type),
        new_modules=tuple(new_modules),
        linear_module_names=_linear_module_names(model, exclude=new_modules),
        peft_task_type=task.peft_task_type,
    )
    task.adapt_model(model, traits)
    return LoadedModel(model=model, tokenizer=tokenizer, traits=traits)


def _linear_module_names(model: PreTrainedModel, exclude: list[str]) -> tuple[str, ...]:
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    names: dict[str, None] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | Conv1D) and name not in exclude:
            names.setdefault(name.rsplit(".", 1)[-1], None)
    return tuple(names)


@contextmanager
def _explained_load_errors(location: CheckpointLocation) -> Iterator[None]:
    try:
        yield
    except ModelError:
        raise
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if location.is_local:
            raise ModelError(f"Could not load the checkpoint at '{location.path}': {first_line}") from exc
        raise ModelError(
            f"Could not load '{location.reference}' from the Hugging Face hub: {first_line}",
            hint="without network access, download the model where there is one "
            f"(`hf download {location.reference} --local-dir DIR`), copy DIR here and set "
            "model.checkpoint=DIR",
        ) from exc


def save_trained(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    label_names: list[str],
    path: Path,
    max_length: int | None = None,
    state_dict: dict[str, Any] | None = None,
) -> None:
    """Write the model (or adapter with its trained head), tokenizer and label names. The
    tokenizer keeps the training `max_length` as its limit, so tools that truncate at the
    tokenizer's limit (`pipeline(..., truncation=True)`) cut where training did. `state_dict`:
    the whole model's weights gathered from a sharded run (PEFT keeps the adapter's part)."""
    model.save_pretrained(path, state_dict=state_dict)
    if max_length is not None:
        tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(path)
    (path / LABELS_FILE).write_text(json.dumps({"label_names": label_names}, indent=2) + "\n")


def load_trained(
    path: Path, base_reference: str, revision: str | None = None, task: Task | None = None
) -> LoadedModel:
    """A model saved by `save_trained`: a full checkpoint, or an adapter on its base checkpoint.
    Also any plain checkpoint of the task, such as `llmkit merge`'s output."""
    task = _task_or_default(task)
    if (path / "adapter_config.json").is_file():
        label_names = json.loads((path / LABELS_FILE).read_text())["label_names"]
        from peft import PeftModel

        loaded = load_classifier(base_reference, label_names, revision, task)
        from llmkit.methods.peft_common import adapted_to_installed_libraries

        loaded.model = adapted_to_installed_libraries(PeftModel.from_pretrained(loaded.model, path))
        loaded.tokenizer = task.adapt_tokenizer(load_tokenizer(str(path)))
        return loaded
    model = task.auto_model_class().from_pretrained(path, dtype=WEIGHTS_DTYPE)
    return _ready(model, task.adapt_tokenizer(load_tokenizer(str(path))), task, new_modules=[])
