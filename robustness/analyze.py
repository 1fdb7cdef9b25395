"""`lkrobust analyze EXPERIMENT`: the analysis experiments of `robustness.analysis` as resumable runs.

Every sweep point (an occlusion ratio, an ε, a (ε, steps) pair, a number of dropped blocks, a frequency band,
a row of the Fourier heat map, or the one point of a single-shot experiment) is written atomically as soon as
it is done, to `<out>/<model>/analysis/<experiment>/<point>.json` (plus `.npz` for arrays), beside `eval`'s
results. A rerun skips every point whose file holds the same configuration, so an interrupted run loses at
most the point in flight. Under torchrun each rank evaluates a shard of the images and the counts are summed;
rank 0 writes."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from . import analysis as A
from .analysis.common import PixelSpaceModel, data_config
from .arguments import (check_checkpoint, check_model_name, count, distributed_session, fraction_or_float,
                        named_path, prepare_out, resolve_device, torch_distributed_rank, unit_interval)
from .data import SplitDataset, collate, find_splits
from .runner import _atomic, _dist, _versions, remove_stale_temps, write_json

log = logging.getLogger(__name__)


@dataclass
class AnalysisConfig:
    experiment: str
    model: str
    checkpoint: Optional[str] = None
    data: Optional[str] = None  # an ImageNet-val folder (class folders)
    device: str = "cpu"
    batch_size: int = 32
    workers: int = 4
    amp: Optional[str] = None
    channels_last: bool = False
    limit: Optional[int] = None
    seed: int = 0
    options: Dict[str, Any] = field(default_factory=dict)  # the experiment's own flags
    input_size: Optional[int] = None  # image resolution; default: the model's configured one

    def key(self, point: Dict) -> Dict:
        """What must match for a point's results file to count as finished."""
        key = dict(model=self.model, checkpoint=self.checkpoint, limit=self.limit, amp=self.amp, seed=self.seed,
                   options=self.options, point=point)
        if self.input_size is not None:
            key["input_size"] = self.input_size
        return key


def point_path(out: str, model: str, experiment: str, point_id: str, ext: str = ".json") -> str:
    return os.path.join(out, model.replace("/", "_"), "analysis", experiment, point_id + ext)


def _num(x: float) -> str:
    return f"{x:.6g}"


# ---- experiments: their points and how to compute one ----------------------------------------------------------
@dataclass(frozen=True)
class Experiment:
    needs_data: bool
    points: Callable[["Run"], List[Tuple[str, Dict]]]
    compute: Callable[["Run", Dict], Dict]


class Run:
    """One analysis run: the model (pixel space, on lkconv's kernels), its data, and the experiment."""

    def __init__(self, cfg: AnalysisConfig, model: Optional[torch.nn.Module] = None):
        from .runner import EvalConfig, create_model

        self.cfg = cfg
        self.opt = cfg.options
        inner = model if model is not None else create_model(
            EvalConfig(cfg.model, cfg.checkpoint, cfg.device, channels_last=cfg.channels_last))
        self.model = self.pixel_model(inner)
        self._loader = None

    def pixel_model(self, inner: torch.nn.Module) -> PixelSpaceModel:
        cfg = data_config(inner)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.amp)
        return PixelSpaceModel(inner, cfg["mean"], cfg["std"], autocast_dtype=dtype,
                               channels_last=self.cfg.channels_last).eval()

    def helper_model(self, name: str, checkpoint: Optional[str]) -> PixelSpaceModel:
        from .runner import EvalConfig, create_model

        return self.pixel_model(create_model(EvalConfig(name, checkpoint, self.cfg.device)))

    def dataset(self, limit: Optional[int] = None) -> SplitDataset:
        (split,) = find_splits("imagenet-val", self.cfg.data)
        return SplitDataset(split, A.pixel_transform(self.model, self.cfg.input_size),
                            limit if limit is not None else self.cfg.limit)

    @property
    def loader(self):
        """This rank's shard of the (limited) validation images."""
        if self._loader is None:
            rank, world = _dist()
            dataset = self.dataset()
            shard = torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world)))
            self._loader = torch.utils.data.DataLoader(shard, batch_size=self.cfg.batch_size,
                                                       num_workers=self.cfg.workers, collate_fn=collate)
        return self._loader

    def images(self, count: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The first `count` readable images, taken across the classes (single-shot experiments)."""
        dataset = self.dataset(limit=count)
        loader = torch.utils.data.DataLoader(dataset, batch_size=count, num_workers=self.cfg.workers,
                                             collate_fn=collate)
        images, labels = next(A.common.batches(loader), (None, None))
        if images is None:
            raise ValueError(f"no readable images in {self.cfg.data}")
        return images.to(self.cfg.device), labels.to(self.cfg.device)

    def generator(self, *salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(hash((self.cfg.seed,) + salt) % (2 ** 63))


def _ratios(run):
    return [(f"{run.opt['mode']}_r{_num(r)}", dict(ratio=r)) for r in run.opt["ratios"]]


def _occlusion(run, p):
    saliency = None
    if run.opt["mode"] != "random":
        if not hasattr(run, "_saliency"):
            run._saliency = run.helper_model(run.opt["saliency_model"], run.opt["saliency_checkpoint"])
        saliency = run._saliency.model
    acc = A.occlusion_accuracy(run.model, run.loader, p["ratio"], run.opt["mode"], saliency,
                               run.opt["patch_size"], seed=run.cfg.seed)
    return dict(top1=acc)


def _eps_points(run, prefix="eps"):
    return [(f"{prefix}{_num(e * 255)}", dict(eps=e)) for e in run.opt["eps"]]


def _fgsm(run, p):
    return dict(top1=A.accuracy(run.model, run.loader, lambda x, y: A.fgsm(run.model, x, y, p["eps"])))


def _pgd_points(run):
    return [(f"eps{_num(e * 255)}_steps{s}", dict(eps=e, steps=s)) for e in run.opt["eps"] for s in run.opt["steps"]]


def _pgd(run, p):
    seed = run.cfg.seed
    attack = lambda x, y: A.pgd(run.model, x, y, p["eps"], p["steps"], run.opt.get("alpha"), seed=seed)  # noqa: E731
    return dict(top1=A.accuracy(run.model, run.loader, attack))


def _autoattack(run, p):
    attack = lambda x, y: A.autoattack(run.model, x, y, p["eps"], run.opt["norm"], run.opt["version"],  # noqa: E731
                                       seed=run.cfg.seed)
    return dict(top1=A.accuracy(run.model, run.loader, attack))


def _taig(run, p):
    if not hasattr(run, "_surrogate"):
        run._surrogate = run.helper_model(run.opt["surrogate"], run.opt["surrogate_checkpoint"])
    generator = run.generator(int(p["eps"] * 1e6))
    correct = fooled = 0
    for images, labels in A.common.batches(run.loader):
        images, labels = images.to(run.cfg.device), labels.to(run.cfg.device)
        adv = A.taig(run._surrogate, images, labels, p["eps"], steps=run.opt["taig_steps"], path=run.opt["path"],
                     ig_steps=run.opt["ig_steps"], generator=generator)
        right = A.common.predictions(run.model, images) == labels
        correct += int(right.sum())
        fooled += int((right & (A.common.predictions(run.model, adv) != labels)).sum())
    correct, fooled = A.common._all_reduce(correct, fooled)
    return dict(success_rate=fooled / correct if correct else float("nan"), correct=int(correct),
                fooled=int(fooled), surrogate=run.opt["surrogate"])


def _lesion_points(run):
    total = len(A.residual_blocks(run.model))
    counts = run.opt["blocks"] if run.opt["blocks"] else sorted({round(f * total) for f in run.opt["fractions"]})
    bad = [n for n in counts if n > total]
    if bad:
        raise ValueError(f"--blocks {bad} exceeds the model's {total} droppable residual blocks")
    return [(f"drop{n}", dict(n=n)) for n in counts]


def _lesion(run, p):
    return A.lesion(run.model, run.loader, p["n"], run.opt["samples"], generator=run.generator(p["n"]))


def _bands(run):
    from .analysis.frequency import default_bands

    return [(f"band{_num(lo)}-{_num(hi)}", dict(low=lo, high=hi)) for lo, hi in default_bands(run.opt["band_width"])]


def _noise_frequency(run, p):
    if not hasattr(run, "_clean"):
        run._clean = A.accuracy(run.model, run.loader)
    acc = A.band_accuracy(run.model, run.loader, p["low"], p["high"], run.opt["l2_eps"], seed=run.cfg.seed)
    return dict(top1=acc, clean_top1=run._clean, drop=run._clean - acc)


def _heatmap_rows(run):
    size = run.opt["size"]
    return [(f"row{u:+d}", dict(u=u)) for u in range(-(size // 2), size - size // 2)]


def _fourier_row(run, p):
    errors = A.fourier_heatmap_row(run.model, run.loader, run.opt["l2_eps"], p["u"], run.opt["size"],
                                   seed=run.cfg.seed)
    return dict(errors=errors, v=list(range(-(run.opt["size"] // 2), run.opt["size"] - run.opt["size"] // 2)))


def _kernel_distance(run, p):
    return dict(layers=A.model_kernel_attention(run.model, merged=not run.opt["branches"]))


def _feature_variance(run, p):
    images, _ = run.images(run.opt["images"])
    return dict(layers=A.feature_map_variance(run.model, images, normalize=run.opt["normalize"]),
                images=len(images), normalize=run.opt["normalize"])


def _erf(run, p):
    images, _ = run.images(run.opt["images"])
    result = A.effective_receptive_field(run.model, images, run.opt["layer"])
    return dict(area_ratio={str(t): r for t, r in result["area_ratio"].items()}, images=len(images),
                arrays=dict(erf=result["map"].numpy()))


_single = lambda run: [("result", {})]  # noqa: E731

EXPERIMENTS: Dict[str, Experiment] = {
    "occlusion": Experiment(True, _ratios, _occlusion),
    "fgsm": Experiment(True, _eps_points, _fgsm),
    "pgd": Experiment(True, _pgd_points, _pgd),
    "autoattack": Experiment(True, _eps_points, _autoattack),
    "taig": Experiment(True, _eps_points, _taig),
    "lesion": Experiment(True, _lesion_points, _lesion),
    "noise-frequency": Experiment(True, _bands, _noise_frequency),
    "fourier-heatmap": Experiment(True, _heatmap_rows, _fourier_row),
    "kernel-distance": Experiment(False, _single, _kernel_distance),
    "feature-variance": Experiment(True, _single, _feature_variance),
    "erf": Experiment(True, _single, _erf),
}


def _finished(path: str, key: Dict) -> bool:
    try:
        with open(path) as f:
            return json.load(f).get("config") == key
    except (OSError, ValueError):
        return False  # absent or damaged: redo


def _jsonable(value):
    return json.loads(json.dumps(value, default=float))


def analyze(cfg: AnalysisConfig, out: str, model: Optional[torch.nn.Module] = None) -> List[str]:
    """Compute every point of `cfg.experiment` that has no finished results file; returns the written paths."""
    if cfg.experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {cfg.experiment!r} (one of {', '.join(EXPERIMENTS)})")
    experiment = EXPERIMENTS[cfg.experiment]
    if experiment.needs_data and not cfg.data:
        raise ValueError(f"{cfg.experiment} needs validation images: --data imagenet-val=PATH")
    run = Run(cfg, model)
    rank, _ = _dist()
    if rank == 0:
        remove_stale_temps(out)
    written = []
    points = experiment.points(run)
    todo = [(pid, p) for pid, p in points
            if not _finished(point_path(out, cfg.model, cfg.experiment, pid), _jsonable(cfg.key(p)))]
    for pid, point in tqdm(todo, desc=f"{cfg.model} {cfg.experiment}", unit="point", disable=rank != 0):
        result = experiment.compute(run, point)
        if rank != 0:
            continue
        arrays = result.pop("arrays", None)
        record = dict(model=cfg.model, experiment=cfg.experiment, point_id=pid, point=point,
                      config=cfg.key(point), run={k: v for k, v in dataclasses.asdict(cfg).items()},
                      versions=_versions(), date=datetime.datetime.now(datetime.timezone.utc).isoformat(
                          timespec="seconds"), result=result)
        path = point_path(out, cfg.model, cfg.experiment, pid)
        if arrays:
            npz = point_path(out, cfg.model, cfg.experiment, pid, ".npz")

            def save(tmp, arrays=arrays):
                with open(tmp, "wb") as f:
                    np.savez(f, **arrays)

            _atomic(npz, save)
            record["arrays_file"] = os.path.basename(npz)
        write_json(path, _jsonable(record))
        written.append(path)
    return written


# ---- the command line ------------------------------------------------------------------------------------------
def add_arguments(a: argparse.ArgumentParser) -> None:
    """The `analyze` command's arguments (cli.py and reproduce.py build their parsers from this)."""
    a.add_argument("experiment", choices=list(EXPERIMENTS))
    a.add_argument("--model", required=True, help="any timm model name, lkconv's included")
    a.add_argument("--checkpoint", default=None)
    a.add_argument("--data", type=named_path("imagenet-val", "class folders of validation images"), default=None,
                   metavar="imagenet-val=PATH")
    a.add_argument("--out", required=True, help="results folder (the same tree as eval's)")
    a.add_argument("--limit", type=count(1), default=None, help="at most N images, taken across the classes")
    a.add_argument("--device", default=None)
    a.add_argument("--batch-size", type=count(1), default=32)
    a.add_argument("--workers", type=count(0), default=4)
    a.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    a.add_argument("--channels-last", action="store_true")
    a.add_argument("--seed", type=int, default=0)
    g = a.add_argument_group("occlusion")
    g.add_argument("--mode", choices=["random", "salient", "non_salient"], default="random")
    g.add_argument("--ratios", nargs="+", type=unit_interval, default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7,
                                                                        0.8, 0.9])
    g.add_argument("--patch-size", type=count(1), default=16)
    g.add_argument("--saliency-model", default="vit_small_patch16_224.dino")
    g.add_argument("--saliency-checkpoint", default=None, help="weights of the saliency ViT (salient modes)")
    g = a.add_argument_group("fgsm, pgd, autoattack, taig")
    g.add_argument("--eps", nargs="+", type=unit_interval, default=None,
                   help="L-inf budgets in [0, 1] pixel units, e.g. 1/255 4/255 (default 0 0.5/255 1/255 2/255 4/255)")
    g.add_argument("--steps", nargs="+", type=count(1), default=[1, 2, 5, 10, 20], help="PGD steps")
    g.add_argument("--alpha", type=fraction_or_float, default=None, help="PGD step (default 2.5*eps/steps)")
    g.add_argument("--norm", choices=["Linf", "L2"], default="Linf", help="AutoAttack norm")
    g.add_argument("--version", choices=["standard", "plus", "rand"], default="standard", help="AutoAttack version")
    g.add_argument("--surrogate", default=None, help="TAIG: the timm model the attack is computed on")
    g.add_argument("--surrogate-checkpoint", default=None)
    g.add_argument("--path", choices=["straight", "random"], default="straight", help="TAIG-S or TAIG-R")
    g.add_argument("--taig-steps", type=count(1), default=20)
    g.add_argument("--ig-steps", type=count(1), default=20)
    g = a.add_argument_group("lesion")
    g.add_argument("--blocks", nargs="+", type=count(0), default=None, help="numbers of blocks to drop")
    g.add_argument("--fractions", nargs="+", type=unit_interval, default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
                   help="fractions of the blocks to drop (when --blocks is not given)")
    g.add_argument("--samples", type=count(1), default=10)
    g = a.add_argument_group("noise-frequency, fourier-heatmap")
    g.add_argument("--l2-eps", type=fraction_or_float, default=4.0, help="L2 norm of the noise per image")
    g.add_argument("--band-width", type=unit_interval, default=0.1)
    g.add_argument("--size", type=count(1), default=15, help="Fourier heat map: size x size frequencies")
    g = a.add_argument_group("kernel-distance, feature-variance, erf")
    g.add_argument("--branches", action="store_true", help="kernel-distance of each branch, not merged kernels")
    g.add_argument("--images", type=count(1), default=None, help="images used (default 64 variance, 50 ERF)")
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


def config_from_args(args, device: str) -> AnalysisConfig:
    """The run's configuration from parsed `analyze` arguments; what an experiment needs is checked here."""
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




def run_command(args) -> None:
    """`lkrobust analyze` once the arguments are parsed."""
    check_model_name(args.model)
    check_checkpoint(args.checkpoint)
    prepare_out(args.out)
    if args.data is not None:
        find_splits("imagenet-val", args.data)  # a wrong folder fails now
    with distributed_session():
        cfg = config_from_args(args, resolve_device(args.device))
        written = analyze(cfg, args.out)
        if torch_distributed_rank() == 0:
            print(f"{len(written)} point(s) computed; results in {args.out}")
