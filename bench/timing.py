"""Timing of one callable: median and p20/p80 spread.

GPU: `triton.testing.do_bench` (warm-up, L2 flushed before every run, CUDA events), or CUDA events with our
own L2 flush when Triton is missing. CPU: `torch.utils.benchmark` (which handles warm-up and threads), with glibc's allocator held steady
(`steady_allocator`).
"""

from __future__ import annotations

import ctypes
import platform
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float


#: glibc mallopt parameters: M_TRIM_THRESHOLD, M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit machines
_allocator_note: Optional[str] = None


def steady_allocator() -> str:
    """Make glibc keep freed blocks of up to 32 MiB for reuse instead of returning them to the kernel, once per
    process, and say what was done (recorded in every CPU results file).

    By default glibc serves large blocks with mmap and gives them back on free, moving the threshold as blocks
    come and go; a call whose tensors fall on the wrong side of it page-faults its buffers afresh on every run.
    Measured here: PyTorch's NCHW depthwise forward at N=4, C=256, 28x28, 3x3 took 2.5 ms in one process and
    0.17 ms in another, by nothing but the order of earlier shapes (547k page faults in a two-second run).
    A benchmark that times the allocator's state instead of the kernels would send calls to the wrong backend,
    so every CPU timing runs with the allocator held steady."""
    global _allocator_note
    if _allocator_note is None:
        _allocator_note = "default"
        if platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(None)
                ok = (libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
                      and libc.mallopt(_M_TRIM_THRESHOLD, 2**30) == 1)
                _allocator_note = ("glibc: freed blocks up to 32 MiB kept for reuse (mallopt M_MMAP_THRESHOLD, "
                                   "M_TRIM_THRESHOLD)" if ok else "default (glibc mallopt refused)")
            except (OSError, AttributeError):
                _allocator_note = "default (glibc mallopt not found)"
    return _allocator_note


def time_cpu(fn: Callable[[], object], min_run_time: float) -> Timing:
    from torch.utils import benchmark

    steady_allocator()

    # Timer runs on one thread unless told otherwise: measure with the threads the run records (torch's).
    m = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time)
    times = np.asarray(m.times) * 1e3
    return Timing(float(np.median(times)), float(np.percentile(times, 20)), float(np.percentile(times, 80)))


def _cuda_events(fn, warmup_ms: float, rep_ms: float) -> Timing:
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")  # larger than any L2 today
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        fn()
    end.record()
    torch.cuda.synchronize()
    per = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / per))):
        fn()
    times = []
    for _ in range(max(5, int(rep_ms / per))):
        flush.zero_()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    t = np.asarray(times)
    return Timing(float(np.median(t)), float(np.percentile(t, 20)), float(np.percentile(t, 80)))


def time_cuda(fn: Callable[[], object], warmup_ms: float = 25, rep_ms: float = 100) -> Timing:
    try:
        from triton.testing import do_bench
    except ImportError:
        return _cuda_events(fn, warmup_ms, rep_ms)
    med, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    return Timing(float(med), float(p20), float(p80))


def time_fn(fn: Callable[[], object], device: torch.device, quick: bool) -> Timing:
    if device.type == "cuda":
        return time_cuda(fn, warmup_ms=10 if quick else 25, rep_ms=40 if quick else 200)
    return time_cpu(fn, min_run_time=0.2 if quick else 1.0)
