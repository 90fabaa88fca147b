"""What the speed work rests on: the model-FLOP count behind MFU, `train.precision: auto`, fp32
weights whatever the checkpoint stores, prediction in the run's precision, the attention kernel a
bf16 training step takes on CPU, and the allocator keeping freed memory."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import DataFiles, explain, results_of


def _wrapped(checkpoint: Path, method: str, **options: Any) -> tuple[Any, Any]:
    from llmkit.methods import get_method
    from llmkit.models.loading import load_classifier

    loaded = load_classifier(str(checkpoint), ["negative", "positive"])
    spec = get_method(method)
    chosen = spec.options(**options)
    return spec.wrap(loaded.model, chosen, loaded.traits), chosen


@pytest.mark.parametrize("architecture", ["bert", "gpt2"])
@pytest.mark.parametrize("method", ["full", "lora", "prefix", "prompt"])
def test_model_flops_follow_the_stated_formula(
    architecture: str, method: str, checkpoints: dict[str, Path]
) -> None:
    from llmkit.training.flops import flops_per_example, per_token_weights

    model, options = _wrapped(checkpoints[architecture], method)
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    layers, width = config.num_hidden_layers, config.hidden_size
    inner = (config.n_inner or 4 * width) if architecture == "gpt2" else config.intermediate_size
    # Per layer: query, key, value and output projections, and the two MLP matrices; adapters,
    # embeddings and the once-per-example head left out.
    assert per_token_weights(model) == layers * (4 * width * width + 2 * width * inner)

    weights = per_token_weights(model)
    passes = 6 if method == "full" else 4
    virtual = getattr(options, "num_virtual_tokens", 0)
    lengths = [3, 7]
    expected = []
    for length in lengths:
        tokens = length + (virtual if method == "prompt" else 0)
        context = tokens + (virtual if method == "prefix" else 0)
        expected.append(passes * weights * tokens + 3 * 4 * layers * width * tokens * context)
    assert flops_per_example(model, options, lengths) == pytest.approx(sum(expected) / 2)


def test_results_report_model_flops_per_second(
    cli: Any, make_recipe: Any, bert_checkpoint: Path, sentiment_data: DataFiles, tmp_path: Path
) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora", train={"epochs": 1})
    result = cli("finetune", recipe, "--output-dir", tmp_path / "run")
    assert result.exit_code == 0, explain(result)
    train = results_of(tmp_path / "run")["train"]
    assert train["model_flops"] > 0
    expected = train["model_flops"] / train["runtime_s"]
    assert train["model_flops_per_second"] == pytest.approx(expected, rel=0.01)  # runtime_s is rounded


@pytest.mark.parametrize(
    ("cuda", "native_bf16", "expected"),
    [(False, True, "bf16"), (False, False, "fp32"), (True, True, "fp32")],
    ids=["cpu-with-bf16", "cpu-without-bf16", "cuda-machine"],
)
def test_auto_precision_picks_bf16_only_where_it_was_measured_faster(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, native_bf16: bool, expected: str
) -> None:
    from llmkit.training.precision import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision("auto") == expected
    for explicit in ("fp32", "bf16", "fp16"):
        assert resolve_precision(explicit) == explicit


def test_a_bf16_checkpoint_is_trained_with_fp32_weights(bert_checkpoint: Path, tmp_path: Path) -> None:
    """transformers 5 keeps a checkpoint's stored dtype by default: a bf16 hub model would train
    without fp32 master weights."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmkit.models.loading import load_classifier

    stored = tmp_path / "bf16"
    AutoModelForSequenceClassification.from_pretrained(bert_checkpoint).to(torch.bfloat16).save_pretrained(
        stored
    )
    AutoTokenizer.from_pretrained(bert_checkpoint).save_pretrained(stored)
    loaded = load_classifier(str(stored), ["negative", "positive"])
    assert {parameter.dtype for parameter in loaded.model.parameters()} == {torch.float32}


def test_evaluate_computes_in_the_precision_the_run_trained_in(
    cli: Any, make_recipe: Any, bert_checkpoint: Path, sentiment_data: DataFiles, tmp_path: Path
) -> None:
    import json

    recipe = make_recipe(bert_checkpoint, sentiment_data, "full", train={"epochs": 1, "precision": "bf16"})
    run_dir = tmp_path / "run"
    assert cli("finetune", recipe, "--output-dir", run_dir).exit_code == 0
    expected = results_of(run_dir)["metrics"]["validation"]
    result = cli("evaluate", run_dir, "--format", "json")
    assert result.exit_code == 0, explain(result)
    measured = json.loads(result.stdout)["metrics"]
    assert measured["accuracy"] == expected["accuracy"] and measured["f1"] == expected["f1"]
    # bf16 logits, averaged in another order than Trainer's: equal to about 1e-5.
    assert measured["loss"] == pytest.approx(expected["loss"], abs=1e-4)


def test_profile_accounts_for_a_training_steps_time(
    make_recipe: Any, bert_checkpoint: Path, sentiment_data: DataFiles
) -> None:
    from llmkit.bench.profile import profile_training

    recipe = make_recipe(bert_checkpoint, sentiment_data, "full")
    report = profile_training(recipe, ["train.batch_size=8"], steps=3)
    assert "3 steps profiled after 2 warm-up steps" in report
    assert "| matrix multiplication |" in report and "| optimizer |" in report
    operators = report.split("operators | calls a step | self CPU s | share |")[1].splitlines()[2:]
    assert len(operators) == 12 and any(line.startswith("| aten::") for line in operators)
    padding = float(report.split("padding: ")[1].split("%")[0])
    assert 0 <= padding < 100


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[start : start + size] for start in range(0, len(order), size)]


def _padding_share(lengths: list[int], order: list[int], size: int) -> float:
    batches = [[lengths[i] for i in batch] for batch in _batches(order, size)]
    return 1 - sum(map(sum, batches)) / sum(max(batch) * len(batch) for batch in batches)


def test_length_grouped_batches_pad_little_and_come_in_random_order() -> None:
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from llmkit.training.trainer import ShuffledLengthGroupedSampler

    size = 16
    seeded = lambda: torch.Generator().manual_seed(0)  # noqa: E731

    # A set of at most 50 batches is sorted whole: the full batches' length ranges do not
    # overlap, the least padding any batching has; Trainer's chunks of a quarter of the set
    # (9 batches here) leave far more.
    small = [(7 * i) % 61 + 1 for i in range(600)]  # 37 full batches of 1 to 61 tokens, and 8
    order = list(ShuffledLengthGroupedSampler(size, lengths=small, generator=seeded()))
    assert sorted(order) == list(range(600))  # every example once
    spans = sorted((min(small[i] for i in b), max(small[i] for i in b)) for b in _batches(order, size)[:-1])
    assert all(high <= next_low for (_, high), (next_low, _) in itertools.pairwise(spans))
    padding = _padding_share(small, order, size)
    trainers_padding = _padding_share(
        small, get_length_grouped_indices(small, size, generator=seeded()), size
    )
    assert padding < 0.04 and trainers_padding > 2.5 * padding, (padding, trainers_padding)

    # A larger set: chunks of 50 batches, Trainer's very batches (sorting the whole set pads
    # less but learned slower), handed out in random order instead of longest to shortest.
    large = [(7 * i) % 61 + 1 for i in range(6405)]  # 400 full batches and a partial one of 5
    sampler = ShuffledLengthGroupedSampler(size, lengths=large, generator=seeded())
    order = list(sampler)
    batches = _batches(order, size)
    trainers = _batches(get_length_grouped_indices(large, size, generator=seeded()), size)
    assert sorted(map(sorted, batches)) == sorted(map(sorted, trainers))
    # The longest example in the first batch (running out of memory happens at once), the
    # partial batch last.
    assert max(large[i] for i in batches[0]) == 61 and len(batches[-1]) == 6405 % size
    longest = [max(large[i] for i in batch) for batch in batches[1:-1]]
    descents = sum(a > b for a, b in itertools.pairwise(longest))
    assert 0.3 < descents / len(longest) < 0.7  # random order: about half the steps go down
    again = ShuffledLengthGroupedSampler(size, lengths=large, generator=seeded())
    assert list(again) == order  # seeded: resuming replays the same order
    # Each epoch draws new chunks: a batch is a fresh sample of the examples of its length.
    next_batches = _batches(list(sampler), size)
    assert sorted(map(sorted, next_batches)) != sorted(map(sorted, batches))


def test_rows_held_in_memory_are_tokenised_without_hashing_the_tokenizer(
    bert_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """datasets names a map's result by pickling the function, tokenizer and vocabulary included
    (0.15-0.45 s): worth it for files, whose tokenised copy is cached under that name, not for
    rows held in memory."""
    import datasets.arrow_dataset
    from datasets import Dataset, load_dataset
    from transformers import AutoTokenizer

    from llmkit.data.tokenize import tokenize_split

    tokenizer = AutoTokenizer.from_pretrained(bert_checkpoint)
    hashed: list[Any] = []
    original = datasets.arrow_dataset.update_fingerprint
    monkeypatch.setattr(
        datasets.arrow_dataset,
        "update_fingerprint",
        lambda fingerprint, transform, args: hashed.append(args) or original(fingerprint, transform, args),
    )
    in_memory = Dataset.from_dict({"text": ["good film", "bad film"]})
    encoded = tokenize_split(in_memory, tokenizer, ["text"], 16, "input")
    assert encoded["input_ids"] == tokenizer(["good film", "bad film"])["input_ids"]
    assert not [args for args in hashed if "function" in args]  # map's function was not hashed

    path = tmp_path / "rows.csv"
    path.write_text("text\ngood film\nbad film\n", encoding="utf-8")
    from_file = load_dataset("csv", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    first = tokenize_split(from_file, tokenizer, ["text"], 16, "input")
    assert [args for args in hashed if "function" in args]
    again = tokenize_split(from_file, tokenizer, ["text"], 16, "input")
    assert first._fingerprint == again._fingerprint  # the same name: the cached copy is found
    assert first.cache_files == again.cache_files


@pytest.mark.parametrize("architecture", ["bert", "gpt2"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_prediction_batches_are_the_collators_batches(
    checkpoints: dict[str, Path], architecture: str, side: str
) -> None:
    """Prediction pads its batches itself (tokenizer.pad took as long as a small model's forward
    pass): the same tensors DataCollatorWithPadding makes, on either padding side, token type
    ids included, and the same logits."""
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from llmkit.inference import model_input_columns, padded_batch, predict_logits

    tokenizer = AutoTokenizer.from_pretrained(checkpoints[architecture])
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = side
    texts = ["good", "a rather long and winding film", "bad film", "it is what it is"]
    columns = model_input_columns(tokenizer(texts, truncation=True, max_length=16))
    rows = [2, 1, 3]
    ours = padded_batch(columns, rows, tokenizer)
    theirs = DataCollatorWithPadding(tokenizer)(
        [{name: values[i] for name, values in columns.items()} for i in rows]
    )
    assert set(ours) == set(theirs) and set(ours) >= {"input_ids", "attention_mask"}
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name

    model, _ = _wrapped(checkpoints[architecture], "full")
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    with torch.no_grad():
        expected = model(**theirs).logits.numpy()
    alone = predict_logits(
        model,
        tokenizer,
        {k: [v[i] for i in rows] for k, v in columns.items()},
        batch_size=3,
        sort_by_length=False,
    )
    assert alone == pytest.approx(expected, abs=1e-5)


def test_prediction_tokenises_the_rows_in_one_call_and_refuses_none(
    bert_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows to predict are tokenised by the tokenizer directly (a datasets map's arrow writing
    took half of predicting SST-2's dev rows with a one-layer model), as training tokenises them;
    no rows is an error that says so."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from llmkit.errors import DataError
    from llmkit.recipe.schema import DataSection
    from llmkit.tasks.sequence_classification import predict_probabilities

    tokenizer = AutoTokenizer.from_pretrained(bert_checkpoint)
    model, _ = _wrapped(bert_checkpoint, "full")
    model.eval()
    data = DataSection.model_validate(
        {"train_file": "x.csv", "validation_file": "x.csv", "text_columns": ["text"], "max_length": 8},
        strict=False,
    )
    texts = ["good film", "a rather long and winding film that goes on and on", "bad"]
    monkeypatch.setattr(
        Dataset, "map", lambda *args, **kwargs: pytest.fail("tokenised through a datasets map")
    )
    probabilities = predict_probabilities(
        model, tokenizer, Dataset.from_dict({"text": texts}), data, 2, "fp32"
    )
    encoded = tokenizer(texts, truncation=True, max_length=8, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = torch.softmax(model(**encoded).logits, dim=-1).numpy()
    assert probabilities == pytest.approx(expected, abs=1e-5)

    with pytest.raises(DataError, match="There are no rows to predict"):
        predict_probabilities(model, tokenizer, Dataset.from_dict({"text": []}), data, 2, "fp32")


@pytest.mark.parametrize("method", ["full", "lora"])
def test_inference_in_bf16_casts_each_weight_once_and_computes_what_autocast_does(
    bert_checkpoint: Path, method: str
) -> None:
    """Under torch.inference_mode, or for frozen weights (an adapter's base), autocast casts every
    weight again at every forward pass (44% of generating with SmolLM2 + LoRA in bf16); llmkit's
    inference context makes it keep one copy per weight, with the same logits to the bit, and
    leaves the weights' requires_grad as it found them, also when the forward pass fails."""
    from torch.profiler import profile

    from llmkit.training.precision import inference_precision

    model, _ = _wrapped(bert_checkpoint, method)
    model.eval()
    frozen_before = [name for name, p in model.named_parameters() if not p.requires_grad]
    batch = {
        "input_ids": torch.tensor([[2, 5, 9, 7, 3], [2, 6, 4, 3, 0]]),
        "attention_mask": torch.ones(2, 5),
    }
    batch["attention_mask"][1, 4] = 0
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(**batch).logits

    def casts(passes: int) -> tuple[int, torch.Tensor]:
        with inference_precision(model, "bf16", "cpu"), profile() as recorded:
            for _ in range(passes):
                logits = model(**batch).logits
        return sum(e.count for e in recorded.key_averages() if e.key == "aten::_to_copy"), logits

    once, logits = casts(1)
    thrice, _ = casts(3)
    assert torch.equal(logits, expected)
    # Weights and biases of the encoder layers' linear maps: every pass multiplies by all of them.
    weights = sum(
        len(list(module.parameters(recurse=False)))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and "encoder.layer" in name
    )
    assert weights > 0
    # The second and third passes cast activations only: each at least `weights` casts fewer.
    assert (thrice - once) / 2 <= once - weights
    assert [name for name, p in model.named_parameters() if not p.requires_grad] == frozen_before

    with pytest.raises(RuntimeError), inference_precision(model, "bf16", "cpu"):
        raise RuntimeError("a forward pass failed")
    assert [name for name, p in model.named_parameters() if not p.requires_grad] == frozen_before


@pytest.mark.parametrize("architecture", ["bert", "gpt2"])
@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_frozen_weights_train_in_half_precision_with_the_same_loss_and_gradients(
    checkpoints: dict[str, Path], architecture: str, method: str
) -> None:
    """An adapter's frozen base weights are cast to bf16 once for the whole training instead of
    by autocast at every step: the same loss and gradients to the bit, and the fp32 tensors back
    when training ends (also after an error)."""
    from llmkit.training.precision import frozen_weights_in_half_precision

    torch.manual_seed(0)
    model, _ = _wrapped(checkpoints[architecture], method)
    model.train()
    batch = {
        "input_ids": torch.tensor([[2, 5, 9, 7, 3], [2, 6, 4, 3, 3]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]),
        "labels": torch.tensor([0, 1]),
    }
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    originals = {name: (p.data_ptr(), p.dtype) for name, p in model.named_parameters()}

    def loss_and_gradients() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in trainable.items() if p.grad is not None}

    expected_loss, expected_gradients = loss_and_gradients()
    with frozen_weights_in_half_precision(model, "bf16", engine_owned=False) as held:
        assert held > 0
        dtypes = {name: p.dtype for name, p in model.named_parameters()}
        assert {dtypes[name] for name in trainable} == {torch.float32}
        assert torch.bfloat16 in dtypes.values()
        loss, gradients = loss_and_gradients()
    assert torch.equal(loss, expected_loss)
    assert gradients.keys() == expected_gradients.keys()
    for name, gradient in gradients.items():
        assert torch.equal(gradient, expected_gradients[name]), name
    assert {name: (p.data_ptr(), p.dtype) for name, p in model.named_parameters()} == originals

    with pytest.raises(RuntimeError), frozen_weights_in_half_precision(model, "bf16", engine_owned=False):
        raise RuntimeError("a training step failed")
    assert {name: (p.data_ptr(), p.dtype) for name, p in model.named_parameters()} == originals


def test_weights_read_twice_or_owned_by_an_engine_stay_fp32(gpt2_checkpoint: Path) -> None:
    """A language-model head tied to the input embedding is looked up in fp32 too, so it is not
    cast; under FSDP or DeepSpeed (one dtype per flattened tensor) and in fp32 nothing is."""
    from transformers import AutoModelForCausalLM

    from llmkit.training.precision import frozen_weights_in_half_precision

    model = AutoModelForCausalLM.from_pretrained(gpt2_checkpoint, tie_word_embeddings=True)
    model.requires_grad_(False)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    with frozen_weights_in_half_precision(model, "bf16", engine_owned=False) as held:
        assert held > 0
        assert model.lm_head.weight.dtype == torch.float32
        assert model.transformer.h[0].mlp.c_fc.weight.dtype == torch.bfloat16  # a Conv1D
    for precision, engine_owned in (("bf16", True), ("fp32", False)):
        with frozen_weights_in_half_precision(model, precision, engine_owned) as held:
            assert held == 0
            assert {p.dtype for p in model.parameters()} == {torch.float32}


def _autograd_nodes(output: torch.Tensor) -> set[str]:
    """The names of the backward functions that computing `output` recorded."""
    names: set[str] = set()
    seen: set[Any] = set()
    pending = [output.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        pending.extend(following for following, _ in node.next_functions)
    return names


def _flash_attention_used(output: torch.Tensor) -> bool:
    return any("FlashAttention" in name for name in _autograd_nodes(output))


def test_only_bf16_training_on_cpu_leaves_the_flash_attention_kernel() -> None:
    """PyTorch's CPU flash-attention backward in bf16 took 4x the math kernel's time on MiniLM's
    shapes; fp32 on CPU and every GPU keep PyTorch's choice."""
    from llmkit.training.precision import training_attention_kernels

    def attention(dtype: torch.dtype) -> torch.Tensor:
        query = torch.randn(2, 4, 5, 8, dtype=dtype, requires_grad=True)
        return torch.nn.functional.scaled_dot_product_attention(query, query, query)

    assert _flash_attention_used(attention(torch.bfloat16))  # PyTorch's own choice on CPU
    with training_attention_kernels(True, "cpu"):
        assert not _flash_attention_used(attention(torch.bfloat16))
    with training_attention_kernels(False, "cpu"):
        assert _flash_attention_used(attention(torch.float32))
    with training_attention_kernels(True, "cuda"):  # no kernel rule off the CPU
        assert _flash_attention_used(attention(torch.bfloat16))


def test_a_bf16_training_forward_on_cpu_takes_the_math_attention_kernel_and_evaluation_flash(
    make_recipe: Any, bert_checkpoint: Path, sentiment_data: DataFiles, tmp_path: Path
) -> None:
    from llmkit.bench.profile import scratch_trainer
    from llmkit.pipeline import prepare
    from llmkit.recipe.loading import load_recipe

    recipe = load_recipe(make_recipe(bert_checkpoint, sentiment_data, "full", train={"precision": "bf16"}))
    trainer = scratch_trainer(prepare(recipe, show_progress=False), tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    batch.pop("labels")
    model = trainer.model
    assert model is not None
    for training, flash_expected in ((True, False), (False, True)):
        model.train(training)
        with trainer.compute_loss_context_manager(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(**batch).logits
        assert _flash_attention_used(logits) is flash_expected, f"training={training}"


_RETAINED_AFTER_FREE = """
import torch
from llmkit.runtime import keep_freed_memory

def resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096

applied = keep_freed_memory()
block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
held = resident()
del block
print(applied, (held - resident()) / 2**20)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc")
@pytest.mark.parametrize("opted_out", [False, True], ids=["default", "LLMKIT_KEEP_FREED_MEMORY=0"])
def test_freed_memory_stays_with_the_process_for_its_next_allocations(opted_out: bool) -> None:
    """glibc's default unmaps a large block when it is freed, so a training step's large tensors
    come back each step as fresh pages to fault in and zero; llmkit keeps them (on glibc)."""
    import os
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    environ.pop("LD_PRELOAD", None)
    if opted_out:
        environ["LLMKIT_KEEP_FREED_MEMORY"] = "0"
    run = subprocess.run(
        [sys.executable, "-c", _RETAINED_AFTER_FREE], env=environ, capture_output=True, text=True, check=True
    )
    applied, released_mib = run.stdout.split()
    assert applied == str(not opted_out)
    if opted_out:
        assert float(released_mib) > 60  # glibc's default: handed back to the kernel at once
    else:
        assert float(released_mib) < 4


def test_a_users_own_malloc_settings_are_left_alone() -> None:
    from llmkit.runtime import keep_freed_memory

    assert not keep_freed_memory({"LLMKIT_KEEP_FREED_MEMORY": "0"})
    assert not keep_freed_memory({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"})
    assert not keep_freed_memory({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"})
    assert not keep_freed_memory({"MALLOC_TRIM_THRESHOLD_": "1000000"})
    assert not keep_freed_memory({"LLMKIT_KEEP_FREED_MEMORY": "off"})


def test_an_unclear_keep_freed_memory_setting_is_an_error_that_says_what_to_set(
    cli: Any,
    make_recipe: Any,
    bert_checkpoint: Path,
    sentiment_data: DataFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLMKIT_KEEP_FREED_MEMORY", "sometimes")
    result = cli(
        "finetune", make_recipe(bert_checkpoint, sentiment_data, "full"), "--output-dir", tmp_path / "run"
    )
    assert result.exit_code == 2, explain(result)
    assert "LLMKIT_KEEP_FREED_MEMORY='sometimes' is neither on nor off." in result.stderr
    assert "set it to 0 to leave glibc's malloc as it is, or 1 (the default)" in result.stderr
    assert not (tmp_path / "run").exists()  # found before the run directory is made
