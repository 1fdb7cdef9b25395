"""`python -m bench`: lkconv against PyTorch/cuDNN per pass, dtype, layout and kernel size."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

import torch

from . import kernels, results
from .cli_args import (csv_list, device_arg, kernel_sizes_arg, positive_int, results_file_arg, shape_sets_arg,
                       writable_path)
from .environment import describe_environment, finish_environment

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--device", type=device_arg, default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default="float32", help="comma list of float32,float16,bfloat16,float64")
    p.add_argument("--layout", default="nchw,channels_last", help="layouts of the lkconv rows")
    p.add_argument("--passes", default=",".join(kernels.PASSES), help="comma list of " + ",".join(kernels.PASSES))
    p.add_argument("--kernel-sizes", type=kernel_sizes_arg, default=None,
                   help="k of the sweep (default 3,5,7,13,31,51; quick: 7,31)")
    p.add_argument("--shapes", type=shape_sets_arg, default=None,
                   help="comma list of sweep,replknet31b,convnext (default: all; quick: sweep)")
    p.add_argument("--convnext-kernel", type=positive_int, default=51, help="k of the ConvNeXt-T stage shapes")
    p.add_argument("--batch-size", type=positive_int, default=None, help="default 64 on GPU; 4 on CPU (quick: 1)")
    p.add_argument("--sweep-channels", type=positive_int, default=None,
                   help="channels of the sweep shape (default 128)")
    p.add_argument("--sweep-size", type=positive_int, default=56, help="map size of the sweep shape")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the default: few shapes, short timings")
    mode.add_argument("--full", action="store_true", help="every shape set and kernel size, longer timings")
    p.add_argument("--out", type=writable_path, default=None, help="results file (JSON; a CSV is written beside it)")
    p.add_argument("--compare", type=results_file_arg, default=None,
                   help="an earlier results file: ratios per row, regressions flagged")
    p.add_argument("--plot", type=writable_path, default=None, help="PNG of speed-up vs kernel size per pass and dtype")
    p.add_argument("--extra-impl", action="append", default=[], metavar="MODULE:CALLABLE",
                   help="another depthwise implementation with F.conv2d's signature (repeatable)")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    device = args.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    quick = not args.full
    layouts = csv_list(args.layout)
    passes = csv_list(args.passes)
    dtype_names = csv_list(args.dtype)
    for value, allowed, what in ((layouts, kernels.LAYOUTS, "--layout"), (passes, kernels.PASSES, "--passes"),
                                 (dtype_names, tuple(DTYPES), "--dtype")):
        bad = [v for v in value if v not in allowed]
        if bad or not value:
            parser.error(f"argument {what}: unknown value(s) {bad or value}; choose from {', '.join(allowed)}")
    dtypes = [DTYPES[d] for d in dtype_names]
    on_cpu = device.type == "cpu"
    kernel_sizes = args.kernel_sizes or ([7, 31] if quick else [3, 5, 7, 13, 31, 51])
    shape_sets = args.shapes or (["sweep"] if quick else ["sweep", "replknet31b", "convnext"])
    batch = args.batch_size or (64 if not on_cpu else (1 if quick else 4))
    channels = args.sweep_channels or (64 if on_cpu and quick else 128)

    impls = kernels.torch_impls() + kernels.lkconv_impls(device, layouts)
    for spec in args.extra_impl:
        try:
            impls += kernels.extra_impl(spec, layouts)
        except (ValueError, ImportError, AttributeError, TypeError) as exc:
            parser.error(f"argument --extra-impl: {exc}")
    shapes = []
    for kind in shape_sets:
        shapes += kernels.shapes_for(kind, kernel_sizes, batch, args.convnext_kernel, channels, args.sweep_size)

    env = describe_environment(device)
    print(f"# {env['device']} | torch {env['torch']} | triton {env['triton']} | lkconv {env['lkconv_commit']}",
          flush=True)

    def progress(row):
        print(f"  {row.shape} k={row.k} {row.dtype} {row.pass_:<15} {row.impl:<12} {row.layout:<13} "
              f"{row.median_ms:9.3f} ms {row.note}", file=sys.stderr, flush=True)

    rows = kernels.run(shapes, dtypes, layouts, passes, impls, device, quick, progress=progress)
    finish_environment(env)
    peak = float(env.get("cpu_fma_peak_gflops", "nan")) * 1e9
    for r in rows:
        r.peak_fraction = r.rate(True) / peak if peak == peak and r.median_ms == r.median_ms else float("nan")
    if "cpu_fma_peak_gflops" in env:
        print(f"# measured FMA peak {env['cpu_fma_peak_gflops']} GFLOP/s (float32, {env['cpu_isa']}, "
              f"{env['cpu_threads']} threads); load average before {env['load_average_before']}, after "
              f"{env['load_average_after']}")
    print(results.table(rows, device.type, markdown=args.markdown))
    wrong = [r for r in rows if not r.correct]
    if args.out:
        for path in results.save(args.out, env, rows):
            print(f"wrote {path}")
    if args.plot:
        from .plot import plot_speedups

        print(f"wrote {plot_speedups(rows, args.plot, env['device'])}")
    status = 0
    if args.compare:
        _, old = results.load(args.compare)
        text, regressions = results.compare(rows, old)
        print(text)
        if regressions:
            print(f"{regressions} regression(s) over {int((results.REGRESSION - 1) * 100)}%")
    if wrong:
        print(f"error: {len(wrong)} benchmarked call(s) gave wrong results", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
