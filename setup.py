"""Build of lkconv._C: C++ CPU kernels always, CUDA kernels when nvcc and a CUDA build of torch are present.

Environment:
  LKCONV_SKIP_CUDA=1      build the CPU kernels only
  LKCONV_FORCE_CUDA=1     build the CUDA kernels (fail if that is impossible) even without a visible GPU
  TORCH_CUDA_ARCH_LIST    GPU architectures (default "8.0;9.0+PTX": A100, H100, and PTX for newer GPUs)
  CUDA_HOME               CUDA toolkit root; when unset it is read from the `nvcc` on PATH, which also works
                          when that `nvcc` is a wrapper script outside the toolkit
  MAX_JOBS                parallel compile jobs (ninja)
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _log(msg):
    print(f"lkconv setup: {msg}", file=sys.stderr)


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _toolkit_root_from_nvcc():
    """The toolkit root as nvcc itself reports it (`_HERE_` is its real bin directory), or None."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cu")
        open(src, "w").close()
        try:
            out = subprocess.run([nvcc, "-dryrun", "-c", src, "-o", os.path.join(tmp, "probe.o")],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
    match = re.search(r"^#\$ _HERE_=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    if not match:
        return None
    root = os.path.dirname(os.path.realpath(match.group(1).strip()))
    return root if os.path.isfile(os.path.join(root, "bin", "nvcc")) else None


# torch.utils.cpp_extension reads CUDA_HOME when it is imported, so settle it first.
if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and not _env_flag("LKCONV_SKIP_CUDA"):
    _root = _toolkit_root_from_nvcc()
    if _root:
        os.environ["CUDA_HOME"] = _root
        _log(f"CUDA_HOME={_root} (from nvcc on PATH)")
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda():
    if _env_flag("LKCONV_SKIP_CUDA"):
        return False, "LKCONV_SKIP_CUDA=1"
    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is not a CUDA build")
    if CUDA_HOME is None or not os.path.isfile(os.path.join(CUDA_HOME, "bin", "nvcc")):
        problems.append("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    if _env_flag("LKCONV_FORCE_CUDA"):
        if problems:
            raise RuntimeError("LKCONV_FORCE_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(problems))
        return True, "LKCONV_FORCE_CUDA=1"
    if problems:
        return False, "; ".join(problems)
    return True, f"nvcc in {CUDA_HOME}, torch CUDA {torch.version.cuda}"


def _extension():
    with_cuda, why = _want_cuda()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-fopenmp", "-ffp-contract=fast"]
    macros = []
    if with_cuda:
        _log(f"building CPU and CUDA kernels for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']} ({why})")
        sources += sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
        macros.append(("LKCONV_WITH_CUDA", None))
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-DLKCONV_WITH_CUDA"]
        return CUDAExtension("lkconv._C", sources, define_macros=macros,
                             extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=["-fopenmp"])
    _log(f"building the CPU kernels only ({why})")
    return CppExtension("lkconv._C", sources, define_macros=macros, extra_compile_args={"cxx": cxx},
                        extra_link_args=["-fopenmp"])


setup(
    packages=find_packages(include=["lkconv", "lkconv.*", "bench", "bench.*", "robustness", "robustness.*"]),
    package_data={"robustness": ["reference/*.json", "reference/*.txt", "reference/*.md", "presets.toml", "configs/*.toml"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
)
