"""The model card (README.md) written into every saved model: what was trained, on what, how well,
how to load it with plain transformers/PEFT, and how to train it again. Its metadata is the Hub's
(library_name, pipeline_tag, base_model when the base is a hub model, tags, model-index).

Task-specific content (the pipeline tag, the labels, how a pipeline is called) comes from
`TaskCard`, so other tasks supply their own."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from llmkit.models.sharing import BaseReference
from llmkit.recipe.schema import Recipe

CARD_FILE = "README.md"
DATA_SPLITS = ("train", "validation", "test")
# PEFT's names for the methods, as tags on the Hub.
METHOD_TAGS = {"lora": "lora", "prefix": "prefix-tuning", "prompt": "prompt-tuning"}


@dataclass(frozen=True)
class TaskCard:
    """What the card says about the task: its Hub pipeline tag and labels, and how to call it."""

    pipeline_tag: str
    label_names: list[str]
    example_call: str  # the pipeline (as `classifier`) called on an example input
    auto_class: str = "AutoModelForSequenceClassification"  # the transformers class of the task's head

    def label_arguments(self, indent: str) -> str:
        """from_pretrained keyword arguments that give the base model this task's head (none for
        a task without labels, such as generation)."""
        if not self.label_names:
            return ""
        return (
            f"{indent}num_labels=len(labels),\n"
            f"{indent}id2label=dict(enumerate(labels)),\n"
            f"{indent}label2id={{label: i for i, label in enumerate(labels)}},\n"
        )


@dataclass(frozen=True)
class CardFacts:
    recipe: Recipe
    results: dict[str, Any]  # the run's results.json content
    base: BaseReference
    task: TaskCard
    is_adapter: bool
    model_dir: str  # as the reader refers to it: relative to where llmkit ran, or its name
    # Score one text per call: a padded batch would be read at a pad position outside llmkit.
    unpadded_only: bool = False
    # Why plain PEFT cannot run this adapter on the installed libraries without llmkit's fix.
    plain_peft_gap: str | None = None

    @property
    def method(self) -> str:
        return self.recipe.method.name


def card_facts(recipe: Recipe, results: dict[str, Any], model_dir: Path, is_adapter: bool) -> CardFacts:
    from llmkit.models.loading import is_decoder
    from llmkit.models.sharing import base_reference
    from llmkit.tasks import task_for

    task = task_for(recipe.task)
    card = TaskCard(
        task.hub_pipeline_tag,
        list(results["data"]["label_names"]),
        task.pipeline_example(recipe.data.text_columns),
        task.auto_model_class().__name__,
    )
    options = recipe.method
    # Virtual tokens in the input mean PEFT feeds embeddings, where a decoder's head cannot find
    # padding (llmkit's pooling hook, llmkit/models/pooling.py, is not saved with the model).
    unpadded_only = options.virtual_tokens_in_input and is_decoder(results["model"]["model_type"])
    return CardFacts(
        recipe,
        results,
        base_reference(recipe.model.checkpoint),
        card,
        is_adapter,
        shown_path(model_dir),
        unpadded_only,
        plain_peft_gap=options.plain_peft_gap if is_adapter else None,
    )


def run_loading_code(recipe: Recipe, results: dict[str, Any], model_dir: Path) -> str:
    """The card's loading code for a run just trained here, with the model's path as this machine
    reaches it (printed after training)."""
    from llmkit.models.sharing import ADAPTER_CONFIG_FILE

    facts = card_facts(recipe, results, model_dir, (model_dir / ADAPTER_CONFIG_FILE).is_file())
    return loading_code(replace(facts, model_dir=_relative_to_cwd(model_dir) or str(model_dir.resolve())))


def shown_path(path: Path) -> str:
    """`path` as the card refers to it: relative to the working directory when under it, else
    by its name (an absolute path names this machine's folders)."""
    return _relative_to_cwd(path) or path.name


def _relative_to_cwd(path: Path) -> str | None:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return None


def loading_code(facts: CardFacts) -> str:
    """Plain transformers/PEFT code that loads the model with its labels and classifies as
    `llmkit predict` does (truncated at the training max_length)."""
    task = facts.task
    head = "from transformers import pipeline\n\n"
    if not facts.is_adapter:
        return (
            f'{head}classifier = pipeline("{task.pipeline_tag}", model={facts.model_dir!r})\n'
            f"print({task.example_call})\n"
        )
    base = facts.base
    imports = "import importlib.resources\n\n" if base.module else ""
    if base.loader_expression is None:
        base_line = (
            f"base_model = {base.reference!r}  # the base checkpoint's directory: point this at your copy\n"
        )
    else:
        base_line = f"base_model = {base.loader_expression}\n"
    gguf = f"    gguf_file={base.gguf_file!r},\n" if base.gguf_file else ""
    batching = ", batch_size=1" if facts.unpadded_only else ""
    labels_line = f"labels = {task.label_names!r}\n" if task.label_names else ""
    fix = (
        "# plain PEFT cannot run this adapter on these library versions (see above):\n"
        "from llmkit.methods.peft_common import adapted_to_installed_libraries\n\n"
        "model = adapted_to_installed_libraries(model)\n"
        if facts.plain_peft_gap
        else ""
    )
    return (
        f"{imports}from peft import PeftModel\n"
        f"from transformers import {task.auto_class}, AutoTokenizer, pipeline\n\n"
        f"model_dir = {facts.model_dir!r}\n"
        f"{labels_line}"
        f"{base_line}"
        "tokenizer = AutoTokenizer.from_pretrained(model_dir)\n"
        f"base = {task.auto_class}.from_pretrained(\n"
        "    base_model,\n"
        f"{gguf}"
        f"{task.label_arguments('    ')}"
        "    pad_token_id=tokenizer.pad_token_id,\n"
        '    dtype="float32",  # as llmkit trains and predicts\n'
        ")\n"
        "model = PeftModel.from_pretrained(base, model_dir).eval()\n"
        f"{fix}"
        f'classifier = pipeline("{task.pipeline_tag}", model=model, tokenizer=tokenizer{batching})\n'
        f"print({task.example_call})\n"
    )


def write_card(directory: Path, facts: CardFacts) -> None:
    (directory / CARD_FILE).write_text(card_text(facts), encoding="utf-8")


def card_text(facts: CardFacts) -> str:
    from huggingface_hub import ModelCard

    metadata = yaml.safe_dump(card_metadata(facts), sort_keys=False, allow_unicode=True)
    card = ModelCard(f"---\n{metadata}---\n\n{_body(facts)}")
    return str(card)


def card_metadata(facts: CardFacts) -> dict[str, Any]:
    from huggingface_hub import EvalResult, ModelCardData

    metrics = facts.results["metrics"]
    files = _data_files(facts.recipe)
    results = [
        EvalResult(
            task_type=facts.task.pipeline_tag,
            dataset_type=facts.recipe.data.dataset or "local",
            dataset_name=facts.recipe.data.dataset or files.get(split, split),
            dataset_split=split,
            metric_type=name,
            metric_value=float(value),
        )
        for split, values in metrics.items()
        for name, value in values.items()
        if name != "loss"
    ]
    tags = ["llmkit", facts.task.pipeline_tag, METHOD_TAGS.get(facts.method, facts.method)]
    data = ModelCardData(
        library_name="peft" if facts.is_adapter else "transformers",
        pipeline_tag=facts.task.pipeline_tag,
        base_model=facts.base.hub_id,
        tags=tags,
        model_name=Path(facts.model_dir).parent.name or Path(facts.model_dir).name,
        eval_results=results or None,
    )
    return data.to_dict()


def _data_files(recipe: Recipe) -> dict[str, str]:
    data = recipe.data
    paths = {"train": data.train_file, "validation": data.validation_file, "test": data.test_file}
    return {split: Path(path).name for split, path in paths.items() if path is not None}


def _body(facts: CardFacts) -> str:
    recipe, results = facts.recipe, facts.results
    base = facts.base.hub_id or facts.base.reference
    sections = [
        f"# {facts.method} fine-tune of {base} for {facts.task.pipeline_tag}",
        f"Trained with llmkit {results['versions']['llmkit']}: {recipe.method.name} "
        f"({_method_summary(recipe)}) on `{facts.base.reference}`"
        f"{'' if facts.base.hub_id else ' (not a Hub model)'}.",
        ("## Labels\n\n" + ", ".join(f"{i}: `{name}`" for i, name in enumerate(facts.task.label_names)))
        if facts.task.label_names
        else "## Labels\n\nNone: the model generates text.",
        "## Data\n\n" + _data_table(facts),
        "## Results\n\n" + _metrics_table(results["metrics"]),
        "## Use it\n\n"
        + _loading_note(facts)
        + f"\n\n```python\n{loading_code(facts)}```\n\nWith llmkit: `llmkit predict RUN_DIR -i FILE`.",
        "## Reproduce\n\n"
        "Save the recipe below as `recipe.yaml` (data paths as file names: point them at your "
        "copies), then run `llmkit finetune recipe.yaml`.\n\n"
        f"```yaml\n{_shareable_recipe(facts)}```",
        "## Versions\n\n" + ", ".join(f"{name} {version}" for name, version in results["versions"].items()),
    ]
    return "\n\n".join(sections) + "\n"


def _method_summary(recipe: Recipe) -> str:
    options = recipe.method.model_dump(mode="json")
    options.pop("name")
    settings = ", ".join(f"{key} {value}" for key, value in options.items())
    train = recipe.train
    return ", ".join(
        part
        for part in (
            settings,
            f"learning rate {recipe.learning_rate:g}",
            f"batch {train.batch_size}",
            f"{train.epochs:g} epochs" if train.max_steps is None else f"{train.max_steps} steps",
            f"max_length {recipe.data.max_length}",
            f"seed {train.seed}",
        )
        if part
    )


def _data_table(facts: CardFacts) -> str:
    data, files = facts.results["data"], _data_files(facts.recipe)
    source = facts.recipe.data.dataset
    rows = ["| split | source | rows |", "| --- | --- | --- |"]
    for split in DATA_SPLITS:
        count = data.get(f"{split}_rows")
        if count is None:
            continue
        origin = files.get(split) or (f"{source} ({split})" if source else "")
        if split == "validation" and data.get("validation_carved_from_train"):
            origin = f"carved from {files.get('train', 'train')}"
        rows.append(f"| {split} | {origin} | {count} |")
    return "\n".join(rows)


def _metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    splits = list(metrics)
    names = list(dict.fromkeys(name for values in metrics.values() for name in values))
    rows = ["| metric | " + " | ".join(splits) + " |", "| --- |" + " --- |" * len(splits)]
    for name in names:
        cells = (f"{metrics[s][name]:.4f}" if name in metrics[s] else "-" for s in splits)
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _loading_note(facts: CardFacts) -> str:
    if not facts.is_adapter:
        return "A plain transformers checkpoint; the labels are in its config:"
    note = (
        "An adapter on the base model, with its trained classification head. Loading it needs the "
        f"label count and names ({len(facts.task.label_names)} labels), which the base model's "
        "config does not have, so the base is loaded with them first:"
    )
    if facts.base.loader_expression is None:
        note += " set `base_model` to your copy of the base checkpoint."
    if facts.plain_peft_gap:
        note += (
            f"\n\n{facts.plain_peft_gap}: one llmkit call adapts the loaded model (the rest is plain "
            "transformers/PEFT)."
        )
    if facts.unpadded_only:
        note += (
            "\n\nGive it one text per call (the pipeline's default `batch_size=1`): prompt tuning "
            "feeds the model embeddings, in which a decoder's classifier cannot find padding, so in "
            "a padded batch it would read a pad position (llmkit predict handles this itself)."
        )
    return note


def _shareable_recipe(facts: CardFacts) -> str:
    tree = facts.recipe.model_dump(mode="json")
    tree["model"]["checkpoint"] = facts.base.reference
    for key, value in tree["data"].items():
        if key.endswith("_file") and value is not None:
            tree["data"][key] = Path(value).name
    tree["output_dir"] = None
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)
