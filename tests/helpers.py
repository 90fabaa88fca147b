"""Plain helpers for the tests: building tiny checkpoints and data files, writing recipes, running
the CLI. The fixtures in conftest.py wrap them; tests import the constants and small functions."""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Synthetic sentiment: a sentence is positive or negative by the one cue word among its fillers.
POSITIVE = ("great", "excellent", "wonderful", "love", "superb")
NEGATIVE = ("terrible", "awful", "boring", "hate", "dreadful")
FILLERS = (
    "the", "a", "movie", "film", "plot", "story", "actor", "was", "is", "really", "quite",
    "and", "but", "it", "this", "show", "very", "had", "some", "scenes", "music",
)  # fmt: skip
CORPUS_WORDS = (*FILLERS, *POSITIVE, *NEGATIVE)
FILLERS_PER_SENTENCE = (2, 6)

ARCHITECTURES = ("bert", "gpt2")
METHODS = ("full", "lora", "prefix", "prompt")
HIDDEN_SIZE = 64  # both tiny checkpoints
NUM_LAYERS = 2


# ----------------------------------------------------------------------------- checkpoints


def save_tiny_bert(directory: Path) -> None:
    """A random 2-layer BERT with a word-level tokenizer over the corpus words: [CLS] A [SEP] for
    single inputs, [CLS] A [SEP] B [SEP] with segment ids 0/1 for pairs."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {token: i for i, token in enumerate([*specials, *sorted(set(CORPUS_WORDS))])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        intermediate_size=4 * HIDDEN_SIZE,
        max_position_embeddings=512,
        pad_token_id=vocab["[PAD]"],
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def save_tiny_gpt2(directory: Path) -> None:
    """A random 2-layer GPT-2 with a byte-level BPE trained on corpus-like text. Like GPT-2's own
    tokenizer it has an end-of-text token and no pad token."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    end_of_text = "<|endoftext|>"
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(CORPUS_WORDS) for _ in range(8)) for _ in range(300)]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=[end_of_text],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=end_of_text, eos_token=end_of_text
    )
    end_id = backend.token_to_id(end_of_text)
    config = GPT2Config(
        vocab_size=backend.get_vocab_size(),
        n_embd=HIDDEN_SIZE,
        n_layer=NUM_LAYERS,
        n_head=4,
        n_positions=1024,
        bos_token_id=end_id,
        eos_token_id=end_id,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataFiles:
    train: Path
    validation: Path
    test: Path | None
    text_columns: tuple[str, ...] = ("text",)
    label_column: str = "label"

    def recipe_section(self) -> dict[str, Any]:
        section: dict[str, Any] = {
            "train_file": str(self.train),
            "validation_file": str(self.validation),
            "text_columns": list(self.text_columns),
            "label_column": self.label_column,
        }
        if self.test is not None:
            section["test_file"] = str(self.test)
        return section


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def sentiment_sentence(rng: random.Random, label: int | None) -> str:
    """A few fillers plus one cue word: positive for 1, negative for 0, none for None."""
    words = [rng.choice(FILLERS) for _ in range(rng.randint(*FILLERS_PER_SENTENCE))]
    if label is not None:
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
    return " ".join(words)


def read_labels(path: Path, column: str = "label") -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [row[column] for row in csv.DictReader(handle)]


def majority_rate(path: Path, column: str = "label") -> float:
    labels = read_labels(path, column)
    return max(labels.count(label) for label in set(labels)) / len(labels)


# ----------------------------------------------------------------------------- recipes and CLI


def recipe_tree(
    checkpoint: Path | str,
    data: DataFiles,
    method: str | dict[str, Any] = "full",
    train: dict[str, Any] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    return {
        "model": {"checkpoint": str(checkpoint)},
        "data": data.recipe_section(),
        "method": {"name": method} if isinstance(method, str) else dict(method),
        # Small by default: a test states the settings it depends on.
        "train": {"epochs": 1, "batch_size": 8, "logging_steps": 5, **(train or {})},
        **sections,
    }


def write_recipe(path: Path, *args: Any, **kwargs: Any) -> Path:
    """A recipe file for a checkpoint, data files, method and train settings (see recipe_tree)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe_tree(*args, **kwargs), sort_keys=False), encoding="utf-8")
    return path


def invoke(*args: Any) -> Any:
    """`llmkit ARGS...` in-process. typer's CliRunner keeps the streams apart (`result.stdout`,
    `result.stderr`) and interleaves both in `result.output`, as a terminal would show them."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    return CliRunner().invoke(app, [str(arg) for arg in args])


def explain(result: Any) -> str:
    """What a CLI run printed, for assertion messages."""
    return f"exit code {result.exit_code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr[-4000:]}"


def log_entries(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def results_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text())


# ----------------------------------------------------------------------------- scoring


def validation_logits(run_dir: Path, model: Any, tokenizer: Any) -> tuple[Any, Any]:
    """Logits and labels for a run's validation file, tokenised as training tokenises it (with the
    run's recipe.yaml) and scored in one padded batch in eval mode."""
    import torch
    from transformers import DataCollatorWithPadding

    from llmkit.data.loading import load_splits
    from llmkit.data.tokenize import tokenize_split
    from llmkit.recipe.loading import load_recipe

    recipe = load_recipe(run_dir / "recipe.yaml")
    splits = load_splits(recipe.data, seed=recipe.train.seed).splits
    validation = tokenize_split(
        splits["validation"], tokenizer, recipe.data.text_columns, recipe.data.max_length, "validation"
    )
    batch = DataCollatorWithPadding(tokenizer)([validation[i] for i in range(len(validation))])
    labels = batch.pop("labels")
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits
    return logits, labels


def f1_score(predicted: list[int], true: list[int], average: str, positive: int = 1) -> float:
    """F1 written out independently of llmkit: binary (of `positive`) or macro over the classes
    that occur."""

    def f1_of(label: int) -> float:
        tp = sum(p == t == label for p, t in zip(predicted, true, strict=True))
        wrong = sum((p == label) != (t == label) for p, t in zip(predicted, true, strict=True))
        return 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0

    if average == "binary":
        return f1_of(positive)
    classes = sorted(set(predicted) | set(true))
    return sum(f1_of(label) for label in classes) / len(classes)


# ----------------------------------------------------------------------------- shared runs

# The method x architecture matrix, with each method's default options. Full fine-tuning and LoRA
# learn the synthetic task with these settings (validation accuracy 0.83-1.0 for every seed tried,
# about 2 s a run); prefix and prompt tuning need far longer to learn it and are kept short.
MATRIX_SETTINGS: dict[str, dict[str, Any]] = {
    "full": {"method": {"name": "full"}, "train": {"epochs": 10, "learning_rate": 1e-3}},
    "lora": {"method": {"name": "lora"}, "train": {"epochs": 10, "learning_rate": 1e-2}},
    "prefix": {"method": {"name": "prefix"}, "train": {"epochs": 3}},
    "prompt": {"method": {"name": "prompt"}, "train": {"epochs": 3}},
}


@dataclass
class Run:
    arch: str
    method: str
    checkpoint: Path
    data: DataFiles
    recipe: Path
    run_dir: Path
    result: Any  # the CliRunner result

    @property
    def results(self) -> dict[str, Any]:
        return results_of(self.run_dir)


class MatrixRuns:
    """One `llmkit finetune` run per (architecture, method), made on first use and shared by the
    tests that inspect it (files, metrics, reloading)."""

    def __init__(self, root: Path, checkpoints: dict[str, Path], data: DataFiles) -> None:
        self.root, self.checkpoints, self.data = root, checkpoints, data
        self.runs: dict[tuple[str, str], Run] = {}

    def __call__(self, arch: str, method: str) -> Run:
        if (arch, method) not in self.runs:
            settings = MATRIX_SETTINGS[method]
            recipe = write_recipe(
                self.root / f"{arch}-{method}.yaml",
                self.checkpoints[arch],
                self.data,
                settings["method"],
                # Batches of 8 leave the 41 validation rows a last batch of one: metrics must
                # count each example once, whatever the batch sizes.
                train={**settings["train"], "eval_batch_size": 8},
            )
            run_dir = self.root / "runs" / f"{arch}-{method}"
            result = invoke("finetune", recipe, "--output-dir", run_dir)
            self.runs[arch, method] = Run(
                arch, method, self.checkpoints[arch], self.data, recipe, run_dir, result
            )
        return self.runs[arch, method]


def finetune_failing_at_step(
    monkeypatch: Any, recipe: Path, run_dir: Path, *, step: int, message: str
) -> Any:
    """`llmkit finetune` in this process, its training step `step` raising RuntimeError(message):
    a failure at a known point, for the tests of resume (failing_step_pythonpath for launched
    processes)."""
    from llmkit.training.trainer import LlmkitTrainer

    original = LlmkitTrainer.training_step

    def failing_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.state.global_step == step:
            raise RuntimeError(message)
        return original(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(LlmkitTrainer, "training_step", failing_step)
        return invoke("finetune", recipe, "--output-dir", run_dir)


def failing_step_pythonpath(directory: Path, *, step: int, message: str, rank: int | None = None) -> str:
    """A PYTHONPATH under which launched training processes (those with RANK set; only `rank`
    when given) raise RuntimeError(message) at the start of training step `step`, through a
    sitecustomize module written into `directory`: a crash inside the real processes, at a known
    point, for the tests of failures and resume."""
    directory.mkdir(parents=True, exist_ok=True)
    applies = "'RANK' in os.environ" if rank is None else f"os.environ.get('RANK') == '{rank}'"
    (directory / "sitecustomize.py").write_text(
        "import os\n"
        f"if {applies}:\n"
        "    import llmkit.training.trainer as trainer\n"
        "    original = trainer.LlmkitTrainer.training_step\n"
        "    def failing_step(self, *args, **kwargs):\n"
        f"        if self.state.global_step == {step}:\n"
        f"            raise RuntimeError({message!r})\n"
        "        return original(self, *args, **kwargs)\n"
        "    trainer.LlmkitTrainer.training_step = failing_step\n",
        encoding="utf-8",
    )
    return os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")]))
