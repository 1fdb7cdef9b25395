"""The CUDA kernels on the CPU: build and load lkconv's CUDA sources under the CUDA execution-model emulation.

The same `.cu` sources and host launchers that nvcc compiles for the GPU are compiled here with g++ against
`csrc/cuda_emulation` (threads as fibers, real barriers and warp exchanges, checked shared memory, launch
limits, a table of emulated GPUs; see lkemu.h), with UndefinedBehaviorSanitizer. Loading the module enables the
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
import sys
from typing import Dict, Optional

CUDA_SOURCES = ("correlate_kernel.cu", "wgrad_kernel.cu", "depthwise_cuda.cpp")
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


def build(cuda_sources: Optional[Dict[str, str]] = None, verbose: bool = False):
    """Compile (or reuse the cached build of) the emulation module and return it, without enabling the backend.

    `cuda_sources` replaces files of csrc/cuda by other text (file name -> source), e.g. a copy of a kernel with
    a bug planted in it, to check that the emulation catches it."""
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
    digest.update(" ".join(CFLAGS + LDFLAGS).encode())
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
    module = cpp_extension.load(
        name=name, sources=sources, build_directory=build_dir, verbose=verbose, with_cuda=False,
        extra_include_paths=[os.path.join(emu_dir, "include"), emu_dir, cuda_dir, root],
        extra_cflags=CFLAGS, extra_ldflags=LDFLAGS)
    _loaded[name] = module
    return module


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
