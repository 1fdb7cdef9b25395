"""`lkrobust` (also `python -m robustness`): eval, analyze, train, reproduce, report, corrupt."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from . import analyze, train
from .arguments import (check_checkpoint, check_model_name, count, distributed_session, prepare_out,
                        resolve_device, run_reporting_errors, torch_distributed_rank, writable_file)
from .data import BENCHMARKS, find_splits


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
    e.add_argument("--batch-size", type=count(1), default=64)
    e.add_argument("--workers", type=count(0), default=4)
    e.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    e.add_argument("--channels-last", action="store_true")
    e.add_argument("--limit", type=count(1), default=None,
                   help="at most N images (videos) per split, taken across the classes in turn")

    analyze.add_arguments(sub.add_parser("analyze", help="the papers' analysis experiments (resumable sweeps)",
                                         description="Analysis experiments; each sweep point is written as soon "
                                                     "as it is done."))
    train.add_arguments(sub.add_parser("train", help=train.HELP, description=train.DESCRIPTION))

    rp = sub.add_parser("reproduce", help="every eval and analysis of a config, then the paper's tables and figures")
    rp.add_argument("config", help="TOML (or YAML) file; example: robustness/configs/paper.toml")
    rp.add_argument("--device", default=None, help="overrides the config's device")
    rp.add_argument("--tables-only", action="store_true", help="only write the tables and figures from the results")

    r = sub.add_parser("report", help="tables across models")
    r.add_argument("results")
    r.add_argument("--format", choices=["md", "csv"], default="md")
    r.add_argument("--baseline", default=None, help="model whose ImageNet-P values normalise mFR/mT5D")
    r.add_argument("--plot", type=writable_file, default=None, help="PNG figure")

    c = sub.add_parser("corrupt", help="ImageNet-C-style corruptions of an image folder")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--corruptions", nargs="+", default=None, help="default: the 15 standard ones")
    c.add_argument("--severities", nargs="+", type=int, choices=range(1, 6), default=[1, 2, 3, 4, 5],
                   metavar="1..5")
    c.add_argument("--seed", type=int, default=0)
    return p


def _run(args) -> None:
    if args.command == "eval":
        from .runner import EvalConfig, Evaluator

        check_model_name(args.model)
        check_checkpoint(args.checkpoint)
        prepare_out(args.out)
        # A wrong folder fails now, not after the benchmarks before it have run.
        splits = {name: find_splits(name, root) for name, root in args.bench}
        with distributed_session():
            device = resolve_device(args.device)
            cfg = EvalConfig(args.model, args.checkpoint, device, args.batch_size, args.workers, args.amp,
                             args.channels_last, args.limit)
            written = Evaluator(cfg).run(dict(args.bench), args.out, splits)
            if torch_distributed_rank() == 0:
                print(f"{len(written)} split(s) evaluated; results in {args.out}")
    elif args.command == "analyze":
        analyze.run_command(args)
    elif args.command == "train":
        train.run_command(args)
    elif args.command == "reproduce":
        from .reproduce import load_config, run_all, write_paper

        cfg = load_config(args.config)
        prepare_out(cfg.out)
        with distributed_session():
            if not args.tables_only:
                run_all(cfg, resolve_device(args.device or cfg.device))
            if torch_distributed_rank() == 0:
                print(f"paper tables and figures: {write_paper(cfg)}")
    elif args.command == "report":
        from .analysis_report import analysis_plots, analysis_tables
        from .report import has_results, plot, table

        if not has_results(args.results) and not analysis_tables(args.results, args.format):
            raise FileNotFoundError(f"no results files under {args.results!r} (expected "
                                    "<model>/<benchmark>/<split>.json or <model>/analysis/...)")
        if has_results(args.results):
            print(table(args.results, args.format, args.baseline), end="")
        print(analysis_tables(args.results, args.format), end="")
        if args.plot:
            if has_results(args.results):
                print(f"wrote {plot(args.results, args.plot, args.baseline)}", file=sys.stderr)
            for path in analysis_plots(args.results, args.plot):
                print(f"wrote {path}", file=sys.stderr)
    elif args.command == "corrupt":
        from .corrupt import corrupt_folder

        counts = corrupt_folder(args.src, args.dst, args.corruptions, args.severities, args.seed)
        print(f"written {counts['written']}, already there {counts['skipped']}, unreadable {counts['unreadable']}")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return run_reporting_errors(args.command, lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
