"""Paper-style tables across models from a results folder (see runner.py for its layout)."""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
from collections import defaultdict
from typing import Dict, List, Optional

import numpy as np

from . import metrics

COLUMNS = [
    ("IN top-1", "imagenet_top1"), ("IN-A top-1", "a_top1"), ("IN-R top-1", "r_top1"),
    ("IN-Sketch top-1", "sketch_top1"), ("Stylized top-1", "stylized_top1"),
    ("IN-C mean acc", "c_mean_acc"), ("IN-C mean err (unnorm.)", "c_mean_err"), ("IN-C mCE", "c_mce"),
    ("IN-C rel. mCE", "c_rel_mce"), ("IN-O AUPR", "o_aupr"), ("IN-P mean FP", "p_mean_fp"),
    ("IN-P mFR", "p_mfr"), ("IN-P mean T5D", "p_mean_t5d"), ("IN-P mT5D", "p_mt5d"),
    ("IN-9 Original", "in9_original"), ("IN-9 Mixed-Same", "in9_mixed_same"),
    ("IN-9 Mixed-Rand", "in9_mixed_rand"), ("IN-9 BG-Gap", "in9_bg_gap"),
]
NOTES = """Accuracies and errors in percent. IN-C mCE and relative mCE are normalised by AlexNet (published
per-corruption errors; Hendrycks & Dietterich 2019) over the 15 standard corruptions and shown only when all
75 splits are present; "mean err (unnorm.)" is the plain mean error that some tools print as mCE. IN-A/-R use
the 200-class logit subsets; IN-O AUPR uses the 200 ImageNet-O classes with ImageNet-val as in-distribution.
IN-P "mean FP/T5D" are unnormalised (x100); mFR/mT5D divide each perturbation by the --baseline model's value
from its own results (no published AlexNet per-perturbation values are bundled)."""


def load_results(folder: str) -> Dict[str, Dict[str, Dict[str, dict]]]:
    """{model: {benchmark: {split: record}}} of every results file under `folder`."""
    out: Dict[str, Dict[str, Dict[str, dict]]] = defaultdict(lambda: defaultdict(dict))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"results folder not found: {folder}")
    for path in sorted(glob.glob(os.path.join(folder, "*", "*", "*.json"))):
        try:
            with open(path) as f:
                rec = json.load(f)
            key = (rec["model"], rec["benchmark"], rec["split"])
            if not isinstance(rec.get("metrics", {}), dict):
                raise ValueError("metrics is not a mapping")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not a readable results file ({type(exc).__name__}: {exc}); "
                             "delete it and rerun eval to redo that split") from None
        rec["_path"] = path
        out[key[0]][key[1]][key[2]] = rec
    return out


def _top1(rec: Optional[dict]) -> float:
    return 100 * rec["metrics"]["top1"] if rec and "top1" in rec.get("metrics", {}) else math.nan


def _one(bench: Dict[str, dict]) -> Optional[dict]:
    return next(iter(bench.values())) if bench else None


def _scores(rec: dict) -> np.ndarray:
    return np.load(os.path.join(os.path.dirname(rec["_path"]), rec["scores_file"]))["o_logits"]


def p_values(model_results: Dict[str, Dict[str, dict]], key: str) -> Dict[str, float]:
    return {s: r["metrics"][key] for s, r in model_results.get("imagenet-p", {}).items() if key in r.get("metrics", {})}


def summarize(results: Dict, model: str, baseline: Optional[str] = None) -> Dict[str, float]:
    r = results[model]
    row = dict(imagenet_top1=_top1(_one(r.get("imagenet-val", {}))), a_top1=_top1(_one(r.get("imagenet-a", {}))),
               r_top1=_top1(_one(r.get("imagenet-r", {}))), sketch_top1=_top1(_one(r.get("imagenet-sketch", {}))),
               stylized_top1=_top1(_one(r.get("stylized-imagenet", {}))))
    # ImageNet-C
    errors: Dict[str, List[float]] = defaultdict(lambda: [math.nan] * 5)
    for rec in r.get("imagenet-c", {}).values():
        errors[rec["meta"]["corruption"] if "meta" in rec else rec["split"].split("/")[0]][
            int(rec["split"].split("/")[1]) - 1] = rec["metrics"]["error"]
    all_errs = [e for v in errors.values() for e in v if not math.isnan(e)]
    row["c_mean_acc"] = 100 * (1 - float(np.mean(all_errs))) if all_errs else math.nan
    complete = {c: v for c, v in errors.items() if not any(math.isnan(e) for e in v)}
    std = metrics.STANDARD_CORRUPTIONS
    if all(c in complete for c in std):
        row["c_mean_err"] = metrics.unnormalized_mean_error(complete)
        row["c_mce"] = metrics.mce(complete)
        clean = 1 - row["imagenet_top1"] / 100 if not math.isnan(row["imagenet_top1"]) else None
        row["c_rel_mce"] = metrics.relative_mce(complete, clean) if clean is not None else math.nan
    else:
        row["c_mean_err"] = 100 * float(np.mean(all_errs)) if all_errs else math.nan
        row["c_mce"] = row["c_rel_mce"] = math.nan
    # ImageNet-O
    val, o = _one(r.get("imagenet-val", {})), _one(r.get("imagenet-o", {}))
    row["o_aupr"] = (metrics.imagenet_o_aupr(_scores(val), _scores(o))
                     if val and o and "scores_file" in val and "scores_file" in o else math.nan)
    # ImageNet-P
    fp, t5 = p_values(r, "flip_probability"), p_values(r, "top5_distance")
    row["p_mean_fp"] = 100 * float(np.mean(list(fp.values()))) if fp else math.nan
    row["p_mean_t5d"] = float(np.mean(list(t5.values()))) if t5 else math.nan
    row["p_mfr"] = row["p_mt5d"] = math.nan
    if baseline and baseline in results and fp:
        bfp, bt5 = p_values(results[baseline], "flip_probability"), p_values(results[baseline], "top5_distance")
        if all(p in bfp for p in fp):
            row["p_mfr"] = metrics.normalized_mean(fp, bfp)
        if all(p in bt5 for p in t5):
            row["p_mt5d"] = metrics.normalized_mean(t5, bt5)
    # ImageNet-9
    in9 = r.get("imagenet-9", {})
    row["in9_original"] = _top1(in9.get("original"))
    row["in9_mixed_same"] = _top1(in9.get("mixed_same"))
    row["in9_mixed_rand"] = _top1(in9.get("mixed_rand"))
    row["in9_bg_gap"] = (metrics.bg_gap(row["in9_mixed_same"], row["in9_mixed_rand"])
                         if not math.isnan(row["in9_mixed_same"] + row["in9_mixed_rand"]) else math.nan)
    return row


def table(folder: str, fmt: str = "md", baseline: Optional[str] = None) -> str:
    results = load_results(folder)
    if not results:
        raise FileNotFoundError(f"no results files under {folder!r} (expected <model>/<benchmark>/<split>.json)")
    _check_baseline(results, baseline, folder)
    rows = {m: summarize(results, m, baseline) for m in sorted(results)}
    cols = [(name, key) for name, key in COLUMNS if any(not math.isnan(r[key]) for r in rows.values())]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["model"] + [name for name, _ in cols])
        for m, r in rows.items():
            w.writerow([m] + ["" if math.isnan(r[k]) else f"{r[k]:.4f}" for _, k in cols])
        return buf.getvalue()
    if fmt != "md":
        raise ValueError(f"unknown format {fmt!r} (md, csv)")
    lines = ["| model | " + " | ".join(name for name, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    for m, r in rows.items():
        lines.append(f"| {m} | " + " | ".join("—" if math.isnan(r[k]) else f"{r[k]:.2f}" for _, k in cols) + " |")
    return "\n".join(lines) + "\n\n" + NOTES + "\n"


def _check_baseline(results: Dict, baseline: Optional[str], folder: str) -> None:
    if baseline is not None and baseline not in results:
        raise ValueError(f"--baseline {baseline!r} has no results under {folder} (models there: "
                         f"{', '.join(sorted(results))})")


def plot(folder: str, path: str, baseline: Optional[str] = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = load_results(folder)
    _check_baseline(results, baseline, folder)
    rows = {m: summarize(results, m, baseline) for m in sorted(results)}
    keys = [(n, k) for n, k in COLUMNS if k.endswith("top1") or k in ("c_mean_acc", "in9_mixed_rand")]
    keys = [(n, k) for n, k in keys if any(not math.isnan(r[k]) for r in rows.values())]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(keys) * max(1, len(rows)) / 2), 4))
    width = 0.8 / max(1, len(rows))
    for i, (m, r) in enumerate(rows.items()):
        ax.bar([j + i * width for j in range(len(keys))], [r[k] for _, k in keys], width, label=m)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], [n for n, _ in keys], rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def has_results(folder: str) -> bool:
    """Whether `folder` holds any eval results file (<model>/<benchmark>/<split>.json)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"results folder not found: {folder}")
    return bool(glob.glob(os.path.join(folder, "*", "*", "*.json")))
