"""`lkrobust` (also `python -m robustness`): eval, report, corrupt."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

from .data import BENCHMARKS, find_splits


def _bench(value: str):
    name, sep, root = value.partition("=")
    if not sep or name not in BENCHMARKS:
        raise argparse.ArgumentTypeError(f"--bench expects NAME=PATH with NAME one of {', '.join(BENCHMARKS)}")
    return name, root


def _count(minimum: int):
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            n = None
        if n is None or n < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value!r}")
        return n

    return parse


def _writable_file(value: str) -> str:
    folder = os.path.dirname(os.path.abspath(value))
    if os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value} is a folder; give a file name")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {value}: {folder} is not a writable folder")
    return value


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
    e.add_argument("--batch-size", type=_count(1), default=64)
    e.add_argument("--workers", type=_count(0), default=4)
    e.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    e.add_argument("--channels-last", action="store_true")
    e.add_argument("--limit", type=_count(1), default=None,
                   help="at most N images (videos) per split, taken across the classes in turn")

    r = sub.add_parser("report", help="tables across models")
    r.add_argument("results")
    r.add_argument("--format", choices=["md", "csv"], default="md")
    r.add_argument("--baseline", default=None, help="model whose ImageNet-P values normalise mFR/mT5D")
    r.add_argument("--plot", type=_writable_file, default=None, help="PNG figure")

    c = sub.add_parser("corrupt", help="ImageNet-C-style corruptions of an image folder")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--corruptions", nargs="+", default=None, help="default: the 15 standard ones")
    c.add_argument("--severities", nargs="+", type=int, choices=range(1, 6), default=[1, 2, 3, 4, 5],
                   metavar="1..5")
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


def resolve_device(name: Optional[str]) -> str:
    """The device to run on; an unknown or unavailable one is a ValueError naming it."""
    import torch

    if name is None:
        return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA device is visible")
        if (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: only cpu and cuda devices are supported")
    return str(device)


def check_model_name(name: str) -> None:
    import timm

    import lkconv.models  # noqa: F401  (registers lkconv's models)

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:12]}*")[:5]
        raise ValueError(f"unknown model {name!r} (not a timm model name{'; similar: ' + ', '.join(close) if close else ''})")


def check_checkpoint(path: Optional[str]) -> None:
    if path is None:
        return
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"checkpoint {path} is not readable")


def prepare_out(out: str) -> None:
    """The results folder exists (it is created) and is writable, before any compute."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} exists and is not a folder")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create --out {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out} is not writable")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if args.command == "eval":
            import torch

            from .runner import EvalConfig, Evaluator

            check_model_name(args.model)
            check_checkpoint(args.checkpoint)
            prepare_out(args.out)
            # A wrong folder fails now, not after the benchmarks before it have run.
            splits = {name: find_splits(name, root) for name, root in args.bench}
            _maybe_init_distributed()
            device = resolve_device(args.device)
            cfg = EvalConfig(args.model, args.checkpoint, device, args.batch_size, args.workers, args.amp,
                             args.channels_last, args.limit)
            written = Evaluator(cfg).run(dict(args.bench), args.out, splits)
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
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # no repr quotes
        print(f"lkrobust {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
