"""Encoder classifiers read one position of the last layer: compute only that position there.

A BERT-style sequence classifier pools the last layer's first position ([CLS], or the first
virtual token under prompt tuning) and never reads that layer's other positions. The last layer
still needs the keys and values of every position (the first one attends to them all), but its
queries, attention output and feed-forward block are needed at the first position only: 10 of
the layer's 12 weight products per token, about 14% of all of MiniLM-L6's, in the forward and
backward passes. Trainer, pipelines and the model itself compute them for every position.

llmkit gives the last layer of such a classifier a forward method that computes the first
position alone, through the layer's own modules (so LoRA layers, prefix caches and the attention
implementation are the ones the model uses). The logits are the model's (equal up to the order of
floating-point sums); weights, their names and the configuration are untouched, so a saved model
loads and runs in plain transformers unchanged. The last layer's output then has one position,
which is why only tasks that read nothing but the logits ask for this (sequence classification).
With dropout on, that layer draws fewer random numbers (masks for one position), so a seeded run's
later masks differ from plain transformers' run of the same seed: the same model, other draws.
"""

from __future__ import annotations

import inspect
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor, nn
    from transformers import PreTrainedModel

# Task models whose head reads only the last layer's first position (BertPooler and the
# RoBERTa-style classification heads take hidden_states[:, 0]), and whose encoder layers have the
# BERT layout this module computes with.
FIRST_POSITION_CLASSIFIERS = frozenset(
    {
        "BertForSequenceClassification",
        "RobertaForSequenceClassification",
        "XLMRobertaForSequenceClassification",
        "CamembertForSequenceClassification",
        "ElectraForSequenceClassification",
    }
)


# Attention implementations whose masks (none, or a tensor with a row per query) this module cuts
# to the first position's row; others run the layer's own forward.
FIRST_POSITION_ATTENTION = frozenset({"eager", "sdpa"})


def compute_only_first_position(model: PreTrainedModel) -> bool:
    """Make the last encoder layer of a first-position classifier compute that position only.
    Returns whether it did (other models are left as they are)."""
    if type(model).__name__ not in FIRST_POSITION_CLASSIFIERS:
        return False
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if not layers:
        return False
    last = layers[-1]
    if not _has_bert_layout(last):
        return False
    last.forward = types.MethodType(_first_position_forward, last)
    return True


def compute_every_position(model: nn.Module) -> bool:
    """Undo compute_only_first_position anywhere in `model` (a PEFT wrapper included): the last
    layer runs its class's forward again, every position, as plain transformers computes it (the
    reference a pipeline's speed is measured with). Returns whether there was anything to undo."""
    undone = False
    for module in model.modules():
        forward = vars(module).get("forward")
        if getattr(forward, "__func__", None) is _first_position_forward:
            del module.forward
            undone = True
    return undone


def _has_bert_layout(layer: nn.Module) -> bool:
    attention = getattr(getattr(layer, "attention", None), "self", None)
    needed = ("query", "key", "value", "attention_head_size", "scaling", "dropout", "config", "layer_idx")
    return (
        attention is not None
        and all(hasattr(attention, name) for name in needed)
        and hasattr(layer.attention, "output")
        and hasattr(layer, "feed_forward_chunk")
        and _eager_attention(attention) is not None
        # A decoder's layer (causal attention, cross-attention) is not what the heads above read.
        and not getattr(layer, "is_decoder", False)
        and not getattr(layer, "add_cross_attention", False)
    )


def _eager_attention(attention: nn.Module) -> Any:
    """The model's own eager attention function, transformers' fallback for its interface."""
    return getattr(inspect.getmodule(type(attention)), "eager_attention_forward", None)


def _first_position_forward(
    self: Any,  # the BERT-style layer (its submodules are looked up by name)
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    encoder_hidden_states: Tensor | None = None,
    encoder_attention_mask: Tensor | None = None,
    cache: Any = None,
    past_key_values: Any = None,
    **kwargs: Any,
) -> Tensor:
    """BertLayer.forward for the first position's output only (what BertSelfAttention,
    BertSelfOutput and the feed-forward chunk do, with queries from that position alone)."""
    import torch
    from transformers.cache_utils import EncoderDecoderCache
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.pytorch_utils import apply_chunking_to_forward

    attention: Any = self.attention.self
    cache = cache if cache is not None else past_key_values
    implementation = attention.config._attn_implementation
    if implementation not in FIRST_POSITION_ATTENTION or not (
        attention_mask is None or isinstance(attention_mask, torch.Tensor)
    ):
        # Another attention implementation (flash, flex with its block masks) takes masks this
        # module does not cut to one query: the layer's own forward, every position.
        layer_forward: Tensor = type(self).forward(
            self,
            hidden_states,
            attention_mask,
            encoder_hidden_states,
            encoder_attention_mask,
            cache=cache,
            **kwargs,
        )
        return layer_forward
    batch, length = hidden_states.shape[:2]
    first = hidden_states[:, :1]

    def heads(projected: Tensor, positions: int) -> Tensor:
        return projected.view(batch, positions, -1, attention.attention_head_size).transpose(1, 2)

    query = heads(attention.query(first), 1)
    key = heads(attention.key(hidden_states), length)
    value = heads(attention.value(hidden_states), length)
    if cache is not None:  # prefix tuning's trained keys and values come in as a cache
        self_attention_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        key, value = self_attention_cache.update(key, value, attention.layer_idx, kwargs=kwargs)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
        attention_mask = attention_mask[:, :, :1]  # the mask's row for the first position's query
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, _eager_attention(attention))
    attended, _ = attend(
        attention,
        query,
        key,
        value,
        attention_mask,
        dropout=0.0 if not attention.training else attention.dropout.p,
        scaling=attention.scaling,
        **kwargs,
    )
    attention_output = self.attention.output(attended.reshape(batch, 1, -1).contiguous(), first)
    output: Tensor = apply_chunking_to_forward(
        self.feed_forward_chunk, self.chunk_size_feed_forward, self.seq_len_dim, attention_output
    )
    return output
