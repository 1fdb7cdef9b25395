"""Timing of one callable: median and p20/p80 spread.

GPU: `triton.testing.do_bench` (warm-up, L2 flushed before every run, CUDA events), or CUDA events with our
own L2 flush when Triton is missing. CPU: `torch.utils.benchmark` (which handles warm-up and threads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float


def time_cpu(fn: Callable[[], object], min_run_time: float) -> Timing:
    from torch.utils import benchmark

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
