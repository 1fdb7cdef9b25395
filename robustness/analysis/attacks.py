"""White-box attacks in pixel space (FGSM, PGD, AutoAttack through torchattacks) and the transferable
integrated-gradient attack TAIG (Huang & Kong, ICLR 2022) with the transfer success rate of the paper's
Table 4. Models are wrapped so that they take [0, 1] images and normalise inside; ε is in pixel units."""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

from .common import model_device, pixel_space, predictions, unwrap


def _check(images: torch.Tensor, labels: torch.Tensor, eps: float) -> None:
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must be (N,) = ({images.shape[0]},), got {tuple(labels.shape)}")
    if not 0 <= eps <= 1:
        raise ValueError(f"eps is in pixel units of [0, 1] images (e.g. 4/255), got {eps}")
    if images.min() < 0 or images.max() > 1:
        raise ValueError("images must be in pixel space [0, 1]; the model's normalisation is applied inside")


@contextlib.contextmanager
def _seeded(seed: Optional[int], device: torch.device):
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _num_classes(model: nn.Module) -> int:
    inner = unwrap(model)
    n = getattr(inner, "num_classes", None)
    if not n:
        raise ValueError("cannot tell the model's number of classes (no .num_classes); AutoAttack needs it")
    return int(n)


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """Fast gradient sign method: every pixel moves by ε in the sign of the loss gradient, clipped to [0, 1]."""
    import torchattacks

    _check(images, labels, eps)
    return torchattacks.FGSM(pixel_space(model), eps=eps)(images, labels)


def pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int,
        alpha: Optional[float] = None, random_start: bool = True, seed: Optional[int] = None) -> torch.Tensor:
    """L∞ projected gradient descent (Madry et al. 2018) in the ε-ball around `images`, within [0, 1].
    The step defaults to ``alpha = 2.5 * eps / steps`` (Madry's rule: enough to reach the ball's boundary
    from any start). `seed` makes the random start reproducible without touching the global RNG."""
    import torchattacks

    _check(images, labels, eps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    alpha = 2.5 * eps / steps if alpha is None else alpha
    attack = torchattacks.PGD(pixel_space(model), eps=eps, alpha=alpha, steps=steps, random_start=random_start)
    with _seeded(seed, images.device):
        return attack(images, labels)


def autoattack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, norm: str = "Linf",
               version: str = "standard", seed: Optional[int] = 0) -> torch.Tensor:
    """AutoAttack (Croce & Hein 2020; APGD-CE, APGD-T, FAB-T, Square for "standard") through torchattacks."""
    import torchattacks

    _check(images, labels, eps)
    if norm not in ("Linf", "L2"):
        raise ValueError(f"norm must be 'Linf' or 'L2', got {norm!r}")
    if version not in ("standard", "plus", "rand"):
        raise ValueError(f"version must be 'standard', 'plus' or 'rand', got {version!r}")
    attack = torchattacks.AutoAttack(pixel_space(model), norm=norm, eps=eps, version=version,
                                     n_classes=_num_classes(model), seed=seed)
    return attack(images, labels)


# ---- integrated gradients and TAIG ---------------------------------------------------------------------------
# Written here rather than taken from captum: TAIG-R integrates along a random piecewise-linear path, and
# captum's IntegratedGradients only integrates along the straight line.
def integrated_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                         baseline: Optional[torch.Tensor] = None, steps: int = 20, path: str = "straight",
                         segments: int = 4, path_noise: float = 0.1,
                         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Attributions (N, C, H, W) of the label's logit of pixel-space `model` along a path from `baseline`
    (black by default) to `images`, by the trapezoid rule over `steps` intervals, so that their sum equals
    f(images) − f(baseline) up to the quadrature error (completeness; the error vanishes as steps grow).

    path="straight": the straight line (TAIG-S). path="random" (TAIG-R): a random piecewise-linear path of
    `segments` pieces whose turning points, at fractions j/segments of the straight line, are displaced by
    independent uniform noise in [−path_noise, path_noise] per pixel; `steps` is rounded up to a multiple of
    `segments` so that every piece gets the same number of intervals."""
    if path not in ("straight", "random"):
        raise ValueError(f"path must be 'straight' or 'random', got {path!r}")
    if steps < 1 or segments < 1:
        raise ValueError(f"steps and segments must be >= 1, got {steps}, {segments}")
    model = pixel_space(model)
    baseline = torch.zeros_like(images) if baseline is None else baseline.expand_as(images)
    pieces = segments if path == "random" else 1
    corners = [baseline + (j / pieces) * (images - baseline) for j in range(pieces + 1)]
    for j in range(1, pieces):
        corners[j] = corners[j] + path_noise * (torch.rand(images.shape, generator=generator).to(images) * 2 - 1)
    per_piece = -(-steps // pieces)
    points = [corners[0]] + [corners[j] + (k / per_piece) * (corners[j + 1] - corners[j])
                             for j in range(pieces) for k in range(1, per_piece + 1)]
    total = torch.zeros_like(images)
    previous = None
    for k, p in enumerate(points):
        p = p.detach().requires_grad_(True)
        grad = torch.autograd.grad(model(p).gather(1, labels[:, None]).sum(), p)[0]
        if previous is not None:
            total += 0.5 * (previous + grad) * (points[k] - points[k - 1])
        previous = grad
    return total


def taig(surrogate: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int = 20,
         path: str = "straight", alpha: Optional[float] = None, ig_steps: int = 20, segments: int = 4,
         path_noise: float = 0.1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Transferable attack based on integrated gradients (TAIG-S with path="straight", TAIG-R with
    path="random"): `steps` iterations of x ← clip_ε(x − α·sign(IG_label(x))) on the `surrogate`, lowering the
    integrated attribution of the true label; α defaults to 2.5·ε/steps as for PGD."""
    _check(images, labels, eps)
    alpha = 2.5 * eps / steps if alpha is None else alpha
    adv = images.clone()
    for _ in range(steps):
        ig = integrated_gradients(surrogate, adv, labels, steps=ig_steps, path=path, segments=segments,
                                  path_noise=path_noise, generator=generator)
        adv = adv - alpha * ig.sign()
        adv = torch.min(torch.max(adv, images - eps), images + eps).clamp(0, 1).detach()
    return adv


def transfer_success_rate(target: nn.Module, adv: torch.Tensor, images: torch.Tensor,
                          labels: torch.Tensor) -> float:
    """The fraction of the images that pixel-space `target` classified correctly whose adversarial versions it
    misclassifies (Table 4); NaN when it classified none correctly."""
    target = pixel_space(target)
    device = model_device(target)
    labels = labels.to(device)
    correct = predictions(target, images.to(device)) == labels
    fooled = predictions(target, adv.to(device)) != labels
    n = int(correct.sum())
    return int((correct & fooled).sum()) / n if n else float("nan")
