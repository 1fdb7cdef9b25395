"""The compiled extension `lkconv._C`, or the reason it could not be loaded."""

import importlib

try:
    _C = importlib.import_module("lkconv._C")
    LOAD_ERROR = None
except ImportError as exc:  # not built, or built against another torch
    _C = None
    LOAD_ERROR = f"lkconv._C did not load ({exc}); build it with `pip install --no-build-isolation -e .`"


def with_cuda() -> bool:
    """Whether the extension was compiled with the CUDA kernels."""
    return bool(_C is not None and getattr(_C, "with_cuda", False))
