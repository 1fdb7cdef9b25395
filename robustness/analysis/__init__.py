"""The analysis experiments of the large-kernel robustness papers as library functions (one module per
experiment). Images are (N, 3, H, W) in pixel space [0, 1]; models are timm models, wrapped so that their own
normalisation is applied inside (`pixel_space`). CLI: `lkrobust analyze EXPERIMENT ...`."""

from .attacks import autoattack, fgsm, integrated_gradients, pgd, taig, transfer_success_rate
from .common import PixelSpaceModel, accuracy, pixel_space, pixel_transform
from .erf import area_ratios, effective_receptive_field
from .feature_variance import feature_map_variance
from .frequency import (band_accuracy, band_noise, fourier_basis, fourier_heatmap, fourier_heatmap_row,
                        noise_frequency_sweep, radial_frequency)
from .kernel_distance import kernel_attention_distance, model_kernel_attention
from .lesion import drop_blocks, lesion, residual_blocks
from .occlusion import occlude, occlusion_accuracy, vit_cls_attention

__all__ = [
    "PixelSpaceModel", "accuracy", "area_ratios", "autoattack", "band_accuracy", "band_noise", "drop_blocks",
    "effective_receptive_field", "feature_map_variance", "fgsm", "fourier_basis", "fourier_heatmap",
    "fourier_heatmap_row", "integrated_gradients", "kernel_attention_distance", "lesion", "model_kernel_attention",
    "noise_frequency_sweep", "occlude", "occlusion_accuracy", "pgd", "pixel_space", "pixel_transform",
    "radial_frequency", "residual_blocks", "taig", "transfer_success_rate", "vit_cls_attention",
]
