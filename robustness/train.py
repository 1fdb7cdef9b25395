"""`lkrobust train` (also `python -m robustness.train`): kernel-size ablation training on lkconv's kernels,
built from timm's parts (transforms, optimizer and scheduler factories, Mixup, SoftTargetCrossEntropy,
ModelEmaV3) and torch's DistributedDataParallel under torchrun.

Exact resumption. Every sample's augmentation is seeded by (seed, epoch, sample index), the data order by
(seed, epoch) (DistributedSampler), and the main process's RNGs (mixup, stochastic depth, PGD starts) by
(seed, epoch, batch, rank) before each batch, so a run resumed from a checkpoint taken after any optimizer step
computes the same batches as one that was never interrupted. Checkpoints (model, EMA, optimizer, scheduler,
scaler, RNG states, epoch, batch, history) are written atomically at every epoch end and every
`--checkpoint-every` optimizer steps; `--resume auto` continues from `<out>/last.pth`.

Outputs in `--out`: `last.pth`, `model.pth` and `model_ema.pth` (weights after each epoch, loadable by
`lkrobust eval --checkpoint`), `metrics.json` (config, per-epoch and per-step records) and `metrics.csv`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import io
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .arguments import (check_checkpoint, check_model_name, count, distributed_session, fraction_or_float,
                        named_path, prepare_out, resolve_device, run_reporting_errors, torch_distributed_rank,
                        unit_interval)
from .runner import _atomic, remove_stale_temps, write_json

log = logging.getLogger(__name__)
PRESETS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets.toml")


# ---- configuration ---------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    model: str
    data: str  # a folder with train/ and val/ class folders (ImageNet layout)
    out: str
    preset: str = "convnext-ablation"
    kernel_size: Optional[int] = None  # every large depthwise kernel at this size (the ablation)
    backend: str = "lkconv"  # "lkconv" or "torch" (stock nn.Conv2d, to measure the speed-up)
    image_size: Optional[int] = None  # default: the model's configured input size
    epochs: int = 120
    batch_size: int = 128  # per process
    accum_steps: int = 1
    opt: str = "adamw"
    lr: float = 4e-3
    lr_base_batch: int = 4096
    weight_decay: float = 0.05
    sched: str = "cosine"
    warmup_epochs: float = 20
    warmup_lr: float = 1e-6
    min_lr: float = 1e-6
    auto_augment: str = ""
    mixup: float = 0.0
    cutmix: float = 0.0
    smoothing: float = 0.0
    reprob: float = 0.0
    remode: str = "pixel"
    drop_path: float = 0.0
    ema_decay: float = 0.0  # 0: no EMA
    clip_grad: float = 0.0  # 0: no clipping
    amp: Optional[str] = None  # "bf16" / "fp16"
    channels_last: bool = False
    compile: bool = False
    adv: Optional[str] = None  # "pgd": adversarial training
    adv_eps: float = 4 / 255
    adv_steps: int = 1
    adv_alpha: Optional[float] = None
    teacher: Optional[str] = None  # knowledge distillation from this timm model (DeiT's soft/hard)
    teacher_checkpoint: Optional[str] = None
    distill: str = "soft"
    distill_alpha: float = 0.5
    distill_tau: float = 1.0
    checkpoint_every: int = 0  # optimizer steps; 0: only at epoch ends
    seed: int = 0
    workers: int = 4
    device: str = "cpu"
    limit_steps: Optional[int] = None  # stop after this many optimizer steps in total (smoke runs, tests)
    extra: Dict = field(default_factory=dict)

    def resume_key(self) -> Dict:
        """What a checkpoint must share with this run to be continued by it."""
        keep = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k in ("out", "data", "workers", "device", "limit_steps", "checkpoint_every", "extra"):
            keep.pop(k)
        return keep


def load_presets(path: str = PRESETS_FILE) -> Dict[str, Dict]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    with open(path, "rb") as f:
        return tomllib.load(f)


def preset(name: str) -> Dict:
    presets = load_presets()
    if name not in presets:
        raise ValueError(f"unknown preset {name!r} (one of {', '.join(presets)})")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(presets[name]) - fields
    if unknown:
        raise ValueError(f"preset {name!r} sets unknown fields {sorted(unknown)}")
    return presets[name]


# ---- seeds -----------------------------------------------------------------------------------------------------
def derive_seed(*parts) -> int:
    """A 63-bit seed that depends on every part (stable across processes and Python runs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_states() -> Dict:
    states = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


# ---- data ------------------------------------------------------------------------------------------------------
def check_layout(root: str) -> Tuple[List[str], Dict[str, str]]:
    """The class names (sorted folder names) of an ImageNet-layout folder with train/ and val/; a clear error
    naming what is missing otherwise."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--data imagenet={root}: folder not found")
    folders = {}
    for part in ("train", "val"):
        folders[part] = path = os.path.join(root, part)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"--data imagenet={root}: no {part}/ folder (expected {root}/train/<class>/*.JPEG "
                                    f"and {root}/val/<class>/*.JPEG)")
    classes = sorted(d.name for d in os.scandir(folders["train"]) if d.is_dir())
    if not classes:
        raise FileNotFoundError(f"{folders['train']} has no class folders")
    val_classes = sorted(d.name for d in os.scandir(folders["val"]) if d.is_dir())
    if val_classes != classes:
        extra = sorted(set(val_classes) - set(classes))[:3]
        missing = sorted(set(classes) - set(val_classes))[:3]
        raise ValueError(f"train/ and val/ of {root} have different class folders (only in val: {extra}, "
                         f"only in train: {missing})")
    return classes, folders


class SeededImages(torch.utils.data.Dataset):
    """An ImageFolder whose every sample is augmented from a seed of (seed, epoch, index), so that the same
    sample of the same epoch looks the same whichever process, worker or resumed run loads it. An unreadable
    file is replaced by the next readable one and reported once (a run never crashes on one bad JPEG)."""

    def __init__(self, root: str, classes: List[str], transform, seed: int):
        from torchvision.datasets import ImageFolder

        self.folder = ImageFolder(root)
        if self.folder.classes != classes:
            raise ValueError(f"{root}: class folders differ from train/'s")
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self._reported = set()

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, index: int):
        for attempt in range(min(len(self), 50)):
            i = (index + attempt) % len(self)
            path, label = self.folder.samples[i]
            try:
                image = self.folder.loader(path)
            except Exception as exc:  # noqa: BLE001  (any decoding failure)
                if i not in self._reported:
                    self._reported.add(i)
                    log.warning("unreadable image %s (%s): using the next one", path, type(exc).__name__)
                continue
            seed_everything(derive_seed(self.seed, self.epoch, index))
            return self.transform(image), label
        raise RuntimeError(f"50 unreadable images in a row around {self.folder.samples[index][0]}")


class _Skip(torch.utils.data.Sampler):
    """The indices of a list from position `start` (resuming in the middle of an epoch)."""

    def __init__(self, indices: List[int], start: int):
        self.indices = indices[start:]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


# ---- model -----------------------------------------------------------------------------------------------------
def build_model(name: str, num_classes: int, kernel_size: Optional[int] = None, drop_path: float = 0.0,
                backend: str = "lkconv") -> nn.Module:
    """A timm model (lkconv's included) with `num_classes` outputs; with `kernel_size`, every large depthwise
    kernel at that size (ConvNeXt: `kernel_sizes`; RepLKNet: `large_kernel_sizes`, the small parallel branch
    dropped when it would not fit). backend="lkconv" runs eligible depthwise convs on lkconv, "torch" keeps
    stock nn.Conv2d."""
    import timm

    import lkconv
    import lkconv.models  # noqa: F401  (registers lkconv's models)
    from lkconv.models.replknet import RepLKNet

    if backend not in ("lkconv", "torch"):
        raise ValueError(f"backend must be 'lkconv' or 'torch', got {backend!r}")
    kwargs = dict(num_classes=num_classes)
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    if kernel_size is not None:
        cls = timm.models.get_arch_name(name)
        if cls.startswith("replknet"):
            kwargs.update(large_kernel_sizes=[kernel_size] * 4)
            if kernel_size <= 5:
                kwargs["small_kernel"] = 0  # no small branch
        else:
            kwargs["kernel_sizes"] = kernel_size
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:
        raise ValueError(f"timm model {name!r} cannot be built with {sorted(kwargs)} ({exc})") from None
    if kernel_size is not None and not isinstance(model, RepLKNet):
        sizes = {max(m.kernel_size) for m in model.modules()
                 if isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels and m.groups > 1}
        if kernel_size not in sizes:
            raise ValueError(f"--kernel-size {kernel_size} had no effect on {name}")
    return lkconv.convert_model(model) if backend == "lkconv" else lkconv.to_stock(model, inplace=True)


# ---- distributed -----------------------------------------------------------------------------------------------
def _dist() -> Tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _sum(values: List[float], device) -> List[float]:
    if _dist()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def _torch_save(obj, path: str) -> None:
    with open(path, "wb") as f:  # a file object: torch names the archive after a path's stem, empty for .tmp-*
        torch.save(obj, f)


# ---- the trainer -----------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: TrainConfig):
        import timm.data
        from timm.data import Mixup, resolve_data_config
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2
        from timm.utils import ModelEmaV3

        self.cfg = cfg
        self.rank, self.world = _dist()
        self.device = torch.device(cfg.device)
        self.classes, folders = check_layout(cfg.data)
        seed_everything(derive_seed(cfg.seed, "init"))
        self.model = build_model(cfg.model, len(self.classes), cfg.kernel_size, cfg.drop_path, cfg.backend)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)

        data_cfg = resolve_data_config({}, model=self.model)
        if cfg.image_size:
            data_cfg["input_size"] = (3, cfg.image_size, cfg.image_size)
        self.mean = torch.tensor(data_cfg["mean"], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(data_cfg["std"], device=self.device).view(1, 3, 1, 1)
        train_tf = timm.data.create_transform(
            data_cfg["input_size"], is_training=True, auto_augment=cfg.auto_augment or None,
            interpolation=data_cfg["interpolation"], mean=data_cfg["mean"], std=data_cfg["std"],
            re_prob=cfg.reprob, re_mode=cfg.remode)
        val_tf = timm.data.create_transform(**data_cfg, is_training=False)
        self.train_set = SeededImages(folders["train"], self.classes, train_tf, cfg.seed)
        self.val_set = SeededImages(folders["val"], self.classes, val_tf, cfg.seed)
        self.global_batch = cfg.batch_size * self.world * cfg.accum_steps
        self.batches_per_epoch = len(self.train_set) // (cfg.batch_size * self.world)
        self.batches_per_epoch -= self.batches_per_epoch % cfg.accum_steps
        if self.batches_per_epoch == 0:
            raise ValueError(f"{len(self.train_set)} training images make no full batch of {cfg.batch_size} x "
                             f"{self.world} process(es) x {cfg.accum_steps} accumulation steps")
        self.updates_per_epoch = self.batches_per_epoch // cfg.accum_steps

        lr = cfg.lr * self.global_batch / cfg.lr_base_batch
        self.optimizer = create_optimizer_v2(self.model, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
            warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, step_on_epochs=False,
            updates_per_epoch=self.updates_per_epoch)
        self.mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            if cfg.batch_size % 2:
                raise ValueError(f"mixup/cutmix need an even --batch-size, got {cfg.batch_size}")
            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                               num_classes=len(self.classes))
            self.criterion = SoftTargetCrossEntropy()
        elif cfg.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(cfg.smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.teacher = self._teacher() if cfg.teacher else None
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")

        self.ddp = self.model
        if self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.forward = torch.compile(self.ddp) if cfg.compile else self.ddp
        self.epoch, self.batch, self.updates = 0, 0, 0
        self.history: List[Dict] = []  # one record per optimizer step
        self.epochs: List[Dict] = []  # one record per epoch

    # -- checkpoints -------------------------------------------------------------------------------------------
    @property
    def last_path(self) -> str:
        return os.path.join(self.cfg.out, "last.pth")

    def state(self) -> Dict:
        return dict(config=self.cfg.resume_key(), model=self.model.state_dict(),
                    ema=self.ema.state_dict() if self.ema else None, optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(), rng=rng_states(),
                    epoch=self.epoch, batch=self.batch, updates=self.updates, history=self.history,
                    epochs=self.epochs, classes=self.classes)

    def save(self) -> None:
        if self.rank != 0:
            return
        _atomic(self.last_path, lambda tmp, state=self.state(): _torch_save(state, tmp))
        self.write_metrics()

    def resume(self, path: str) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        theirs, ours = state.get("config", {}), self.cfg.resume_key()
        if theirs != ours:
            diff = {k: (theirs.get(k), ours.get(k)) for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k)}
            raise ValueError(f"{path} is from a run with other settings (checkpoint vs now: {diff}); use another "
                             "--out or --resume none")
        self.model.load_state_dict(state["model"])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self.epoch, self.batch, self.updates = state["epoch"], state["batch"], state["updates"]
        self.history, self.epochs = state["history"], state["epochs"]
        if self.rank == 0:
            log.info("resumed from %s at epoch %d, batch %d", path, self.epoch, self.batch)

    def write_metrics(self) -> None:
        write_json(os.path.join(self.cfg.out, "metrics.json"),
                   dict(config=dataclasses.asdict(self.cfg), classes=len(self.classes), world_size=self.world,
                        global_batch=self.global_batch, epochs=self.epochs, steps=self.history))
        if self.epochs:
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=list(self.epochs[0]))
            w.writeheader()
            w.writerows(self.epochs)

            def write(tmp):
                with open(tmp, "w") as f:
                    f.write(buf.getvalue())

            _atomic(os.path.join(self.cfg.out, "metrics.csv"), write)

    def save_weights(self) -> None:
        if self.rank != 0:
            return
        for name, module in (("model.pth", self.model), ("model_ema.pth", self.ema.module if self.ema else None)):
            if module is not None:
                sd = module.state_dict()
                _atomic(os.path.join(self.cfg.out, name), lambda tmp, sd=sd: _torch_save(sd, tmp))

    def _teacher(self) -> nn.Module:
        from lkconv.models import load_checkpoint

        if self.cfg.distill not in ("soft", "hard"):
            raise ValueError(f"--distill must be 'soft' or 'hard', got {self.cfg.distill!r}")
        teacher = build_model(self.cfg.teacher, len(self.classes))
        if self.cfg.teacher_checkpoint:
            load_checkpoint(teacher, self.cfg.teacher_checkpoint)
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher.eval().to(self.device)

    def _distillation(self, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """DeiT (Touvron et al. 2021): soft = τ²·KL(student/τ ‖ teacher/τ); hard = CE against the teacher's
        top-1. Mixed by --distill-alpha with the ordinary loss."""
        with torch.no_grad():
            target = self.teacher(images).float()
        if self.cfg.distill == "hard":
            return nn.functional.cross_entropy(logits, target.argmax(dim=1))
        tau = self.cfg.distill_tau
        return nn.functional.kl_div(nn.functional.log_softmax(logits / tau, dim=1),
                                    nn.functional.log_softmax(target / tau, dim=1), reduction="batchmean",
                                    log_target=True) * tau * tau

    # -- one step ----------------------------------------------------------------------------------------------
    def _adversarial(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """PGD examples of the (augmented) batch against the current model, in pixel space (random-erased
        pixels outside [0, 1] are clipped first), returned normalised."""
        from .analysis.attacks import pgd
        from .analysis.common import PixelSpaceModel

        pixels = (images * self.std + self.mean).clamp(0, 1)
        wrapped = PixelSpaceModel(self.model, self.mean.flatten().tolist(), self.std.flatten().tolist(),
                                  self.amp_dtype, self.cfg.channels_last)
        adv = pgd(wrapped, pixels, labels, self.cfg.adv_eps, self.cfg.adv_steps, self.cfg.adv_alpha)
        self.model.train()
        return (adv - self.mean) / self.std

    def _loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.cfg.adv == "pgd":
            images = self._adversarial(images, labels)
        if self.mixup is not None:
            images, labels = self.mixup(images, labels)
        if self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                            enabled=self.amp_dtype is not None):
            logits = self.forward(images)
        loss = self.criterion(logits.float(), labels)
        if self.teacher is not None:
            alpha = self.cfg.distill_alpha
            loss = (1 - alpha) * loss + alpha * self._distillation(images, logits.float())
        return loss

    # -- epochs ------------------------------------------------------------------------------------------------
    def _train_loader(self, epoch: int, start_batch: int):
        sampler = torch.utils.data.DistributedSampler(self.train_set, num_replicas=self.world, rank=self.rank,
                                                      shuffle=True, seed=self.cfg.seed, drop_last=True)
        sampler.set_epoch(epoch)
        indices = list(sampler)[:self.batches_per_epoch * self.cfg.batch_size]
        self.train_set.epoch = epoch
        return torch.utils.data.DataLoader(self.train_set, batch_size=self.cfg.batch_size,
                                           sampler=_Skip(indices, start_batch * self.cfg.batch_size),
                                           num_workers=self.cfg.workers, drop_last=True,
                                           pin_memory=self.device.type == "cuda")

    def train_epoch(self) -> Optional[Dict]:
        """Train from (self.epoch, self.batch) to the epoch's end; None when --limit-steps stopped it."""
        cfg, epoch = self.cfg, self.epoch
        self.model.train()
        loader = self._train_loader(epoch, self.batch)
        losses, started, seen = [], time.perf_counter(), 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=self.rank != 0,
                   initial=self.batch, total=self.batches_per_epoch, leave=False)
        for images, labels in bar:
            seed_everything(derive_seed(cfg.seed, epoch, self.batch, self.rank))
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            last_micro = (self.batch + 1) % cfg.accum_steps == 0
            sync = self.ddp.no_sync() if (self.world > 1 and not last_micro) else contextlib.nullcontext()
            with sync:
                loss = self._loss(images, labels)
                self.scaler.scale(loss / cfg.accum_steps).backward()
            losses.append(float(loss.detach()))
            seen += len(images)
            self.batch += 1
            if not last_micro:
                continue
            if cfg.clip_grad > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.updates += 1
            self.scheduler.step_update(num_updates=self.updates)
            if self.ema:
                self.ema.update(self.model, step=self.updates)
            (step_loss,) = _sum([sum(losses[-cfg.accum_steps:]) / cfg.accum_steps], self.device)
            self.history.append(dict(step=self.updates, epoch=epoch, loss=step_loss / self.world,
                                     lr=self.optimizer.param_groups[0]["lr"]))
            bar.set_postfix(loss=f"{self.history[-1]['loss']:.4f}")
            if cfg.checkpoint_every and self.updates % cfg.checkpoint_every == 0 and self.batch < self.batches_per_epoch:
                self.save()
            if cfg.limit_steps is not None and self.updates >= cfg.limit_steps:
                self.save()
                return None
        elapsed = time.perf_counter() - started
        (images_total,) = _sum([float(seen)], self.device)
        steps = [h["loss"] for h in self.history if h["epoch"] == epoch]
        return dict(epoch=epoch + 1, train_loss=sum(steps) / max(len(steps), 1),
                    lr=self.optimizer.param_groups[0]["lr"],
                    train_images_per_s=images_total / elapsed if elapsed > 0 else math.nan)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> Dict[str, float]:
        model.eval()
        shard = torch.utils.data.Subset(self.val_set, list(range(self.rank, len(self.val_set), self.world)))
        loader = torch.utils.data.DataLoader(shard, batch_size=self.cfg.batch_size, num_workers=self.cfg.workers)
        top1 = top5 = total = loss = 0.0
        for images, labels in loader:
            images, labels = images.to(self.device), labels.to(self.device)
            if self.cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                                enabled=self.amp_dtype is not None):
                logits = model(images).float()
            loss += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
            top1 += float((ranked[:, 0] == labels).sum())
            top5 += float((ranked == labels[:, None]).any(dim=1).sum())
            total += len(labels)
        top1, top5, total, loss = _sum([top1, top5, total, loss], self.device)
        model.train()
        return dict(top1=top1 / total, top5=top5 / total, loss=loss / total)

    def run(self, resume: Optional[str] = None) -> List[Dict]:
        """Train to the last epoch (or --limit-steps); returns the per-epoch records."""
        os.makedirs(self.cfg.out, exist_ok=True)
        if self.rank == 0:
            remove_stale_temps(self.cfg.out)
        if resume == "auto":
            resume = self.last_path if os.path.exists(self.last_path) else None
        if resume:
            self.resume(resume)
        while self.epoch < self.cfg.epochs:
            record = self.train_epoch()
            if record is None:
                return self.epochs
            val = self.evaluate(self.model)
            record.update(val_top1=val["top1"], val_top5=val["top5"], val_loss=val["loss"])
            if self.ema:
                ema = self.evaluate(self.ema.module)
                record.update(ema_top1=ema["top1"], ema_top5=ema["top5"])
            self.epochs.append(record)
            self.epoch, self.batch = self.epoch + 1, 0
            self.save_weights()
            self.save()
            if self.rank == 0:
                log.info("epoch %d: %s", self.epoch, record)
        return self.epochs


# ---- smoke data ------------------------------------------------------------------------------------------------
def make_smoke_data(root: str, classes: int = 4, train_per_class: int = 16, val_per_class: int = 4,
                    size: int = 40, seed: int = 0) -> str:
    """A learnable dataset in the ImageNet folder layout: each class a colour and an orientation of stripes,
    with noise. Idempotent (existing files are kept)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    palette = rng.uniform(0.2, 0.8, (classes, 3))
    yy, xx = np.mgrid[0:size, 0:size] / size
    for part, per_class in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = os.path.join(root, part, f"n{c:08d}")
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                path = os.path.join(folder, f"{part}_{c}_{i}.JPEG")
                if os.path.exists(path):
                    continue
                angle = math.pi * c / classes
                stripes = 0.5 + 0.5 * np.sin(2 * math.pi * 4 * (xx * math.cos(angle) + yy * math.sin(angle)))
                img = palette[c][None, None] * (0.6 + 0.4 * stripes[..., None])
                img = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)
                Image.fromarray((img * 255).astype(np.uint8)).save(path)
    return root


# ---- the command line ------------------------------------------------------------------------------------------
def add_arguments(t: argparse.ArgumentParser) -> None:
    """The `train` command's arguments."""
    t.add_argument("--model", default=None, help="any timm name (convnext_tiny_k31, replknet_31b, replknet_3b, ...)")
    t.add_argument("--data", type=named_path("imagenet", "a folder with train/ and val/ class folders"),
                   default=None, metavar="imagenet=PATH")
    t.add_argument("--out", required=True, help="run folder: checkpoints, weights, metrics")
    t.add_argument("--preset", default=None, help="recipe from robustness/presets.toml (default convnext-ablation)")
    t.add_argument("--kernel-size", type=count(1), default=None, help="every large depthwise kernel at this size")
    t.add_argument("--backend", choices=["lkconv", "torch"], default="lkconv",
                   help="torch: stock nn.Conv2d, to measure lkconv's speed-up on the same run")
    t.add_argument("--resume", default="auto", help="auto (continue <out>/last.pth if there), none, or a file")
    t.add_argument("--smoke", action="store_true",
                   help="a tiny model for a few steps on a generated dataset (<out>/smoke-data)")
    t.add_argument("--device", default=None)
    t.add_argument("--workers", type=count(0), default=None)
    t.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    t.add_argument("--channels-last", action="store_true", default=None)
    t.add_argument("--compile", action="store_true", default=None)
    t.add_argument("--limit-steps", type=count(1), default=None, help="stop after N optimizer steps in all")
    for flag, kind in (("epochs", count(1)), ("batch-size", count(1)), ("accum-steps", count(1)),
                       ("image-size", count(8)), ("lr", fraction_or_float), ("lr-base-batch", count(1)),
                       ("weight-decay", fraction_or_float), ("warmup-epochs", fraction_or_float),
                       ("min-lr", fraction_or_float), ("mixup", fraction_or_float), ("cutmix", fraction_or_float),
                       ("smoothing", unit_interval), ("reprob", unit_interval), ("drop-path", unit_interval),
                       ("ema-decay", unit_interval), ("clip-grad", fraction_or_float),
                       ("checkpoint-every", count(0)), ("seed", int)):
        t.add_argument(f"--{flag}", type=kind, default=None)
    t.add_argument("--opt", default=None, help="timm optimizer name (adamw, sgd, lamb, ...)")
    t.add_argument("--sched", default=None, help="timm scheduler name (cosine, step, ...)")
    t.add_argument("--auto-augment", default=None, help="timm auto-augment string ('' for none)")
    t.add_argument("--adv", choices=["pgd"], default=None, help="adversarial training with PGD examples")
    t.add_argument("--adv-eps", type=unit_interval, default=None, help="L-inf budget (default 4/255)")
    t.add_argument("--adv-steps", type=count(1), default=None, help="PGD steps (default 1)")
    t.add_argument("--adv-alpha", type=fraction_or_float, default=None, help="PGD step (default 2.5*eps/steps)")
    t.add_argument("--teacher", default=None, help="knowledge distillation from this timm model")
    t.add_argument("--teacher-checkpoint", default=None)
    t.add_argument("--distill", choices=["soft", "hard"], default=None, help="DeiT's soft (KL) or hard (top-1)")
    t.add_argument("--distill-alpha", type=unit_interval, default=None, help="weight of the distillation loss")
    t.add_argument("--distill-tau", type=fraction_or_float, default=None, help="soft distillation temperature")


def config_from_args(args, device: str) -> TrainConfig:
    """The run's TrainConfig: dataclass defaults < preset < flags given."""
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




def run_command(args) -> None:
    """`lkrobust train` once the arguments are parsed."""
    prepare_out(args.out)
    with distributed_session():
        cfg = config_from_args(args, resolve_device(args.device))
        check_layout(cfg.data)
        resume = None if args.resume == "none" else args.resume
        if resume not in (None, "auto"):
            check_checkpoint(resume)
        epochs = Trainer(cfg).run(resume)
        if torch_distributed_rank() == 0:
            last = epochs[-1] if epochs else {}
            print(f"trained {len(epochs)} epoch(s); last: " + ", ".join(
                f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, float)) + f"; run in {args.out}")


HELP = "train a timm model on lkconv's kernels (kernel-size ablations; resumable)"
DESCRIPTION = "Training from timm's parts; a flag overrides the preset's value."


def main(argv: Optional[List[str]] = None) -> int:
    """`python -m robustness.train ...`, the same as `lkrobust train ...`."""
    parser = argparse.ArgumentParser(prog="python -m robustness.train", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return run_reporting_errors("train", lambda: run_command(args))


if __name__ == "__main__":
    sys.exit(main())
