"""`lkrobust` (also `python -m robustness`): eval, analyze, train, reproduce, report, corrupt."""

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


def _fraction_or_float(value: str) -> float:
    """A number, or a fraction such as 4/255 (attack budgets are written so)."""
    try:
        num, sep, den = value.partition("/")
        x = float(num) / float(den) if sep else float(value)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction like 4/255, got {value!r}") from None
    if not x >= 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value!r}")
    return x


def _unit_interval(value: str) -> float:
    x = _fraction_or_float(value)
    if x > 1:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1], got {value!r}")
    return x


def _val_data(value: str) -> str:
    name, sep, root = value.partition("=")
    if not sep or name != "imagenet-val":
        raise argparse.ArgumentTypeError("--data expects imagenet-val=PATH (class folders of validation images)")
    return root


def _add_analyze(sub) -> None:
    from .analyze import EXPERIMENTS

    a = sub.add_parser("analyze", help="the papers' analysis experiments (resumable sweeps)",
                       description="Analysis experiments; each sweep point is written as soon as it is done.")
    a.add_argument("experiment", choices=list(EXPERIMENTS))
    a.add_argument("--model", required=True, help="any timm model name, lkconv's included")
    a.add_argument("--checkpoint", default=None)
    a.add_argument("--data", type=_val_data, default=None, metavar="imagenet-val=PATH")
    a.add_argument("--out", required=True, help="results folder (the same tree as eval's)")
    a.add_argument("--limit", type=_count(1), default=None, help="at most N images, taken across the classes")
    a.add_argument("--device", default=None)
    a.add_argument("--batch-size", type=_count(1), default=32)
    a.add_argument("--workers", type=_count(0), default=4)
    a.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    a.add_argument("--channels-last", action="store_true")
    a.add_argument("--seed", type=int, default=0)
    g = a.add_argument_group("occlusion")
    g.add_argument("--mode", choices=["random", "salient", "non_salient"], default="random")
    g.add_argument("--ratios", nargs="+", type=_unit_interval, default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7,
                                                                        0.8, 0.9])
    g.add_argument("--patch-size", type=_count(1), default=16)
    g.add_argument("--saliency-model", default="vit_small_patch16_224.dino")
    g.add_argument("--saliency-checkpoint", default=None, help="weights of the saliency ViT (salient modes)")
    g = a.add_argument_group("fgsm, pgd, autoattack, taig")
    g.add_argument("--eps", nargs="+", type=_unit_interval, default=None,
                   help="L-inf budgets in [0, 1] pixel units, e.g. 1/255 4/255 (default 0 0.5/255 1/255 2/255 4/255)")
    g.add_argument("--steps", nargs="+", type=_count(1), default=[1, 2, 5, 10, 20], help="PGD steps")
    g.add_argument("--alpha", type=_fraction_or_float, default=None, help="PGD step (default 2.5*eps/steps)")
    g.add_argument("--norm", choices=["Linf", "L2"], default="Linf", help="AutoAttack norm")
    g.add_argument("--version", choices=["standard", "plus", "rand"], default="standard", help="AutoAttack version")
    g.add_argument("--surrogate", default=None, help="TAIG: the timm model the attack is computed on")
    g.add_argument("--surrogate-checkpoint", default=None)
    g.add_argument("--path", choices=["straight", "random"], default="straight", help="TAIG-S or TAIG-R")
    g.add_argument("--taig-steps", type=_count(1), default=20)
    g.add_argument("--ig-steps", type=_count(1), default=20)
    g = a.add_argument_group("lesion")
    g.add_argument("--blocks", nargs="+", type=_count(0), default=None, help="numbers of blocks to drop")
    g.add_argument("--fractions", nargs="+", type=_unit_interval, default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
                   help="fractions of the blocks to drop (when --blocks is not given)")
    g.add_argument("--samples", type=_count(1), default=10)
    g = a.add_argument_group("noise-frequency, fourier-heatmap")
    g.add_argument("--l2-eps", type=_fraction_or_float, default=4.0, help="L2 norm of the noise per image")
    g.add_argument("--band-width", type=_unit_interval, default=0.1)
    g.add_argument("--size", type=_count(1), default=15, help="Fourier heat map: size x size frequencies")
    g = a.add_argument_group("kernel-distance, feature-variance, erf")
    g.add_argument("--branches", action="store_true", help="kernel-distance of each branch, not merged kernels")
    g.add_argument("--images", type=_count(1), default=None, help="images used (default 64 variance, 50 ERF)")
    g.add_argument("--normalize", action="store_true", help="feature variance / mean square")
    g.add_argument("--layer", default=None, help="ERF of this layer's output (default forward_features)")


_OPTIONS = {
    "occlusion": ("mode", "ratios", "patch_size", "saliency_model", "saliency_checkpoint"),
    "fgsm": ("eps",), "pgd": ("eps", "steps", "alpha"), "autoattack": ("eps", "norm", "version"),
    "taig": ("eps", "surrogate", "surrogate_checkpoint", "path", "taig_steps", "ig_steps"),
    "lesion": ("blocks", "fractions", "samples"), "noise-frequency": ("l2_eps", "band_width"),
    "fourier-heatmap": ("l2_eps", "size"), "kernel-distance": ("branches",),
    "feature-variance": ("images", "normalize"), "erf": ("images", "layer"),
}
_DEFAULT_EPS = {"fgsm": [0.0, 0.5 / 255, 1 / 255, 2 / 255, 4 / 255], "pgd": [1 / 255, 4 / 255],
                "autoattack": [1 / 255, 4 / 255], "taig": [16 / 255]}


def analysis_config(args, device: str):
    """The run's configuration from parsed `analyze` arguments; what an experiment needs is checked here."""
    from .analyze import AnalysisConfig

    if args.eps is None:
        args.eps = _DEFAULT_EPS.get(args.experiment)
    if args.images is None:
        args.images = 64 if args.experiment == "feature-variance" else 50
    options = {name: getattr(args, name) for name in _OPTIONS[args.experiment]}
    if args.experiment == "occlusion" and args.mode != "random":
        check_model_name(args.saliency_model)
        if args.saliency_checkpoint is None:
            raise ValueError(f"--mode {args.mode} takes saliency from a ViT: give its weights with "
                             f"--saliency-checkpoint (the paper uses DINO ViT-S/16, {args.saliency_model})")
        check_checkpoint(args.saliency_checkpoint)
    if args.experiment == "taig":
        if args.surrogate is None:
            raise ValueError("taig needs --surrogate NAME (the model the attack is computed on)")
        check_model_name(args.surrogate)
        check_checkpoint(args.surrogate_checkpoint)
    return AnalysisConfig(args.experiment, args.model, args.checkpoint, args.data, device, args.batch_size,
                          args.workers, args.amp, args.channels_last, args.limit, args.seed, options)


def _imagenet_data(value: str) -> str:
    name, sep, root = value.partition("=")
    if not sep or name != "imagenet":
        raise argparse.ArgumentTypeError("--data expects imagenet=PATH (a folder with train/ and val/ class folders)")
    return root


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="train a timm model on lkconv's kernels (kernel-size ablations; resumable)",
                       description="Training from timm's parts; a flag overrides the preset's value.")
    t.add_argument("--model", default=None, help="any timm name (convnext_tiny_k31, replknet_31b, replknet_3b, ...)")
    t.add_argument("--data", type=_imagenet_data, default=None, metavar="imagenet=PATH")
    t.add_argument("--out", required=True, help="run folder: checkpoints, weights, metrics")
    t.add_argument("--preset", default=None, help="recipe from robustness/presets.toml (default convnext-ablation)")
    t.add_argument("--kernel-size", type=_count(1), default=None, help="every large depthwise kernel at this size")
    t.add_argument("--backend", choices=["lkconv", "torch"], default="lkconv",
                   help="torch: stock nn.Conv2d, to measure lkconv's speed-up on the same run")
    t.add_argument("--resume", default="auto", help="auto (continue <out>/last.pth if there), none, or a file")
    t.add_argument("--smoke", action="store_true",
                   help="a tiny model for a few steps on a generated dataset (<out>/smoke-data)")
    t.add_argument("--device", default=None)
    t.add_argument("--workers", type=_count(0), default=None)
    t.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    t.add_argument("--channels-last", action="store_true", default=None)
    t.add_argument("--compile", action="store_true", default=None)
    t.add_argument("--limit-steps", type=_count(1), default=None, help="stop after N optimizer steps in all")
    for flag, kind in (("epochs", _count(1)), ("batch-size", _count(1)), ("accum-steps", _count(1)),
                       ("image-size", _count(8)), ("lr", _fraction_or_float), ("lr-base-batch", _count(1)),
                       ("weight-decay", _fraction_or_float), ("warmup-epochs", _fraction_or_float),
                       ("min-lr", _fraction_or_float), ("mixup", _fraction_or_float), ("cutmix", _fraction_or_float),
                       ("smoothing", _unit_interval), ("reprob", _unit_interval), ("drop-path", _unit_interval),
                       ("ema-decay", _unit_interval), ("clip-grad", _fraction_or_float),
                       ("checkpoint-every", _count(0)), ("seed", int)):
        t.add_argument(f"--{flag}", type=kind, default=None)
    t.add_argument("--opt", default=None, help="timm optimizer name (adamw, sgd, lamb, ...)")
    t.add_argument("--sched", default=None, help="timm scheduler name (cosine, step, ...)")
    t.add_argument("--auto-augment", default=None, help="timm auto-augment string ('' for none)")
    t.add_argument("--adv", choices=["pgd"], default=None, help="adversarial training with PGD examples")
    t.add_argument("--adv-eps", type=_unit_interval, default=None, help="L-inf budget (default 4/255)")
    t.add_argument("--adv-steps", type=_count(1), default=None, help="PGD steps (default 1)")
    t.add_argument("--adv-alpha", type=_fraction_or_float, default=None, help="PGD step (default 2.5*eps/steps)")
    t.add_argument("--teacher", default=None, help="knowledge distillation from this timm model")
    t.add_argument("--teacher-checkpoint", default=None)
    t.add_argument("--distill", choices=["soft", "hard"], default=None, help="DeiT's soft (KL) or hard (top-1)")
    t.add_argument("--distill-alpha", type=_unit_interval, default=None, help="weight of the distillation loss")
    t.add_argument("--distill-tau", type=_fraction_or_float, default=None, help="soft distillation temperature")


def train_config(args, device: str):
    """The run's TrainConfig: dataclass defaults < preset < flags given."""
    from .train import TrainConfig, make_smoke_data, preset

    values = dict(preset(args.preset or ("smoke" if args.smoke else "convnext-ablation")))
    values["preset"] = args.preset or ("smoke" if args.smoke else "convnext-ablation")
    if args.smoke:
        values.update(model="test_convnext", kernel_size=13, image_size=32, workers=0,
                      data=make_smoke_data(os.path.join(args.out, "smoke-data")))
    for name in ("model", "data", "kernel_size", "backend", "device", "workers", "amp", "channels_last", "compile",
                 "limit_steps", "epochs", "batch_size", "accum_steps", "image_size", "lr", "lr_base_batch",
                 "weight_decay", "warmup_epochs", "min_lr", "mixup", "cutmix", "smoothing", "reprob", "drop_path",
                 "ema_decay", "clip_grad", "checkpoint_every", "seed", "opt", "sched", "auto_augment", "adv",
                 "adv_eps", "adv_steps", "adv_alpha", "teacher", "teacher_checkpoint", "distill", "distill_alpha",
                 "distill_tau"):
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    if not values.get("model"):
        raise ValueError("--model is required (or --smoke)")
    if not values.get("data"):
        raise ValueError("--data imagenet=PATH is required (or --smoke)")
    values["device"] = device
    values["out"] = args.out
    check_model_name(values["model"])
    if values.get("teacher"):
        check_model_name(values["teacher"])
        check_checkpoint(values.get("teacher_checkpoint"))
    return TrainConfig(**values)


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

    _add_analyze(sub)
    _add_train(sub)

    rp = sub.add_parser("reproduce", help="every eval and analysis of a config, then the paper's tables and figures")
    rp.add_argument("config", help="TOML (or YAML) file; example: robustness/configs/paper.toml")
    rp.add_argument("--device", default=None, help="overrides the config's device")
    rp.add_argument("--tables-only", action="store_true", help="only write the tables and figures from the results")

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


def torch_distributed_rank() -> int:
    import torch

    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


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
        elif args.command == "analyze":
            from .analyze import analyze

            check_model_name(args.model)
            check_checkpoint(args.checkpoint)
            prepare_out(args.out)
            if args.data is not None:
                find_splits("imagenet-val", args.data)  # a wrong folder fails now
            _maybe_init_distributed()
            cfg = analysis_config(args, resolve_device(args.device))
            written = analyze(cfg, args.out)
            if not (torch_distributed_rank() > 0):
                print(f"{len(written)} point(s) computed; results in {args.out}")
        elif args.command == "train":
            from .train import Trainer, check_layout

            prepare_out(args.out)
            _maybe_init_distributed()
            cfg = train_config(args, resolve_device(args.device))
            check_layout(cfg.data)
            resume = None if args.resume == "none" else args.resume
            if resume not in (None, "auto"):
                check_checkpoint(resume)
            epochs = Trainer(cfg).run(resume)
            if torch_distributed_rank() == 0:
                last = epochs[-1] if epochs else {}
                print(f"trained {len(epochs)} epoch(s); last: " + ", ".join(
                    f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, float)) + f"; run in {args.out}")
        elif args.command == "reproduce":
            from .reproduce import load_config, run_all, write_paper

            cfg = load_config(args.config)
            prepare_out(cfg.out)
            if not args.tables_only:
                _maybe_init_distributed()
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
    except (FileNotFoundError, ValueError, KeyError, ImportError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # no repr quotes
        print(f"lkrobust {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
