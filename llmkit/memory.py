"""Peak memory of a run: GPU memory on CUDA, else the process's peak resident memory."""

from __future__ import annotations

import sys


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


def peak_memory_mb_per_process() -> list[float]:
    """Every process's peak (as `peak_memory_mb`), in rank order: sharding shows as lower peaks in
    every process, which the main process's alone does not tell. A collective in a process group:
    every process must call it."""
    from accelerate.utils import gather_object

    peaks: list[float] = gather_object([peak_memory_mb()])
    return peaks
