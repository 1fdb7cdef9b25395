"""timm registration: RepLKNet variants with the released pretrained configs, and the ConvNeXt-T
kernel-size ablation family. `import lkconv.models` registers them."""

from __future__ import annotations

from typing import Optional

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..convert import convert_model
from .checkpoint import checkpoint_filter_fn
from .replknet import RepLKNet

# Architectures of the release (large kernels per stage, blocks per stage, widths, small kernel, dw ratio).
ARCHS = {
    "replknet_31b": dict(large_kernel_sizes=[31, 29, 27, 13], layers=[2, 2, 18, 2], channels=[128, 256, 512, 1024],
                         small_kernel=5),
    "replknet_31l": dict(large_kernel_sizes=[31, 29, 27, 13], layers=[2, 2, 18, 2], channels=[192, 384, 768, 1536],
                         small_kernel=5),
    # The paper's kernel ablation (Table 5, "RepLKNet-3B"): RepLKNet-31B with every large kernel 3x3 (the 5x5
    # parallel branch cannot sit inside a 3x3 kernel, so there is none).
    "replknet_3b": dict(large_kernel_sizes=[3, 3, 3, 3], layers=[2, 2, 18, 2], channels=[128, 256, 512, 1024],
                        small_kernel=None),
    "replknet_xl": dict(large_kernel_sizes=[27, 27, 27, 13], layers=[2, 2, 18, 2], channels=[256, 512, 1024, 2048],
                        small_kernel=None, dw_ratio=1.5),
}


def _cfg(file: str = "", input_size=(3, 224, 224), crop_pct: float = 0.875, num_classes: int = 1000, **kwargs):
    return dict(file=file, num_classes=num_classes, input_size=input_size, pool_size=(input_size[1] // 32,) * 2,
                crop_pct=crop_pct, interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                first_conv="stem.0.conv", classifier="head", license="mit", **kwargs)


# Weights come from files the user has (nothing is downloaded): pass
# pretrained_cfg_overlay=dict(file="RepLKNet-31B_ImageNet-1K_224.pth") to timm.create_model.
default_cfgs = generate_default_cfgs({
    "replknet_31b.in1k": _cfg(),
    "replknet_31b.in1k_384": _cfg(input_size=(3, 384, 384), crop_pct=1.0),
    "replknet_31b.in22k_ft_in1k": _cfg(),
    "replknet_31b.in22k_ft_in1k_384": _cfg(input_size=(3, 384, 384), crop_pct=1.0),
    "replknet_31b.in22k": _cfg(num_classes=21841),
    "replknet_31l.in22k_ft_in1k_384": _cfg(input_size=(3, 384, 384), crop_pct=1.0),
    "replknet_31l.in22k": _cfg(num_classes=21841, input_size=(3, 384, 384), crop_pct=1.0),
    "replknet_3b.untrained": _cfg(),
    "replknet_xl.md73m_ft_in1k_320": _cfg(input_size=(3, 320, 320), crop_pct=1.0),
})


def _create_replknet(variant: str, pretrained: bool = False, **kwargs) -> RepLKNet:
    arch = dict(ARCHS[variant.split(".")[0]])
    arch.setdefault("drop_path_rate", kwargs.pop("drop_path_rate", 0.0))
    arch.update(kwargs)
    if arch.get("small_kernel") == 0:  # "no small branch": timm's create_model drops kwargs that are None
        arch["small_kernel"] = None
    return build_model_with_cfg(RepLKNet, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)), **arch)


@register_model
def replknet_31b(pretrained: bool = False, **kwargs) -> RepLKNet:
    return _create_replknet("replknet_31b", pretrained, **kwargs)


@register_model
def replknet_31l(pretrained: bool = False, **kwargs) -> RepLKNet:
    return _create_replknet("replknet_31l", pretrained, **kwargs)


@register_model
def replknet_3b(pretrained: bool = False, **kwargs) -> RepLKNet:
    return _create_replknet("replknet_3b", pretrained, **kwargs)


@register_model
def replknet_xl(pretrained: bool = False, **kwargs) -> RepLKNet:
    return _create_replknet("replknet_xl", pretrained, **kwargs)


# ---- ConvNeXt at any kernel size ----------------------------------------------------------------------
def create_model(name: str, kernel_size=7, min_kernel_size: int = 7, **kwargs) -> nn.Module:
    """Any timm model whose constructor takes `kernel_sizes` (ConvNeXt and friends), built with depthwise
    kernels of `kernel_size` (one int, or one per stage) and converted so those convolutions run on lkconv."""
    import timm

    try:
        model = timm.create_model(name, kernel_sizes=kernel_size, **kwargs)
    except TypeError as exc:
        raise ValueError(f"timm model {name!r} does not take kernel_sizes ({exc})") from None
    return convert_model(model, min_kernel_size=min_kernel_size)


ABLATION_KERNELS = (3, 7, 13, 31, 51)


def _convnext_tiny_k(kernel_size: int, pretrained: bool, **kwargs) -> nn.Module:
    if pretrained and kernel_size != 7:
        raise ValueError(f"no released weights for ConvNeXt-T with k={kernel_size}; pass a checkpoint instead")
    return create_model("convnext_tiny", kernel_size=kernel_size, pretrained=pretrained, **kwargs)


@register_model
def convnext_tiny_k3(pretrained: bool = False, **kwargs) -> nn.Module:
    return _convnext_tiny_k(3, pretrained, **kwargs)


@register_model
def convnext_tiny_k7(pretrained: bool = False, **kwargs) -> nn.Module:
    return _convnext_tiny_k(7, pretrained, **kwargs)


@register_model
def convnext_tiny_k13(pretrained: bool = False, **kwargs) -> nn.Module:
    return _convnext_tiny_k(13, pretrained, **kwargs)


@register_model
def convnext_tiny_k31(pretrained: bool = False, **kwargs) -> nn.Module:
    return _convnext_tiny_k(31, pretrained, **kwargs)


@register_model
def convnext_tiny_k51(pretrained: bool = False, **kwargs) -> nn.Module:
    return _convnext_tiny_k(51, pretrained, **kwargs)


def ablation_model_names(prefix: Optional[str] = "convnext_tiny") -> list:
    return [f"{prefix}_k{k}" for k in ABLATION_KERNELS]
