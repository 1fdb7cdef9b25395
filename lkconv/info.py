"""`python -m lkconv.info`: versions, what was compiled, and which backends can run here (and why not)."""

from __future__ import annotations

import platform
import sys
from typing import Dict, List

import torch

from . import __version__, _ext
from .dispatch import available_backends


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "not installed"


def build_info() -> Dict[str, str]:
    info = {
        "lkconv": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda or "none (CPU build)",
        "triton": _triton_version(),
    }
    if _ext._C is None:
        info["lkconv._C"] = _ext.LOAD_ERROR
    else:
        info["lkconv._C"] = "C++ CPU kernels" + (" + CUDA kernels" if _ext.with_cuda() else " (built without CUDA)")
        info["compiler"] = _ext._C.cxx_compiler
        info["CPU kernel ISA"] = _ext._C.cpu_isa()
        if _ext.with_cuda():
            info["CUDA kernels built with"] = _ext._C.cuda_build_info()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["GPU"] = f"{props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)"
    else:
        info["GPU"] = "none visible"
    info["CPU threads"] = str(torch.get_num_threads())
    return info


def report() -> str:
    lines: List[str] = ["lkconv build and backends", ""]
    info = build_info()
    width = max(len(k) for k in info)
    lines += [f"  {k:<{width}}  {v}" for k, v in info.items()]
    lines += ["", "backends:"]
    backends = available_backends()
    name_width = max(len(n) for n in backends)
    lines += [f"  {name:<{name_width}}  {status}" for name, status in backends.items()]
    return "\n".join(lines)


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
