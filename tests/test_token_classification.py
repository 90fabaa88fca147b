"""Token classification (`task: token_classification`) with every method on both architectures,
end to end through the CLI: the run directory and its numbers, `evaluate` reproducing them from
the saved model, `predict` and `merge`; a sentence tagged the same alone and in a padded batch;
sentences longer than max_length keeping every word; the data readers and their messages."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import ARCHITECTURES, METHODS, explain, invoke, log_entries, results_of
from tagging import tagged_files, tagged_sentence, write_conll

TOKEN_CLASS = {"bert": "BertForTokenClassification", "gpt2": "GPT2ForTokenClassification"}
SETTINGS: dict[str, dict[str, Any]] = {
    "full": {"epochs": 5, "learning_rate": 1e-3},
    "lora": {"epochs": 5, "learning_rate": 2e-2},
    "prefix": {"epochs": 5, "learning_rate": 3e-2},
    "prompt": {"epochs": 5},
}
LABELS = ["O", "B-NEG", "I-NEG", "B-POS", "I-POS"]


def tagging_recipe(
    path: Path, checkpoint: Path, train: Path, validation: Path, method: str, **data: Any
) -> Path:
    tree = {
        "model": {"checkpoint": str(checkpoint)},
        "task": "token_classification",
        "data": {"train_file": str(train), "validation_file": str(validation), "max_length": 32, **data},
        "method": {"name": method},
        "train": {"batch_size": 8, "eval_batch_size": 8, **SETTINGS[method]},
    }
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return path


class TaggingRuns:
    def __init__(self, root: Path, checkpoints: dict[str, Path]) -> None:
        self.root, self.checkpoints = root, checkpoints
        self.train, self.validation = tagged_files(root / "data", train=200, validation=30)
        self.runs: dict[tuple[str, str], tuple[Path, Any]] = {}

    def __call__(self, arch: str, method: str) -> tuple[Path, Any]:
        if (arch, method) not in self.runs:
            recipe = tagging_recipe(
                self.root / f"{arch}-{method}.yaml",
                self.checkpoints[arch],
                self.train,
                self.validation,
                method,
            )
            run_dir = self.root / "runs" / f"{arch}-{method}"
            self.runs[arch, method] = (run_dir, invoke("finetune", recipe, "--output-dir", run_dir))
        return self.runs[arch, method]


@pytest.fixture(scope="session")
def tagging_runs(tmp_path_factory: pytest.TempPathFactory, checkpoints: dict[str, Path]) -> TaggingRuns:
    return TaggingRuns(tmp_path_factory.mktemp("tagging"), checkpoints)


# ----------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_method_tags_tokens_end_to_end(tagging_runs: TaggingRuns, arch: str, method: str) -> None:
    run_dir, result = tagging_runs(arch, method)
    assert result.exit_code == 0, explain(result)
    results = results_of(run_dir)
    assert results["task"]["name"] == "token_classification"
    assert results["task"]["seqeval_mode"] == "strict"  # the scoring mode is named in results.json
    assert results["model"]["architecture"] == TOKEN_CLASS[arch]
    assert results["data"]["label_names"] == LABELS
    assert json.loads((run_dir / "model" / "labels.json").read_text()) == {"label_names": LABELS}
    validation = results["metrics"]["validation"]
    assert list(validation) == ["loss", "precision", "recall", "f1", "accuracy"]
    precision, recall, f1 = validation["precision"], validation["recall"], validation["f1"]
    assert f1 == pytest.approx(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    losses = [entry["loss"] for entry in log_entries(run_dir) if "loss" in entry]
    evaluations = [entry for entry in log_entries(run_dir) if "eval_loss" in entry]
    assert len(evaluations) == SETTINGS[method]["epochs"]
    assert evaluations[-1]["eval_f1"] == f1
    # Every method learns the cue words here; tagging everything O scores F1 0.
    assert losses[-1] < losses[0], losses
    assert f1 > 0.05, validation
    assert "validation  loss" in result.stdout + result.stderr  # the progress line names the task's metrics
    assert "entity" not in validation  # metric names are plain: precision/recall/f1/accuracy


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_evaluate_reproduces_the_recorded_metrics(tagging_runs: TaggingRuns, arch: str, method: str) -> None:
    """Reload parity: the saved model, reloaded by `evaluate`, gives results.json's figures."""
    run_dir, result = tagging_runs(arch, method)
    assert result.exit_code == 0, explain(result)
    evaluated = invoke("evaluate", run_dir, "--format", "json")
    assert evaluated.exit_code == 0, explain(evaluated)
    report = json.loads(evaluated.stdout)
    recorded = results_of(run_dir)["metrics"]["validation"]
    for name in ("precision", "recall", "f1", "accuracy"):
        assert report["metrics"][name] == recorded[name], name
    assert report["metrics"]["loss"] == pytest.approx(recorded["loss"], rel=1e-5)
    assert report["seqeval_mode"] == "strict"
    assert set(report["per_type"]) == {"NEG", "POS"}
    supports = sum(scores["support"] for scores in report["per_type"].values())
    confusion = report["entity_confusion"]["counts"]
    assert supports == sum(sum(row.values()) for kind, row in confusion.items() if kind != "(spurious)")


def test_evaluate_prints_per_type_table_and_confusion(tagging_runs: TaggingRuns) -> None:
    run_dir, _ = tagging_runs("bert", "lora")
    result = invoke("evaluate", run_dir)
    assert result.exit_code == 0, explain(result)
    assert "per entity type (seqeval, strict mode):" in result.stdout
    assert "entity confusion (rows: true type, columns: predicted type of the same words):" in result.stdout
    assert "(missed)" in result.stdout or "(spurious)" in result.stdout


def test_conlleval_mode_is_recorded_and_used(tagging_runs: TaggingRuns, tmp_path: Path) -> None:
    recipe = tagging_recipe(
        tmp_path / "recipe.yaml",
        tagging_runs.checkpoints["bert"],
        tagging_runs.train,
        tagging_runs.validation,
        "lora",
    )
    result = invoke(
        "finetune", recipe, "task.seqeval_mode=conlleval", "train.epochs=1", "--output-dir", tmp_path / "run"
    )
    assert result.exit_code == 0, explain(result)
    assert results_of(tmp_path / "run")["task"]["seqeval_mode"] == "conlleval"
    report = json.loads(invoke("evaluate", tmp_path / "run", "--format", "json").stdout)
    assert report["seqeval_mode"] == "conlleval"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_predict_writes_entities_with_character_offsets(
    tagging_runs: TaggingRuns, arch: str, tmp_path: Path
) -> None:
    run_dir, _ = tagging_runs(arch, "lora")
    raw = tmp_path / "raw.txt"
    raw.write_text("the movie was  really great\n\nit was awful and boring\n", encoding="utf-8")
    result = invoke("predict", run_dir, "--input", raw)
    assert result.exit_code == 0, explain(result)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in records] == ["the movie was  really great", "it was awful and boring"]
    for record in records:
        assert len(record["tags"]) == len(record["tokens"]) == len(record["text"].split())
        assert set(record["tags"]) <= set(LABELS)
        for entity in record["entities"]:
            assert record["text"][entity["start"] : entity["end"]] == entity["text"]
            assert entity["text"].split() == entity["words"]
            assert entity["type"] in ("POS", "NEG")
    pre_split = tmp_path / "words.jsonl"
    pre_split.write_text(json.dumps({"id": "a", "tokens": ["it", "was", "awful"]}) + "\n", encoding="utf-8")
    result = invoke("predict", run_dir, "--input", pre_split)
    assert result.exit_code == 0, explain(result)
    record = json.loads(result.stdout)
    assert record["id"] == "a" and record["text"] == "it was awful" and len(record["tags"]) == 3
    refused = invoke("predict", run_dir, "--input", pre_split, "--output", tmp_path / "out.csv")
    assert refused.exit_code != 0
    assert "writes nested predictions, which csv cannot hold" in refused.stderr


@pytest.mark.parametrize("method", ["full", "lora"])
def test_model_card_code_finds_the_entities_llmkit_predict_finds(
    tagging_runs: TaggingRuns, method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The card's plain transformers/PEFT code (run as written, its example call included) gives
    a token-classification pipeline whose grouped entities are llmkit predict's."""
    run_dir, _ = tagging_runs("bert", method)
    card = (run_dir / "model" / "README.md").read_text(encoding="utf-8")
    start = card.index("```python\n") + len("```python\n")
    code = card[start : card.index("```", start)]
    assert 'pipeline("token-classification"' in code and "aggregation_strategy" in code
    base = Path(results_of(run_dir)["model"]["checkpoint"])  # a local base: the card asks for its path
    code = code.replace(f"base_model = {base.name!r}", f"base_model = {str(base)!r}")
    namespace: dict[str, Any] = {}
    with monkeypatch.context() as here:
        here.chdir(run_dir)  # the card names the model directory as a reader beside it would
        exec(code.replace("print(", "(lambda *_: None)("), namespace)
    sentences = ["it was awful and boring", "the movie was really great fun", "a plain day at home"]
    raw = tmp_path / "raw.txt"
    raw.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    result = invoke("predict", run_dir, "--input", raw)
    assert result.exit_code == 0, explain(result)
    expected = [
        [(e["type"], e["start"], e["end"]) for e in json.loads(line)["entities"]]
        for line in result.stdout.splitlines()
    ]
    found = [
        [
            (e["entity_group"], e["start"], e["end"])
            for e in namespace["classifier"](s, aggregation_strategy="first")
        ]
        for s in sentences
    ]
    assert found == expected
    assert any(expected), "the trained tagger finds the cue words' entities"


def test_merge_folds_a_lora_token_classifier(tagging_runs: TaggingRuns, tmp_path: Path) -> None:
    from transformers import AutoModelForTokenClassification

    run_dir, _ = tagging_runs("gpt2", "lora")
    merged = tmp_path / "merged"
    result = invoke("merge", run_dir, "--output-dir", merged)
    assert result.exit_code == 0, explain(result)
    assert "loads with AutoModelForTokenClassification.from_pretrained" in result.stdout
    assert (
        type(AutoModelForTokenClassification.from_pretrained(merged)).__name__ == "GPT2ForTokenClassification"
    )
    own = json.loads(invoke("evaluate", run_dir, "--format", "json").stdout)["metrics"]
    via_merged = json.loads(invoke("evaluate", run_dir, "--model", merged, "--format", "json").stdout)[
        "metrics"
    ]
    assert via_merged["f1"] == own["f1"] and via_merged["accuracy"] == own["accuracy"]


def test_dry_run_shows_word_tag_alignment(tagging_runs: TaggingRuns, tmp_path: Path) -> None:
    recipe = tagging_recipe(
        tmp_path / "recipe.yaml",
        tagging_runs.checkpoints["gpt2"],
        tagging_runs.train,
        tagging_runs.validation,
        "lora",
    )
    result = invoke("finetune", recipe, "--dry-run", "task.label_all_tokens=true")
    assert result.exit_code == 0, explain(result)
    assert "task: token_classification" in result.stdout
    assert "model: GPT2ForTokenClassification" in result.stdout
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("example (train row 1"))
    alignment = lines[header + 1]
    assert "/O" in alignment and ("/B-POS" in alignment or "/B-NEG" in alignment)


# ----------------------------------------------------------------------------- padding


def tagging_model(checkpoint: Path, method: str) -> tuple[Any, Any, Any]:
    from transformers import set_seed

    from llmkit.methods import get_method
    from llmkit.models.loading import load_classifier
    from llmkit.tasks import task_for
    from llmkit.tasks.token_classification import TokenClassificationOptions

    task = task_for(TokenClassificationOptions())
    set_seed(0)
    loaded = load_classifier(str(checkpoint), LABELS, task=task)
    spec = get_method(method)
    model = spec.wrap(loaded.model, spec.options(), loaded.traits)
    return model.eval(), loaded.tokenizer, task


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_sentence_alone_and_in_a_padded_batch_gets_the_same_tags(
    checkpoints: dict[str, Path], arch: str, method: str
) -> None:
    check_tags_do_not_depend_on_padding(checkpoints[arch], method)


def check_tags_do_not_depend_on_padding(checkpoint: Path, method: str) -> None:
    from datasets import Dataset
    from torch.testing import assert_close

    from llmkit.inference import token_logits
    from llmkit.recipe.schema import DataSection

    model, tokenizer, task = tagging_model(checkpoint, method)
    data = DataSection(train_file=Path("x.txt"), max_length=64)
    short = ["great", "movie"]
    longer = ["the", "plot", "was", "quite", "boring", "and", "the", "actor", "was", "very", "dreadful"]
    sentences = Dataset.from_dict({"tokens": [longer, short, longer[:5]]})
    tokenised = task.tokenize(sentences, tokenizer, data, "input", LABELS)
    alone = token_logits(model, tokenizer, tokenised.select([1]), batch_size=1)[0]
    batched = token_logits(model, tokenizer, tokenised, batch_size=3, sort_by_length=False)
    assert len(tokenised["input_ids"][1]) < len(tokenised["input_ids"][0]), "the short sentence is padded"
    assert alone.shape == batched[1].shape
    assert_close(batched[1], alone, atol=1e-5, rtol=0)
    assert (batched[1].argmax(-1) == alone.argmax(-1)).all()


@pytest.fixture(scope="session")
def llama_checkpoint(tmp_path_factory: pytest.TempPathFactory, gpt2_checkpoint: Path) -> Path:
    """A random 2-layer Llama-architecture model (rotary positions, the SmolLM2 family) with the
    tiny GPT-2's byte-level BPE tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    directory = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(gpt2_checkpoint)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("method", METHODS)
def test_llama_architecture_tags_alike_alone_and_in_a_batch(llama_checkpoint: Path, method: str) -> None:
    check_tags_do_not_depend_on_padding(llama_checkpoint, method)


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_llama_architecture_end_to_end(
    llama_checkpoint: Path, tagging_runs: TaggingRuns, tmp_path: Path, method: str
) -> None:
    recipe = tagging_recipe(
        tmp_path / "recipe.yaml", llama_checkpoint, tagging_runs.train, tagging_runs.validation, method
    )
    result = invoke("finetune", recipe, "--output-dir", tmp_path / "run")
    assert result.exit_code == 0, explain(result)
    results = results_of(tmp_path / "run")
    assert results["model"]["architecture"] == "LlamaForTokenClassification"
    evaluated = invoke("evaluate", tmp_path / "run", "--format", "json")
    assert evaluated.exit_code == 0, explain(evaluated)
    recorded = results["metrics"]["validation"]
    assert json.loads(evaluated.stdout)["metrics"]["f1"] == recorded["f1"]
    assert recorded["f1"] > 0.05, recorded


# ----------------------------------------------------------------------------- long sentences


def test_windows_cover_every_word_once_within_the_budget() -> None:
    from llmkit.data.words import plan_windows

    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 4) for _ in range(rng.randint(1, 60))]
        budget, overlap = rng.randint(4, 20), rng.randint(0, 8)
        windows = plan_windows(lengths, budget, overlap)
        owned = [word for w in windows for word in range(w.owned_start, w.owned_end)]
        assert owned == list(range(len(lengths)))  # each word once, in order
        for window in windows:
            assert window.start <= window.owned_start <= window.owned_end <= window.end
            assert sum(lengths[window.start : window.end]) <= budget or window.end - window.start == 1


def test_a_sentence_longer_than_max_length_keeps_every_word(
    tagging_runs: TaggingRuns, tmp_path: Path
) -> None:
    """Trained and predicted at max_length 12: a 40-word sentence is cut into windows, and every word
    gets the tag of the window that owns it; the first window's words are tagged exactly as they are
    when those words are the whole input."""
    from llmkit.data.words import plan_windows
    from llmkit.models.loading import load_trained
    from llmkit.tasks.token_classification import TokenClassification, TokenClassificationOptions

    rng = random.Random(5)
    long_rows = [tagged_sentence(rng, words=40) for _ in range(20)]
    train = write_conll(tmp_path / "train.txt", [*long_rows, *(tagged_sentence(rng) for _ in range(40))])
    validation = write_conll(tmp_path / "validation.txt", [tagged_sentence(rng, words=30) for _ in range(6)])
    recipe = tagging_recipe(
        tmp_path / "recipe.yaml", tagging_runs.checkpoints["bert"], train, validation, "full", max_length=12
    )
    result = invoke("finetune", recipe, "--output-dir", tmp_path / "run", "train.epochs=2")
    assert result.exit_code == 0, explain(result)
    results = results_of(tmp_path / "run")
    assert results["data"]["train_rows"] > 60  # long sentences became several windows each

    words = tagged_sentence(random.Random(9), words=40)[0]
    loaded = load_trained(
        tmp_path / "run" / "model",
        str(tagging_runs.checkpoints["bert"]),
        task=TokenClassification(TokenClassificationOptions()),
    )
    lengths = [len(loaded.tokenizer(word, add_special_tokens=False)["input_ids"]) for word in words]
    first = plan_windows(lengths, 12 - loaded.tokenizer.num_special_tokens_to_add(), 32)[0]
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(
        "\n".join(json.dumps({"tokens": row}) for row in (words, words[: first.end])) + "\n", encoding="utf-8"
    )
    predicted = invoke("predict", tmp_path / "run", "--input", inputs)
    assert predicted.exit_code == 0, explain(predicted)
    whole, head = (json.loads(line) for line in predicted.stdout.splitlines())
    assert len(whole["tags"]) == 40 and whole["tokens"] == words
    assert first.end < 40 and first.owned_end < first.end  # really windowed, with an overlap
    assert whole["tags"][: first.owned_end] == head["tags"][: first.owned_end]
    evaluated = invoke("evaluate", tmp_path / "run", "--format", "json")
    assert evaluated.exit_code == 0, explain(evaluated)
    assert json.loads(evaluated.stdout)["metrics"]["f1"] == results["metrics"]["validation"]["f1"]


# ----------------------------------------------------------------------------- data


def test_alignment_labels_first_sub_tokens_or_all_with_b_to_i(gpt2_checkpoint: Path) -> None:
    from llmkit.data.words import IGNORED, encode_sentences, with_prefix_space
    from llmkit.models.loading import load_tokenizer

    tokenizer = with_prefix_space(load_tokenizer(str(gpt2_checkpoint)))
    words = ["wonderfulscenes", "the"]  # the first word is split into several BPE pieces
    tags = [[LABELS.index("B-POS"), LABELS.index("O")]]
    first_only = encode_sentences(tokenizer, [words], tags, 32, 0, False, {3: 4}, False)
    pieces = tokenizer.convert_ids_to_tokens(first_only["input_ids"][0])
    assert pieces[0].startswith("Ġ") and len(pieces) > 2  # a prefix space, and the word split
    assert first_only["labels"][0] == [3, *([IGNORED] * (len(pieces) - 2)), 0]
    every = encode_sentences(tokenizer, [words], tags, 32, 0, True, {3: 4}, False)
    assert every["labels"][0] == [3, *([4] * (len(pieces) - 2)), 0]


def test_conll_reader_skips_docstart_and_reads_the_chosen_column(tmp_path: Path) -> None:
    from llmkit.data.tagged import read_conll

    path = tmp_path / "data.txt"
    path.write_text(
        "-DOCSTART- -X- O\n\nEU NNP B-ORG\nrejects\tVBZ O\n\n\nPeter NNP B-PER\n", encoding="utf-8"
    )
    words, tags = read_conll(path, -1, "utf-8")
    assert words == [["EU", "rejects"], ["Peter"]] and tags == [["B-ORG", "O"], ["B-PER"]]
    _, pos = read_conll(path, 1, "utf-8")
    assert pos == [["NNP", "VBZ"], ["NNP"]]


def test_json_and_parquet_with_class_label_tags(
    tmp_path: Path, checkpoints: dict[str, Path], tagging_runs: TaggingRuns
) -> None:
    from datasets import ClassLabel, Dataset, Features, Sequence, Value

    features = Features({"words": Sequence(Value("string")), "ner": Sequence(ClassLabel(names=LABELS))})
    rows = {"words": [["it", "was", "great"], ["very", "awful"]] * 10, "ner": [[0, 0, 3], [1, 2]] * 10}
    Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "train.parquet"))
    (tmp_path / "dev.jsonl").write_text(
        json.dumps({"words": ["so", "great"], "ner": ["O", "B-POS"]}) + "\n", encoding="utf-8"
    )
    recipe = tmp_path / "recipe.yaml"
    tagging_recipe(recipe, checkpoints["bert"], tmp_path / "train.parquet", tmp_path / "dev.jsonl", "lora")
    result = invoke("finetune", recipe, "task.tokens_column=words", "task.tags_column=ner", "--dry-run")
    assert result.exit_code == 0, explain(result)
    assert "train 20, validation 1 rows" in result.stdout


def test_unseen_tags_and_scheme_breaks_are_reported(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    train = write_conll(
        tmp_path / "train.txt", [(["the", "great"], ["O", "B-POS"])] * 8 + [(["very"], ["I-POS"])]
    )
    validation = write_conll(tmp_path / "validation.txt", [(["awful"], ["B-NEG"]), (["awful"], ["B-NEG"])])
    recipe = tagging_recipe(tmp_path / "recipe.yaml", checkpoints["bert"], train, validation, "lora")
    result = invoke("finetune", recipe, "--dry-run")
    assert result.exit_code == 0, explain(result)
    assert (
        f"warning: '{validation}' has tags that never occur in the training data: B-NEG (2); those words "
        "are not scored" in result.stderr
    )
    assert (
        f"warning: '{train}' breaks the IOB2 tag scheme: 1 x I- tag that does not continue an entity"
        in result.stderr
    )


def test_bad_tagged_files_are_refused_with_their_line(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("the O\nlonely\n", encoding="utf-8")
    good = write_conll(tmp_path / "good.txt", [(["the"], ["O"])])
    result = invoke(
        "finetune", tagging_recipe(tmp_path / "a.yaml", checkpoints["bert"], bad, good, "full"), "--dry-run"
    )
    assert result.exit_code != 0
    assert f"'{bad}' line 2 has one column ('lonely')" in result.stderr
    mismatched = tmp_path / "train.jsonl"
    mismatched.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n", encoding="utf-8")
    result = invoke(
        "finetune",
        tagging_recipe(tmp_path / "b.yaml", checkpoints["bert"], mismatched, good, "full"),
        "--dry-run",
    )
    assert result.exit_code != 0
    assert f"'{mismatched}' row 1 has 2 words and 1 tags." in result.stderr
    csv_file = tmp_path / "train.csv"
    csv_file.write_text("tokens,tags\n", encoding="utf-8")
    result = invoke(
        "finetune",
        tagging_recipe(tmp_path / "c.yaml", checkpoints["bert"], csv_file, good, "full"),
        "--dry-run",
    )
    assert result.exit_code != 0
    assert "Token classification reads CoNLL column files" in result.stderr


def test_eval_section_is_refused_for_token_classification(
    tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    good = write_conll(tmp_path / "good.txt", [(["the", "great"], ["O", "B-POS"])] * 4)
    recipe = tagging_recipe(tmp_path / "a.yaml", checkpoints["bert"], good, good, "full")
    result = invoke("finetune", recipe, "eval.f1_average=macro", "--dry-run")
    assert result.exit_code != 0
    assert "token classification reports entity precision/recall/F1 and token accuracy" in result.stderr


def test_model_types_without_a_token_classifier_are_refused() -> None:
    from llmkit.errors import ModelError
    from llmkit.tasks.token_classification import TokenClassification, TokenClassificationOptions

    with pytest.raises(ModelError, match="cannot use for token classification"):
        TokenClassification(TokenClassificationOptions()).check_model_type("clip", "some/clip")


@pytest.mark.parametrize("accumulation", [1, 4])
def test_training_weighs_every_labelled_token_alike_whatever_its_batch(
    checkpoints: dict[str, Path], tmp_path: Path, accumulation: int
) -> None:
    """The token-level training loss is the micro-batch's summed token losses over the mean
    labelled tokens per micro-batch (one fixed number), divided by the accumulation steps once:
    a batch of two labelled tokens moves the weights a tenth as much as one of twenty. Evaluation
    keeps the model's own per-token mean."""
    import torch
    from transformers import AutoModelForTokenClassification, TrainingArguments

    from llmkit.training.trainer import LlmkitTrainer

    model = AutoModelForTokenClassification.from_pretrained(checkpoints["bert"], num_labels=5)
    args = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to=[], gradient_accumulation_steps=accumulation
    )
    trainer = LlmkitTrainer(model=model, args=args)
    trainer.labelled_tokens_per_micro_batch = 6.0
    trainer.current_gradient_accumulation_steps = accumulation
    torch.manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (2, 7))
    labels = torch.tensor([[-100, 1, 0, 0, 3, 4, -100], [-100, 2, 2, -100, -100, -100, -100]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    model.eval()
    own_mean = model(**inputs).loss
    assert float(trainer.compute_loss(model, dict(inputs)).detach()) == pytest.approx(
        float(own_mean), rel=1e-6
    )

    model.train()
    torch.manual_seed(1)
    loss = trainer.compute_loss(model, dict(inputs), num_items_in_batch=torch.tensor(7))
    torch.manual_seed(1)  # the same dropout masks
    logits = model(input_ids=ids, attention_mask=inputs["attention_mask"]).logits
    summed = torch.nn.functional.cross_entropy(logits.reshape(-1, 5), labels.reshape(-1), reduction="sum")
    # Trainer divides by the accumulation steps unless it believes the loss is normalised already.
    after_trainer = loss / accumulation if trainer._divides_loss_by_accumulation(torch.tensor(7)) else loss
    assert float(after_trainer) == pytest.approx(float(summed) / 6.0 / accumulation, rel=1e-5)
    assert float(summed) / 7 != pytest.approx(float(after_trainer) * accumulation, rel=1e-3)  # not a mean
