"""Loaders for the ImageNet robustness benchmarks in their published folder layouts.

Every benchmark is a list of *splits* (a corruption and severity of ImageNet-C, a perturbation of
ImageNet-P, a variation of ImageNet-9, or the whole set); each split is a list of samples. A folder that does
not have the expected layout raises `LayoutError` showing the layout; an unreadable image or video is
skipped, counted and reported, never fatal.

Preprocessing follows each benchmark's publication: the model's own timm eval transform (resize + centre
crop) for ImageNet-val/-A/-R/-O/-Sketch/-9; for ImageNet-C, Stylized-ImageNet and ImageNet-P frames (already
224x224) only conversion and normalisation.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

_REF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference")
log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm")


class LayoutError(FileNotFoundError):
    """A benchmark folder does not have its published layout."""

    def __init__(self, benchmark: str, root: str, problem: str):
        spec = BENCHMARKS[benchmark].layout if benchmark in BENCHMARKS else "?"
        super().__init__(f"{benchmark} at {root!r}: {problem}.\nExpected layout:\n{spec}")


# ---- class lists -------------------------------------------------------------------------------------------
def _timm_info(name: str) -> List[str]:
    import timm.data

    path = os.path.join(os.path.dirname(timm.data.__file__), "_info", name)
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def imagenet_wnids() -> List[str]:
    """The 1000 ImageNet-1k WordNet ids in class-index order (timm's list)."""
    return _timm_info("imagenet_synsets.txt")


def class_subset(benchmark: str) -> Optional[List[int]]:
    """Indices (into the 1000 classes) whose logits a benchmark uses, or None for all."""
    if benchmark == "imagenet-a":
        return [int(i) for i in _timm_info("imagenet_a_indices.txt")]
    if benchmark == "imagenet-r":
        return [int(i) for i in _timm_info("imagenet_r_indices.txt")]
    if benchmark == "imagenet-o":
        index = {w: i for i, w in enumerate(imagenet_wnids())}
        with open(os.path.join(_REF, "imagenet_o_synsets.txt")) as f:
            return [index[w.strip()] for w in f if w.strip()]
    return None


def imagenet9_mapping() -> np.ndarray:
    """ImageNet-1k index -> ImageNet-9 class (-1: none of the nine)."""
    with open(os.path.join(_REF, "imagenet9_in_to_in9.json")) as f:
        raw = json.load(f)
    out = np.full(1000, -1, dtype=np.int64)
    for k, v in raw.items():
        out[int(k)] = int(v)
    return out


# ---- samples and splits ------------------------------------------------------------------------------------
@dataclass
class Split:
    benchmark: str
    name: str  # e.g. "val", "gaussian_noise/3", "mixed_rand"
    samples: List[Tuple[str, int]]  # (path, label); label -1 when there is none (ImageNet-O)
    kind: str = "image"  # "image" or "video"
    meta: Dict[str, object] = field(default_factory=dict)


def _files(folder: str, extensions) -> List[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(extensions))


def _require_dir(benchmark: str, root: str) -> None:
    if not os.path.isdir(root):
        raise LayoutError(benchmark, root, "no such folder")


def _class_folders(benchmark: str, root: str, known: Optional[Dict[str, int]], extensions=IMAGE_EXTENSIONS,
                   labelled: bool = True) -> List[Tuple[str, int]]:
    """Samples of a `<root>/<wnid>/<file>` folder. Folders that are not WordNet ids are an error."""
    _require_dir(benchmark, root)
    dirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not dirs:
        raise LayoutError(benchmark, root, "no class folders")
    bad = [d for d in dirs if not re.fullmatch(r"n\d{8}", d) or (known is not None and d not in known)]
    if bad:
        raise LayoutError(benchmark, root, f"folders that are not ImageNet WordNet ids: {bad[:5]}")
    samples = []
    for d in dirs:
        label = known[d] if (labelled and known is not None) else -1
        samples += [(p, label) for p in _files(os.path.join(root, d), extensions)]
    if not samples:
        raise LayoutError(benchmark, root, "class folders hold no images")
    return samples


_SUBSET_SYNSETS = {"imagenet-a": "imagenet_a_synsets.txt", "imagenet-r": "imagenet_r_synsets.txt"}


def _plain(benchmark: str, name: str = None) -> Callable[[str], List[Split]]:
    def find(root: str) -> List[Split]:
        index = {w: i for i, w in enumerate(imagenet_wnids())}
        samples = _class_folders(benchmark, root, index, labelled=benchmark != "imagenet-o")
        if benchmark in _SUBSET_SYNSETS:
            allowed = set(_timm_info(_SUBSET_SYNSETS[benchmark]))
            outside = sorted({os.path.basename(os.path.dirname(p)) for p, _ in samples} - allowed)
            if outside:
                log.warning("%s at %r has class folders outside its 200 classes (%s%s): their images are scored "
                            "with the 200-class logits and count as errors", benchmark, root,
                            ", ".join(outside[:5]), ", ..." if len(outside) > 5 else "")
        return [Split(benchmark, name or benchmark, samples)]
    return find


def _severity_dirs(path: str) -> List[str]:
    return sorted(d for d in os.listdir(path) if d in {"1", "2", "3", "4", "5"} and os.path.isdir(os.path.join(path, d)))


def _imagenet_c(root: str) -> List[Split]:
    """`<root>/<corruption>/<1..5>/<wnid>/*`, or the grouped download `<root>/<group>/<corruption>/...`."""
    _require_dir("imagenet-c", root)
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    corruption_dirs = {}
    for d in sorted(os.listdir(root)):
        path = os.path.join(root, d)
        if not os.path.isdir(path):
            continue
        if _severity_dirs(path):
            corruption_dirs[d] = path
        else:  # a group folder (noise, blur, weather, digital, extra)
            for c in sorted(os.listdir(path)):
                sub = os.path.join(path, c)
                if os.path.isdir(sub) and _severity_dirs(sub):
                    corruption_dirs[c] = sub
    if not corruption_dirs:
        raise LayoutError("imagenet-c", root, "no <corruption>/<severity 1..5> folders")
    splits = []
    for corruption, path in corruption_dirs.items():
        for sev in _severity_dirs(path):
            splits.append(Split("imagenet-c", f"{corruption}/{sev}",
                                _class_folders("imagenet-c", os.path.join(path, sev), index),
                                meta=dict(corruption=corruption, severity=int(sev))))
    return splits


def _imagenet_p(root: str) -> List[Split]:
    """`<root>/<perturbation>[_2|_3]/<wnid>/*.mp4`; the suffix is the difficulty."""
    from .metrics import NOISE_PERTURBATIONS

    _require_dir("imagenet-p", root)
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    splits = []
    for d in sorted(os.listdir(root)):
        path = os.path.join(root, d)
        if not os.path.isdir(path):
            continue
        m = re.fullmatch(r"(.+?)(?:_(\d))?", d)
        base, difficulty = m.group(1), int(m.group(2) or 1)
        samples = _class_folders("imagenet-p", path, index, VIDEO_EXTENSIONS)
        splits.append(Split("imagenet-p", d, samples, kind="video",
                            meta=dict(perturbation=base, difficulty=difficulty, noise=base in NOISE_PERTURBATIONS)))
    if not splits:
        raise LayoutError("imagenet-p", root, "no perturbation folders")
    return splits


def _imagenet_9(root: str) -> List[Split]:
    """`<root>/<variation>/val/<class>/*` with the nine classes in folder order (00_dog ... 08_fish)."""
    _require_dir("imagenet-9", root)
    splits = []
    for variation in sorted(os.listdir(root)):
        val = os.path.join(root, variation, "val")
        if not os.path.isdir(val):
            continue
        classes = sorted(d for d in os.listdir(val) if os.path.isdir(os.path.join(val, d)))
        if len(classes) != 9:
            raise LayoutError("imagenet-9", root, f"{val} has {len(classes)} class folders, not 9")
        samples = [(p, label) for label, c in enumerate(classes) for p in _files(os.path.join(val, c), IMAGE_EXTENSIONS)]
        splits.append(Split("imagenet-9", variation, samples))
    if not splits:
        raise LayoutError("imagenet-9", root, "no <variation>/val folders")
    return splits


@dataclass(frozen=True)
class Benchmark:
    find: Callable[[str], List[Split]]
    resize: bool  # the model's eval transform (resize + centre crop) or normalisation only
    layout: str


BENCHMARKS: Dict[str, Benchmark] = {
    "imagenet-val": Benchmark(_plain("imagenet-val", "val"), True, "  <root>/n01440764/*.JPEG ... (1000 class folders)"),
    "imagenet-a": Benchmark(_plain("imagenet-a"), True, "  <root>/n01498041/*.jpg ... (200 class folders)"),
    "imagenet-r": Benchmark(_plain("imagenet-r"), True, "  <root>/n01443537/*.jpg ... (200 class folders)"),
    "imagenet-o": Benchmark(_plain("imagenet-o"), True,
                            "  <root>/n01443537/*.jpg ... (200 folders of out-of-distribution images)"),
    "imagenet-sketch": Benchmark(_plain("imagenet-sketch", "sketch"), True,
                                 "  <root>/n01440764/*.JPEG ... (1000 class folders)"),
    "stylized-imagenet": Benchmark(_plain("stylized-imagenet", "stylized"), False,
                                   "  <root>/n01440764/*.png ... (1000 class folders, 224x224 images)"),
    "imagenet-c": Benchmark(_imagenet_c, False,
                            "  <root>/<corruption>/<severity 1..5>/<wnid>/*.JPEG\n"
                            "  or <root>/<group>/<corruption>/<severity 1..5>/<wnid>/*.JPEG"),
    "imagenet-p": Benchmark(_imagenet_p, False,
                            "  <root>/<perturbation>/<wnid>/*.mp4  (harder variants: <perturbation>_2, _3)"),
    "imagenet-9": Benchmark(_imagenet_9, True,
                            "  <root>/<variation>/val/<class>/*  (variations original, mixed_same, mixed_rand,\n"
                            "  only_fg, ...; nine class folders 00_dog ... 08_fish)"),
}


def find_splits(benchmark: str, root: str) -> List[Split]:
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}")
    return BENCHMARKS[benchmark].find(root)


# ---- datasets ----------------------------------------------------------------------------------------------
def load_image(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def load_video(path: str) -> List[Image.Image]:
    """All frames of a video as RGB images. PyAV (FFmpeg bindings) decodes: it is maintained, ships FFmpeg in
    its wheels, and is what torchvision's own video reader used; torchvision.io's decoder is deprecated."""
    import av

    with av.open(path) as container:
        frames = [frame.to_image() for frame in container.decode(video=0)]
    if not frames:
        raise ValueError("no frames")
    return frames


def spread(samples: List[Tuple[str, int]], limit: Optional[int]) -> List[Tuple[str, int]]:
    """At most `limit` samples taken across the class folders in turn (the first file of every class, then the
    second, ...), so that a small limit still covers the classes evenly; deterministic. The kept samples stay in
    their original order."""
    if limit is None or limit >= len(samples):
        return list(samples)
    if limit < 1:
        raise ValueError(f"limit must be a positive number of samples, got {limit}")
    by_class: Dict[str, List[int]] = {}
    for i, (path, _) in enumerate(samples):
        by_class.setdefault(os.path.dirname(path), []).append(i)
    picked: List[int] = []
    rank = 0
    while len(picked) < limit:
        for members in by_class.values():
            if rank < len(members) and len(picked) < limit:
                picked.append(members[rank])
        rank += 1
    return [samples[i] for i in sorted(picked)]


class SplitDataset(torch.utils.data.Dataset):
    """Items are (tensor, label, index, adjusted) or, for unreadable files, (None, label, index, False);
    `adjusted` says that an image of a fixed-size benchmark had another size and was resized and cropped."""

    def __init__(self, split: Split, transform: Callable, limit: Optional[int] = None):
        self.split = split
        self.samples = spread(split.samples, limit)
        self.transform = transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        try:
            if self.split.kind == "video":
                return torch.stack([self.transform(f) for f in load_video(path)]), label, i, False
            image = load_image(path)
            adjusted = isinstance(self.transform, FixedSize) and image.size != (self.transform.size,) * 2
            return self.transform(image), label, i, adjusted
        except Exception:  # noqa: BLE001  (any decoding failure: count it, never crash the run)
            return None, label, i, False


def collate(batch):
    """Stack the readable items; report the indices of the unreadable ones and of the resized ones."""
    ok = [b for b in batch if b[0] is not None]
    failed = [b[2] for b in batch if b[0] is None]
    adjusted = [b[2] for b in batch if b[3]]
    if not ok:
        return None, None, None, failed, adjusted
    if ok[0][0].dim() == 4:  # videos: frame counts may differ, keep a list
        images = [b[0] for b in ok]
    else:
        images = torch.stack([b[0] for b in ok])
    return images, torch.tensor([b[1] for b in ok]), torch.tensor([b[2] for b in ok]), failed, adjusted


#: The image size of the fixed-size benchmarks as published (ImageNet-C, Stylized-ImageNet, ImageNet-P frames:
#: 224x224, made by resizing to 256 and centre-cropping 224).
PUBLISHED_SIZE = 224


class FixedSize:
    """Preprocessing of a benchmark whose images are already at their evaluation size: conversion and
    normalisation only. An image of another size (e.g. a folder corrupted with `lkrobust corrupt` from ordinary
    photos) cannot be batched with the rest: it is resized (shorter side 256) and centre-cropped to 224, the
    benchmarks' own recipe, and the run counts and reports it."""

    def __init__(self, mean, std, size: int = PUBLISHED_SIZE):
        from torchvision import transforms

        self.size = size
        self.normalise = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=mean, std=std)])
        self.adjust = transforms.Compose([transforms.Resize(size * 256 // 224), transforms.CenterCrop(size)])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.size != (self.size, self.size):
            image = self.adjust(image)
        return self.normalise(image)


def transform_for(benchmark: str, data_config: Dict) -> Callable:
    """The model's eval transform, or only tensor conversion and normalisation for benchmarks whose images are
    already at the evaluation size."""
    import timm.data
    from torchvision import transforms

    if BENCHMARKS[benchmark].resize:
        return timm.data.create_transform(**data_config, is_training=False)
    if benchmark == "imagenet-p":  # frames of one video share their size and are batched alone
        return transforms.Compose([transforms.ToTensor(),
                                   transforms.Normalize(mean=data_config["mean"], std=data_config["std"])])
    return FixedSize(data_config["mean"], data_config["std"])
