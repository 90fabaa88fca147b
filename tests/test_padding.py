"""A sentence scores the same alone and inside a right-padded batch of longer sentences, in eval
mode, with every method: decoders must read the last real token, not a pad token. Prompt tuning
feeds `inputs_embeds`, where transformers cannot find that token by itself; llmkit's pooling hook
supplies it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helpers import METHODS

SHORT = "great movie"
LONGER = ["the plot was quite boring and the actor was very dreadful", "it had some really superb scenes"]


def wrapped_model(checkpoint: Path, method: str) -> tuple[Any, Any]:
    from transformers import set_seed

    from llmkit.methods import get_method
    from llmkit.models.loading import load_classifier

    set_seed(0)
    loaded = load_classifier(str(checkpoint), ["negative", "positive"])
    spec = get_method(method)
    model = spec.wrap(loaded.model, spec.options(), loaded.traits)
    model.eval()
    return model, loaded.tokenizer


def logits(model: Any, tokenizer: Any, texts: list[str]) -> Any:
    import torch

    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits, batch["attention_mask"]


def check_padding_invariance(checkpoint: Path, method: str) -> None:
    from torch.testing import assert_close

    model, tokenizer = wrapped_model(checkpoint, method)
    alone, _ = logits(model, tokenizer, [SHORT])
    batched, mask = logits(model, tokenizer, [LONGER[0], SHORT, LONGER[1]])

    assert tokenizer.padding_side == "right"
    assert mask[1].sum() < mask.shape[1], "the short sentence should be padded"
    # Tolerance well below the gap between two different sentences' scores (random tiny encoders
    # score all sentences much alike), so reading the wrong position cannot pass.
    longer_alone, _ = logits(model, tokenizer, [LONGER[0]])
    gap = (longer_alone[0] - alone[0]).abs().max().item()
    assert gap > 1e-5, "the model cannot tell these sentences apart; the test would prove nothing"
    tolerance = min(1e-5, gap / 100)
    assert_close(batched[1], alone[0], atol=tolerance, rtol=0)
    assert_close(batched[0], longer_alone[0], atol=tolerance, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_decoder_scores_do_not_depend_on_padding(gpt2_checkpoint: Path, method: str) -> None:
    check_padding_invariance(gpt2_checkpoint, method)


def test_gpt2_tokenizer_pads_with_end_of_text(gpt2_checkpoint: Path) -> None:
    """The fixture tokenizer, like GPT-2's, has no pad token; llmkit pads with end-of-text."""
    from transformers import AutoTokenizer

    from llmkit.models.loading import load_classifier

    assert AutoTokenizer.from_pretrained(gpt2_checkpoint).pad_token is None
    loaded = load_classifier(str(gpt2_checkpoint), ["negative", "positive"])
    assert loaded.tokenizer.pad_token == "<|endoftext|>"
    assert loaded.model.config.pad_token_id == loaded.tokenizer.eos_token_id
    assert loaded.traits.is_decoder


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_encoder_scores_do_not_depend_on_padding(bert_checkpoint: Path, method: str) -> None:
    check_padding_invariance(bert_checkpoint, method)
