"""Full fine-tuning trains the word-embedding rows of the training split's tokens as their own
parameter and decays the others lazily (llmkit/training/embedding_rows.py): the trained model is
the one training the whole table gives, checkpoints resume to it, evaluation reads tokens the
training split lacks, and models whose table is read elsewhere (a tied LM head) or frozen are
left alone."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

from llmkit.training.embedding_rows import (
    USED_ROWS_ENV,
    UsedRowsEmbedding,
    can_train_used_rows,
    training_used_rows,
)

from helpers import (
    CORPUS_WORDS,
    DataFiles,
    explain,
    finetune_failing_at_step,
    results_of,
    sentiment_sentence,
    write_csv,
)

# Training words: a few fillers and one cue word each way; validation uses every corpus word, so
# it reads rows that training never stepped.
TRAIN_WORDS = ("the", "movie", "was", "quite", "great", "awful")
# A high learning rate and weight decay, so the decay of the unused rows is far above float noise.
TRAIN = {"epochs": 2, "batch_size": 8, "learning_rate": 1e-2, "weight_decay": 0.1, "logging_steps": 5}
WEIGHT_TOLERANCE = 1e-6
EMBEDDING = "bert.embeddings.word_embeddings.weight"


@pytest.fixture(scope="module")
def few_words_data(tmp_path_factory: pytest.TempPathFactory) -> DataFiles:
    root = tmp_path_factory.mktemp("few-words")
    rng = random.Random(11)
    train = []
    for i in range(48):
        fillers = rng.choices(TRAIN_WORDS[:4], k=rng.randint(2, 5))
        train.append([" ".join([*fillers, TRAIN_WORDS[4 + i % 2]]), 1 - i % 2])
    validation = [[sentiment_sentence(rng, i % 2), i % 2] for i in range(21)]
    return DataFiles(
        write_csv(root / "train.csv", ["text", "label"], train),
        write_csv(root / "validation.csv", ["text", "label"], validation),
        None,
    )


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model" / "model.safetensors")


def _initial_table(checkpoint: Path) -> torch.Tensor:
    return load_file(checkpoint / "model.safetensors")["embeddings.word_embeddings.weight"]


def test_full_tuning_steps_the_used_rows_alone_and_trains_the_same_model(
    bert_checkpoint: Path,
    few_words_data: DataFiles,
    make_recipe: Any,
    cli: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recipe = make_recipe(bert_checkpoint, few_words_data, "full", train=TRAIN)
    used = tmp_path / "used-rows"
    result = cli("finetune", recipe, "--output-dir", used)
    assert result.exit_code == 0, explain(result)
    monkeypatch.setenv(USED_ROWS_ENV, "0")
    whole = tmp_path / "whole-table"
    result = cli("finetune", recipe, "--output-dir", whole)
    assert result.exit_code == 0, explain(result)

    # [PAD] [UNK] [CLS] [SEP] and the six training words.
    assert results_of(used)["train"]["embedding_rows_trained"] == 4 + len(TRAIN_WORDS)
    assert results_of(whole)["train"]["embedding_rows_trained"] is None
    validation = results_of(whole)["metrics"]["validation"]
    assert results_of(used)["metrics"]["validation"] == pytest.approx(validation, abs=1e-6)
    trained, reference = _weights(used), _weights(whole)
    assert trained.keys() == reference.keys() and EMBEDDING in trained
    for name, tensor in reference.items():
        assert_close(trained[name], tensor, rtol=0, atol=WEIGHT_TOLERANCE, msg=name)

    # The rows of words training never saw moved by the weight decay alone, the same factor for
    # each; the rows it saw learned more than that.
    before, after = _initial_table(bert_checkpoint), trained[EMBEDDING]
    ratio = after / before
    unseen = [i for i, word in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *sorted(set(CORPUS_WORDS))])
              if i >= 4 and word not in TRAIN_WORDS]  # fmt: skip
    factors = ratio[unseen]
    assert factors.min() < 1 - 1e-4, "the unused rows did not decay"
    assert_close(factors, torch.full_like(factors, factors.mean().item()), rtol=0, atol=1e-5)
    seen = [4 + sorted(set(CORPUS_WORDS)).index(word) for word in TRAIN_WORDS]
    assert (after[seen] - before[seen] * factors.mean()).abs().max() > 1e-3


def test_a_full_run_failed_in_its_second_epoch_resumes_to_the_uninterrupted_model(
    bert_checkpoint: Path,
    few_words_data: DataFiles,
    make_recipe: Any,
    cli: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recipe = make_recipe(bert_checkpoint, few_words_data, "full", train={**TRAIN, "checkpoint_every": 4})
    straight = tmp_path / "straight"
    assert (result := cli("finetune", recipe, "--output-dir", straight)).exit_code == 0, explain(result)

    failed = tmp_path / "failed"
    result = finetune_failing_at_step(monkeypatch, recipe, failed, step=10, message="a crash at step 10")
    assert result.exit_code != 0 and "a crash at step 10" in result.stderr
    checkpoint = load_file(failed / "checkpoints" / "checkpoint-8" / "model.safetensors")
    assert EMBEDDING in checkpoint and checkpoint[EMBEDDING].shape == _initial_table(bert_checkpoint).shape

    result = cli("finetune", recipe, "--output-dir", failed, "--resume")
    assert result.exit_code == 0, explain(result)
    assert results_of(failed)["train"]["resumed_from_step"] == 8
    trained, reference = _weights(failed), _weights(straight)
    for name, tensor in reference.items():
        assert_close(trained[name], tensor, rtol=0, atol=WEIGHT_TOLERANCE, msg=name)


def _tiny_bert(checkpoint: Path) -> Any:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=2)


def test_the_split_table_reads_saves_and_loads_as_the_whole_one(bert_checkpoint: Path) -> None:
    model = _tiny_bert(bert_checkpoint)
    original = model.get_input_embeddings()
    table = original.weight.detach().clone()
    keys = model.state_dict().keys()
    used_ids = torch.tensor([0, 2, 3, 7, 9])
    with training_used_rows(model, used_ids) as used:
        assert isinstance(model.get_input_embeddings(), UsedRowsEmbedding)
        names = [name for name, p in model.named_parameters() if p.requires_grad]
        assert "bert.embeddings.word_embeddings.used" in names
        assert "bert.embeddings.word_embeddings.weight" not in names
        used.note_step(learning_rate=0.1, weight_decay=0.5)  # the unused rows x 0.95
        expected = table * 0.95
        expected[used_ids] = table[used_ids]
        state = model.state_dict()
        assert state.keys() == keys
        assert_close(state[EMBEDDING], expected)

        ids = torch.tensor([[2, 7, 5, 3], [2, 9, 11, 3]])  # 5 and 11 unused
        used.eval()
        assert_close(used(ids), torch.nn.functional.embedding(ids, expected))
        used.train()
        with pytest.raises(RuntimeError, match="tokens the training split does not"):
            used(ids)

        state[EMBEDDING] = state[EMBEDDING] + 1.0  # loads back into both parts
        model.load_state_dict(state)
        assert_close(model.state_dict()[EMBEDDING], expected + 1.0)
    assert model.get_input_embeddings() is original
    assert_close(original.weight.detach(), expected + 1.0)


def test_only_a_trained_table_read_nowhere_else_is_split(
    bert_checkpoint: Path, gpt2_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from llmkit.errors import LlmkitError
    from llmkit.recipe.schema import DistributedSection

    assert can_train_used_rows(_tiny_bert(bert_checkpoint), engine_owned=False)
    assert not can_train_used_rows(_tiny_bert(bert_checkpoint), engine_owned=True)
    owned = {s: DistributedSection(strategy=s).engine_owns_parameters for s in ("ddp", "fsdp", "deepspeed")}
    assert owned == {"ddp": False, "fsdp": True, "deepspeed": True}
    classifier = AutoModelForSequenceClassification.from_pretrained(gpt2_checkpoint, num_labels=2)
    assert can_train_used_rows(classifier, engine_owned=False)
    language_model = AutoModelForCausalLM.from_pretrained(gpt2_checkpoint)
    assert language_model.get_output_embeddings().weight is language_model.get_input_embeddings().weight
    assert not can_train_used_rows(language_model, engine_owned=False)  # tied to the LM head
    frozen = _tiny_bert(bert_checkpoint)
    frozen.get_input_embeddings().weight.requires_grad_(False)
    assert not can_train_used_rows(frozen, engine_owned=False)

    monkeypatch.setenv(USED_ROWS_ENV, "off")
    assert not can_train_used_rows(_tiny_bert(bert_checkpoint), engine_owned=False)
    monkeypatch.setenv(USED_ROWS_ENV, "sometimes")
    with pytest.raises(LlmkitError) as raised:
        can_train_used_rows(_tiny_bert(bert_checkpoint), engine_owned=False)
    assert f"{USED_ROWS_ENV}='sometimes' is neither on nor off" in str(raised.value)
    assert "set it to 0 to train the whole word-embedding table as one parameter" in raised.value.hint


def test_a_checkpoint_of_the_other_embedding_form_is_refused_with_the_setting_that_resumes_it(
    bert_checkpoint: Path,
    few_words_data: DataFiles,
    make_recipe: Any,
    cli: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AdamW's moments of a checkpoint written with the whole table stepped do not fit the used
    rows (llmkit before this change, or the variable set to 0): refused, saying what resumes it."""
    recipe = make_recipe(bert_checkpoint, few_words_data, "full", train={**TRAIN, "checkpoint_every": 4})
    failed = tmp_path / "failed"
    monkeypatch.setenv(USED_ROWS_ENV, "0")
    result = finetune_failing_at_step(monkeypatch, recipe, failed, step=10, message="a crash at step 10")
    assert result.exit_code != 0
    monkeypatch.delenv(USED_ROWS_ENV)

    refused = cli("finetune", recipe, "--output-dir", failed, "--resume")
    assert refused.exit_code == 2, explain(refused)
    assert "Cannot resume from" in refused.stderr and "checkpoint-8" in refused.stderr
    assert f"resumes with {USED_ROWS_ENV}=0" in refused.stderr

    monkeypatch.setenv(USED_ROWS_ENV, "0")
    resumed = cli("finetune", recipe, "--output-dir", failed, "--resume")
    assert resumed.exit_code == 0, explain(resumed)
    assert results_of(failed)["train"]["embedding_rows_trained"] is None


def test_an_unclear_used_rows_setting_fails_before_the_run_directory_is_made(
    bert_checkpoint: Path,
    few_words_data: DataFiles,
    make_recipe: Any,
    cli: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(USED_ROWS_ENV, "perhaps")
    run_dir = tmp_path / "run"
    result = cli("finetune", make_recipe(bert_checkpoint, few_words_data, "full"), "--output-dir", run_dir)
    assert result.exit_code == 2, explain(result)
    assert f"{USED_ROWS_ENV}='perhaps' is neither on nor off" in result.stderr
    assert "set it to 0 to train the whole word-embedding table as one parameter" in result.stderr
    assert not run_dir.exists()
