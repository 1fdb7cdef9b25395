"""`python -m bench.models`: model-level speed, stock nn.Conv2d against lkconv, same process, same batch.

Inference throughput (eval, no grad) and training throughput (forward + backward + optimizer step), in
images/s, for RepLKNet-31B and ConvNeXt-T at several kernel sizes. bf16 autocast on GPU, float32 on CPU. On
out-of-memory the batch is halved (and the row says so).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from typing import List, Optional

import torch
from torch import nn

from lkconv import convert_model, to_stock

from .cli_args import csv_list, device_arg, kernel_sizes_arg, positive_int, writable_path
from .environment import describe_environment, finish_environment
from .results import _atomic_write
from .timing import time_fn

log = logging.getLogger(__name__)


def build(name: str, kernel_size: int) -> nn.Module:
    """The lkconv variant of a benchmark model."""
    import timm

    import lkconv.models  # noqa: F401  (registers replknet_*)

    if name == "replknet_31b":
        return timm.create_model("replknet_31b")
    if name == "convnext_tiny":
        return convert_model(timm.create_model("convnext_tiny", kernel_sizes=kernel_size))
    raise ValueError(f"unknown benchmark model {name!r} ({', '.join(MODELS)})")


MODELS = ("replknet_31b", "convnext_tiny")
MODES = ("inference", "train")
LAYOUTS = ("nchw", "channels_last")


def _choices(allowed):
    def parse(value: str) -> List[str]:
        items = csv_list(value)
        bad = [v for v in items if v not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"unknown value(s) {bad or value!r}; choose from {', '.join(allowed)}")
        return items

    return parse


@dataclass
class ModelRow:
    model: str
    k: int
    variant: str  # "stock" or "lkconv"
    mode: str  # "inference" or "train"
    layout: str  # "nchw" or "channels_last" (of the model and its input)
    batch: int
    image_size: int
    images_per_s: float
    median_ms: float
    p20_ms: float
    p80_ms: float
    speedup: float = float("nan")  # lkconv's best layout over stock PyTorch's best layout (on lkconv rows)
    note: str = ""


def _measure(model: nn.Module, mode: str, batch: int, size: int, device: torch.device, channels_last: bool,
             quick: bool):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)
    if mode == "inference":
        model.eval()

        def step():
            with torch.no_grad(), amp:
                return model(x)
    else:
        model.train()
        target = torch.randint(0, 1000, (batch,), device=device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step():
            with amp:
                loss = nn.functional.cross_entropy(model(x).float(), target)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    step()  # warm-up (and compile, if compiled)
    return time_fn(step, device, quick)


def run_model(name: str, k: int, modes: List[str], batch: int, size: int, device: torch.device,
              layouts: List[str], compile_: bool, quick: bool) -> List[ModelRow]:
    """Stock PyTorch and lkconv, in every layout asked for; the speed-up compares each side's best layout
    (a user of stock PyTorch would pick its faster layout too)."""
    base = build(name, k).to(device)
    rows: List[ModelRow] = []
    for mode in modes:
        by_variant = {"stock": [], "lkconv": []}
        for layout in layouts:
            fast = base.to(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
            for variant, model in (("stock", to_stock(fast)), ("lkconv", fast)):
                m = torch.compile(model) if compile_ else model
                b, note = batch, ""
                while True:
                    try:
                        t = _measure(m, mode, b, size, device, layout == "channels_last", quick)
                        break
                    except torch.cuda.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        if b == 1:
                            raise
                        b //= 2
                        note = f"batch halved to {b} (out of memory)"
                row = ModelRow(name, k, variant, mode, layout, b, size, b / (t.median_ms * 1e-3), t.median_ms,
                               t.p20_ms, t.p80_ms, note=note)
                by_variant[variant].append(row)
                rows.append(row)
                print(f"  {name} k={k} {mode:<9} {layout:<13} {variant:<6} batch {b}: {row.images_per_s:8.2f} img/s "
                      f"{note}", file=sys.stderr, flush=True)
        stock = max(by_variant["stock"], key=lambda r: r.images_per_s)
        for r in by_variant["lkconv"]:
            r.speedup = r.images_per_s / stock.images_per_s
    return rows


def best_rows(rows: List[ModelRow]):
    """(stock, lkconv) best-layout rows per (model, k, mode, batch, image size)."""
    groups = {}
    for r in rows:
        groups.setdefault((r.model, r.k, r.mode, r.batch, r.image_size), []).append(r)
    for key, rs in groups.items():
        stock = [r for r in rs if r.variant == "stock"]
        lk = [r for r in rs if r.variant == "lkconv"]
        if stock and lk:
            yield max(stock, key=lambda r: r.images_per_s), max(lk, key=lambda r: r.images_per_s)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__)
    p.add_argument("--device", type=device_arg, default=None)
    p.add_argument("--models", type=_choices(MODELS), default=list(MODELS), help=", ".join(MODELS))
    p.add_argument("--kernel-sizes", type=kernel_sizes_arg, default=[7, 31, 51],
                   help="ConvNeXt-T kernel sizes (RepLKNet-31B is fixed)")
    p.add_argument("--modes", type=_choices(MODES), default=list(MODES), help=", ".join(MODES))
    p.add_argument("--batch-size", type=kernel_sizes_arg, default=None,
                   help="comma list of batch sizes (default 64 on GPU, 2 on CPU)")
    p.add_argument("--image-size", type=positive_int, default=None, help="default 224 on GPU, 128 on CPU")
    p.add_argument("--layouts", type=_choices(LAYOUTS), default=None,
                   help="comma list of nchw,channels_last (default both: each side is compared in its best)")
    p.add_argument("--channels-last", action="store_true", help="same as --layouts channels_last")
    p.add_argument("--compile", action="store_true", help="torch.compile both variants")
    p.add_argument("--full", action="store_true", help="longer timings")
    p.add_argument("--out", type=writable_path, default=None, help="results JSON")
    args = p.parse_args(argv)
    device = args.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_cpu = device.type == "cpu"
    batches = args.batch_size or ([2] if on_cpu else [64])
    size = args.image_size or (128 if on_cpu else 224)
    layouts = ["channels_last"] if args.channels_last else (args.layouts or list(LAYOUTS))
    env = describe_environment(device)
    rows: List[ModelRow] = []
    for name in args.models:
        ks = [31] if name == "replknet_31b" else args.kernel_sizes
        for k in ks:
            for batch in batches:
                rows += run_model(name, k, args.modes, batch, size, device, layouts, args.compile, not args.full)
    finish_environment(env)
    print(f"# {env['device']} | torch {env['torch']} | lkconv {env['lkconv_commit']}")
    print(f"{'model':<14} {'k':>3} {'mode':<10} {'batch':>5} {'stock img/s (layout)':>26} "
          f"{'lkconv img/s (layout)':>27} {'speed-up':>9}")
    for stock, lk in best_rows(rows):
        print(f"{lk.model:<14} {lk.k:>3} {lk.mode:<10} {lk.batch:>5} {stock.images_per_s:>10.2f} ({stock.layout:<13}) "
              f"{lk.images_per_s:>11.2f} ({lk.layout:<13}) {lk.speedup:>8.2f}x {lk.note}")
    if args.out:
        _atomic_write(args.out, json.dumps({"environment": env, "rows": [asdict(r) for r in rows]}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
