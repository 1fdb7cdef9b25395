"""Results files (JSON with the environment, plus a CSV beside it), comparisons and tables."""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from typing import Dict, Iterable, List, Sequence, Tuple

from .kernels import Row

REGRESSION = 1.10  # new/old time above this is flagged


def save(path: str, env: Dict[str, str], rows: Sequence[Row]) -> Tuple[str, str]:
    """Write `path` (JSON) and the same rows as CSV next to it; both atomically."""
    data = {"environment": env, "rows": [r.as_dict() for r in rows]}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    csv_path = os.path.splitext(path)[0] + ".csv"
    _atomic_write(path, json.dumps(data, indent=1, allow_nan=True))
    fields = list(rows[0].as_dict()) if rows else []
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow(r.as_dict())
    _publish(f.name, csv_path)
    return path, csv_path


def _atomic_write(path: str, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(os.path.abspath(path)), delete=False) as f:
        f.write(text)
    _publish(f.name, path)


def _publish(tmp: str, path: str) -> None:
    """Rename a finished temporary file into place with the mode the user's umask gives new files (temporary
    files are created 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def load(path: str) -> Tuple[Dict[str, str], List[Row]]:
    with open(path) as f:
        data = json.load(f)
    rows = []
    for d in data["rows"]:
        d = dict(d)
        d["pass_"] = d.pop("pass")
        rows.append(Row(**d))
    return data["environment"], rows


def _fmt(v: float, digits: int = 2) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def table(rows: Iterable[Row], device_type: str = "cpu", markdown: bool = False) -> str:
    """One line per row: time, spread, FLOP rates, speed-ups, error."""
    unit, scale = ("GFLOP/s", 1e9) if device_type == "cpu" else ("TFLOP/s", 1e12)
    head = ["shape", "k", "dtype", "pass", "impl", "layout", "median ms", "p20–p80 ms", f"nominal {unit}",
            f"useful {unit}", "% of peak", "× torch NCHW", "× torch CL", "max rel err"]
    lines = []
    for r in rows:
        lines.append([r.shape, str(r.k), r.dtype, r.pass_, r.impl, r.layout, _fmt(r.median_ms),
                      f"{_fmt(r.p20_ms)}–{_fmt(r.p80_ms)}", _fmt(r.rate(False) / scale, 1),
                      _fmt(r.rate(True) / scale, 1), _fmt(100 * r.peak_fraction, 0), _fmt(r.speedup_vs_torch_nchw),
                      _fmt(r.speedup_vs_torch_channels_last), f"{r.max_rel_err:.1e}" + (" " + r.note if r.note else "")])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*line) for line in lines])


def compare(new: Sequence[Row], old: Sequence[Row]) -> Tuple[str, int]:
    """Per matching row, new time / old time; rows slower by more than 10% are flagged. Returns the text and
    the number of regressions."""
    old_by_key = {r.key(): r for r in old}
    lines = [f"{'shape':<22} {'k':>3} {'dtype':<9} {'pass':<16} {'impl':<14} {'layout':<14} "
             f"{'old ms':>9} {'new ms':>9} {'new/old':>8}"]
    regressions = 0
    for r in new:
        o = old_by_key.get(r.key())
        if o is None or not (o.median_ms > 0) or not (r.median_ms > 0):
            continue
        ratio = r.median_ms / o.median_ms
        flag = ""
        if ratio > REGRESSION:
            flag = "  REGRESSION"
            regressions += 1
        lines.append(f"{r.shape:<22} {r.k:>3} {r.dtype:<9} {r.pass_:<16} {r.impl:<14} {r.layout:<14} "
                     f"{o.median_ms:>9.3f} {r.median_ms:>9.3f} {ratio:>8.2f}{flag}")
    if len(lines) == 1:
        lines.append("(no rows in common)")
    return "\n".join(lines), regressions
