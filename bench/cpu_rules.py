"""`python -m bench.cpu_rules`: the measurements behind the CPU dispatch rules.

Three rules decide where a CPU forward/backward-input runs: which of lkconv's correlation cores (`prefer_channels`
in csrc/cpu/depthwise_cpu.cpp: plane cores or channel-vectorised cores), how the channel cores take a
channels_last source (`read_in_place`, same file: a gathered, zero-bordered copy or the tensor read in place), and
whether PyTorch's own kernel is faster still (`CpuBackend.auto_refusals`, which also decides where a weight
gradient runs). This measures, per pass, shape and caller layout, PyTorch (oneDNN or its native kernel, in the
caller's layout; for the forward also with a bias, since PyTorch's NCHW kernel changes speed with it), every
lkconv core forced (the in-place reading for channels_last sources only), and lkconv's automatic choice (for the
forward: the public `lkconv.depthwise_conv2d` under inference_mode, so routing and Python overhead count; for the
weight gradient: the op's body), interleaved in one process (float32, the model shapes of ConvNeXt-T and
RepLKNet-31B, batch 1 and 4), and reports for each row which is fastest and how far the automatic choice is from
it. Timings, not correctness: the correctness of every core is asserted by the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F

from .cli_args import kernel_sizes_arg, writable_path
from .environment import describe_environment, finish_environment
from .results import _atomic_write
from .timing import time_cpu

# (channels, map size): the stages of ConvNeXt-T and RepLKNet-31B.
STAGES = ((96, 56), (192, 28), (384, 14), (768, 7), (128, 56), (256, 28), (512, 14), (1024, 7))


@dataclass
class RuleRow:
    pass_: str
    n: int
    c: int
    size: int
    k: int
    layout: str
    torch_ms: float
    torch_bias_ms: Optional[float]  # forward only: PyTorch with a bias
    planes_ms: float  # the plane cores (for backward_weight: lkconv's weight gradient)
    channels_ms: Optional[float]  # channel cores over a gathered, zero-bordered copy
    in_place_ms: Optional[float]  # channel cores reading the source in place (channels_last only)
    auto_ms: float
    fastest: str
    auto_over_fastest: float  # auto's time / the fastest time (1.0 = auto picked the fastest)


def _callables(pass_: str, x, w, g, k, cl):
    """(PyTorch, plane cores, channel cores over a copy, channel cores in place, lkconv's automatic choice[, PyTorch
    with a bias]) for one case; None where lkconv has no such core for the pass."""
    from lkconv import _ext, ops
    from lkconv.backends.cpu import ALGORITHMS

    import lkconv

    c, pad = x.shape[1], [k // 2] * 4
    if pass_ == "forward":
        def ours(algo):
            return lambda: _ext._C.cpu_forward(x, w, None, pad, cl, ALGORITHMS[algo])

        bias = torch.randn(c)
        theirs = lambda: F.conv2d(x, w, None, 1, k // 2, 1, c)  # noqa: E731
        theirs_bias = lambda: F.conv2d(x, w, bias, 1, k // 2, 1, c)  # noqa: E731
        auto = lambda: lkconv.depthwise_conv2d(x, w, padding=k // 2)  # noqa: E731
        return theirs, ours("planes"), ours("channels"), ours("channels_in_place") if cl else None, auto, theirs_bias
    if pass_ == "backward_weight":
        # One lkconv core (the plane cores' weight gradient); `auto` is the op's body: the dispatcher's choice
        # under the non-finite rule.
        theirs = lambda: torch.ops.aten.convolution_backward(  # noqa: E731
            g, x, w, None, [1, 1], [k // 2] * 2, [1, 1], False, [0, 0], c, [False, True, False])
        ours_wgrad = lambda: _ext._C.cpu_backward_weight(g, x, k, k, pad)  # noqa: E731
        auto = lambda: ops.run_bwd_weight(g, x, [k, k], pad, [1, 1], [1, 1])  # noqa: E731
        return theirs, ours_wgrad, None, None, auto
    h, wd = x.shape[2:]

    def ours(algo):
        return lambda: _ext._C.cpu_backward_input(g, w, h, wd, pad, cl, ALGORITHMS[algo])

    theirs = lambda: torch.ops.aten.convolution_backward(  # noqa: E731
        g, x, w, None, [1, 1], [k // 2] * 2, [1, 1], False, [0, 0], c, [True, False, False])
    return theirs, ours("planes"), ours("channels"), ours("channels_in_place") if cl else None, ours("auto")


def measure(kernel_sizes: List[int], batches: List[int], passes: List[str], min_run_time: float,
            layouts=("nchw", "channels_last")) -> List[RuleRow]:
    rows = []
    for pass_ in passes:
        for k in kernel_sizes:
            for n in batches:
                for c, size in STAGES:
                    for layout in layouts:
                        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                        x = torch.randn(n, c, size, size).contiguous(memory_format=fmt)
                        g = torch.randn(n, c, size, size).contiguous(memory_format=fmt)
                        w = torch.randn(c, 1, k, k)
                        fns = _callables(pass_, x, w, g, k, layout == "channels_last")
                        # Interleaved: one round of every callable, repeated, so drifts hit all alike.
                        times = [[] for _ in fns]
                        with torch.inference_mode():
                            for _ in range(3):
                                for i, fn in enumerate(fns):
                                    if fn is not None:
                                        times[i].append(time_cpu(fn, min_run_time).median_ms)
                        t, p, ch, ip, auto, *tb = (sorted(ts)[1] if ts else None for ts in times)
                        candidates = {"torch": t, "planes": p, "channels": ch, "in_place": ip}
                        fastest, best = min(((k, v) for k, v in candidates.items() if v is not None),
                                            key=lambda kv: kv[1])
                        row = RuleRow(pass_, n, c, size, k, layout, t, tb[0] if tb else None, p, ch, ip, auto,
                                      fastest, auto / best)
                        rows.append(row)
                        print(f"{pass_:<14} n={n} c={c:<4} {size:>2}x{size:<2} k={k:<2} {layout:<13} torch {t:7.3f} "
                              + (f"(+bias {tb[0]:7.3f}) " if tb else "")
                              + f"planes {p:7.3f} "
                              + (f"channels {ch:7.3f} " if ch is not None else "")
                              + (f"in place {ip:7.3f} " if ip is not None else "")
                              + f"auto {auto:7.3f}  "
                              f"fastest {fastest:<8} "
                              f"auto/fastest {auto / best:4.2f}", flush=True)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cpu_rules", description=__doc__)
    p.add_argument("--kernel-sizes", type=kernel_sizes_arg, default=[3, 7, 9, 13, 29])
    p.add_argument("--batch-sizes", type=kernel_sizes_arg, default=[1, 4])
    p.add_argument("--passes", default="forward,backward_input,backward_weight")
    p.add_argument("--layouts", default="nchw,channels_last")
    p.add_argument("--min-run-time", type=float, default=0.1, help="seconds per timing (3 interleaved rounds)")
    p.add_argument("--out", type=writable_path, default=None, help="results JSON")
    args = p.parse_args(argv)
    passes = [s for s in args.passes.split(",") if s]
    bad = [s for s in passes if s not in ("forward", "backward_input", "backward_weight")]
    if bad:
        p.error(f"argument --passes: unknown {bad}; choose from forward, backward_input, backward_weight")
    layouts = [s for s in args.layouts.split(",") if s]
    if not layouts or any(s not in ("nchw", "channels_last") for s in layouts):
        p.error(f"argument --layouts: {args.layouts!r}; choose from nchw, channels_last")
    env = describe_environment(torch.device("cpu"))
    rows = measure(args.kernel_sizes, args.batch_sizes, passes, args.min_run_time, layouts)
    finish_environment(env)
    worst = max(rows, key=lambda r: r.auto_over_fastest)
    print(f"# load average before {env['load_average_before']}; worst auto/fastest {worst.auto_over_fastest:.2f} "
          f"({worst.pass_} n={worst.n} c={worst.c} {worst.size}x{worst.size} k={worst.k} {worst.layout}, fastest "
          f"{worst.fastest})")
    if args.out:
        rows_json = [dict(asdict(r), **{"pass": r.pass_}) for r in rows]
        for r in rows_json:
            r.pop("pass_")
        _atomic_write(args.out, json.dumps({"environment": env, "kind": "cpu dispatch rules", "rows": rows_json},
                                           indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
