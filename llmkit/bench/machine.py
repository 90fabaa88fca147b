"""The machine's own limit: the dense matrix-multiplication rate torch reaches here, measured by the
bench in the same process and with the same threads as its runs, so model FLOPs utilisation
(a run's model FLOP/s over this peak) says how far training is from what the hardware can do."""

from __future__ import annotations

import time
from typing import Any

# Square sizes tried: large enough to run at the kernels' best, small enough to time in seconds on
# two CPU cores. A GPU reaches its peak only on larger products.
CPU_SIZES = (1024, 2048, 3072)
GPU_SIZES = (4096, 8192)
SECONDS_PER_SIZE = 1.0


def matmul_peak(precision: str, seconds_per_size: float | None = None) -> dict[str, Any]:
    """The best rate (FLOP/s) of `size x size` matrix products in the precision training
    computes in (`train.precision`), on the device training uses."""
    import torch

    from llmkit.training.precision import torch_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch_dtype(precision)
    best, best_size = 0.0, 0
    for size in GPU_SIZES if device == "cuda" else CPU_SIZES:
        rate = _rate(size, dtype, device, seconds_per_size or SECONDS_PER_SIZE)
        if rate > best:
            best, best_size = rate, size
    return {
        "flops_per_second": float(f"{best:.4g}"),
        "precision": precision,
        "device": device,
        "matrix_size": best_size,
        "torch_threads": torch.get_num_threads(),
    }


def _rate(size: int, dtype: Any, device: str, seconds: float) -> float:
    import torch

    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    torch.matmul(a, b)  # warm-up: kernel choice, caches, clocks
    _sync(device)
    repeats, start = 0, time.perf_counter()
    while True:
        torch.matmul(a, b)
        repeats += 1
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * size**3 * repeats / elapsed


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
