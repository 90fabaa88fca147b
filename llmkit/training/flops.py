"""The model's arithmetic in a training run: model FLOPs, the figure model FLOPs utilisation
(MFU) divides by the machine's matmul peak.

Counted per example from its real tokens (padding is waste, not work), over the matrix
multiplications a perfect implementation cannot avoid:
- weights applied to every token (attention projections, MLP): 2 FLOPs per weight and token
  forward; backward 2 more for the gradient of the input, and 2 more for the weight's own
  gradient when the weight trains. Full fine-tuning: 6 per weight and token. LoRA, prefix and
  prompt tuning keep the backbone frozen, yet the gradient still flows back through every layer
  (to the adapters, prefixes or prompt below): 4 per weight and token. The adapters themselves
  (rank 8 of 384-576 columns) add under 5% and are not counted.
- attention (scores and weighted values, no weights): 4 x layers x attention width x tokens x
  context forward, and twice that backward. Prompt tuning's virtual tokens are tokens of the
  sequence; prefix tuning's lengthen only the context.
Embedding lookups and the classification head (once per example) are not matrix work of size
and are left out, as in Kaplan et al. (2020) and PaLM's MFU (Chowdhery et al., 2022).
The count is the model's, whatever llmkit skips: a BERT-style classifier's last layer is counted
at every position though llmkit computes it at the first only (llmkit/models/first_position.py),
so MFU also credits that saving, and llmkit's and a peer script's figures count the same work."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

HEAD_MODULES = ("classifier", "score", "pooler")  # applied once per example, not per token
ADAPTER_MODULES = ("lora_", "original_module", "modules_to_save", "prompt_encoder")


def per_token_weights(model: Any) -> int:
    """Weights of the backbone's matrix multiplications applied to every token."""
    import torch
    from transformers.pytorch_utils import Conv1D

    total = 0
    for name, module in model.named_modules():
        parts = name.split(".")
        if any(part.startswith(ADAPTER_MODULES) or part in HEAD_MODULES for part in parts):
            continue
        if isinstance(module, torch.nn.Linear | Conv1D):
            total += module.weight.numel()
    return total


def attention_width(config: Any) -> tuple[int, int]:
    """(layers, query width): the sizes of attention's two matrix products per layer."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, heads * head_dim


def flops_per_example(model: Any, method: Any, lengths: Iterable[int]) -> float:
    """Mean training FLOPs per example (forward and backward) over examples of these lengths."""
    weights = per_token_weights(model)
    layers, width = attention_width(_config(model))
    weight_passes = 6 if method.trains_base_weights else 4
    extra_tokens = method.virtual_tokens if method.virtual_tokens_in_input else 0
    extra_context = 0 if method.virtual_tokens_in_input else method.virtual_tokens
    total, count = 0.0, 0
    for length in lengths:
        tokens = length + extra_tokens
        attention_forward = 4 * layers * width * tokens * (tokens + extra_context)
        total += weight_passes * weights * tokens + 3 * attention_forward
        count += 1
    return total / count if count else 0.0


def _config(model: Any) -> Any:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config
