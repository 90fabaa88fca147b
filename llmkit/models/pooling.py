"""Decoder classifiers must read the last real token, whatever the padding and the method.

transformers finds it from `input_ids` (the rightmost non-pad token), but prompt tuning feeds
`inputs_embeds`, where it falls back to the last position: a pad token in a right-padded batch.
A forward hook on the backbone copies each row's last real hidden state to the last position,
where that fallback reads it; the `input_ids` path never reads that position for padded rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel

_HOOKED = "_llmkit_last_real_token"


def use_last_real_token(model: PreTrainedModel) -> None:
    backbone = model.base_model
    if getattr(backbone, _HOOKED, False):
        return
    backbone.register_forward_hook(_last_real_token_at_end, with_kwargs=True)
    setattr(backbone, _HOOKED, True)


def _last_real_token_at_end(module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
    import torch

    mask = kwargs.get("attention_mask")
    hidden = output[0]
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or hidden.dim() != 3:
        return output
    positions = torch.arange(mask.shape[1], device=mask.device)
    last_real = (positions * (mask != 0)).argmax(dim=1)
    # PEFT's prefix tuning prepends virtual tokens to the mask but not to the hidden states.
    last_real = (last_real - (mask.shape[1] - hidden.shape[1])).clamp(min=0)
    if bool((last_real == hidden.shape[1] - 1).all()):
        return output
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    moved = hidden.clone()
    moved[:, -1] = hidden[rows, last_real.to(hidden.device)]
    output["last_hidden_state"] = moved
    return output
