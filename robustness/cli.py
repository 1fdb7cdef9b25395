"""`lkrobust` (also `python -m robustness`): eval, report, corrupt."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from .data import BENCHMARKS


def _bench(value: str):
    name, sep, root = value.partition("=")
    if not sep or name not in BENCHMARKS:
        raise argparse.ArgumentTypeError(f"--bench expects NAME=PATH with NAME one of {', '.join(BENCHMARKS)}")
    return name, root


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lkrobust", description="Robustness evaluation of timm models")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("eval", help="evaluate a model on benchmarks (resumable)")
    e.add_argument("--model", required=True, help="any timm model name, lkconv's included")
    e.add_argument("--checkpoint", default=None, help="weights file (containers and module. prefixes are fine)")
    e.add_argument("--bench", action="append", type=_bench, required=True, metavar="NAME=PATH",
                   help="benchmark folder, repeatable: " + ", ".join(BENCHMARKS))
    e.add_argument("--out", required=True, help="results folder")
    e.add_argument("--device", default=None)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--workers", type=int, default=4)
    e.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    e.add_argument("--channels-last", action="store_true")
    e.add_argument("--limit", type=int, default=None, help="at most N images (videos) per split")

    r = sub.add_parser("report", help="tables across models")
    r.add_argument("results")
    r.add_argument("--format", choices=["md", "csv"], default="md")
    r.add_argument("--baseline", default=None, help="model whose ImageNet-P values normalise mFR/mT5D")
    r.add_argument("--plot", default=None, help="PNG figure")

    c = sub.add_parser("corrupt", help="ImageNet-C-style corruptions of an image folder")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--corruptions", nargs="+", default=None, help="default: the 15 standard ones")
    c.add_argument("--severities", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    c.add_argument("--seed", type=int, default=0)
    return p


def _maybe_init_distributed():
    import os

    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if args.command == "eval":
            import torch

            from .runner import EvalConfig, Evaluator

            _maybe_init_distributed()
            device = args.device or (f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
            cfg = EvalConfig(args.model, args.checkpoint, device, args.batch_size, args.workers, args.amp,
                             args.channels_last, args.limit)
            written = Evaluator(cfg).run(dict(args.bench), args.out)
            if not (torch.distributed.is_initialized() and torch.distributed.get_rank() != 0):
                print(f"{len(written)} split(s) evaluated; results in {args.out}")
        elif args.command == "report":
            from .report import plot, table

            print(table(args.results, args.format, args.baseline), end="")
            if args.plot:
                print(f"wrote {plot(args.results, args.plot, args.baseline)}", file=sys.stderr)
        elif args.command == "corrupt":
            from .corrupt import corrupt_folder

            counts = corrupt_folder(args.src, args.dst, args.corruptions, args.severities, args.seed)
            print(f"written {counts['written']}, already there {counts['skipped']}, unreadable {counts['unreadable']}")
    except (FileNotFoundError, ValueError, KeyError, ImportError) as exc:
        print(f"lkrobust {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
