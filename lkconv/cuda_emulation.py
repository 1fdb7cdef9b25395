"""The CUDA kernels on the CPU: build and load lkconv's CUDA sources under the CUDA execution-model emulation.

The same `.cu` sources and host launchers that nvcc compiles for the GPU are compiled here with g++ against
`csrc/cuda_emulation` (threads as fibers, real barriers and warp exchanges, checked shared memory, launch
limits, a table of emulated GPUs; see lkemu.h), with UndefinedBehaviorSanitizer, and optionally with
AddressSanitizer on global memory (`build(address_sanitizer=True)`, imported by a process that preloads the ASan
runtime). Loading the module enables the
`cuda_emu` backend, which runs on CPU tensors and is used only when forced:

    from lkconv import cuda_emulation
    emu = cuda_emulation.load()            # builds once per source version (~1 min), then cached under build/
    emu.select_device("a100")              # h100, a100, rtx4090 (99 KiB), tiny (48 KiB, forces fallbacks)
    with lkconv.use_backend("cuda_emu"):
        y = lkconv.depthwise_conv2d(x, w, padding=15)

It proves indexing, barriers, shared-memory use and fallbacks; it cannot show speed, occupancy, bank conflicts,
races between blocks through global memory or the hardware's rounding of 16-bit conversions.
`python -m lkconv.cuda_emulation` builds it and prints the emulated GPUs.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from typing import Dict, Optional

CUDA_SOURCES = ("correlate_kernel.cu", "correlate_dense_kernel.cu", "wgrad_kernel.cu", "wgrad_dense_kernel.cu",
                "depthwise_cuda.cpp")
EMULATION_SOURCES = ("lkemu.cpp", "emu_module.cpp")
CFLAGS = ["-O2", "-DLKCONV_CUDA_EMULATION", "-fno-strict-aliasing", "-fsanitize=undefined", "-fno-sanitize=vptr",
          "-fno-sanitize-recover=undefined"]
LDFLAGS = ["-fsanitize=undefined"]

_loaded: Dict[str, object] = {}


def source_root() -> str:
    """The csrc/ folder of the source checkout this package runs from."""
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
    if not os.path.isfile(os.path.join(root, "cuda_emulation", "lkemu.h")):
        raise FileNotFoundError(f"the CUDA emulation builds from the csrc/ folder of a source checkout; {root} "
                                "has no cuda_emulation/")
    return root


def _build_root() -> str:
    return os.environ.get("LKCONV_EMULATION_BUILD_DIR") or os.path.join(os.path.dirname(source_root()), "build",
                                                                        "cuda_emulation")


ASAN_FLAGS = ["-fsanitize=address", "-fno-omit-frame-pointer"]


def asan_runtime() -> str:
    """The AddressSanitizer runtime of the compiler, which a process must preload to import an ASan build."""
    cxx = os.environ.get("CXX", "c++")
    try:
        path = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise FileNotFoundError(f"cannot locate libasan with {cxx}: {exc}") from None
    if not os.path.isabs(path) or not os.path.exists(path):
        raise FileNotFoundError(f"{cxx} has no AddressSanitizer runtime (libasan.so)")
    return path


def build(cuda_sources: Optional[Dict[str, str]] = None, verbose: bool = False, address_sanitizer: bool = False):
    """Compile (or reuse the cached build of) the emulation module and return it, without enabling the backend.

    `cuda_sources` replaces files of csrc/cuda by other text (file name -> source), e.g. a copy of a kernel with
    a bug planted in it, to check that the emulation catches it. With `address_sanitizer` the kernels' global
    memory accesses are checked by ASan; only a process that preloads `asan_runtime()` can build and import such
    a module (run it with `address_sanitizer_env()`)."""
    from torch.utils import cpp_extension

    root = source_root()
    cuda_dir, emu_dir = os.path.join(root, "cuda"), os.path.join(root, "cuda_emulation")
    texts = {}
    for name in CUDA_SOURCES:
        with open(os.path.join(cuda_dir, name)) as f:
            texts[name] = f.read()
    unknown = set(cuda_sources or {}) - set(CUDA_SOURCES)
    if unknown:
        raise ValueError(f"not a CUDA source of lkconv: {sorted(unknown)} (one of {CUDA_SOURCES})")
    texts.update(cuda_sources or {})
    digest = hashlib.sha256()
    for name in sorted(texts):
        digest.update(name.encode() + texts[name].encode())
    for folder, _, files in sorted(os.walk(emu_dir)):
        for f in sorted(files):
            with open(os.path.join(folder, f), "rb") as fh:
                digest.update(f.encode() + fh.read())
    for header in ("depthwise_cuda.cuh",):
        with open(os.path.join(cuda_dir, header), "rb") as fh:
            digest.update(fh.read())
    cflags = CFLAGS + (ASAN_FLAGS if address_sanitizer else [])
    ldflags = LDFLAGS + (["-fsanitize=address"] if address_sanitizer else [])
    digest.update(" ".join(cflags + ldflags).encode())
    key = digest.hexdigest()[:16]
    name = f"lkconv_cuda_emu_{key}"
    if name in _loaded:
        return _loaded[name]
    build_dir = os.path.join(_build_root(), name)
    os.makedirs(build_dir, exist_ok=True)
    sources = []
    for src, text in texts.items():
        # A copy of every CUDA source (compiled as C++ through a one-line wrapper), so a planted change never
        # touches the tree.
        copy = os.path.join(build_dir, src)
        _write_if_changed(copy, text)
        wrapper = os.path.join(build_dir, f"emu_{src.replace('.', '_')}.cpp")
        _write_if_changed(wrapper, f'#include "{copy}"\n')
        sources.append(wrapper)
    sources += [os.path.join(emu_dir, s) for s in EMULATION_SOURCES]
    options = dict(name=name, sources=sources, build_directory=build_dir, verbose=verbose, with_cuda=False,
                   extra_include_paths=[os.path.join(emu_dir, "include"), emu_dir, cuda_dir, root],
                   extra_cflags=cflags, extra_ldflags=ldflags)
    if address_sanitizer and "libasan" not in os.environ.get("LD_PRELOAD", ""):
        raise RuntimeError("an AddressSanitizer build of the emulation needs a process that preloads the ASan "
                           "runtime: run it with lkconv.cuda_emulation.address_sanitizer_env()")
    module = cpp_extension.load(**options)
    _loaded[name] = module
    return module


def address_sanitizer_env() -> Dict[str, str]:
    """The environment of a process that imports an AddressSanitizer build of the emulation."""
    env = dict(os.environ)
    env["LD_PRELOAD"] = asan_runtime()
    env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=0:halt_on_error=1"  # PyTorch and Python leak by design
    return env


def _write_if_changed(path: str, text: str) -> None:
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return
    with open(path, "w") as f:
        f.write(text)


def load(verbose: bool = False):
    """Build (if needed) the emulation of the tree's CUDA sources and enable the `cuda_emu` backend with it."""
    from .backends import BACKENDS

    module = build(verbose=verbose)
    BACKENDS["cuda_emu"].attach(module)
    return module


def main() -> int:
    module = load(verbose="-v" in sys.argv)
    print(f"built {module.__name__}; emulated GPUs: {', '.join(module.devices())} "
          f"(selected: {module.current_device()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
