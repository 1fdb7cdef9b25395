"""What every analysis shares: models that take pixel-space images, the eval transform without normalisation,
and accuracy over a loader (sharded under torchrun, counts summed over the ranks)."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional, Tuple

import torch
from torch import nn


class PixelSpaceModel(nn.Module):
    """`model` behind its own input normalisation: it takes images in [0, 1], so that attack budgets (ε) and
    perturbations are in pixel units, as in the robustness papers."""

    def __init__(self, model: nn.Module, mean, std, autocast_dtype: Optional[torch.dtype] = None,
                 channels_last: bool = False):
        super().__init__()
        self.model = model
        self.autocast_dtype = autocast_dtype  # bf16/fp16 autocast around the model (logits come back fp32)
        self.channels_last = channels_last
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(device=images.device, dtype=images.dtype)
        std = self.std.to(device=images.device, dtype=images.dtype)
        x = (images - mean) / std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is None:
            return self.model(x)
        with torch.autocast(images.device.type, dtype=self.autocast_dtype):
            return self.model(x).float()


def data_config(model: nn.Module) -> dict:
    import timm.data

    return timm.data.resolve_data_config({}, model=unwrap(model))


def pixel_space(model: nn.Module) -> PixelSpaceModel:
    """`model` wrapped to take [0, 1] images with the mean/std of its timm config (ImageNet's by default)."""
    if isinstance(model, PixelSpaceModel):
        return model
    cfg = data_config(model)
    wrapped = PixelSpaceModel(model, cfg["mean"], cfg["std"])
    return wrapped.train(model.training)


def unwrap(model: nn.Module) -> nn.Module:
    return model.model if isinstance(model, PixelSpaceModel) else model


def pixel_transform(model: nn.Module, input_size: Optional[int] = None) -> Callable:
    """The model's timm eval transform (resize, centre crop) ending in [0, 1] tensors: normalisation happens
    inside `PixelSpaceModel`."""
    import timm.data

    cfg = dict(data_config(model))
    if input_size is not None:
        cfg["input_size"] = (3, input_size, input_size)
    cfg.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return timm.data.create_transform(**cfg, is_training=False)


def batches(loader: Iterable) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) of every batch: plain (x, y) loaders and the suite's collate (which also reports
    unreadable files and yields None for an all-unreadable batch) alike."""
    for batch in loader:
        images, labels = batch[0], batch[1]
        if images is not None:
            yield images, labels


def model_device(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _all_reduce(*counts: float) -> Tuple[float, ...]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor(counts, dtype=torch.float64)
        if torch.distributed.get_backend() == "nccl":
            t = t.cuda()
        torch.distributed.all_reduce(t)
        return tuple(t.cpu().tolist())
    return counts


def predictions(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images).argmax(1)


def accuracy(model: nn.Module, loader: Iterable,
             perturb: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None) -> float:
    """Top-1 accuracy (a fraction) of pixel-space `model` on `loader`, each batch first passed through
    `perturb(images, labels)` when given (attacks need the labels). Under torchrun each rank sees its shard and
    the counts are summed, so every rank returns the same value. NaN for an empty loader."""
    device = model_device(model)
    correct = total = 0
    for images, labels in batches(loader):
        images, labels = images.to(device), labels.to(device)
        if perturb is not None:
            images = perturb(images, labels)
        correct += int((predictions(model, images) == labels).sum())
        total += len(labels)
    correct, total = _all_reduce(correct, total)
    return correct / total if total else float("nan")
