"""Smoke tests of the benchmark commands (tiny shapes; speed is measured, never asserted)."""

import json
import subprocess
import sys

import pytest


def _run(*args, cwd=None):
    out = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


TINY = ["--kernel-sizes", "5", "--sweep-channels", "4", "--sweep-size", "12", "--batch-size", "1"]


def test_bench_quick_writes_results_compare_and_plot(tmp_path):
    out = tmp_path / "r.json"
    text = _run("bench", "--quick", *TINY, "--out", str(out), "--plot", str(tmp_path / "r.png"))
    assert "lkconv-cpu" in text and "torch" in text
    data = json.loads(out.read_text())
    env, rows = data["environment"], data["rows"]
    for key in ("device", "torch", "triton", "compiler", "lkconv_commit", "date", "command"):
        assert env[key]
    passes = {r["pass"] for r in rows}
    assert passes == {"forward", "backward_input", "backward_weight", "fwd_bwd"}
    assert {(r["impl"], r["layout"]) for r in rows} >= {("torch", "nchw"), ("torch", "channels_last"),
                                                        ("lkconv-cpu", "nchw"), ("lkconv-cpu", "channels_last")}
    assert all(r["correct"] and r["median_ms"] > 0 and r["max_rel_err"] < 1e-5 for r in rows)
    assert (tmp_path / "r.csv").exists() and (tmp_path / "r.png").stat().st_size > 0
    compared = _run("bench", "--quick", *TINY, "--passes", "forward", "--compare", str(out))
    assert "new/old" in compared and "forward" in compared


def test_extra_impl_joins_the_table():
    text = _run("bench", "--quick", *TINY, "--passes", "forward", "--layout", "nchw",
                "--extra-impl", "torch.nn.functional:conv2d")
    assert "torch.nn.functional:conv2d" in text


def test_bad_flags_are_reported():
    out = subprocess.run([sys.executable, "-m", "bench", "--dtype", "float8"], capture_output=True, text=True)
    assert out.returncode == 2 and "argument --dtype: unknown value(s) ['float8']" in out.stderr


def test_models_bench_and_readme_generation(tmp_path):
    pytest.importorskip("timm")
    out = tmp_path / "models.json"
    text = _run("bench.models", "--models", "convnext_tiny", "--kernel-sizes", "7", "--modes", "inference,train",
                "--batch-size", "1", "--image-size", "32", "--out", str(out))
    assert "convnext_tiny" in text
    rows = json.loads(out.read_text())["rows"]
    assert {(r["variant"], r["mode"]) for r in rows} == {("stock", "inference"), ("lkconv", "inference"),
                                                         ("stock", "train"), ("lkconv", "train")}
    kernels = tmp_path / "kernels.json"
    _run("bench", "--quick", *TINY, "--passes", "forward", "--out", str(kernels))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- perf:begin -->\nold\n<!-- perf:end -->\n\ntail\n")
    _run("bench.readme", str(readme), str(tmp_path))
    text = readme.read_text()
    assert "old" not in text and "tail" in text and "| model |" in text and "| shape |" in text


def test_cpu_timing_runs_on_torchs_threads():
    """torch.utils.benchmark.Timer defaults to one thread; the CPU timings must use the threads the results
    record (torch.get_num_threads())."""
    import torch

    from bench.timing import time_cpu

    seen = []
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        time_cpu(lambda: seen.append(torch.get_num_threads()), min_run_time=0.01)
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {2}


def test_a_backend_that_declines_a_call_is_noted_as_refused_not_failed(tmp_path):
    """A forced backend that refuses a call (the tensor cores on float32 without the TF32 opt-in, CUDA kernels on
    a CPU tensor) is a design decision, not a failure: its rows say why and stay out of the README tables."""
    import math

    import torch

    import lkconv
    from bench import kernels, readme, results
    from bench.environment import describe_environment

    refusing = kernels.Impl("lkconv-cuda", lkconv.depthwise_conv2d, "nchw", backend="cuda")
    rows = kernels.run([kernels.Shape("tiny", 1, 2, 6, 3)], [torch.float32], ["nchw"], ["forward"],
                       kernels.torch_impls() + [refusing], torch.device("cpu"), quick=True)
    row = next(r for r in rows if r.impl == "lkconv-cuda")
    assert row.note.startswith("refused: ") and math.isnan(row.median_ms), row.note
    assert all(r.median_ms > 0 for r in rows if r.impl == "torch")
    path = str(tmp_path / "kernels.json")
    results.save(path, describe_environment(torch.device("cpu"), measure_cpu=False), rows)
    assert "lkconv-cuda" not in readme.kernel_section(path)


_FAULTS = """
import resource, sys, torch, torch.nn.functional as F
from bench.timing import steady_allocator
if sys.argv[1] == "steady":
    assert steady_allocator().startswith("glibc"), steady_allocator()
torch.set_num_threads(2)
x, w = torch.randn(4, 256, 28, 28), torch.randn(256, 1, 3, 3)
for _ in range(3):
    F.conv2d(x, w, None, 1, 1, 1, 256)
faulting = 0  # calls that page-faulted a quarter of their 3 MiB output or more afresh
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    F.conv2d(x, w, None, 1, 1, 1, 256)
    faulting += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before >= 192
print(faulting)
"""


def test_cpu_timing_holds_the_allocator_steady():
    """With glibc's default thresholds PyTorch's NCHW depthwise forward (oneDNN: output, reorder buffers) hands
    freed blocks back to the kernel and page-faults them afresh on some calls (measured up to 15x slower that
    way); under the timings' allocator it must not."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")

    def faults(mode):  # how many of 20 calls page-faulted their buffers
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.split()[-1])

    default = faults("default")
    if default < 2:
        pytest.skip(f"this run kept the blocks by itself ({default} of 20 calls faulted)")
    assert faults("steady") <= 1  # a one-off (the heap growing once) is not the per-call cost
