"""robustness: evaluate any timm model (lkconv's large-kernel models included) on the ImageNet robustness
benchmarks with correctly computed metrics. CLI: `lkrobust` / `python -m robustness`."""

__all__ = ["data", "metrics", "report", "runner"]
