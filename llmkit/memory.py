"""Peak memory of a run: GPU memory on CUDA, else the process's peak resident memory."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def peak_resident_kb(pid: int | str = "self") -> int:
    """Peak resident memory (kB) of a process since it started, or since its peak was reset.

    Linux: VmHWM, the high-water mark of the process's own address space. getrusage's ru_maxrss
    is no use here: across fork and exec it keeps the parent's peak, so a small process started
    by a large one (a bench, a notebook) reports the parent's size. Elsewhere: ru_maxrss."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    if pid != "self":
        return 0
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS


def peak_memory_mb() -> float:
    """This process's peak: GPU memory allocated on CUDA, else resident memory."""
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(peak_resident_kb() / 2**10, 1)


def restart_peak() -> tuple[float, bool]:
    """This process's peak so far, and whether the peak now restarts from the current usage
    (CUDA's allocator statistics; Linux's VmHWM through /proc/self/clear_refs; elsewhere it
    cannot). Called as training starts, it separates what training holds (weights, gradients,
    optimizer state, activations: what sharding divides) from loading's transient peak, which
    every process of a sharded run pays in full before the model is sharded."""
    import torch

    before = peak_memory_mb()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return before, True
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")  # 5: reset the peak resident set size to the current one
    except OSError:
        return before, False
    return before, True


def peaks_per_process(before_training: tuple[float, bool]) -> tuple[list[float], list[float] | None]:
    """Every process's peak over the whole run and since training started (None where a process
    could not restart its peak), in rank order: sharding shows as lower peaks in every process,
    which the main process's alone does not tell. A collective in a process group: every process
    must call it."""
    from accelerate.utils import gather_object

    earlier, restarted = before_training
    during = peak_memory_mb()
    gathered: list[tuple[float, float | None]] = gather_object(
        [(max(earlier, during), during if restarted else None)]
    )
    whole = [peak for peak, _ in gathered]
    training = [peak for _, peak in gathered if peak is not None]
    return whole, training if len(training) == len(gathered) else None


def _local_tensor(tensor: Any) -> Any:
    """What this process holds of a tensor: its own shard of a DTensor (FSDP2), else all of it."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _distinct_bytes(tensors: Iterable[Any]) -> int:
    """Bytes the tensors occupy, memory shared between them counted once: a sharding engine's
    tensors can be views of one buffer (DeepSpeed's ZeRO-3 keeps each parameter's partition in
    the flat buffer its optimizer updates)."""
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in tensors if t.numel())
    total, covered_to = 0, 0
    for start, end in spans:
        total += max(0, end - max(start, covered_to))
        covered_to = max(covered_to, end)
    return total


def training_state_mb_per_process(
    model: Any, optimizer: Any, engine_tensors: Iterable[Any] = ()
) -> list[float]:
    """Every process's share of the training state, in rank order: the model's parameters, the
    optimizer's state tensors (AdamW's two moments) and `engine_tensors`, what a sharding engine
    holds beside them (llmkit.training.strategies.engine_tensors_at_rest), counted from the tensors
    themselves. What sharding divides, as exactly as the tensors say it, where resident memory
    cannot show it on CPU (freed pages of the whole model loaded before sharding stay with the
    allocator). Gradients are left out: Trainer frees them after every step. A collective in a
    process group."""
    import torch
    from accelerate.utils import gather_object

    held = [_local_tensor(p) for p in model.parameters()]
    if optimizer is not None:
        for state in optimizer.state.values():
            held += [_local_tensor(v) for v in state.values() if isinstance(v, torch.Tensor)]
    held += list(engine_tensors)
    shares: list[float] = gather_object([round(_distinct_bytes(held) / 2**20, 3)])
    return shares
