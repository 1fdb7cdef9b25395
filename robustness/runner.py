"""Evaluation runs: every split of every benchmark, one results file per (model, benchmark, split).

Files are written atomically (temp file + rename) as `<out>/<model>/<benchmark>/<split>.json` (plus `.npz`
for the ImageNet-O scores), so an interrupted run loses at most the split in flight and a rerun skips every
split whose file exists with the same configuration. Under `torchrun`, ranks evaluate interleaved shards of
each split and rank 0 writes the results (torch.distributed, no home-made scheduler).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
from tqdm import tqdm

from . import metrics
from .data import (PUBLISHED_SIZE, Split, SplitDataset, class_subset, collate, find_splits, imagenet9_mapping,
                   transform_for)

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    model: str
    checkpoint: Optional[str] = None
    device: str = "cpu"
    batch_size: int = 64
    workers: int = 4
    amp: Optional[str] = None  # "bf16" / "fp16"
    channels_last: bool = False
    limit: Optional[int] = None  # images (or videos) per split
    input_size: Optional[int] = None  # evaluation resolution; default: the model's configured one

    def key(self) -> Dict:
        """What must match for an existing results file to count as finished."""
        key = dict(model=self.model, checkpoint=self.checkpoint, limit=self.limit, amp=self.amp,
                   sampling="across classes" if self.limit else None)
        if self.input_size is not None:
            key["input_size"] = self.input_size
        return key


def split_path(out: str, model: str, benchmark: str, split: str, ext: str = ".json") -> str:
    return os.path.join(out, model.replace("/", "_"), benchmark, split.replace("/", "_sev") + ext)


def _file_mode() -> int:
    """The mode a plainly created file gets under the user's umask (mkstemp's 0600 would hide results)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic(path: str, write) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".tmp-{os.getpid()}-")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temps(folder: str) -> None:
    """Delete the temp files of writers that were killed mid-write (`.tmp-<pid>-*` of a process that no longer
    runs): an interrupted run loses the file in flight, and leaves nothing behind once rerun."""
    for root, _, files in os.walk(folder):
        for name in files:
            if not name.startswith(".tmp-"):
                continue
            pid = name.split("-")[1]
            if pid.isdigit() and _running(int(pid)):
                continue
            try:
                os.remove(os.path.join(root, name))
            except OSError:
                pass


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_json(path: str, data: Dict) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)

    _atomic(path, write)


def _versions() -> Dict[str, str]:
    import timm

    import lkconv

    return dict(torch=torch.__version__, timm=timm.__version__, lkconv=lkconv.__version__,
                python=platform.python_version())


def create_model(cfg: EvalConfig) -> torch.nn.Module:
    """Any timm model name (lkconv's models included), weights from `cfg.checkpoint` when given."""
    import timm

    import lkconv.models  # noqa: F401  (registers lkconv's models)
    from lkconv.models import load_checkpoint

    model = timm.create_model(cfg.model, pretrained=False)
    if cfg.checkpoint:
        load_checkpoint(model, cfg.checkpoint)
    model = lkconv.convert_model(model).eval().to(cfg.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _dist():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class Evaluator:
    def __init__(self, cfg: EvalConfig, model: Optional[torch.nn.Module] = None):
        import timm.data

        self.cfg = cfg
        self.model = model if model is not None else create_model(cfg)
        size = {"input_size": (3, cfg.input_size, cfg.input_size)} if cfg.input_size else {}
        self.data_config = timm.data.resolve_data_config(size, model=self.model)
        self.in9 = imagenet9_mapping()
        self.o_subset = class_subset("imagenet-o")

    # -- model calls --------------------------------------------------------------------------------------
    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.cfg.device, non_blocking=True)
        if self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.amp)
        with torch.no_grad(), torch.autocast(torch.device(self.cfg.device).type, dtype=dtype,
                                             enabled=dtype is not None):
            return self.model(images).float().cpu()

    # -- one split ----------------------------------------------------------------------------------------
    def run_split(self, split: Split) -> Dict:
        rank, world = _dist()
        dataset = SplitDataset(split, transform_for(split.benchmark, self.data_config), self.cfg.limit)
        indices = list(range(rank, len(dataset), world))
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices),
                                             batch_size=1 if split.kind == "video" else self.cfg.batch_size,
                                             num_workers=self.cfg.workers, collate_fn=collate)
        logits_all, labels_all, index_all, failed, adjusted = [], [], [], [], []
        bar = tqdm(loader, desc=f"{split.benchmark}/{split.name}", unit="batch", disable=rank != 0, leave=False)
        for images, labels, idx, bad, resized in bar:
            failed += bad  # dataset indices of unreadable files
            adjusted += resized
            if images is None:
                continue
            if split.kind == "video":
                logits_all.append([self._logits(v) for v in images])
            else:
                logits_all.append(self._logits(images))
            labels_all.append(labels)
            index_all.append(idx)
        if world > 1:
            gathered = [None] * world
            torch.distributed.all_gather_object(gathered, (logits_all, labels_all, index_all, failed, adjusted))
            logits_all = [x for g in gathered for x in g[0]]
            labels_all = [x for g in gathered for x in g[1]]
            failed = [x for g in gathered for x in g[3]]
            adjusted = [x for g in gathered for x in g[4]]
        failed_paths = [dataset.samples[i][0] for i in sorted(set(failed))]
        if split.kind == "video":
            videos = [v for batch in logits_all for v in batch]
            return self._video_metrics(split, videos, failed_paths, len(dataset))
        logits = torch.cat(logits_all).numpy() if logits_all else np.zeros((0, 1000), np.float32)
        labels = torch.cat(labels_all).numpy() if labels_all else np.zeros((0,), np.int64)
        result = self._image_metrics(split, logits, labels, failed_paths, len(dataset))
        if adjusted:
            result["counts"]["resized"] = len(adjusted)
            if rank == 0:
                log.warning("%s/%s: %d image(s) were not %dx%d as the benchmark is published; they were resized "
                            "and centre-cropped (e.g. %s)", split.benchmark, split.name, len(adjusted),
                            PUBLISHED_SIZE, PUBLISHED_SIZE, dataset.samples[min(adjusted)][0])
        return result

    def _image_metrics(self, split: Split, logits, labels, failed, total) -> Dict:
        out = dict(counts=dict(total=total, evaluated=int(len(labels)), unreadable=len(failed)),
                   unreadable=failed[:50])
        b = split.benchmark
        if b == "imagenet-9":
            preds = self.in9[np.argmax(logits, axis=1)] if len(logits) else np.zeros(0, np.int64)
            out["metrics"] = dict(top1=metrics.top1(preds, labels))
        elif b == "imagenet-o":
            out["metrics"] = {}
            out["scores"] = self._o_scores(logits)
        else:
            subset = class_subset(b)
            top1 = metrics.top1(logits, labels, subset)
            out["metrics"] = dict(top1=top1, error=1 - top1)
            if b == "imagenet-val":
                out["scores"] = self._o_scores(logits)  # the in-distribution side of ImageNet-O
        return out

    def _o_scores(self, logits) -> np.ndarray:
        return logits[:, self.o_subset] if len(logits) else np.zeros((0, len(self.o_subset)), np.float32)

    def _video_metrics(self, split: Split, videos: List[torch.Tensor], failed, total) -> Dict:
        noise, difficulty = bool(split.meta["noise"]), int(split.meta["difficulty"])
        usable = [v.numpy() for v in videos if len(v) >= (2 if noise else difficulty + 1)]
        out = dict(counts=dict(total=total, evaluated=len(usable), unreadable=len(failed),
                               too_short=len(videos) - len(usable)), unreadable=failed[:50],
                   meta=dict(split.meta))
        if usable:
            out["metrics"] = dict(
                flip_probability=metrics.flip_probability([v.argmax(1) for v in usable], noise, difficulty),
                top5_distance=metrics.top5_distance(usable, noise, difficulty))
        else:
            out["metrics"] = {}
        return out

    # -- whole runs ---------------------------------------------------------------------------------------
    def run(self, benches: Dict[str, str], out: str, splits: Optional[Dict[str, List[Split]]] = None) -> List[str]:
        """Evaluate every split of every benchmark that has no finished results file; returns written paths.
        `splits` may hold the benchmarks' splits already found (find_splits), so folders are listed once."""
        rank, _ = _dist()
        if rank == 0:
            remove_stale_temps(out)
        written = []
        splits = splits or {}
        plan = [(b, s) for b, root in benches.items() for s in (splits.get(b) or find_splits(b, root))]
        for benchmark, split in tqdm(plan, desc=self.cfg.model, unit="split", disable=rank != 0):
            path = split_path(out, self.cfg.model, benchmark, split.name)
            if self._finished(path):
                log.info("skip %s (done)", path)
                continue
            result = self.run_split(split)
            if rank != 0:
                continue
            scores = result.pop("scores", None)
            record = dict(model=self.cfg.model, benchmark=benchmark, split=split.name, config=self.cfg.key(),
                          run=dict(vars(self.cfg)), versions=_versions(),
                          date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                          **result)
            if scores is not None:
                npz = split_path(out, self.cfg.model, benchmark, split.name, ".npz")
                def save_npz(tmp, scores=scores):
                    with open(tmp, "wb") as f:
                        np.savez(f, o_logits=scores)

                _atomic(npz, save_npz)
                record["scores_file"] = os.path.basename(npz)
            write_json(path, record)
            written.append(path)
        return written

    def _finished(self, path: str) -> bool:
        if not os.path.exists(path):
            return False
        try:
            with open(path) as f:
                return json.load(f).get("config") == self.cfg.key()
        except (OSError, ValueError):
            return False  # a damaged file is redone
