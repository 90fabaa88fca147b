"""Batched generation from a trained causal LM: prompts left-padded so every new token follows the
real text, the prompt stripped from the output, and whether each generation stopped at the EOS
token or ran into the length limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmkit.generation.data import prompt_ids

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llmkit.tasks.generation import GenerateOptions


@dataclass(frozen=True)
class Generation:
    text: str
    stopped_at_eos: bool  # False: it reached generate.max_new_tokens
    new_tokens: int


def generate_texts(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    options: GenerateOptions,
    chat: bool,
    max_prompt_tokens: int,
    batch_size: int,
    precision: str = "fp32",
    description: str = "Generating",
) -> list[Generation]:
    """One generation per prompt, in the order of `prompts`. Prompts longer than
    `max_prompt_tokens` keep their end (the part the completion follows), as training kept it."""
    from tqdm.auto import tqdm

    from llmkit.training.precision import inference_precision

    encoded = [prompt_ids(tokenizer, prompt, chat)[-max_prompt_tokens:] for prompt in prompts]
    # Longest first, so similar lengths share a batch and a batch too large fails at once.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    device = next(model.parameters()).device
    results: list[Generation | None] = [None] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        with (
            inference_precision(model, precision, device.type),
            tqdm(total=len(encoded), desc=description, unit="prompts", disable=None) as bar,
        ):
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                batch = left_padded([encoded[i] for i in rows], tokenizer.pad_token_id, device)
                output = model.generate(**batch, **generation_kwargs(options, tokenizer))
                new = output[:, batch["input_ids"].shape[1] :].tolist()
                for index, tokens in zip(rows, new, strict=True):
                    results[index] = _finished(tokens, tokenizer)
                bar.update(len(rows))
    finally:
        model.train(was_training)
    return [r for r in results if r is not None]


def left_padded(rows: list[list[int]], pad_token_id: int, device: Any) -> dict[str, Any]:
    """Input ids padded on the left, with the attention mask that hides the padding: generation
    appends to the right, so each row's last real token must be the batch's last position.
    GPT-2 and Llama number positions from the mask, so a row keeps the positions it has alone."""
    import torch

    width = max(len(row) for row in rows)
    ids = [[pad_token_id] * (width - len(row)) + row for row in rows]
    mask = [[0] * (width - len(row)) + [1] * len(row) for row in rows]
    return {
        "input_ids": torch.tensor(ids, device=device),
        "attention_mask": torch.tensor(mask, device=device),
    }


def generation_kwargs(options: GenerateOptions, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    sampling = {"do_sample": True, "temperature": options.temperature, "top_p": options.top_p}
    return {
        "max_new_tokens": options.max_new_tokens,
        "num_beams": options.num_beams,
        **(sampling if options.do_sample else {"do_sample": False, "temperature": None, "top_p": None}),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "top_k": None,  # a checkpoint's generation_config may set one; only top_p is the recipe's
    }


def _finished(tokens: list[int], tokenizer: PreTrainedTokenizerBase) -> Generation:
    eos = tokenizer.eos_token_id
    stopped = eos in tokens
    kept = tokens[: tokens.index(eos)] if stopped else tokens
    text = str(tokenizer.decode(kept, skip_special_tokens=True)).strip()
    return Generation(text=text, stopped_at_eos=stopped, new_tokens=len(kept) + int(stopped))


def generation_scores(
    generations: list[Generation], references: list[list[str]], metric_names: tuple[str, ...]
) -> dict[str, float]:
    """The task's metrics (multi-reference) plus how the generations ended."""
    from llmkit.metrics import load_metric

    texts = [g.text for g in generations]
    scores: dict[str, float] = {}
    for name in metric_names:
        scores.update(load_metric(name).compute(predictions=texts, references=references) or {})
    stopped = sum(g.stopped_at_eos for g in generations)
    scores["stopped_at_eos"] = stopped
    scores["hit_length_limit"] = len(generations) - stopped
    return scores
