"""One dropout probability for the whole model (`model.dropout`), whatever the architecture calls it.

transformers configurations name their dropouts per architecture: BERT `hidden_dropout_prob`,
`attention_probs_dropout_prob` and `classifier_dropout`; GPT-2 `resid_pdrop`, `embd_pdrop`,
`attn_pdrop`; Llama `attention_dropout`; DistilBERT `dropout`, `seq_classif_dropout`... The
modules read them once, when they are built, so they are set on the configuration before loading.

Why a recipe turns them off: each one draws a random mask per call, serially on one core (9% of a
MiniLM full fine-tuning step on CPU, 20% of a LoRA step with the adapters' own), and a short
fine-tuning run from a pretrained checkpoint often learns faster without them
(docs/bench-sst2-expert-cpu.md has the figures).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmkit.errors import ModelError

if TYPE_CHECKING:
    from transformers import PretrainedConfig


def dropout_attributes(config: PretrainedConfig) -> list[str]:
    """The configuration's dropout probabilities, by name: every attribute named *dropout* (or
    GPT-2's *_pdrop) holding a number or None (BERT's classifier_dropout: "as hidden_dropout_prob").
    LayerDrop (`*layerdrop`: skipping whole layers) is a different thing and is left alone."""
    names = []
    for name, value in config.to_dict().items():
        if not ("dropout" in name or name.endswith("_pdrop")) or "layerdrop" in name:
            continue
        if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
            names.append(name)
    return sorted(names)


def set_dropout(config: PretrainedConfig, probability: float, reference: str) -> list[str]:
    """Set every dropout probability of `config` to `probability`; the attributes set."""
    names = dropout_attributes(config)
    if not names and probability > 0:
        raise ModelError(
            f"The configuration of '{reference}' ({config.model_type}) names no dropout "
            f"to set to {probability:g}.",
            hint="leave model.dropout out to keep the checkpoint's (this architecture has none to set)",
        )
    for name in names:
        setattr(config, name, probability)
    return names
