"""robustness: evaluate any timm model (lkconv's large-kernel models included) on the ImageNet robustness
benchmarks with correctly computed metrics, and run the analysis experiments of the large-kernel robustness
papers. CLI: `lkrobust` / `python -m robustness`."""

__all__ = ["analysis", "analysis_report", "analyze", "data", "metrics", "report", "runner"]
