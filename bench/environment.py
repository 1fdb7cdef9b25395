"""What every results file records about where and how it was measured."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from typing import Dict

import torch


def _git_commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (commit + ("+dirty" if dirty else "")) if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def command_line(argv=None) -> str:
    """The command as typed: `python -m bench ...` rather than the path of the module's file."""
    argv = list(sys.argv if argv is None else argv)
    return " ".join(["python"] + [shlex.quote(a) for a in _module_form(argv[0]) + argv[1:]])


def _module_form(argv0: str):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.abspath(argv0)
    if path.startswith(root + os.sep) and path.endswith(".py"):
        module = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
        return ["-m", module[: -len(".__main__")] if module.endswith(".__main__") else module]
    return [argv0]


#: A 1-minute load average at or above this before a CPU run means something else was running: on a shared
#: 2-core box that slows oneDNN far more than lkconv's kernels and overstates every speed-up.
BUSY_LOAD = 0.5


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def describe_environment(device: torch.device, measure_cpu: bool = True) -> Dict[str, str]:
    """Versions, commit, command and device; on the CPU (with `measure_cpu`) also the load average before the
    run and the measured FMA peak."""
    from lkconv import _ext, __version__

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "lkconv": __version__,
        "lkconv_commit": _git_commit(),
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "compiler": getattr(_ext._C, "cxx_compiler", "unknown") if _ext._C is not None else "extension not built",
        "cpu": _cpu_model(),
        "cpu_threads": str(torch.get_num_threads()),
        "cpu_isa": _ext._C.cpu_isa() if _ext._C is not None else "n/a",
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["device"] = props.name
        env["cuda"] = torch.version.cuda or "unknown"
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            env["driver"] = "unknown"
    else:
        env["device"] = f"CPU: {env['cpu']} ({env['cpu_threads']} threads)"
    if device.type == "cpu" and measure_cpu:
        from .timing import steady_allocator

        env["load_average_before"] = f"{load_average():.2f}"
        env["allocator"] = steady_allocator()
        if _ext._C is not None and hasattr(_ext._C, "cpu_fma_peak_gflops"):
            # The machine's float32 FMA peak over torch's threads (a short loop of independent FMA chains in the
            # instruction set lkconv picked), the denominator of the "% of peak" columns.
            env["cpu_fma_peak_gflops"] = f"{_ext._C.cpu_fma_peak_gflops(0.5):.1f}"
    return env


def finish_environment(env: Dict[str, str]) -> None:
    """Record the load average after a CPU run (it includes the run itself) and warn when the machine was busy
    before it started."""
    if "load_average_before" not in env:
        return
    env["load_average_after"] = f"{load_average():.2f}"
    before = float(env["load_average_before"])
    if before >= BUSY_LOAD:
        env["busy"] = "true"
        import warnings

        warnings.warn(f"the machine was busy before the run (1-minute load average {before:.2f} >= {BUSY_LOAD}): "
                      "PyTorch/oneDNN slows down far more than lkconv under contention, so speed-ups are "
                      "overstated; rerun on a quiet machine", stacklevel=2)
