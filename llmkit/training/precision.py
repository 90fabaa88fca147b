"""Training precision: what `train.precision` means on this machine, checked before anything
loads, and the torch dtype it computes in."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from llmkit.errors import LlmkitError

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str) -> str:
    """`auto`: bf16 mixed precision on a CPU that multiplies bf16 matrices natively (AVX512-BF16 or
    AMX: twice fp32's matmul rate; MiniLM-L6 full fine-tuning trained 1.4x faster), fp32 elsewhere.
    Not bf16 on a GPU: there MiniLM-L6 trained 2.4x slower in bf16 than in fp32 (an H100, where a
    model this small is bound by kernel launches, and autocast adds casts); set bf16 explicitly
    for models large enough to gain from it."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "fp32"
    return "bf16" if cpu_computes_bf16() else "fp32"


def cpu_computes_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX); AVX2-only CPUs
    emulate bf16, slower than fp32."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def cpu_features() -> str:
    """The CPU's matrix features that decide `auto` precision and the speed a bench can expect."""
    if torch.cpu._is_amx_tile_supported():
        return "AMX (native bf16)"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX512-BF16 (native bf16)"
    return f"{torch.backends.cpu.get_cpu_capability()} (no native bf16)"


def check_precision(precision: str) -> None:
    """Fail before loading anything when the hardware cannot train in `precision`."""
    if precision == "fp16" and not torch.cuda.is_available():
        raise LlmkitError(
            "train.precision=fp16 needs a CUDA GPU, and this machine has none.",
            hint="use train.precision=fp32, or bf16 (which CPUs can run)",
        )
    if precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise LlmkitError(
            f"train.precision=bf16 is not supported by this GPU ({torch.cuda.get_device_name()}).",
            hint="use train.precision=fp16 or fp32",
        )


def torch_dtype(precision: str) -> Any:
    """The dtype matrix products run in (mixed precision: the rest stays fp32)."""
    return TORCH_DTYPES[resolve_precision(precision)]


def training_attention_kernels(bf16: bool, device_type: str) -> contextlib.AbstractContextManager[Any]:
    """Where a training forward runs, the scaled-dot-product attention kernels it may use: on a
    CPU in bf16 the math kernel, elsewhere PyTorch's choice. PyTorch's CPU flash-attention
    backward in bf16 is slow: forward and backward of MiniLM-shaped attention (batch 32, 12 heads
    of 32, 38 tokens) took 26.4 ms with it against 6.8 ms with the math kernel (fp32: 7.1 against
    9.1, so fp32 keeps flash), and `llmkit finetune` of MiniLM in bf16 trained 1.2x fewer samples
    a second with it (docs/bench-sst2-expert-cpu.md). The kernel chosen in the forward decides the backward's;
    forward alone (evaluation, prediction) is faster with flash in bf16 too, so it keeps it."""
    if not bf16 or device_type != "cpu":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


@contextlib.contextmanager
def inference_precision(model: Any, precision: str, device_type: str) -> Iterator[None]:
    """Where `model`'s forward passes without gradients run (evaluation, prediction, generation, a
    teacher's logits): gradients off, matrix products in `precision` under autocast, as Trainer's
    evaluation computes them, each weight cast to half precision once per context.

    Autocast keeps the half-precision copy it makes of a weight for the rest of its context only
    for a leaf tensor that requires grad, and only outside inference mode; otherwise every forward
    pass casts every weight again: in prediction with MiniLM in bf16, 6% of the time; in
    generation, every weight at every new token, 44% of the time of SmolLM2 with a LoRA adapter
    (whose base weights are frozen). So under autocast the context is torch.no_grad, and frozen
    weights are marked as requiring grad while it lasts (no graph is recorded under no_grad). The
    copies are the casts autocast makes anyway, so the results are the same to the bit."""
    dtype = torch_dtype(precision)
    if dtype == torch.float32:
        with torch.inference_mode():
            yield
        return
    frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    try:
        for parameter in frozen:
            parameter.requires_grad_(True)
        with torch.no_grad(), torch.autocast(device_type, dtype=dtype):
            yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(False)


@contextlib.contextmanager
def frozen_weights_in_half_precision(model: Any, precision: str, engine_owned: bool) -> Iterator[int]:
    """For training under autocast (bf16 or fp16): the frozen weights and biases of the model's
    linear maps (an adapter's base model) held in that precision until the block ends, then their
    own fp32 tensors again (also when the block raised); yields how many values it holds so.

    Autocast casts every weight it multiplies by at every forward pass, and nothing changes a
    frozen one, so the cast made once is the cast every step would make: the same products and
    gradients, to the bit, without casting again (a training step of SmolLM2 + LoRA at batch 16
    1.10x, MiniLM + LoRA at batch 32 1.04x as fast, AMX CPU). Left alone: a weight read anywhere
    else too (a language-model head tied to the input embedding, which is looked up in fp32),
    and every weight when FSDP or DeepSpeed will own the parameters (`engine_owned`: they
    flatten them into tensors of one dtype)."""
    from transformers.pytorch_utils import Conv1D

    from llmkit.models.parameters import readers_per_parameter

    dtype = torch_dtype(precision)
    held: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    if dtype != torch.float32 and not engine_owned:
        readers = readers_per_parameter(model)
        for module in model.modules():
            if not isinstance(module, torch.nn.Linear | Conv1D):
                continue
            for parameter in module.parameters(recurse=False):
                frozen = not parameter.requires_grad and parameter.dtype == torch.float32
                if frozen and readers[id(parameter)] == 1:
                    held.append((parameter, parameter.data))
    try:
        for parameter, original in held:
            parameter.data = original.to(dtype)
        yield sum(original.numel() for _, original in held)
    finally:
        for parameter, original in held:
            parameter.data = original
