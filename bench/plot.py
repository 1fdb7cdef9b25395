"""Speed-up against PyTorch's faster layout versus kernel size, one panel per pass, one line per
(implementation, layout, dtype); log scale."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Dict, Sequence

from .kernels import PASSES, Row


def plot_speedups(rows: Sequence[Row], path: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [r for r in rows if r.shape.startswith("sweep") and r.impl != "torch"]
    passes = [p for p in PASSES if any(r.pass_ == p for r in sweep)]
    if not passes:
        raise ValueError("no sweep rows to plot (run with --shapes sweep)")
    fig, axes = plt.subplots(1, len(passes), figsize=(4.2 * len(passes), 3.8), squeeze=False, sharey=True)
    for ax, pass_ in zip(axes[0], passes):
        lines: Dict[tuple, list] = defaultdict(list)
        for r in sweep:
            if r.pass_ != pass_:
                continue
            # Against PyTorch's faster layout: the smaller of the two speed-ups (NaN if either is missing).
            best = min(r.speedup_vs_torch_nchw, r.speedup_vs_torch_channels_last)
            if not math.isnan(best):
                lines[(r.impl, r.layout, r.dtype)].append((r.k, best))
        for (impl, layout, dtype), pts in sorted(lines.items()):
            pts.sort()
            ax.plot([k for k, _ in pts], [s for _, s in pts], marker="o", label=f"{impl} {layout} {dtype}")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ks = sorted({r.k for r in sweep})
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_title(pass_)
        ax.set_xlabel("kernel size k (k×k)")
    axes[0][0].set_ylabel("speed-up vs faster PyTorch layout")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    """`python -m bench.plot RESULTS.json OUT.png`: plot an existing results file."""
    import sys

    from .results import load

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m bench.plot RESULTS.json OUT.png", file=sys.stderr)
        return 2
    env, rows = load(argv[0])
    print(f"wrote {plot_speedups(rows, argv[1], env['device'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
