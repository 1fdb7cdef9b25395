"""Tables and paper-style figures of the analysis results (`lkrobust analyze`) across models.

Results live at `<folder>/<model>/analysis/<experiment>/<point>.json` (see analyze.py). One table per
experiment present; figures are written beside the report's `--plot` file as `<stem>-<experiment>.png`."""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

import numpy as np

ORDER = ("occlusion", "fgsm", "pgd", "autoattack", "taig", "lesion", "noise-frequency", "fourier-heatmap",
         "kernel-distance", "feature-variance", "erf")


def load_analysis(folder: str) -> Dict[str, Dict[str, List[dict]]]:
    """{experiment: {model: [point records]}}; a damaged file is named, not skipped silently."""
    out: Dict[str, Dict[str, List[dict]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(glob.glob(os.path.join(folder, "*", "analysis", "*", "*.json"))):
        try:
            with open(path) as f:
                rec = json.load(f)
            rec["model"], rec["experiment"], rec["point"], rec["result"]  # noqa: B018  (required fields)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not a readable analysis results file ({type(exc).__name__}: {exc}); "
                             "delete it and rerun analyze to redo that point") from None
        rec["_path"] = path
        out[rec["experiment"]][rec["model"]].append(rec)
    return out


def _pct(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _render(title: str, header: Sequence[str], rows: List[Sequence[str]], fmt: str, note: str = "") -> str:
    if fmt == "csv":
        buf = io.StringIO()
        buf.write(f"# {title}\n")
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(rows)
        return buf.getvalue() + "\n"
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + ("\n\n" + note if note else "") + "\n\n"


def _sweep(models: Dict[str, List[dict]], row_key, col_key, value, col_name) -> Tuple[List[str], List[list]]:
    """A table with a row per row_key(rec) and a column per col_key(rec)."""
    cells, cols = defaultdict(dict), set()
    for recs in models.values():
        for rec in recs:
            cells[row_key(rec)][col_key(rec)] = value(rec)
            cols.add(col_key(rec))
    cols = sorted(cols)
    header = ["model"] + [col_name(c) for c in cols]
    rows = [[r] + [cells[r].get(c, "—") for c in cols] for r in sorted(cells)]
    return header, rows


def _eps(x: float) -> str:
    return f"{x * 255:g}/255"


def _tables(exp: str, models: Dict[str, List[dict]]):
    """(title, header, rows, note) of one experiment."""
    top1 = lambda r: _pct(r["result"]["top1"])  # noqa: E731
    if exp == "occlusion":
        h, rows = _sweep(models, lambda r: f"{r['model']} ({r['config']['options']['mode']})",
                         lambda r: r["point"]["ratio"], top1, lambda c: f"{c:g}")
        return "Occlusion: top-1 (%) vs fraction occluded", h, rows, "Patches of 16x16 set to black."
    if exp in ("fgsm", "autoattack"):
        h, rows = _sweep(models, lambda r: r["model"], lambda r: r["point"]["eps"], top1, _eps)
        return f"{exp.upper() if exp == 'fgsm' else 'AutoAttack'}: top-1 (%) vs L-inf eps", h, rows, ""
    if exp == "pgd":
        h, rows = _sweep(models, lambda r: f"{r['model']} eps {_eps(r['point']['eps'])}",
                         lambda r: r["point"]["steps"], top1, lambda c: f"{c} steps")
        return "PGD: top-1 (%) vs steps", h, rows, "Step 2.5*eps/steps unless --alpha was given."
    if exp == "taig":
        h, rows = _sweep(models, lambda r: f"{r['model']} <- {r['result']['surrogate']}",
                         lambda r: r["point"]["eps"], lambda r: _pct(r["result"]["success_rate"]), _eps)
        return ("TAIG transfer success rate (%) (target <- surrogate)", h, rows,
                "Fraction of the images the target classified correctly that the adversarial versions fool.")
    if exp == "lesion":
        h, rows = _sweep(models, lambda r: r["model"], lambda r: r["result"]["fraction"],
                         lambda r: f"{_pct(r['result']['mean'])} ({_pct(r['result']['min'])}–"
                                   f"{_pct(r['result']['max'])})", lambda c: f"{c:.2f}")
        return "Lesion: top-1 (%) mean (min–max) vs fraction of blocks dropped", h, rows, ""
    if exp == "noise-frequency":
        h, rows = _sweep(models, lambda r: r["model"], lambda r: r["point"]["low"],
                         lambda r: _pct(r["result"]["drop"]), lambda c: f"{c:g}π")
        return ("Band noise: top-1 drop (points) per frequency band [low, low+w)·π", h, rows,
                "Normalised radial frequency, 1 = Nyquist; L2 norm of the noise per image as run (--l2-eps).")
    if exp == "fourier-heatmap":
        rows = []
        for m, recs in sorted(models.items()):
            errors = [e for r in recs for e in r["result"]["errors"]]
            rows.append([m, len(recs), _pct(float(np.mean(errors))), _pct(float(np.max(errors)))])
        return "Fourier heat map: error (%) over the basis perturbations", ["model", "rows", "mean", "max"], rows, ""
    if exp == "kernel-distance":
        rows = []
        for m, recs in sorted(models.items()):
            for layer in recs[0]["result"]["layers"]:
                d = np.array(layer["distances"], dtype=float)
                rows.append([m, layer["name"], "x".join(map(str, layer["kernel_size"])), f"{np.nanmean(d):.2f}",
                             f"{np.nanmedian(d):.2f}", f"{np.nanmax(d):.2f}"])
        return ("Kernel attention distance (pixels) per depthwise layer",
                ["model", "layer", "kernel", "mean", "median", "max"], rows, "")
    if exp == "feature-variance":
        rows = []
        for m, recs in sorted(models.items()):
            layers = recs[0]["result"]["layers"]
            depth = np.array([entry["depth"] for entry in layers])
            at = [layers[int(np.abs(depth - q).argmin())]["variance"] for q in (0, 0.25, 0.5, 0.75, 1)]
            rows.append([m] + [f"{v:.4g}" for v in at])
        return ("Feature-map variance at normalised depth", ["model", "0", "0.25", "0.5", "0.75", "1"], rows,
                "Spatial variance per image and channel, averaged (see robustness/analysis/feature_variance.py).")
    if exp == "erf":
        rows = [[m] + [_pct(recs[0]["result"]["area_ratio"][t]) for t in ("0.2", "0.3", "0.5", "0.99")]
                for m, recs in sorted(models.items())]
        return ("Effective receptive field: high-contribution area ratio r(t) (%)",
                ["model", "t=20%", "t=30%", "t=50%", "t=99%"], rows, "")
    raise ValueError(f"unknown experiment {exp!r} in the results")


def analysis_tables(folder: str, fmt: str = "md") -> str:
    """One table per experiment present under `folder` ('' when there is none)."""
    if fmt not in ("md", "csv"):
        raise ValueError(f"unknown format {fmt!r} (md, csv)")
    results = load_analysis(folder)
    parts = []
    for exp in [e for e in ORDER if e in results]:
        title, header, rows, note = _tables(exp, results[exp])
        parts.append(_render(title, header, rows, fmt, note))
    return "".join(parts)


# ---- figures ---------------------------------------------------------------------------------------------------
def _line(ax, models, x, y, label=lambda r: r["model"]):
    series = defaultdict(list)
    for recs in models.values():
        for r in recs:
            series[label(r)].append((x(r), y(r)))
    for name, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.legend(fontsize=7)


def _figure(exp: str, models: Dict[str, List[dict]], folder: str):
    import matplotlib.pyplot as plt

    if exp in ("fourier-heatmap", "erf", "kernel-distance"):
        fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.4), squeeze=False)
        for ax, (m, recs) in zip(axes[0], sorted(models.items())):
            ax.set_title(m, fontsize=9)
            if exp == "fourier-heatmap":
                rows = sorted(recs, key=lambda r: r["point"]["u"])
                grid = np.array([r["result"]["errors"] for r in rows])
                half = rows[0]["point"]["u"]
                im = ax.imshow(grid, cmap="jet", vmin=0, vmax=1, extent=[half - .5, -half + .5, -half + .5, half - .5])
                fig.colorbar(im, ax=ax, fraction=0.046)
            elif exp == "erf":
                rec = recs[0]
                with np.load(os.path.join(os.path.dirname(rec["_path"]), rec["arrays_file"])) as z:
                    erf = np.log10(z["erf"] + 1)
                ax.imshow(erf / max(erf.max(), 1e-30), cmap="RdYlGn")
                ax.axis("off")
            else:
                for layer in recs[0]["result"]["layers"]:
                    ax.plot(layer["channel"], layer["distances"], lw=1, label=layer["name"])
                ax.set_xlabel("normalised channel index")
                ax.set_ylabel("kernel attention distance (px)")
        return fig
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if exp == "occlusion":
        _line(ax, models, lambda r: r["point"]["ratio"], lambda r: 100 * r["result"]["top1"],
              lambda r: f"{r['model']} ({r['config']['options']['mode']})")
        ax.set(xlabel="drop ratio", ylabel="top-1 (%)")
    elif exp in ("fgsm", "autoattack"):
        _line(ax, models, lambda r: 255 * r["point"]["eps"], lambda r: 100 * r["result"]["top1"])
        ax.set(xlabel="eps (x/255)", ylabel="top-1 (%)")
    elif exp == "pgd":
        _line(ax, models, lambda r: r["point"]["steps"], lambda r: 100 * r["result"]["top1"],
              lambda r: f"{r['model']} eps {_eps(r['point']['eps'])}")
        ax.set(xlabel="PGD steps", ylabel="top-1 (%)")
    elif exp == "taig":
        _line(ax, models, lambda r: 255 * r["point"]["eps"], lambda r: 100 * r["result"]["success_rate"],
              lambda r: f"{r['model']} <- {r['result']['surrogate']}")
        ax.set(xlabel="eps (x/255)", ylabel="transfer success rate (%)")
    elif exp == "lesion":
        for m, recs in sorted(models.items()):
            recs = sorted(recs, key=lambda r: r["result"]["fraction"])
            x = [r["result"]["fraction"] for r in recs]
            ax.plot(x, [100 * r["result"]["mean"] for r in recs], marker="o", label=m)
            ax.fill_between(x, [100 * r["result"]["min"] for r in recs], [100 * r["result"]["max"] for r in recs],
                            alpha=0.2)
        ax.legend(fontsize=7)
        ax.set(xlabel="fraction of blocks dropped", ylabel="top-1 (%)")
    elif exp == "noise-frequency":
        _line(ax, models, lambda r: (r["point"]["low"] + r["point"]["high"]) / 2, lambda r: 100 * r["result"]["drop"])
        ax.set(xlabel="noise frequency (x π)", ylabel="top-1 drop (points)")
    elif exp == "feature-variance":
        for m, recs in sorted(models.items()):
            layers = recs[0]["result"]["layers"]
            ax.plot([e["depth"] for e in layers], [e["variance"] for e in layers], marker=".", label=m)
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.set(xlabel="normalised depth", ylabel="feature-map variance")
    return fig


def analysis_plots(folder: str, path: str) -> List[str]:
    """A figure per experiment present, as `<stem>-<experiment>.png` beside `path`; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = load_analysis(folder)
    stem = os.path.splitext(path)[0]
    written = []
    for exp in [e for e in ORDER if e in results]:
        fig = _figure(exp, results[exp], folder)
        fig.tight_layout()
        out = f"{stem}-{exp}.png"
        fig.savefig(out, dpi=120)
        plt.close(fig)
        written.append(out)
    return written
