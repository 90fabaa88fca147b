"""The generation task on tiny GPT-2: every method end to end through the CLI, the labels it trains
on (completion and EOS only, the EOS kept when it is also the pad token), PEFT's label padding for
virtual tokens, batched generation, `llmkit generate` against the merged checkpoint in a
transformers pipeline, the metrics, and the refusals."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import explain, invoke, log_entries, results_of, write_csv

SUBJECTS = ("movie", "film", "plot", "story", "show", "music")
MOODS = {"positive": "great", "negative": "terrible"}
TEMPLATE = "Describe: {mr}\n"
MAX_NEW_TOKENS = 12


def _rows(count: int, seed: int) -> list[list[str]]:
    """A meaning representation and a reference; each (subject, mood) has two ('the'/'a' ...)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        subject, mood = rng.choice(SUBJECTS), rng.choice(list(MOODS))
        rows.append(
            [f"subject[{subject}] mood[{mood}]", f"{rng.choice(('the', 'a'))} {subject} was {MOODS[mood]}"]
        )
    return rows


@pytest.fixture(scope="module")
def generation_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("descriptions")
    return {
        "train": write_csv(root / "train.csv", ["mr", "ref"], _rows(60, 1)),
        "validation": write_csv(root / "validation.csv", ["mr", "ref"], _rows(16, 2)),
    }


def _recipe(path: Path, checkpoint: Path, data: dict[str, Path], method: str, train: dict[str, Any]) -> Path:
    tree = {
        "model": {"checkpoint": str(checkpoint)},
        "data": {
            "train_file": str(data["train"]),
            "validation_file": str(data["validation"]),
            "max_length": 64,
        },
        "task": {
            "name": "generation",
            "template": TEMPLATE,
            "completion_column": "ref",
            "generate": {"max_new_tokens": MAX_NEW_TOKENS},
        },
        "method": {"name": method},
        "train": {"batch_size": 8, "eval_batch_size": 8, "logging_steps": 5, **train},
    }
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return path


SETTINGS = {
    # 8 epochs: at 4, whether the tiny model had learned the task (ROUGE-L > 0.4) hung on the seed
    # (seeds 1-6: 0.0 in three of six with Trainer's length grouping, 0.19-0.54 with llmkit's
    # sorted batches, 0.33 at the default seed); at 8, 0.72-0.75 for seeds 1-6 and 42, both ways.
    "full": {"epochs": 8, "learning_rate": 2e-3},
    "lora": {"epochs": 4, "learning_rate": 2e-2},
    "prefix": {"epochs": 2},
    "prompt": {"epochs": 2},
}


@pytest.fixture(scope="module")
def generation_runs(
    tmp_path_factory: pytest.TempPathFactory, gpt2_checkpoint: Path, generation_data: dict[str, Path]
) -> Any:
    root = tmp_path_factory.mktemp("generation-runs")
    made: dict[str, Path] = {}

    def run(method: str) -> Path:
        if method not in made:
            recipe = _recipe(
                root / f"{method}.yaml", gpt2_checkpoint, generation_data, method, SETTINGS[method]
            )
            run_dir = root / "runs" / method
            result = invoke("finetune", recipe, "--output-dir", run_dir)
            assert result.exit_code == 0, explain(result)
            made[method] = run_dir
        return made[method]

    return run


def _distinct_prompts(path: Path) -> int:
    with path.open(encoding="utf-8") as handle:
        return len({line.split(",")[0] for line in handle.readlines()[1:]})


@pytest.mark.parametrize("method", ["full", "lora", "prefix", "prompt"])
def test_every_method_trains_and_generates(
    generation_runs: Any, generation_data: dict[str, Path], method: str
) -> None:
    run_dir = generation_runs(method)
    results = results_of(run_dir)
    validation = results["metrics"]["validation"]
    assert results["task"]["name"] == "generation"
    assert validation["perplexity"] == pytest.approx(math.exp(validation["loss"]))
    # One generation per distinct prompt, however many references it has.
    prompts = _distinct_prompts(generation_data["validation"])
    assert validation["stopped_at_eos"] + validation["hit_length_limit"] == prompts
    for name in ("exact_match", "rouge_l"):
        assert 0.0 <= validation[name] <= 1.0
    assert 0.0 <= validation["bleu"] <= 100.0
    losses = [entry["eval_loss"] for entry in log_entries(run_dir) if "eval_loss" in entry]
    assert losses[-1] < losses[0], f"{method}: validation loss did not fall: {losses}"


def test_the_eos_is_trained_and_generation_stops(generation_runs: Any) -> None:
    # Full fine-tuning fits the tiny random GPT-2 in seconds; adapters on random weights do not.
    validation = results_of(generation_runs("full"))["metrics"]["validation"]
    assert validation["hit_length_limit"] == 0, validation
    assert validation["rouge_l"] > 0.4, validation  # an untrained model scores 0, running to the limit


def test_prompt_tokens_carry_no_loss_and_the_eos_is_kept_when_it_pads(gpt2_checkpoint: Path) -> None:
    from datasets import Dataset

    from llmkit.models.loading import load_tokenizer
    from llmkit.recipe.schema import DataSection
    from llmkit.tasks.generation import GenerationOptions, GenerationTask

    tokenizer = load_tokenizer(str(gpt2_checkpoint))
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the case a pad-masking collator breaks
    rows = Dataset.from_dict({"mr": ["subject[film] mood[positive]"], "ref": ["the film was great"]})
    data = DataSection(train_file=Path("unused.csv"), max_length=64)
    for train_on_prompt in (False, True):
        task = GenerationTask(
            GenerationOptions(template=TEMPLATE, completion_column="ref", train_on_prompt=train_on_prompt)
        )
        row = task.tokenize(rows, tokenizer, data, "train")[0]
        prompt = tokenizer(TEMPLATE.format(mr="subject[film] mood[positive]"))["input_ids"]
        completion = tokenizer("the film was great", add_special_tokens=False)["input_ids"]
        assert row["input_ids"] == [*prompt, *completion, tokenizer.eos_token_id]
        expected_prompt_labels = prompt if train_on_prompt else [-100] * len(prompt)
        assert row["labels"] == [*expected_prompt_labels, *completion, tokenizer.eos_token_id]
        batch = task.collator(tokenizer)([row, {**row, **_shorter(row)}])
        assert batch["labels"][0, -1].item() == tokenizer.eos_token_id  # EOS trained, though it pads
        assert batch["labels"][1, -1].item() == -100  # padding is not


def _shorter(row: dict[str, Any]) -> dict[str, Any]:
    return {key: row[key][:-3] for key in ("input_ids", "attention_mask", "labels")}


def test_truncation_keeps_the_completion_and_counts_cut_rows() -> None:
    from llmkit.generation.data import encode_example

    encoded = encode_example(
        list(range(10, 30)), [1, 2, 3], eos_token_id=0, max_length=8, train_on_prompt=False
    )
    assert encoded.cut
    assert encoded.input_ids == [26, 27, 28, 29, 1, 2, 3, 0]  # the prompt's end kept, next to its completion
    assert encoded.labels == [-100] * 4 + [1, 2, 3, 0]
    assert not encode_example([5], [1], eos_token_id=0, max_length=8, train_on_prompt=False).cut


def test_peft_pads_labels_for_virtual_tokens(gpt2_checkpoint: Path) -> None:
    """PEFT's causal-LM prompt tuning prepends -100 labels for its virtual tokens: its loss equals
    the loss of the example's own positions computed here."""
    import torch

    from llmkit.methods import get_method
    from llmkit.methods.prompt import PromptOptions
    from llmkit.models.loading import load_classifier
    from llmkit.tasks import task_for
    from llmkit.tasks.generation import GenerationOptions, summed_token_loss

    task = task_for(GenerationOptions())
    loaded = load_classifier(str(gpt2_checkpoint), [], task=task)
    model = get_method("prompt").wrap(loaded.model, PromptOptions(num_virtual_tokens=5), loaded.traits)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    labels = torch.tensor([[-100, -100, 7, 8, 9, 10]])
    with torch.no_grad():
        output = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    assert output.logits.shape[1] == ids.shape[1] + 5
    summed = summed_token_loss(output.logits, labels)
    assert output.loss.item() == pytest.approx((summed[0, 0] / summed[0, 1]).item(), rel=1e-5)


def test_left_padded_batches_generate_what_single_prompts_do(
    generation_runs: Any, generation_data: dict[str, Path]
) -> None:
    from llmkit.generation.engine import generate_texts
    from llmkit.runs import load_model, read_run

    trained = read_run(generation_runs("full"))
    loaded = load_model(trained)
    prompts = [TEMPLATE.format(mr=row[0]) for row in _rows(8, 7)] + ["Describe: subject[music]\n"]
    options = trained.recipe.task.generate  # type: ignore[attr-defined]
    batched = generate_texts(loaded.model, loaded.tokenizer, prompts, options, False, 64, batch_size=9)
    alone = generate_texts(loaded.model, loaded.tokenizer, prompts, options, False, 64, batch_size=1)
    assert len({len(loaded.tokenizer(p)["input_ids"]) for p in prompts}) > 1  # padding really happens
    assert [g.text for g in batched] == [g.text for g in alone]


def test_generate_command_equals_the_merged_checkpoint_in_a_pipeline(
    generation_runs: Any, tmp_path: Path
) -> None:
    from transformers import pipeline

    run_dir = generation_runs("lora")
    inputs = tmp_path / "inputs.jsonl"
    rows = [{"id": i, "mr": mr} for i, (mr, _) in enumerate(_rows(5, 9))]
    inputs.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    output = tmp_path / "out.jsonl"
    result = invoke("generate", run_dir, "--input", inputs, "--output", output)
    assert result.exit_code == 0, explain(result)
    generated = [json.loads(line) for line in output.read_text().splitlines()]
    assert [g["id"] for g in generated] == [row["id"] for row in rows]

    merged = tmp_path / "merged"
    result = invoke("merge", run_dir, "--output-dir", merged)
    assert result.exit_code == 0, explain(result)
    generator = pipeline("text-generation", model=str(merged), device="cpu")
    for record in generated:
        out = generator(
            record["prompt"], max_new_tokens=MAX_NEW_TOKENS, do_sample=False, return_full_text=False
        )
        assert out[0]["generated_text"].strip() == record["generation"]


def test_stdin_prompts_and_evaluate(generation_runs: Any, generation_data: dict[str, Path]) -> None:
    from typer.testing import CliRunner

    from llmkit.cli import app

    run_dir = generation_runs("full")
    result = CliRunner().invoke(
        app, ["generate", str(run_dir), "-i", "-"], input="subject[film] mood[negative]\n"
    )
    assert result.exit_code == 0, explain(result)
    record = json.loads(result.stdout)
    assert record["prompt"] == "Describe: subject[film] mood[negative]\n"
    evaluated = invoke("evaluate", run_dir, "--format", "json")
    assert evaluated.exit_code == 0, explain(evaluated)
    report = json.loads(evaluated.stdout)
    expected = results_of(run_dir)["metrics"]["validation"]
    for name in ("bleu", "rouge_l", "exact_match", "stopped_at_eos"):
        assert report["metrics"][name] == pytest.approx(expected[name]), name
    assert report["metrics"]["loss"] == pytest.approx(expected["loss"], abs=1e-5)
    assert report["generations"]["stopped_at_eos"] == expected["stopped_at_eos"]
    from_file = invoke("evaluate", run_dir, "--data", generation_data["validation"], "--format", "json")
    assert from_file.exit_code == 0, explain(from_file)
    assert json.loads(from_file.stdout)["metrics"]["bleu"] == pytest.approx(expected["bleu"])


def test_predict_on_a_generation_run_points_to_generate(generation_runs: Any) -> None:
    from typer.testing import CliRunner

    from llmkit.cli import app

    result = CliRunner().invoke(app, ["predict", str(generation_runs("full")), "-i", "-"], input="x\n")
    assert result.exit_code != 0
    assert "generation run" in result.stderr and "llmkit generate" in result.stderr


def test_dry_run_shows_the_masked_prompt(
    gpt2_checkpoint: Path, generation_data: dict[str, Path], tmp_path: Path
) -> None:
    recipe = _recipe(tmp_path / "r.yaml", gpt2_checkpoint, generation_data, "lora", {})
    result = invoke("finetune", recipe, "--dry-run")
    assert result.exit_code == 0, explain(result)
    assert "no loss:  'Describe: subject[" in result.stdout
    assert "<|endoftext|>'" in result.stdout.split("trained:", 1)[1].splitlines()[0]


def test_encoders_are_refused(
    bert_checkpoint: Path, generation_data: dict[str, Path], tmp_path: Path
) -> None:
    recipe = _recipe(tmp_path / "r.yaml", bert_checkpoint, generation_data, "full", {})
    result = invoke("finetune", recipe, "--output-dir", tmp_path / "run")
    assert result.exit_code != 0
    assert "needs a decoder" in result.stderr
    assert not (tmp_path / "run").exists()


def test_chat_messages_need_a_chat_template(gpt2_checkpoint: Path, tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 4
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    tree = {
        "model": {"checkpoint": str(gpt2_checkpoint)},
        "data": {"train_file": str(data), "validation_file": str(data)},
        "task": {"name": "generation", "messages_column": "messages"},
    }
    recipe = tmp_path / "chat.yaml"
    recipe.write_text(yaml.safe_dump(tree), encoding="utf-8")
    result = invoke("finetune", recipe, "--output-dir", tmp_path / "run")
    assert result.exit_code != 0
    assert "has no chat template" in result.stderr


def test_chat_messages_render_with_the_chat_template(gpt2_checkpoint: Path) -> None:
    from llmkit.generation.data import render_chat
    from llmkit.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(gpt2_checkpoint))
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert render_chat(messages, tokenizer) == ("<user>hi\n<assistant>", "hello")


def test_metrics_take_several_references() -> None:
    from llmkit.metrics import load_metric

    predictions = ["The film was great.", "a plot"]
    references = [["something else", "the film was great"], ["a show"]]
    assert load_metric("exact_match").compute(predictions=predictions, references=references) == {
        "exact_match": 0.5
    }
    bleu = load_metric("bleu").compute(predictions=predictions, references=references)["bleu"]
    single = load_metric("bleu").compute(predictions=predictions, references=[["something else"], ["a show"]])
    assert bleu > single["bleu"]  # the second reference of the first row counts
    rouge = load_metric("rouge_l").compute(predictions=predictions, references=references)["rouge_l"]
    assert rouge == pytest.approx((1.0 + 0.5) / 2)


def test_a_packed_batch_gives_the_loss_of_its_examples_unpacked(gpt2_checkpoint: Path) -> None:
    import torch
    from datasets import Dataset

    from llmkit.generation.data import pack_examples
    from llmkit.models.loading import load_classifier
    from llmkit.recipe.schema import DataSection
    from llmkit.tasks import task_for
    from llmkit.tasks.generation import GenerationOptions

    rows = _rows(6, 11)
    dataset = Dataset.from_dict({"mr": [r[0] for r in rows], "ref": [r[1] for r in rows]})
    data = DataSection(train_file=Path("unused.csv"), max_length=100)  # 2-3 examples a row
    options = GenerationOptions(template=TEMPLATE, completion_column="ref", train_on_prompt=True)
    task = task_for(options)
    loaded = load_classifier(str(gpt2_checkpoint), [], task=task)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    examples = task.tokenize(dataset, tokenizer, data, "validation")  # unpacked
    packed = pack_examples(examples, data.max_length)
    assert 1 < len(packed) < len(examples)  # several examples per row, and more than one row
    collate = task.collator(tokenizer)
    with torch.no_grad():
        unpacked_loss = model(**collate(list(examples))).loss
        packed_batch = collate(list(packed))
        assert packed_batch["attention_mask"].dim() == 4
        packed_loss = model(**packed_batch).loss
    assert packed_loss.item() == pytest.approx(unpacked_loss.item(), abs=1e-5)


def test_packing_trains_through_the_cli_and_refuses_virtual_tokens(
    gpt2_checkpoint: Path, generation_data: dict[str, Path], tmp_path: Path
) -> None:
    recipe = _recipe(tmp_path / "packed.yaml", gpt2_checkpoint, generation_data, "full", SETTINGS["full"])
    result = invoke(
        "finetune", recipe, "task.packing=true", "data.max_length=128", "--output-dir", tmp_path / "packed"
    )
    assert result.exit_code == 0, explain(result)
    results = results_of(tmp_path / "packed")
    assert results["data"]["train_rows"] < 60  # 60 examples in fewer packed rows
    assert results["metrics"]["validation"]["hit_length_limit"] == 0
    refused = invoke(
        "finetune", recipe, "task.packing=true", "method.name=prompt", "--output-dir", tmp_path / "prompt"
    )
    assert refused.exit_code != 0
    assert "task.packing cannot be used with a method that adds virtual tokens" in refused.stderr


def test_logits_of_the_completions_only_give_the_same_loss_and_gradients(gpt2_checkpoint: Path) -> None:
    import torch
    from datasets import Dataset

    from llmkit.methods import get_method
    from llmkit.models.loading import load_classifier
    from llmkit.recipe.schema import DataSection
    from llmkit.tasks import task_for
    from llmkit.tasks.generation import GenerationOptions

    rows = _rows(6, 12)
    # Prompts of different lengths: the batch keeps logits from before its shortest prompt's end.
    dataset = Dataset.from_dict(
        {"mr": [r[0] + " x" * i for i, r in enumerate(rows)], "ref": [r[1] for r in rows]}
    )
    data = DataSection(train_file=Path("unused.csv"), max_length=100)
    task = task_for(GenerationOptions(template=TEMPLATE, completion_column="ref"))
    loaded = load_classifier(str(gpt2_checkpoint), [], task=task)
    lora = get_method("lora").options()
    model, tokenizer = loaded.model.train(False), loaded.tokenizer
    examples = list(task.tokenize(dataset, tokenizer, data, "train"))
    whole = task.collator(tokenizer)(examples)  # no method given: every position's logits
    trimmed = task.collator(tokenizer, lora)(examples)
    shortest_prompt = min(row["prompt_length"] for row in examples)
    width = whole["input_ids"].shape[1]
    assert trimmed["logits_to_keep"] == width - shortest_prompt + 1 < width
    assert trimmed["labels"].shape[1] == trimmed["logits_to_keep"]
    assert (trimmed["labels"] != -100).sum() == (whole["labels"] != -100).sum()  # no trained label cut
    losses, gradients = [], []
    for batch in (whole, trimmed):
        model.zero_grad()
        output = model(**batch)
        output.loss.backward()
        losses.append(output.loss.item())
        gradients.append(model.get_input_embeddings().weight.grad.clone())
    assert output.logits.shape[1] == trimmed["logits_to_keep"]
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    assert torch.allclose(gradients[1], gradients[0], atol=1e-6)
    # Methods whose logits do not line up with the batch's positions keep every logit.
    prompt = get_method("prompt").options()
    assert "logits_to_keep" not in task.collator(tokenizer, prompt)(examples)
