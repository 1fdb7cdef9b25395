"""ImageNet-C-style corruptions of any image folder, written in the ImageNet-C layout
`<dst>/<corruption>/<severity>/<relative path>`.

The corruptions come from the `imagecorruptions` package (the ImageNet-C functions, 15 standard + 4 extra,
severities 1-5); its command line cannot produce severity 5, so we call its functions. Its last release
(1.1.2, 2020) no longer runs as is with current libraries: it imports `pkg_resources` (gone from recent
setuptools), passes `multichannel=True` to scikit-image's gaussian (removed; now `channel_axis`), and its fog's
plasma fractal uses `np.float_` (removed in NumPy 2). `_library()` adapts exactly these three points — a
minimal `resource_filename`, a gaussian wrapper, and our own plasma fractal — and uses everything else as
published. Corrupting in memory (and saving as PNG) differs slightly from the released ImageNet-C files, which
were saved as JPEG from a different resize; use the release to compare with published numbers.
"""

from __future__ import annotations

import os
from typing import Iterable, List, Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from .data import IMAGE_EXTENSIONS
from .metrics import EXTRA_CORRUPTIONS, STANDARD_CORRUPTIONS
from .runner import _atomic


def plasma_fractal(mapsize: int = 256, wibbledecay: float = 3, rng=None) -> np.ndarray:
    """A (mapsize x mapsize) diamond-square fractal in [0, 1] (wrapping at the borders), as ImageNet-C's fog
    uses: each halving of the step averages the neighbours and adds noise whose range shrinks by
    `wibbledecay`. `mapsize` must be a power of two."""
    rng = np.random if rng is None else rng
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    a = np.zeros((mapsize, mapsize), dtype=np.float64)
    step, wibble = mapsize, 100.0
    while step >= 2:
        half = step // 2
        corners = a[::step, ::step]
        # Diamond step: square centres from their four corners.
        centres = (corners + np.roll(corners, -1, 0) + np.roll(corners, -1, 1) + np.roll(corners, (-1, -1), (0, 1))) / 4
        a[half::step, half::step] = centres + rng.uniform(-wibble, wibble, centres.shape)
        centres = a[half::step, half::step]
        # Square step: edge midpoints from their two corners and two centres.
        top = (corners + np.roll(corners, -1, 1) + centres + np.roll(centres, 1, 0)) / 4
        left = (corners + np.roll(corners, -1, 0) + centres + np.roll(centres, 1, 1)) / 4
        a[::step, half::step] = top + rng.uniform(-wibble, wibble, top.shape)
        a[half::step, ::step] = left + rng.uniform(-wibble, wibble, left.shape)
        step, wibble = half, wibble / wibbledecay
    a -= a.min()
    return a / max(a.max(), 1e-12)


_adapted = None


def _library():
    """imagecorruptions' corruption functions, adapted to current setuptools, scikit-image and NumPy."""
    global _adapted
    if _adapted is not None:
        return _adapted
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("imagecorruptions") is None:
        raise ImportError("lkrobust corrupt needs the imagecorruptions package: pip install imagecorruptions")
    try:
        import pkg_resources  # noqa: F401
    except ImportError:  # setuptools >= 81: provide the one function imagecorruptions uses
        shim = types.ModuleType("pkg_resources")

        def resource_filename(package, name):
            return os.path.join(os.path.dirname(importlib.util.find_spec(package).origin), name)

        shim.resource_filename = resource_filename
        sys.modules["pkg_resources"] = shim
    import imagecorruptions
    from imagecorruptions import corruptions as impl
    from skimage.filters import gaussian

    def gaussian_compat(image, sigma=1, multichannel=None, **kwargs):
        if multichannel:
            kwargs["channel_axis"] = -1
        return gaussian(image, sigma=sigma, **kwargs)

    impl.gaussian = gaussian_compat
    impl.plasma_fractal = plasma_fractal
    _adapted = imagecorruptions
    return imagecorruptions


def corruption_names() -> List[str]:
    return list(STANDARD_CORRUPTIONS) + list(EXTRA_CORRUPTIONS)


def corrupt_image(image: np.ndarray, corruption: str, severity: int) -> np.ndarray:
    """One corrupted copy of an HxWx3 uint8 image."""
    if corruption not in corruption_names():
        raise ValueError(f"unknown corruption {corruption!r}; choose from {', '.join(corruption_names())}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1..5, got {severity}")
    out = _library().corrupt(image, corruption_name=corruption, severity=severity)
    return np.clip(np.asarray(out), 0, 255).astype(np.uint8)


def corrupt_folder(src: str, dst: str, corruptions: Optional[Sequence[str]] = None,
                   severities: Iterable[int] = (1, 2, 3, 4, 5), seed: int = 0) -> dict:
    """Corrupt every image under `src`; existing outputs are kept (resumable). Returns counts."""
    if not os.path.isdir(src):
        raise FileNotFoundError(f"source folder not found: {src}")
    corruptions = list(corruptions or STANDARD_CORRUPTIONS)
    for c in corruptions:
        if c not in corruption_names():
            raise ValueError(f"unknown corruption {c!r}; choose from {', '.join(corruption_names())}")
    severities = list(severities)
    files = sorted(os.path.relpath(os.path.join(d, f), src) for d, _, fs in os.walk(src) for f in fs
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise FileNotFoundError(f"no images under {src}")
    counts = dict(written=0, skipped=0, unreadable=0)
    jobs = [(c, s, f) for c in corruptions for s in severities for f in files]
    for corruption, severity, rel in tqdm(jobs, desc="corrupt", unit="img"):
        out = os.path.join(dst, corruption, str(severity), os.path.splitext(rel)[0] + ".png")
        if os.path.exists(out):
            counts["skipped"] += 1
            continue
        try:
            with Image.open(os.path.join(src, rel)) as im:
                image = np.asarray(im.convert("RGB"))
        except Exception:  # noqa: BLE001  (an unreadable image is counted, not fatal)
            counts["unreadable"] += 1
            continue
        np.random.seed(seed + severity)  # the library draws from numpy's global generator
        result = Image.fromarray(corrupt_image(image, corruption, severity))
        _atomic(out, lambda tmp, image=result: image.save(tmp, format="PNG"))
        counts["written"] += 1
    return counts
