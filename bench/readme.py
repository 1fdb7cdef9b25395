"""`python -m bench.readme`: regenerate README.md's Performance section from bench/results/*.json.

Only measured numbers appear there, each table with its device, date, commit and command; nothing is typed by
hand. The static predictions of `python -m bench.sass` (results files of kind "predicted (static)") go to their
own section (between the static:begin/end markers), never into the measured tables.
"""

from __future__ import annotations

import glob
import json
import math
import os
import sys
from collections import defaultdict
from typing import List

from . import results
from .environment import command_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- perf:begin -->", "<!-- perf:end -->"
STATIC_BEGIN, STATIC_END = "<!-- static:begin -->", "<!-- static:end -->"
PASS_NAMES = {"forward": "fwd", "backward_input": "bwd-in", "backward_weight": "bwd-w", "fwd_bwd": "fwd+bwd"}


def _command(env) -> str:
    """The recorded command in its `python -m` form (older files recorded the module's file path)."""
    parts = env["command"].split()
    if parts and parts[0].startswith("python") and len(parts) > 1 and parts[1].endswith(".py"):
        return command_line(parts[1:])
    return env["command"]


def _f(v: float, fmt: str = ".1f") -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def kernel_section(path: str) -> str:
    env, rows = results.load(path)
    rel = os.path.relpath(path, ROOT)
    out = [f"### {env['device']} — kernels", "",
           f"Measured {env['date'][:10]}, torch {env['torch']}, lkconv `{env['lkconv_commit'][:12]}`, "
           f"`{_command(env)}` ([results]({rel})).", ""]
    if "cpu_fma_peak_gflops" in env:
        out += [f"Measured float32 FMA peak {env['cpu_fma_peak_gflops']} GFLOP/s ({env.get('cpu_isa', '?')}, "
                f"{env['cpu_threads']} threads); 1-minute load average {env['load_average_before']} before the run "
                f"(the after value, {env.get('load_average_after', '?')}, includes the run itself)."
                + (" **The machine was busy before the run: speed-ups are overstated.**" if env.get("busy") else ""),
                ""]
    torch_ms = {(r.shape, r.k, r.dtype, r.pass_, r.layout): r.median_ms for r in rows if r.impl == "torch"}
    groups = defaultdict(list)
    for r in rows:
        if r.impl != "torch" and not r.note.startswith("refused"):  # a backend that declines the call by design
            groups[(r.shape, r.k, r.dtype, r.impl)].append(r)
    unit = "GFLOP/s" if "CPU" in env["device"] else "TFLOP/s"
    scale = 1e9 if unit == "GFLOP/s" else 1e12
    out.append(f"Time in ms (lkconv / PyTorch's faster layout), speed-up over PyTorch's faster layout, and "
               f"useful {unit} of lkconv, per caller layout. `lkconv-auto` is what a user gets (the dispatcher's "
               f"choice, PyTorch's own kernel where that is faster); `lkconv-cpu` forces lkconv's kernels:")
    out.append("")
    peak = "cpu_fma_peak_gflops" in env
    out.append("| shape | k | dtype | impl | layout | pass | lkconv ms | PyTorch best ms | speed-up | useful "
               f"{unit} |" + (" % of peak |" if peak else "") + " max rel err |")
    out.append("|---|---|---|---|---|---|---|---|---|---|" + ("---|" if peak else "") + "---|")
    for (shape, k, dtype, impl), rs in groups.items():
        for r in rs:
            best = min(torch_ms.get((shape, k, dtype, r.pass_, lay), math.inf) for lay in ("nchw", "channels_last"))
            speed = best / r.median_ms if r.median_ms == r.median_ms and r.median_ms > 0 else math.nan
            out.append(f"| {shape} | {k} | {dtype} | {impl} | {r.layout} | {PASS_NAMES.get(r.pass_, r.pass_)} | "
                       f"{_f(r.median_ms, '.2f')} | {_f(best, '.2f')} | {_f(speed, '.2f')}× | "
                       f"{_f(r.rate(True) / scale)} |" + (f" {_f(100 * r.peak_fraction, '.0f')} |" if peak else "")
                       + f" {r.max_rel_err:.1e} |")
    png = os.path.splitext(path)[0] + ".png"
    if os.path.exists(png):
        out += ["", f"![speed-up vs kernel size]({os.path.relpath(png, ROOT)})"]
    return "\n".join(out)


def model_section(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    env, rows = data["environment"], data["rows"]
    out = [f"### {env['device']} — models", "",
           f"Measured {env['date'][:10]}, torch {env['torch']}, lkconv `{env['lkconv_commit'][:12]}`, "
           f"`{_command(env)}` ([results]({os.path.relpath(path, ROOT)})).", ""]
    if "load_average_before" in env:
        out += [f"1-minute load average {env['load_average_before']} before the run."
                + (" **The machine was busy: speed-ups are overstated.**" if env.get("busy") else ""), ""]
    if all("layout" in r for r in rows):
        out += ["Each side in its faster layout (both measured):", "",
                "| model | k | mode | batch | image | stock img/s | stock layout | lkconv img/s | lkconv layout | "
                "speed-up |", "|---|---|---|---|---|---|---|---|---|---|"]
        groups = defaultdict(list)
        for r in rows:
            groups[(r["model"], r["k"], r["mode"], r["batch"], r["image_size"])].append(r)
        for (model, k, mode, batch, image), rs in groups.items():
            stock = max((r for r in rs if r["variant"] == "stock"), key=lambda r: r["images_per_s"])
            lk = max((r for r in rs if r["variant"] == "lkconv"), key=lambda r: r["images_per_s"])
            out.append(f"| {model} | {k} | {mode} | {batch} | {image} | {stock['images_per_s']:.2f} | "
                       f"{stock['layout']} | {lk['images_per_s']:.2f} | {lk['layout']} | "
                       f"{lk['images_per_s'] / stock['images_per_s']:.2f}× |")
        return "\n".join(out)
    out += ["| model | k | mode | batch | image | stock img/s | lkconv img/s | speed-up |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["variant"] != "lkconv":
            continue
        stock = next(s for s in rows if s["variant"] == "stock" and
                     (s["model"], s["k"], s["mode"]) == (r["model"], r["k"], r["mode"]))
        out.append(f"| {r['model']} | {r['k']} | {r['mode']} | {r['batch']} | {r['image_size']} | "
                   f"{stock['images_per_s']:.2f} | {r['images_per_s']:.2f} | {r['speedup']:.2f}× |")
    return "\n".join(out)


def _kind(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    if data.get("kind") == "predicted (static)":
        return "static"
    if data.get("kind") == "cpu dispatch rules":
        return "rules"  # the evidence behind the CPU dispatch rules; cited, not tabulated
    return "models" if "variant" in (data.get("rows") or [{}])[0] else "kernels"


def _fp32_bf16(by_dtype) -> str:
    """"fp32 / bf16" predicted useful TFLOP/s of one table row."""
    return " / ".join(_f(by_dtype[d]["predicted_useful_tflops"]) if d in by_dtype else "—"
                      for d in ("float32", "bfloat16"))


def static_section(path: str) -> str:
    """The predictions of `python -m bench.sass`, one row per (shape, pass, implementation), float32 and
    bfloat16 side by side."""
    with open(path) as f:
        data = json.load(f)
    env = data["environment"]
    out = [f"PREDICTED, not measured: `python -m bench.sass` read the sm_90 code of lkconv `{env['lkconv_commit'][:12]}` "
           f"on {env['date'][:10]} ([results]({os.path.relpath(path, ROOT)})). Useful TFLOP/s = FP32 peak "
           f"({data['peak_fp32_tflops']['sm_90']} TFLOP/s, H100 SXM) x FMA share of the hot loop's instructions x "
           "useful multiply-adds / multiply-adds performed (for the CUDA kernels: each kernel's own walk of its "
           "tiles, warps and lanes, with the correlation's strip-edge steps at their loop's FMA share, plus the "
           "issue slots of their loaders and reductions, counted from the SASS: the load loops' instructions per "
           "element, the shuffles to the stores per reduction; for Triton: the GEMM steps its Toeplitz/Hankel "
           "walk issues, operand staging included); an upper bound of the issue-bound speed (memory stalls and "
           "occupancy left out). Occupancy at the launch configuration the launcher picks.", "",
           "| shape | pass | impl | config | regs | spill B | occupancy | FMA share | useful work | "
           "predicted useful TFLOP/s fp32 / bf16 |", "|---|---|---|---|---|---|---|---|---|---|"]
    rows, mma_rows = defaultdict(dict), defaultdict(dict)
    for p in data["predictions"]:
        (mma_rows if p.get("step_mma_flops") else rows)[(p["shape"], p["pass_"], p["impl"])][p["dtype"]] = p
    for (shape, pass_, impl), by_dtype in rows.items():
        p = by_dtype.get("float32") or next(iter(by_dtype.values()))
        out.append(f"| {shape} | {PASS_NAMES.get(pass_, pass_)} | {impl} | {p['config']} | {p['regs']} | "
                   f"{p['spill_bytes']} | {100 * p['occupancy']:.0f}% | {100 * p['ffma_share']:.0f}% | "
                   f"{100 * p['utilization']:.0f}% | {_fp32_bf16(by_dtype)} |")
    if mma_rows:
        peaks = data.get("peak_mma_tflops", {})
        out += ["", "Tensor-core kernels (`lkconv/tensorcore_kernels.py`): a step of one program (one MMA of the hot "
                "loop) takes the longest of its issue time (the loop's instructions of all its warps over 4 "
                "schedulers), its MMA time (wgmma at the data-sheet peak, "
                f"{peaks.get('HGMMA', {}).get('bf16', '?')} TFLOP/s dense bf16; mma.sync ASSUMED at two thirds of it) "
                "and its shared-memory time (operands copied in and read by the MMA, 128 B/clk), times the useful "
                "share of the MMA work (the kernel's own walk of tiles, band zeros and skipped steps). bf16 config "
                "shown; fp32 is TF32, on the user's opt-in.", "",
                "| shape | pass | config | regs | spill B | occupancy | instructions / step | shared B / step | "
                "binds | useful work | predicted useful TFLOP/s tf32 / bf16 |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for (shape, pass_, impl), by_dtype in mma_rows.items():
            p = by_dtype.get("bfloat16") or next(iter(by_dtype.values()))
            out.append(f"| {shape} | {PASS_NAMES.get(pass_, pass_)} | {p['config']} | {p['regs']} | "
                       f"{p['spill_bytes']} | {100 * p['occupancy']:.0f}% | {p['step_instructions']} | "
                       f"{p['step_smem_bytes']} | {p['bound']} | {100 * p['utilization']:.0f}% | "
                       f"{_fp32_bf16(by_dtype)} |")
    return "\n".join(out)


def render(results_dir: str, kinds=("kernels", "models")) -> str:
    parts: List[str] = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        kind = _kind(path)
        if kind not in kinds:
            continue
        parts.append({"models": model_section, "kernels": kernel_section, "static": static_section}[kind](path))
    if not parts:
        return "No measurements committed yet." if "static" not in kinds else "No static report committed yet."
    return "\n\n".join(parts)


def _replace_between(text: str, begin: str, end: str, body: str, readme: str) -> str:
    if begin not in text or end not in text:
        raise ValueError(f"{readme} lacks the {begin} / {end} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n<!-- generated by `python -m bench.readme` from bench/results; do not edit -->\n\n" \
           f"{body}\n\n{end}{tail}"


def update_readme(readme: str, results_dir: str) -> None:
    with open(readme) as f:
        text = f.read()
    text = _replace_between(text, BEGIN, END, render(results_dir), readme)
    if STATIC_BEGIN in text:
        text = _replace_between(text, STATIC_BEGIN, STATIC_END, render(results_dir, ("static",)), readme)
    results._atomic_write(readme, text)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    readme = argv[0] if argv else os.path.join(ROOT, "README.md")
    results_dir = argv[1] if len(argv) > 1 else os.path.join(ROOT, "bench", "results")
    update_readme(readme, results_dir)
    print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
