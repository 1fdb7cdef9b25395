"""Models on lkconv: RepLKNet (official keys, re-parameterisation) and ConvNeXt at any kernel size.

`import lkconv.models` registers `replknet_31b`, `replknet_31l`, `replknet_xl` and the ConvNeXt-T
kernel-size family `convnext_tiny_k{3,7,13,31,51}` with timm.
"""

from .checkpoint import load_checkpoint, unwrap_state_dict
from .decomposed import DecomposedLargeKernelConv
from .registry import ABLATION_KERNELS, ablation_model_names, create_model
from .replknet import ConvFFN, RepLKBlock, RepLKNet, ReparamLargeKernelConv, reparameterize_model

__all__ = [
    "ABLATION_KERNELS",
    "ConvFFN",
    "DecomposedLargeKernelConv",
    "RepLKBlock",
    "RepLKNet",
    "ReparamLargeKernelConv",
    "ablation_model_names",
    "create_model",
    "load_checkpoint",
    "reparameterize_model",
    "unwrap_state_dict",
]
