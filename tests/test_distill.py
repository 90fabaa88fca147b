"""Knowledge distillation (`train.distill`) on tiny models: the objective against a hand computation,
weight 0 against the run without a teacher, teachers with another tokenizer and architecture (a
GPT-2 teacher for a BERT student) for sequence and token classification, every student method,
the cache written once and reused on resume, unlabelled training text at weight 1.0, and the
refusals (labels, vocabularies, teachers that are not one) with their messages."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from helpers import DataFiles, explain, invoke, log_entries, results_of, write_csv, write_recipe
from tagging import tagged_files

TEACHER_TRAIN = {"epochs": 10, "learning_rate": 1e-3, "eval_batch_size": 8}
STUDENT_TRAIN = {"epochs": 2, "learning_rate": 1e-3, "eval_batch_size": 8}
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
METHOD_TRAIN = {  # enough steps to show each method trains with a teacher, no more
    "full": {"learning_rate": 1e-3},
    "lora": {"learning_rate": 1e-2},
    "prefix": {},
    "prompt": {},
}


def _finetune(recipe: Path, run_dir: Path, *overrides: str) -> Any:
    result = invoke("finetune", recipe, *overrides, "--output-dir", run_dir)
    assert result.exit_code == 0, explain(result)
    return results_of(run_dir)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("distill")


@pytest.fixture(scope="module")
def gpt2_teacher(root: Path, gpt2_checkpoint: Path, sentiment_data: DataFiles) -> Path:
    """A GPT-2 sequence classifier trained to a useful accuracy on the sentiment fixture."""
    recipe = write_recipe(root / "teacher.yaml", gpt2_checkpoint, sentiment_data, train=TEACHER_TRAIN)
    run_dir = root / "runs" / "gpt2-teacher"
    results = _finetune(recipe, run_dir)
    assert results["metrics"]["validation"]["accuracy"] >= 0.8
    return run_dir


@pytest.fixture(scope="module")
def tagged(root: Path) -> tuple[Path, Path]:
    return tagged_files(root / "tagged")


@pytest.fixture(scope="module")
def gpt2_tagger(root: Path, gpt2_checkpoint: Path, tagged: tuple[Path, Path]) -> Path:
    recipe = _tagging_recipe(root / "tagger.yaml", gpt2_checkpoint, tagged, {"epochs": 3})
    run_dir = root / "runs" / "gpt2-tagger"
    _finetune(recipe, run_dir)
    return run_dir


def _tagging_recipe(path: Path, checkpoint: Path, files: tuple[Path, Path], train: dict[str, Any]) -> Path:
    import yaml

    tree = {
        "model": {"checkpoint": str(checkpoint)},
        "task": "token_classification",
        "data": {"train_file": str(files[0]), "validation_file": str(files[1])},
        "train": {"batch_size": 8, "learning_rate": 1e-3, "logging_steps": 5, **train},
    }
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return path


def _student(tmp_path: Path, checkpoint: Path, data: DataFiles, teacher: Path | None, **distill: Any) -> Path:
    train: dict[str, Any] = dict(STUDENT_TRAIN)
    if teacher is not None:
        train["distill"] = {"teacher": str(teacher), **distill}
    return write_recipe(tmp_path / "student.yaml", checkpoint, data, train=train)


def _cache(run_dir: Path) -> Any:
    from llmkit.distill.cache import TeacherCache

    return TeacherCache(run_dir / "teacher")


# ----------------------------------------------------------------------------- the objective


def _kl_by_hand(teacher: list[float], student: list[float], temperature: float) -> float:
    def softmax(values: list[float]) -> list[float]:
        exps = [math.exp(v / temperature) for v in values]
        return [e / sum(exps) for e in exps]

    p, q = softmax(teacher), softmax(student)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def test_the_loss_is_the_formula_on_a_hand_computed_batch() -> None:
    from llmkit.distill.cache import TEACHER_LOGITS, TEACHER_MASK
    from llmkit.distill.loss import Distiller
    from llmkit.recipe.schema import DistillSection
    from llmkit.tasks import get_task

    temperature, weight, task_loss = 2.0, 0.3, torch.tensor(0.7)
    options = DistillSection(teacher="unused", temperature=temperature, weight=weight)

    # Sequence classification: one position per example, every example distilled.
    student = [[1.0, -0.5, 0.25], [0.0, 2.0, -1.0]]
    teacher = [[2.0, 0.0, -1.0], [-0.5, 0.5, 1.5]]
    distiller = Distiller(options, get_task("sequence_classification").build())
    batch = {
        TEACHER_LOGITS: torch.tensor(teacher)[:, None, :],
        TEACHER_MASK: torch.ones(2, 1, dtype=torch.bool),
    }
    loss = distiller.loss(task_loss, torch.tensor(student), input_width=5, teacher=batch)
    kl = sum(_kl_by_hand(t, s, temperature) for t, s in zip(teacher, student, strict=True)) / 2
    expected = (1 - weight) * 0.7 + weight * temperature**2 * kl
    assert loss.item() == pytest.approx(expected, rel=1e-6)

    # Token classification: a masked position (a later sub-token, padding) does not count.
    tokens = torch.tensor([[[0.0, 0.0, 0.0], student[0], student[1]]])  # (1 row, 3 tokens, 3 labels)
    masked = {
        TEACHER_LOGITS: torch.tensor([[[9.0, 9.0, 9.0], teacher[0], teacher[1]]]),
        TEACHER_MASK: torch.tensor([[False, True, True]]),
    }
    token_loss = Distiller(options, get_task("token_classification").build()).loss(
        task_loss, tokens, input_width=3, teacher=masked
    )
    assert token_loss.item() == pytest.approx(expected, rel=1e-6)


def test_token_level_tasks_weigh_every_distilled_position_alike_whatever_its_batch() -> None:
    """As their task loss does (llmkit.training.trainer), token classification's KL term divides
    a batch's sum by the mean number of positions a micro-batch distils, not by the batch's own:
    a short batch's positions weigh no more than a long one's."""
    from llmkit.distill.cache import TEACHER_LOGITS, TEACHER_MASK
    from llmkit.distill.loss import Distiller
    from llmkit.recipe.schema import DistillSection
    from llmkit.tasks import get_task

    temperature = 2.0
    options = DistillSection(teacher="unused", temperature=temperature, weight=1.0)
    task = get_task("token_classification").build()
    student = [[1.0, -0.5], [0.0, 2.0], [0.5, 0.5], [-1.0, 1.0]]
    teacher = [[2.0, 0.0], [-0.5, 0.5], [1.0, -1.0], [0.0, 3.0]]
    short = {TEACHER_LOGITS: torch.tensor([teacher[:1]]), TEACHER_MASK: torch.ones(1, 1, dtype=torch.bool)}
    long = {TEACHER_LOGITS: torch.tensor([teacher[1:]]), TEACHER_MASK: torch.ones(1, 3, dtype=torch.bool)}
    kl = [_kl_by_hand(t, s, temperature) for t, s in zip(teacher, student, strict=True)]

    def losses(distiller: Distiller) -> tuple[float, float]:
        first = distiller.loss(None, torch.tensor([student[:1]]), input_width=1, teacher=short)
        rest = distiller.loss(None, torch.tensor([student[1:]]), input_width=3, teacher=long)
        return first.item(), rest.item()

    # rel 1e-5: a float32 softmax against a float64 one by hand.
    fixed = losses(Distiller(options, task, positions_per_micro_batch=2.0))
    assert fixed == pytest.approx((temperature**2 * kl[0] / 2, temperature**2 * sum(kl[1:]) / 2), rel=1e-5)
    # Each batch's own count instead: the short batch's one position weighs three times as much.
    own = losses(Distiller(options, task))
    assert own == pytest.approx((temperature**2 * kl[0], temperature**2 * sum(kl[1:]) / 3), rel=1e-5)


@pytest.mark.parametrize(
    ("recipe", "overrides", "temperature"),
    [
        ("conll2003-minilm-lora.yaml", [], 1.0),
        ("sst2-minilm-lora.yaml", [], 2.0),
        ("e2e-smollm2-lora.yaml", [], 2.0),
        ("conll2003-minilm-lora.yaml", ["train.distill.temperature=3"], 3.0),
    ],
)
def test_the_temperature_is_the_tasks_own_unless_the_recipe_gives_one(
    recipe: str, overrides: list[str], temperature: float
) -> None:
    """Token classification distils at T 1 (at T 2 the students fell below those without a
    teacher, docs/distill-conll2003-cpu.md), the other tasks at T 2; the filled value is what
    the run directory's recipe.yaml and results.json record."""
    from llmkit.recipe.loading import load_recipe

    loaded = load_recipe(RECIPES / recipe, ["train.distill={teacher: a-run}", *overrides])
    assert loaded.train.distill is not None
    assert loaded.train.distill.temperature == temperature
    assert loaded.model_dump(mode="json")["train"]["distill"]["temperature"] == temperature


def test_top_k_teachers_compare_on_their_tokens_against_the_students_full_softmax() -> None:
    from llmkit.distill.loss import distillation_loss, kl_sum

    student = torch.tensor([[[0.5, 1.0, -1.0, 2.0]]])
    teacher_top = torch.tensor([[[3.0, 1.0]]])  # tokens 3 and 0
    indices = torch.tensor([[[3, 0]]])
    total, count = kl_sum(student, teacher_top, torch.ones(1, 1, dtype=torch.bool), 1.0, indices)
    p = [math.exp(3.0) / (math.exp(3.0) + math.exp(1.0)), math.exp(1.0) / (math.exp(3.0) + math.exp(1.0))]
    norm = sum(math.exp(v) for v in (0.5, 1.0, -1.0, 2.0))
    q = [math.exp(2.0) / norm, math.exp(0.5) / norm]
    assert total.item() == pytest.approx(
        sum(a * math.log(a / b) for a, b in zip(p, q, strict=True)), rel=1e-6
    )
    assert distillation_loss(None, total, count, 1.0, 1.0).item() == pytest.approx(total.item(), rel=1e-6)


# ----------------------------------------------------------------------------- runs


def test_weight_zero_reproduces_the_run_without_a_teacher(
    tmp_path: Path, bert_checkpoint: Path, sentiment_data: DataFiles, gpt2_teacher: Path
) -> None:
    plain = _finetune(_student(tmp_path, bert_checkpoint, sentiment_data, None), tmp_path / "plain")
    recipe = _student(tmp_path, bert_checkpoint, sentiment_data, gpt2_teacher, weight=0.0)
    distilled = _finetune(recipe, tmp_path / "weight0")
    assert distilled["distill"]["weight"] == 0.0 and distilled["distill"]["cache"]["computed_now"]
    assert distilled["metrics"] == plain["metrics"]
    assert distilled["train"]["final_loss"] == plain["train"]["final_loss"]
    losses = [(e["step"], e.get("loss")) for e in log_entries(tmp_path / "plain")]
    assert [(e["step"], e.get("loss")) for e in log_entries(tmp_path / "weight0")] == losses
    from safetensors.torch import load_file

    before = load_file(tmp_path / "plain" / "model" / "model.safetensors")
    after = load_file(tmp_path / "weight0" / "model" / "model.safetensors")
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name


def test_a_gpt2_teacher_teaches_a_bert_student_sequence_classification(
    tmp_path: Path, bert_checkpoint: Path, sentiment_data: DataFiles, gpt2_teacher: Path
) -> None:
    recipe = _student(tmp_path, bert_checkpoint, sentiment_data, gpt2_teacher, weight=1.0)
    results = _finetune(recipe, tmp_path / "student", "train.epochs=10")
    teacher = results["distill"]["teacher"]
    assert teacher["architecture"] == "GPT2ForSequenceClassification" and teacher["kind"] == "run"
    assert teacher["validation_metrics"] == results_of(gpt2_teacher)["metrics"]["validation"]
    assert results["distill"]["temperature"] == 2.0 and results["distill"]["loss"] == "kl"
    assert results["metrics"]["validation"]["accuracy"] >= 0.75  # the teacher alone taught it

    # The cache holds the teacher's own view of each training text, as `llmkit predict` gives it.
    out = tmp_path / "teacher-predictions.jsonl"
    predicted = invoke("predict", gpt2_teacher, "--input", sentiment_data.train, "--output", out)
    assert predicted.exit_code == 0, explain(predicted)
    probabilities = [json.loads(line)["probabilities"] for line in out.read_text().splitlines()]
    cache = _cache(tmp_path / "student")
    assert list(cache.offsets) == list(range(len(probabilities) + 1))
    cached = torch.softmax(torch.from_numpy(np.array(cache.logits)), dim=-1).numpy()
    expected = np.array([[row["0"], row["1"]] for row in probabilities])
    np.testing.assert_allclose(cached, expected, atol=2e-6)


def test_a_gpt2_teacher_teaches_a_bert_student_per_word(
    tmp_path: Path,
    bert_checkpoint: Path,
    tagged: tuple[Path, Path],
    gpt2_tagger: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import yaml

    from llmkit.training.trainer import LlmkitTrainer

    recipe = _tagging_recipe(tmp_path / "student.yaml", bert_checkpoint, tagged, {"epochs": 1})
    tree = yaml.safe_load(recipe.read_text())
    tree["train"]["distill"] = {"teacher": str(gpt2_tagger)}
    recipe.write_text(yaml.safe_dump(tree))
    divisors: list[tuple[float | None, float | None]] = []
    train = LlmkitTrainer.train

    def recording_train(self: LlmkitTrainer, *args: Any, **kwargs: Any) -> Any:
        assert self.distiller is not None
        divisors.append((self.distiller.positions_per_micro_batch, self.labelled_tokens_per_micro_batch))
        return train(self, *args, **kwargs)

    monkeypatch.setattr(LlmkitTrainer, "train", recording_train)
    results = _finetune(recipe, tmp_path / "student")
    # Every labelled word is a distilled position: the KL sum and the task loss's summed token
    # losses are divided by the same mean count a micro-batch has.
    [(distilled, labelled)] = divisors
    assert distilled is not None and distilled == pytest.approx(labelled)
    label_names = results["data"]["label_names"]

    # Each word's teacher logits sit at the student's first sub-token of that word: the word-level
    # tiny BERT has one token per word after [CLS], so word w is at position w + 1. Their argmax
    # is the tag the teacher itself predicts for that word (GPT-2's BPE splits words differently).
    conll = tmp_path / "train.conll"
    conll.write_text(tagged[0].read_text())
    out = tmp_path / "tags.jsonl"
    predicted = invoke("predict", gpt2_tagger, "--input", conll, "--output", out)
    assert predicted.exit_code == 0, explain(predicted)
    teacher_tags = [json.loads(line)["tags"] for line in out.read_text().splitlines()]
    cache = _cache(tmp_path / "student")
    assert len(cache.offsets) == len(teacher_tags) + 1
    for row, tags in enumerate(teacher_tags):
        start, end = cache.offsets[row], cache.offsets[row + 1]
        assert list(cache.positions[start:end]) == [w + 1 for w in range(len(tags))]
        cached = [label_names[i] for i in np.asarray(cache.logits[start:end]).argmax(axis=1)]
        assert cached == tags, f"sentence {row}"


@pytest.mark.parametrize("method", ["full", "lora", "prefix", "prompt"])
def test_every_student_method_trains_with_a_teacher(
    method: str, tmp_path: Path, bert_checkpoint: Path, sentiment_data: DataFiles, gpt2_teacher: Path
) -> None:
    recipe = _student(tmp_path, bert_checkpoint, sentiment_data, gpt2_teacher)
    overrides = [f"method.name={method}", "train.epochs=1"]
    overrides += [f"train.{key}={value}" for key, value in METHOD_TRAIN[method].items()]
    results = _finetune(recipe, tmp_path / method, *overrides)
    assert results["method"]["name"] == method
    assert results["distill"]["cache"]["positions"] == 200
    losses = [entry["loss"] for entry in log_entries(tmp_path / method) if "loss" in entry]
    assert losses and all(math.isfinite(loss) for loss in losses)


def test_prompt_tuned_token_student_skips_its_virtual_tokens(
    tmp_path: Path, bert_checkpoint: Path, tagged: tuple[Path, Path], gpt2_tagger: Path
) -> None:
    import yaml

    recipe = _tagging_recipe(tmp_path / "student.yaml", bert_checkpoint, tagged, {"epochs": 1})
    tree = yaml.safe_load(recipe.read_text())
    tree["method"] = {"name": "prompt"}
    tree["train"]["distill"] = {"teacher": str(gpt2_tagger)}
    recipe.write_text(yaml.safe_dump(tree))
    results = _finetune(recipe, tmp_path / "student")
    assert results["distill"]["cache"]["positions"] > 0


def test_the_cache_is_written_once_and_reused_on_resume(
    tmp_path: Path,
    bert_checkpoint: Path,
    sentiment_data: DataFiles,
    gpt2_teacher: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llmkit.tasks.sequence_classification import SequenceClassification
    from llmkit.training.trainer import LlmkitTrainer

    recipe = _student(tmp_path, bert_checkpoint, sentiment_data, gpt2_teacher)
    run_dir = tmp_path / "run"
    original = LlmkitTrainer._save_checkpoint

    def save_then_stop(self: Any, model: Any, trial: Any) -> None:
        original(self, model, trial)
        raise KeyboardInterrupt  # as Ctrl-C right after the first checkpoint

    monkeypatch.setattr(LlmkitTrainer, "_save_checkpoint", save_then_stop)
    stopped = invoke("finetune", recipe, "train.checkpoint_every=5", "--output-dir", run_dir)
    assert stopped.exit_code == 130, explain(stopped)
    logits = run_dir / "teacher" / "logits.npy"
    written = logits.stat()
    monkeypatch.setattr(LlmkitTrainer, "_save_checkpoint", original)

    def no_teacher_again(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the teacher ran again on resume")

    monkeypatch.setattr(SequenceClassification, "teacher_targets", no_teacher_again)
    resumed = invoke("finetune", recipe, "train.checkpoint_every=5", "--output-dir", run_dir, "--resume")
    assert resumed.exit_code == 0, explain(resumed)
    assert "reusing the teacher's logits" in resumed.stderr
    results = results_of(run_dir)
    assert results["train"]["resumed_from_step"] == 5
    assert results["distill"]["cache"]["computed_now"] is False
    again = logits.stat()
    assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)


def test_unlabelled_training_text_trains_at_weight_one_only(
    tmp_path: Path, bert_checkpoint: Path, sentiment_data: DataFiles, gpt2_teacher: Path
) -> None:
    rows = [[line.rsplit(",", 1)[0]] for line in sentiment_data.train.read_text().splitlines()[1:]]
    unlabelled = write_csv(tmp_path / "unlabelled.csv", ["text"], rows)
    data = DataFiles(unlabelled, sentiment_data.validation, None)
    recipe = _student(tmp_path, bert_checkpoint, data, gpt2_teacher, weight=1.0)
    results = _finetune(recipe, tmp_path / "alone")
    assert results["data"]["train_rows"] == 200
    assert results["data"]["label_names"] == ["0", "1"]  # the teacher's
    shown = invoke("finetune", recipe, "--dry-run", "--output-dir", tmp_path / "shown")
    assert shown.exit_code == 0, explain(shown)
    assert "example (train row 1, no label: the teacher labels it," in shown.stdout

    refused = invoke("finetune", recipe, "train.distill.weight=0.5", "--output-dir", tmp_path / "mixed")
    assert refused.exit_code == 2
    assert f"'{unlabelled}' has no column 'label'" in refused.stderr
    assert not (tmp_path / "mixed").exists()


def test_dry_run_shows_the_teacher_the_label_check_and_the_cache_size(
    tmp_path: Path, bert_checkpoint: Path, sentiment_data: DataFiles, gpt2_teacher: Path
) -> None:
    recipe = _student(tmp_path, bert_checkpoint, sentiment_data, gpt2_teacher)
    result = invoke("finetune", recipe, "--dry-run", "--output-dir", tmp_path / "run")
    assert result.exit_code == 0, explain(result)
    assert f"teacher: run {gpt2_teacher}" in result.stdout
    assert "GPT2ForSequenceClassification" in result.stdout
    assert "labels: the teacher's match by name (0, 1)" in result.stdout
    assert "teacher logits cache: 200 positions x 2 labels" in result.stdout
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- refusals


def test_a_teacher_with_other_labels_is_refused_before_anything_is_written(
    tmp_path: Path,
    bert_checkpoint: Path,
    sentiment_data: DataFiles,
    three_label_data: DataFiles,
    gpt2_teacher: Path,
) -> None:
    recipe = _student(tmp_path, bert_checkpoint, three_label_data, gpt2_teacher)
    result = invoke("finetune", recipe, "--output-dir", tmp_path / "run")
    assert result.exit_code == 2
    assert (
        "The teacher's labels differ from the training data's (only in the training data: negative, "
        "neutral, positive; only in the teacher: 0, 1)." in result.stderr
    )
    assert "matched by name" in result.stderr
    assert not (tmp_path / "run").exists()


def test_labels_are_matched_by_name_not_position() -> None:
    from llmkit.distill.teacher import Teacher, label_order

    teacher = Teacher.__new__(Teacher)
    teacher.label_names = ["positive", "neutral", "negative"]
    assert label_order(teacher, ["negative", "neutral", "positive"]) == [2, 1, 0]


def test_a_generation_teacher_with_another_vocabulary_is_refused(
    tmp_path: Path, gpt2_checkpoint: Path
) -> None:
    from test_generation import TEMPLATE, _recipe, _rows

    other = tmp_path / "other-gpt2"
    _save_gpt2_with_its_own_vocabulary(other)
    data = {
        "train": write_csv(tmp_path / "train.csv", ["mr", "ref"], _rows(24, 1)),
        "validation": write_csv(tmp_path / "validation.csv", ["mr", "ref"], _rows(8, 2)),
    }
    recipe = _recipe(tmp_path / "student.yaml", gpt2_checkpoint, data, "lora", {"epochs": 1})
    assert TEMPLATE in recipe.read_text()
    refused = invoke("finetune", recipe, f"train.distill.teacher={other}", "--output-dir", tmp_path / "bad")
    assert refused.exit_code == 2
    assert "The teacher's vocabulary differs from the student's" in refused.stderr
    assert "needs the same vocabulary" in refused.stderr
    assert not (tmp_path / "bad").exists()

    # The same vocabulary teaches: the student's own base checkpoint as a (plain) teacher.
    results = _finetune(recipe, tmp_path / "good", f"train.distill.teacher={gpt2_checkpoint}")
    assert results["distill"]["teacher"]["kind"] == "checkpoint"
    cache = _cache(tmp_path / "good")
    assert cache.indices is not None and cache.logits.shape[1] == 32  # top_k


def _save_gpt2_with_its_own_vocabulary(directory: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        ["the film was great", "a story was terrible"] * 20,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|end|>")
    config = GPT2Config(vocab_size=backend.get_vocab_size(), n_embd=32, n_layer=1, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def test_a_teacher_that_is_no_run_or_no_fine_tuned_checkpoint_is_refused(
    tmp_path: Path, bert_checkpoint: Path, sentiment_data: DataFiles
) -> None:
    missing = tmp_path / "nowhere"
    recipe = _student(tmp_path, bert_checkpoint, sentiment_data, missing)
    result = invoke("finetune", recipe, "--output-dir", tmp_path / "run")
    assert result.exit_code == 2
    assert f"The distillation teacher '{missing}' does not exist." in result.stderr

    base = invoke(
        "finetune", recipe, f"train.distill.teacher={bert_checkpoint}", "--output-dir", tmp_path / "run"
    )
    assert base.exit_code == 2
    assert "is not fine-tuned for sequence_classification, so its outputs would be random" in base.stderr


def test_weight_zero_reproduces_token_classification_without_a_teacher(
    tmp_path: Path, bert_checkpoint: Path, tagged: tuple[Path, Path], gpt2_tagger: Path
) -> None:
    """Token classification trains its own token-level loss; a teacher at weight 0 leaves it as is."""
    recipe = _tagging_recipe(tmp_path / "student.yaml", bert_checkpoint, tagged, {"epochs": 1})
    plain = _finetune(recipe, tmp_path / "plain")
    distilled = _finetune(
        recipe, tmp_path / "weight0", f"train.distill={{teacher: {gpt2_tagger}, weight: 0}}"
    )
    assert distilled["metrics"] == plain["metrics"]
    assert [e.get("loss") for e in log_entries(tmp_path / "weight0")] == [
        e.get("loss") for e in log_entries(tmp_path / "plain")
    ]
