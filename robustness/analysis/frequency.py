"""Noise by frequency (the paper's Fig. 8) and the Fourier heat map (Yin et al. 2019, "A Fourier perspective on
model robustness"): how accuracy falls under additive noise confined to one spatial-frequency band.

Definitions. For an H×W image, the 2-D DFT frequency (f_y, f_x) in cycles per pixel lies in [−½, ½); its
*normalised radial frequency* is ρ = √(f_y² + f_x²) / ½, so ρ = 0 is DC and ρ = 1 the Nyquist frequency along
an axis (π rad/pixel); diagonal frequencies reach ρ = √2 and belong to no band of [0, 1). Band noise for
[low, high): i.i.d. Gaussian noise per channel, its spectrum kept where low ≤ ρ < high (a mask symmetric under
f → −f, so the result stays real), then scaled so that each image's noise (all channels together) has L2 norm
`eps` in [0, 1] pixel units. Perturbed images are clipped to [0, 1]."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from .common import accuracy


def radial_frequency(h: int, w: int) -> torch.Tensor:
    """(H, W) normalised radial frequency ρ of each DFT coefficient (torch.fft layout)."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :]
    return torch.sqrt(fy ** 2 + fx ** 2) / 0.5


def band_noise(shape: Sequence[int], low: float, high: float, eps: float,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Noise of `shape` (N, C, H, W) whose spectrum lies in the band low ≤ ρ < high (see the module docstring),
    each image scaled to L2 norm `eps`."""
    if len(shape) != 4:
        raise ValueError(f"shape must be (N, C, H, W), got {tuple(shape)}")
    if not 0 <= low < high:
        raise ValueError(f"need 0 <= low < high, got low={low}, high={high}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    n, c, h, w = shape
    band = (radial_frequency(h, w) >= low) & (radial_frequency(h, w) < high)
    if not band.any():
        raise ValueError(f"no DFT frequency of a {h}x{w} image lies in the band [{low}, {high})")
    white = torch.randn(n, c, h, w, generator=generator, dtype=torch.float64)
    noise = torch.fft.ifft2(torch.fft.fft2(white) * band).real
    norm = noise.flatten(1).norm(dim=1).clamp_min(1e-300).view(n, 1, 1, 1)
    return (noise * (eps / norm)).float()


def default_bands(width: float = 0.1) -> List[Tuple[float, float]]:
    """Windows [0, w), [w, 2w), ... covering [0, 1)."""
    count = round(1 / width)
    return [(round(i * width, 6), round((i + 1) * width, 6)) for i in range(count)]


def band_accuracy(model, loader, low: float, high: float, eps: float, seed: int = 0) -> float:
    """Top-1 accuracy of pixel-space `model` under band noise [low, high) of L2 norm `eps` (one point of
    Fig. 8; the noise is drawn from `seed`, so every model sees the same noise)."""
    generator = torch.Generator().manual_seed(seed)

    def perturb(images, labels):
        noise = band_noise(images.shape, low, high, eps, generator).to(images)
        return (images + noise).clamp(0, 1)

    return accuracy(model, loader, perturb)


def noise_frequency_sweep(model, loader, eps: float, bands: Optional[Sequence[Tuple[float, float]]] = None,
                          seed: int = 0) -> List[dict]:
    """Accuracy and accuracy drop (clean − noisy) for each band, 0.1-wide windows over [0, 1) by default."""
    clean = accuracy(model, loader)
    rows = []
    for low, high in bands or default_bands():
        acc = band_accuracy(model, loader, low, high, eps, seed)
        rows.append(dict(low=low, high=high, accuracy=acc, clean=clean, drop=clean - acc))
    return rows


def fourier_basis(h: int, w: int, u: int, v: int) -> torch.Tensor:
    """(H, W) real Fourier basis image of frequency (u, v) (in DFT index units, may be negative), L2 norm 1:
    the inverse DFT of unit impulses at (u, v) and (−u, −v)."""
    spectrum = torch.zeros(h, w, dtype=torch.complex128)
    spectrum[u % h, v % w] = 1
    spectrum[-u % h, -v % w] = 1
    basis = torch.fft.ifft2(spectrum).real
    return (basis / basis.norm()).float()


def fourier_heatmap_row(model, loader, eps: float, u: int, size: int, seed: int = 0) -> List[float]:
    """Errors (1 − accuracy) for the basis perturbations (u, v), v = −size//2 ... size − size//2 − 1: images
    + r·eps·U_{u,v} with r ∈ {−1, 1} drawn per image and channel (Yin et al.), clipped to [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    row = []
    for v in range(-(size // 2), size - size // 2):
        def perturb(images, labels, v=v):
            basis = fourier_basis(images.shape[-2], images.shape[-1], u, v).to(images)
            sign = torch.randint(0, 2, images.shape[:2], generator=generator).to(images) * 2 - 1
            return (images + eps * sign[..., None, None] * basis).clamp(0, 1)

        row.append(1 - accuracy(model, loader, perturb))
    return row


def fourier_heatmap(model, loader, eps: float, size: int = 15, seed: int = 0) -> torch.Tensor:
    """(size, size) error for each single Fourier basis perturbation of L2 norm `eps`, zero frequency at the
    centre (index size//2), rows u and columns v from −size//2 upwards."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    return torch.tensor([fourier_heatmap_row(model, loader, eps, u, size, seed)
                         for u in range(-(size // 2), size - size // 2)])
