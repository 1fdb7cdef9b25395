"""lkconv: fast large-kernel depthwise convolution for PyTorch.

    import lkconv
    y = lkconv.depthwise_conv2d(x, w, b, padding="same")   # == F.conv2d(x, w, b, padding="same", groups=C)
    conv = lkconv.LKConv2d(128, 128, 31, padding=15, groups=128)
    model = lkconv.convert_model(model)                      # swap eligible depthwise convs in place
"""

from .backends import BackendNotSupportedError
from .convert import convert_model, to_stock
from .dispatch import available_backends, explain, use_backend
from .functional import depthwise_conv2d, depthwise_conv2d_reference
from .modules import LKConv2d

__version__ = "0.1.0"

__all__ = [
    "BackendNotSupportedError",
    "LKConv2d",
    "available_backends",
    "convert_model",
    "to_stock",
    "depthwise_conv2d",
    "depthwise_conv2d_reference",
    "explain",
    "use_backend",
]
