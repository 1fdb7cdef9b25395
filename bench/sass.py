"""`python -m bench.sass`: a static performance report of the GPU kernels from their sm_90 (and sm_80) code,
made without a GPU. Every number it prints is a PREDICTION (static), never a measurement.

For each CUDA kernel instantiation (nvcc -cubin with setup.py's flags) and each Triton autotune config
(compiled for GPUTarget("cuda", 90, 32)) it reads, with cuobjdump from Triton's bundled tools:
  - registers, spilled bytes (local memory), static shared memory;
  - the hot loop: the innermost loop (a backward branch) with the most math instructions, and its instruction mix
    (FFMA, HFMA2, HMMA/HGMMA, FMUL/FADD, LDS/LDSM, LDG, STS/STG, integer/address arithmetic, moves, branches...);
  - occupancy at the launch configuration the launcher picks for the benchmark shapes (the CUDA launchers'
    own tile choice, taken from the emulation module on an emulated H100; the Triton kernels' for each config).
The prediction: a kernel issue-bound on the FP32 pipe reaches at most the FP32 CUDA-core peak x useful
multiply-adds / issue slots, where the issue slots are the multiply-adds its walk performs (padding taps,
cropped strips and idle threads cost work) over the hot loop's FFMA share, plus, for the CUDA kernels, their
loaders (elements stored x the most instructions per element of any load loop: carries and all) and their
reductions (the instructions from the first shuffle to the stores after it, per reduction). The Triton GEMMs
stage their operands inside the hot loop. The tensor-core kernels: per MMA step of a program, the longest of its
issue time (hot-loop instructions of all its warps over the SM's 4 schedulers), its MMA time (at the MMA peak)
and its shared-memory time (operands in and out at 128 B/clk), times the useful share of the MMA work. It
leaves out stores, memory stalls and occupancy limits, so it is an upper bound of the issue-bound speed; the
report says what it counted and ignored for each kernel.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: H100 SXM: 132 SMs at 1.98 GHz boost, 128 FP32 lanes per SM: 66.9 TFLOP/s (DESIGN.md section 4).
PEAK_FP32_TFLOPS = {"sm_90": 66.9, "sm_80": 19.5}
#: Per-SM limits used by the occupancy calculation (CUDA occupancy calculator values).
SM_LIMITS = {
    "sm_90": dict(max_warps=64, max_blocks=32, regs=65536, smem=233472, reg_unit=256, smem_unit=128,
                  smem_reserved=1024),
    "sm_80": dict(max_warps=64, max_blocks=32, regs=65536, smem=167936, reg_unit=256, smem_unit=128,
                  smem_reserved=1024),
}
#: (name, N, C, H=W, kh, kw): the benchmark shapes of the report.
SHAPES = [("56x56 k31", 64, 256, 56, 31, 31), ("28x28 k29", 64, 256, 28, 29, 29), ("14x14 k27", 64, 512, 14, 27, 27),
          ("7x7 k13", 64, 1024, 7, 13, 13), ("56x56 k51x5", 64, 128, 56, 51, 5)]

CATEGORIES = [
    ("FFMA", ("FFMA",)), ("HFMA2", ("HFMA2",)), ("MMA", ("HMMA", "HGMMA", "WGMMA", "IMMA", "BMMA")),
    ("FADD/FMUL", ("FADD", "FMUL", "FMNMX", "FSEL", "FSETP")),
    ("LDS", ("LDS", "LDSM")), ("LDG", ("LDG", "LD", "LDGSTS", "UTMALDG")), ("STS", ("STS",)), ("STG", ("STG", "ST")),
    ("BAR/SHFL", ("BAR", "SHFL", "WARPSYNC", "SYNCS", "DEPBAR")),
    ("branch", ("BRA", "BRX", "EXIT", "RET", "CALL", "BSSY", "BSYNC", "JMP")),
    ("move", ("MOV", "UMOV", "IMAD.MOV", "SEL", "PRMT", "S2R", "S2UR", "CS2R", "LDC", "ULDC", "R2UR")),
    ("int/address", ("IMAD", "IADD3", "IADD", "LEA", "ISETP", "LOP3", "SHF", "VIADD", "IABS", "IMNMX", "UIADD3",
                     "UIMAD", "ULEA", "USHF", "ULOP3", "UISETP", "I2F", "F2I", "PLOP3", "VIMNMX", "USEL", "P2R",
                     "R2P", "POPC", "FLO", "BMSK", "SGXT")),
    ("convert", ("F2F", "F2FP", "HADD2", "HMUL2", "I2FP", "F2IP")),
]


def category(opcode: str) -> str:
    for name, prefixes in CATEGORIES:
        for p in prefixes:
            if opcode == p or opcode.startswith(p + "."):
                return name
    return "other"


@dataclass
class Instr:
    addr: int
    opcode: str
    operands: str

    @property
    def branch_target(self) -> Optional[int]:
        if not self.opcode.startswith("BRA"):
            return None
        m = re.search(r"0x([0-9a-f]+)", self.operands)
        return int(m.group(1), 16) if m else None


_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")


def parse_sass(text: str) -> Dict[str, List[Instr]]:
    """{function: instructions} from `cuobjdump -sass` output."""
    funcs: Dict[str, List[Instr]] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = m.group(1)
            funcs[current] = []
            continue
        m = _LINE.search(line)
        if m and current is not None:
            funcs[current].append(Instr(int(m.group(1), 16), m.group(3), m.group(4).strip()))
    return funcs


def parse_resources(text: str) -> Dict[str, Dict[str, int]]:
    """{function: {REG, STACK, SHARED, LOCAL}} from `cuobjdump -res-usage` output."""
    out, current = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            current = m.group(1)
            continue
        if current and "REG:" in line:
            out[current] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}
            current = None
    return out


@dataclass
class Loop:
    start: int
    end: int
    mix: Dict[str, int]

    @property
    def size(self) -> int:
        return sum(self.mix.values())


def loops(instrs: Sequence[Instr]) -> List[Loop]:
    """Every loop (a backward branch and its target), innermost first, with its instruction mix."""
    found = []
    for ins in instrs:
        target = ins.branch_target
        if target is not None and target <= ins.addr:
            body = [i for i in instrs if target <= i.addr <= ins.addr]
            found.append(Loop(target, ins.addr, dict(Counter(category(i.opcode) for i in body))))
    innermost = [lp for lp in found
                 if not any(o is not lp and lp.start <= o.start and o.end <= lp.end and (o.start, o.end) != (lp.start, lp.end)
                            for o in found)]
    return sorted(innermost, key=lambda lp: lp.start)


def hot_loop(instrs: Sequence[Instr]) -> Optional[Loop]:
    """The innermost loop with the most multiply-add instructions (ties: the denser one). A loop with tensor-core
    MMAs wins over FFMA loops (one MMA does thousands of multiply-adds: in the tensor-core kernels the FFMA loop
    is the rare non-finite fallback); a kernel that multiplies and adds separately is judged by its FMUL/FADD
    loop."""
    for kinds in (("MMA",), ("FFMA", "HFMA2"), ("FADD/FMUL",)):
        candidates = [lp for lp in loops(instrs) if any(lp.mix.get(m, 0) for m in kinds)]
        if candidates:
            return max(candidates, key=lambda lp: (sum(lp.mix.get(m, 0) for m in kinds),
                                                   sum(lp.mix.get(m, 0) for m in kinds) / lp.size))
    return None


def occupancy(arch: str, regs: int, smem_per_block: int, threads: int) -> Dict[str, float]:
    """Resident warps per SM (and the fraction of the maximum) for a kernel at a launch configuration."""
    lim = SM_LIMITS[arch]
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(max(regs, 1) * 32 / lim["reg_unit"]) * lim["reg_unit"]
    by_regs = lim["regs"] // (regs_per_warp * warps) if regs else lim["max_blocks"]
    smem = math.ceil((smem_per_block + lim["smem_reserved"]) / lim["smem_unit"]) * lim["smem_unit"]
    by_smem = lim["smem"] // smem if smem_per_block else lim["max_blocks"]
    blocks = max(0, min(lim["max_blocks"], lim["max_warps"] // warps, by_regs, by_smem))
    limiter = min((("registers", by_regs), ("shared memory", by_smem), ("warps", lim["max_warps"] // warps)),
                  key=lambda kv: kv[1])[0]
    return dict(blocks=blocks, warps=blocks * warps, fraction=blocks * warps / lim["max_warps"], limiter=limiter)


# ---- tools -------------------------------------------------------------------------------------------------------
def nvidia_tool(name: str) -> str:
    """cuobjdump / nvdisasm: Triton's bundled copies, else the CUDA toolkit's."""
    try:
        import triton

        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        if os.path.isfile(path):
            return path
    except ImportError:
        pass
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found (it ships with Triton and the CUDA toolkit)")
    return found


def inspect_cubin(cubin: str) -> Tuple[Dict[str, List[Instr]], Dict[str, Dict[str, int]]]:
    tool = nvidia_tool("cuobjdump")
    sass = subprocess.run([tool, "-sass", cubin], capture_output=True, text=True, check=True).stdout
    res = subprocess.run([tool, "-res-usage", cubin], capture_output=True, text=True, check=True).stdout
    return parse_sass(sass), parse_resources(res)


def demangle(names: Sequence[str]) -> Dict[str, str]:
    """Readable kernel names: demangled, without namespaces, return type and parameter list."""
    filt = shutil.which("c++filt")
    if not filt or not names:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    if len(out) != len(names):
        return {n: n for n in names}
    short = [re.sub(r"\(.*$", "", re.sub(r"^void |[\w:]*\(anonymous namespace\)::|lkconv::cuda::", "", o))
             for o in out]
    return dict(zip(names, short))


# ---- the CUDA kernels ----------------------------------------------------------------------------------------------
CUDA_FILES = ("correlate_kernel.cu", "correlate_dense_kernel.cu", "wgrad_kernel.cu", "wgrad_dense_kernel.cu")


def compile_cuda(arch: str, cache: str) -> List[str]:
    """cubins of the CUDA kernel files for `arch` (cached by source hash)."""
    import torch.utils.cpp_extension as ext

    nvcc = shutil.which("nvcc") or os.path.join(ext.CUDA_HOME or "", "bin", "nvcc")
    if not os.path.isfile(nvcc):
        raise FileNotFoundError("nvcc not found: the CUDA kernels' static report needs the CUDA toolkit")
    cuda_dir = os.path.join(ROOT, "csrc", "cuda")
    includes = ext.include_paths(device_type="cuda") if "device_type" in ext.include_paths.__code__.co_varnames \
        else ext.include_paths(cuda=True)
    out = []
    for name in CUDA_FILES:
        src = os.path.join(cuda_dir, name)
        digest = hashlib.sha256()
        for f in (src, os.path.join(cuda_dir, "depthwise_cuda.cuh")):
            with open(f, "rb") as fh:
                digest.update(fh.read())
        digest.update(arch.encode())
        cubin = os.path.join(cache, f"{name}.{arch}.{digest.hexdigest()[:12]}.cubin")
        if not os.path.exists(cubin):
            os.makedirs(cache, exist_ok=True)
            cmd = [nvcc, "-cubin", f"-arch={arch}", "-O3", "-lineinfo", "--expt-relaxed-constexpr",
                   "-DLKCONV_WITH_CUDA", "-std=c++20", "-o", cubin, src] + [f"-I{p}" for p in includes]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode:
                raise RuntimeError(f"nvcc failed on {name}:\n{run.stderr[-3000:]}")
        out.append(cubin)
    return out


@dataclass
class KernelReport:
    kernel: str            # readable name of the instantiation
    arch: str
    regs: int
    spill_bytes: int
    static_smem: int
    hot_loop: Dict[str, int] = field(default_factory=dict)
    ffma_share: float = 0.0  # FFMA share of the hot loop's issued instructions
    # FFMA share of the innermost loop with the fewest FFMAs (the correlation's one-row strip-edge loop)
    edge_ffma_share: float = 0.0
    # FFMA share of the densest innermost loop with each count of FFMAs (the correlation's K-row strip-edge loops
    # issue 32 K per iteration).
    ffma_share_by_count: Dict[int, float] = field(default_factory=dict)
    # Instructions from the first shuffle of the kernel to the shared-memory stores that follow it (a
    # reduce-scatter and its stores); 0 where there is no shuffle.
    shuffle_to_store: int = 0
    # Instructions per element stored by the kernel's loaders (innermost loops that load from global and store to
    # shared memory without multiply-adds): the most of any of them; 0 where there is none.
    loader_per_element: float = 0.0
    note: str = ""
    config: Dict[str, int] = field(default_factory=dict)  # Triton: block sizes and num_warps


def kernel_reports(arch: str, cubins: Sequence[str]) -> List[KernelReport]:
    reports = []
    for cubin in cubins:
        funcs, res = inspect_cubin(cubin)
        names = demangle(list(funcs))
        for mangled, instrs in funcs.items():
            r = res.get(mangled, {})
            loop = hot_loop(instrs)
            rep = KernelReport(names[mangled], arch, r.get("REG", 0), r.get("LOCAL", 0) + r.get("STACK", 0),
                               r.get("SHARED", 0))
            if loop:
                rep.hot_loop = loop.mix
                rep.ffma_share = loop.mix.get("FFMA", 0) / loop.size
                with_ffma = [lp for lp in loops(instrs) if lp.mix.get("FFMA", 0)]
                if with_ffma:
                    edge = min(with_ffma, key=lambda lp: (lp.mix["FFMA"], -lp.mix["FFMA"] / lp.size))
                    rep.edge_ffma_share = edge.mix["FFMA"] / edge.size
                    for lp in with_ffma:
                        count = lp.mix["FFMA"]
                        rep.ffma_share_by_count[count] = max(rep.ffma_share_by_count.get(count, 0.0),
                                                             count / lp.size)
            else:
                rep.note = "no loop with math instructions"
            rep.shuffle_to_store = shuffle_to_store(instrs)
            rep.loader_per_element = loader_per_element(instrs)
            reports.append(rep)
    return reports


def shuffle_to_store(instrs: Sequence[Instr]) -> int:
    """Instructions from the first warp shuffle to the last of the shared-memory stores right after it (within
    4 instructions of each other); 0 without a shuffle."""
    first = next((k for k, i in enumerate(instrs) if i.opcode.startswith("SHFL")), None)
    if first is None:
        return 0
    end = next((k for k in range(first, len(instrs)) if instrs[k].opcode.startswith("STS")), None)
    if end is None:
        return 0
    k = end
    while k < min(len(instrs), end + 5):
        if instrs[k].opcode.startswith("STS"):
            end = k
        k += 1
    return end - first + 1


def loader_per_element(instrs: Sequence[Instr]) -> float:
    """Instructions per element a loader (an innermost loop with global loads and shared stores but no
    multiply-add) moves, its size over its shared stores: the most of any such loop (a kernel may have several,
    e.g. the filter's and the source's, unrolled and not); 0 without one."""
    loader = [lp for lp in loops(instrs)
              if lp.mix.get("LDG", 0) and lp.mix.get("STS", 0) and not lp.mix.get("FFMA", 0)]
    return max((lp.size / lp.mix["STS"] for lp in loader), default=0.0)


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def correlate_work(cfg: Dict, src_h: int, src_w: int, out_h: int, out_w: int, khc: int, kwc: int, off_t: int,
                   off_l: int) -> Tuple[int, Dict[int, int]]:
    """(steady, {K: edge}) multiply-add slots one plane group of the CUDA correlation issues, following the
    kernel's own walk (csrc/cuda/correlate_kernel.cu): per thread the source rows inside the map and the chunks
    of 4 taps whose 7 source columns touch it; a strip-edge step runs its K rows with a filter row in one K-row
    loop when they are the thread's first or last rows, else one row at a time (K = 1); a warp issues for 32
    lanes as long as its busiest lane. `off_t` and `off_l` are for the cropped filter."""
    ry, lanes_x, thread_rows, planes = cfg["rows_per_thread"], cfg["tile_w"] // 4, cfg["thread_rows"], cfg["planes"]
    th, tw = thread_rows * ry, lanes_x * 4
    chunks = _ceil_div(kwc, 4)
    last = kwc - (chunks - 1) * 4
    steady = 0
    edges: Dict[int, int] = {}
    for y0 in range(0, out_h, th):
        for x0 in range(0, out_w, tw):
            lanes = []
            for _plane in range(planes):
                for ly in range(thread_rows):
                    top = off_t - y0 - ly * ry
                    t_lo, t_hi = max(0, top), min(ry + khc - 1, top + src_h)
                    rows_s = 0
                    rows_e: Dict[int, int] = {}
                    for t in range(t_lo, t_hi):
                        r_lo, r_hi = max(0, t - khc + 1), min(ry - 1, t)
                        valid = r_hi - r_lo + 1
                        if valid <= 0:
                            continue
                        if ry - 1 <= t < khc:
                            rows_s += valid
                        else:
                            k = valid if r_lo == 0 or r_hi == ry - 1 else 1
                            rows_e[k] = rows_e.get(k, 0) + valid
                    for lx in range(lanes_x):
                        left = x0 + lx * 4 - off_l
                        ch_lo, ch_hi = max(0, _ceil_div(-left - 6, 4)), min(chunks, _ceil_div(src_w - left, 4))
                        taps = 0 if ch_lo >= ch_hi else (ch_hi - ch_lo) * 4 - (4 - last if ch_hi == chunks else 0)
                        lanes.append((rows_s * taps * 4, {k: v * taps * 4 for k, v in rows_e.items()}))
            for i in range(0, len(lanes), 32):
                warp = lanes[i:i + 32]
                steady += 32 * max(s for s, _ in warp)
                for k in {k for _, e in warp for k in e}:
                    edges[k] = edges.get(k, 0) + 32 * max(e.get(k, 0) for _, e in warp)
    return steady, edges


def correlate_loads(cfg: Dict, src_h: int, out_h: int, out_w: int, khc: int, kwc: int, off_t: int) -> int:
    """Elements the CUDA correlation's loaders store for one plane group (csrc/cuda/correlate_kernel.cu): per
    tile, each plane's source rows inside the map with the column halo, and its chunk-major filter."""
    ry, tw, planes = cfg["rows_per_thread"], cfg["tile_w"], cfg["planes"]
    th = cfg["thread_rows"] * ry
    kwp = _ceil_div(kwc, 4) * 4
    loaded = 0
    for y0 in range(0, out_h, th):
        rows = min(th + khc - 1, off_t - y0 + src_h) - max(0, off_t - y0)
        loaded += _ceil_div(out_w, tw) * planes * (max(0, rows) * (tw + kwp) + khc * kwp)
    return loaded


def _odd_vectors(v: int) -> int:
    v = _ceil_div(v, 4) * 4
    return v if (v // 4) % 2 else v + 4


def wgrad_tile_overheads(cfg: Dict, n: int, out_h: int, out_w: int) -> Tuple[int, int]:
    """(elements loaded, lane reductions) of one channel of the CUDA weight gradient's tile kernel: per tile, the
    input with its halo and the output gradient of its images; per tile and 4 x 8 tap block, one reduce-scatter
    by the 32 lanes of a warp."""
    th, images, tw = cfg["tile_h"], cfg["images"], cfg["tile_w"]
    khp, kwp = cfg["taps_padded"]
    tiles = _ceil_div(n, images) * _ceil_div(out_h, th) * _ceil_div(out_w, tw)
    per_tile = images * ((th + khp - 1) * _odd_vectors(tw + kwp) + th * _odd_vectors(tw))
    return tiles * per_tile, tiles * (khp // 4) * (kwp // 8) * 32


def wgrad_work(cfg: Dict, n: int, h: int, w: int, out_h: int, out_w: int, khc: int, kwc: int, top: int,
               left: int) -> int:
    """Multiply-add slots one channel of the CUDA weight gradient issues, following the kernel's own walk
    (csrc/cuda/wgrad_kernel.cu): per tile and 4 x 8 tap block, the rows (of all the tile's images) that meet the
    block through real input rows, dealt to 32 lanes, each walking the column steps whose input columns touch
    the map. `top`/`left`: pad_t - ki0 and pad_l - kj0 (the cropped filter's offsets)."""
    th, images, tw = cfg["tile_h"], cfg["images"], cfg["tile_w"]
    khp, kwp = cfg["taps_padded"]
    slots = 0
    for n0 in range(0, n, images):
        imgs = min(images, n - n0)
        for y0 in range(0, out_h, th):
            rows = min(th, out_h - y0)
            for x0 in range(0, out_w, tw):
                cols = min(tw, out_w - x0)
                for i0 in range(0, khp, 4):
                    r_lo, r_hi = max(0, top - y0 - i0 - 3), min(rows, top - y0 + h - i0)
                    nrows = max(0, r_hi - r_lo)
                    for j0 in range(0, kwp, 8):
                        x_lo = max(0, left - x0 - j0 - 10) // 4 * 4
                        x_end = min(cols, _ceil_div(max(0, left - x0 + w - j0), 4) * 4)
                        if x_lo < x_end:
                            slots += _ceil_div(imgs * nrows, 32) * 32 * _ceil_div(x_end - x_lo, 4) * 4 * 32
    return slots


def dense_correlate_work(cfg: Dict, n: int, c: int, h: int, w: int) -> Tuple[int, int]:
    """(multiply-add slots, loaded elements) of the dense forward / backward-input over all channels, following
    its walk (csrc/cuda/correlate_dense_kernel.cu): per block of `channels` channels x `images` images, every
    thread of a channel (rows x column blocks x image blocks of 8) walks all H x W source pixels with RX x 8
    multiply-adds each, a warp as long as its threads; the loaders store every held source element (image slots
    past the batch included) and each channel's padded, reversed filter rows."""
    rx, images, channels = cfg["block_cols"], cfg["images"], cfg["channels"]
    nbx = _ceil_div(w, rx)
    per_channel = h * nbx * (images // 8)
    filter_stride = _ceil_div(2 * w - 1 + rx, 32) * 32 + 1
    slots = loaded = 0
    for _n0 in range(0, n, images):
        for c0 in range(0, c, channels):
            held = min(channels, c - c0)
            slots += _ceil_div(held * per_channel, 32) * 32 * h * w * rx * 8
            loaded += channels * (h * w * images + (2 * h - 1) * filter_stride)
    return slots, loaded


def dense_wgrad_work(cfg: Dict, n: int, h: int, w: int) -> Tuple[int, int, int]:
    """(multiply-add slots, lane flushes, loaded elements) of one channel of the dense weight gradient, following
    its walk (csrc/cuda/wgrad_dense_kernel.cu): per group of `images` images, each warp's units d = warp, warp +
    warps, ... take H row pairs per image; a lane sums its slice's images (its warp as long as the busiest
    slice), and flushes its R x R block once per row offset (twice per unit, once for d = 0). The loader stores
    every padded row position of both tensors (one lane-iteration per position)."""
    r, nb, images, warps = cfg["block_cols"], cfg["blocks_per_row"], cfg["images"], cfg["warps"]
    slices = 32 // (nb * nb)
    row_stride = nb * _ceil_div(r, 4) * 4
    slots = flushes = loaded = 0
    for n0 in range(0, n, images):
        count = min(images, n - n0)
        per_slice = _ceil_div(count, slices)
        loaded += 2 * count * h * row_stride
        for warp in range(warps):
            for d in range(warp, h, warps):
                slots += 32 * r * r * per_slice * h
                flushes += 32 * (2 if d else 1)
    return slots, flushes, loaded


def _instantiation(name: str) -> Optional[Tuple[str, str, Tuple[int, ...]]]:
    """('correlate'|'correlate_dense'|'wgrad'|'wgrad_dense'|'finalize', dtype, template ints) of a demangled
    kernel name."""
    m = re.search(r"(correlate_kernel|correlate_dense_kernel|wgrad_kernel|wgrad_dense_kernel|wgrad_finalize_kernel)"
                  r"<([^,>]+)((?:, \d+)*)>", name)
    if not m:
        return None
    kind = {"correlate_kernel": "correlate", "correlate_dense_kernel": "correlate_dense", "wgrad_kernel": "wgrad",
            "wgrad_dense_kernel": "wgrad_dense", "wgrad_finalize_kernel": "finalize"}[m.group(1)]
    dtype = {"float": "float32", "c10::Half": "float16", "c10::BFloat16": "bfloat16"}.get(m.group(2).strip(),
                                                                                          m.group(2).strip())
    ints = tuple(int(v) for v in re.findall(r"\d+", m.group(3)))
    return kind, dtype, ints


@dataclass
class Prediction:
    shape: str
    pass_: str
    dtype: str
    impl: str
    kernel: str
    config: str
    regs: int
    spill_bytes: int
    smem: int
    threads: int
    occupancy: float
    occupancy_limiter: str
    ffma_share: float
    utilization: float          # useful multiply-adds / multiply-adds the hot loop performs
    predicted_useful_tflops: float
    ignores: str
    # The tensor-core kernels' model (zero/empty for the CUDA-core kernels): per MMA step of one program, the
    # hot loop's issued instructions (all warps), the MMA FLOPs, the bytes staged through and read from shared
    # memory, the bytes loaded from global memory (L1/L2), and which of issue / MMA / shared memory binds.
    step_instructions: int = 0
    step_mma_flops: int = 0
    step_smem_bytes: int = 0
    step_global_bytes: int = 0
    bound: str = ""


def _useful_macs(n, c, h, w, kh, kw, pad) -> float:
    from lkconv.geometry import ConvCall

    import torch

    call = ConvCall(n, c, h, w, kh, kw, (pad[0], pad[0], pad[1], pad[1]), (1, 1), (1, 1), torch.device("cpu"),
                    torch.float32, False)
    return float(n * c * call.useful_taps())


def cuda_predictions(reports: Sequence[KernelReport], arch: str) -> List[Prediction]:
    """Per benchmark shape, pass and dtype: the instantiation the launcher picks (tile choice of the emulated
    H100) and its issue-bound prediction."""
    from lkconv import cuda_emulation

    emu = cuda_emulation.build()
    emu.select_device("h100")
    by_inst = {}
    for r in reports:
        inst = _instantiation(r.kernel)
        if inst:
            by_inst[inst] = r
    out = []
    for shape, n, c, size, kh, kw in SHAPES:
        pad = (kh // 2, kw // 2)
        useful = _useful_macs(n, c, size, size, kh, kw, pad)
        for pass_, (dtype, element_size) in itertools.product(("forward", "backward_input", "backward_weight"),
                                                              (("float32", 4), ("bfloat16", 2))):
            cfg = emu.cuda_tile_config(pass_, size, size, kh, kw, [pad[0], pad[0], pad[1], pad[1]], False,
                                       element_size, n)
            if cfg["refusal"] or not cfg["kernel"]:
                continue
            khc, kwc = cfg["useful_taps"]
            if cfg["kernel"] == "correlate_kernel":
                tw, ry, planes, rows = cfg["tile_w"], cfg["rows_per_thread"], cfg["planes"], cfg["thread_rows"]
                off = (pad[0], pad[1]) if pass_ == "forward" else (kh - 1 - pad[0], kw - 1 - pad[1])
                i_lo, j_lo = max(0, off[0] - size + 1), max(0, off[1] - size + 1)
                steady, edges = correlate_work(cfg, size, size, size, size, khc, kwc, off[0] - i_lo, off[1] - j_lo)
                groups = n * math.ceil(c / planes)
                steady, edges = steady * groups, {k: v * groups for k, v in edges.items()}
                loaded = groups * correlate_loads(cfg, size, size, size, khc, kwc, off[0] - i_lo)
                performed = steady + sum(edges.values())
                config = f"{tw}x{rows * ry} tile, {ry}x4/thread, planes={planes}"
                key_ints = (ry,)
                kind = "correlate"
                ignores = ("the bias/store, memory stalls; strip-edge steps at their own K-row loop's FFMA share; "
                           "the loaders counted (their loops' instructions per element)")
            elif cfg["kernel"] == "correlate_dense_kernel":
                rx = cfg["block_cols"]
                slots, loaded = dense_correlate_work(cfg, n, c, size, size)
                performed = slots
                config = f"dense, {rx}x8 per thread, {cfg['images']} images x {cfg['channels']} channels/block"
                key_ints = (rx,)
                kind = "correlate_dense"
                ignores = ("the output stores, memory stalls; counted besides the hot loop: the loaders (their "
                           "loops' instructions per element)")
            elif cfg["kernel"] == "wgrad_dense_kernel":
                r, nb = cfg["block_cols"], cfg["blocks_per_row"]
                slots, flushes, loaded = dense_wgrad_work(cfg, n, size, size)
                performed = c * slots
                config = f"dense, {r}x{r} blocks x {nb * nb}, {cfg['images']} images/block"
                key_ints = (r, nb)
                kind = "wgrad_dense"
                ignores = ("the final tap sums, the finalize kernel, memory stalls; counted besides the hot loop: "
                           "the loader (its loop's instructions per element) and the per-offset fold and "
                           "reduce-scatter (R*R adds + the SASS's shuffles to stores)")
            else:
                th, img, tw = cfg["tile_h"], cfg["images"], cfg["tile_w"]
                khp, kwp = cfg["taps_padded"]
                i_lo, j_lo = max(0, pad[0] - size + 1), max(0, pad[1] - size + 1)
                performed = c * wgrad_work(cfg, n, size, size, size, size, khc, kwc, pad[0] - i_lo, pad[1] - j_lo)
                loaded, reductions = (c * v for v in wgrad_tile_overheads(cfg, n, size, size))
                config = f"tile {img}x{th}x{tw}, taps {khp}x{kwp}"
                key_ints = ()
                kind = "wgrad"
                ignores = ("the finalize kernel, memory stalls; counted besides the hot loop: the loaders and the "
                           "per-tile reduce-scatter (the SASS's shuffles to stores, per warp and tap block)")
            rep = by_inst.get((kind, dtype, key_ints))
            if rep is None:
                continue
            occ = occupancy(arch, rep.regs, cfg["smem"] + rep.static_smem, cfg["threads"])
            util = useful / performed
            if kind == "correlate":  # issue time: steady slots at the hot loop's share, edges at theirs, loaders
                edge_issue = sum(v / rep.ffma_share_by_count.get(32 * k, rep.edge_ffma_share)
                                 for k, v in edges.items())
                issue = steady / rep.ffma_share + edge_issue + loaded * rep.loader_per_element
                predicted = PEAK_FP32_TFLOPS[arch] * useful / issue
            elif kind == "correlate_dense":  # hot loop at its FFMA share plus the loaders
                issue = performed / rep.ffma_share + loaded * rep.loader_per_element
                predicted = PEAK_FP32_TFLOPS[arch] * useful / issue
            elif kind == "wgrad_dense":  # hot loop at its FFMA share plus every lane's flushes and loads
                issue = (performed / rep.ffma_share + c * flushes * (r * r + rep.shuffle_to_store)
                         + c * loaded * rep.loader_per_element)
                predicted = PEAK_FP32_TFLOPS[arch] * useful / issue
            else:  # the tile weight gradient: hot loop, loaders, per-tile reductions
                issue = performed / rep.ffma_share + loaded * rep.loader_per_element + reductions * rep.shuffle_to_store
                predicted = PEAK_FP32_TFLOPS[arch] * useful / issue
            out.append(Prediction(shape, pass_, dtype, "cuda", rep.kernel, config, rep.regs, rep.spill_bytes,
                                  cfg["smem"], cfg["threads"], occ["fraction"], occ["limiter"], rep.ffma_share,
                                  util, predicted, ignores))
    return out


# ---- the Triton kernels -------------------------------------------------------------------------------------------
def _compile_triton(kernels, arch_num: int, dtypes=("fp32", "bf16"),
                    warps_list=(4, 8)) -> List[KernelReport]:
    """Compile each (name, autotuned kernel, [(names, values)], extra constexprs(dtype), unit-stride params) for
    every config, each warp count of `warps_list` and each dtype, and read its SASS. As Triton's JIT specialises its arguments:
    unit-stride params are compiled as the constant 1 (the innermost stride of a contiguous tensor) and pointers
    as 16-byte aligned (every PyTorch allocation is). A config whose extra constexprs are None for a dtype is
    skipped for it."""
    import triton
    from triton.backends.compiler import GPUTarget

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("TRITON_INTERPRET=1 makes Triton interpret instead of compile; unset it (or pass "
                           "--no-triton)")
    target = GPUTarget("cuda", arch_num, 32)
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, autotuned, blocks, extra, unit in kernels:
            fn = autotuned.fn
            constexpr_names = [p.name for p in fn.params if p.is_constexpr]
            for (names, values), warps, dtype in itertools.product(blocks, warps_list, dtypes):
                flags = extra(dtype, dict(zip(names, values)))
                if flags is None:
                    continue
                sig, consts = {}, dict(zip(names, values))
                for p in fn.arg_names:
                    if p in constexpr_names or p in unit:
                        sig[p] = "constexpr"
                    elif p in ("src", "w", "band", "bias", "out", "x", "g"):
                        sig[p] = f"*{dtype}"
                    elif p == "partial":
                        sig[p] = "*fp32"
                    else:  # sizes and strides: Python ints, which Triton passes as i32 when they fit
                        sig[p] = "i32"
                consts.update({p: 1 for p in unit})
                for flag, value in flags.items():
                    if flag in constexpr_names:
                        consts.setdefault(flag, value)
                aligned = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(fn.arg_names) if sig[p][0] == "*"}
                src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=aligned)
                compiled = triton.compile(src, target=target, options={"num_warps": warps})
                cubin = os.path.join(tmp, f"{name}.cubin")
                with open(cubin, "wb") as f:
                    f.write(compiled.asm["cubin"])
                funcs, res = inspect_cubin(cubin)
                for func, instrs in funcs.items():
                    r = res.get(func, {})
                    loop = hot_loop(instrs)
                    cfg = ", ".join(f"{k}={v}" for k, v in zip(names, values))
                    rep = KernelReport(f"triton {name} [{cfg}, warps={warps}] {dtype}", f"sm_{arch_num}",
                                       r.get("REG", 0), r.get("LOCAL", 0) + r.get("STACK", 0),
                                       compiled.metadata.shared, config=dict(zip(names, values), num_warps=warps))
                    if loop:
                        rep.hot_loop = loop.mix
                        rep.ffma_share = loop.mix.get("FFMA", 0) / loop.size
                        body = [i.opcode for i in instrs if loop.start <= i.addr <= loop.end]
                        if any(o.startswith("HGMMA") for o in body):
                            rep.note = "HGMMA"
                        elif any(o.startswith("HMMA") for o in body):
                            rep.note = "HMMA"
                    reports.append(rep)
    return reports


def triton_reports(arch_num: int = 90) -> List[KernelReport]:
    """The CUDA-core Triton kernels an NCHW call runs (the Toeplitz/Hankel GEMMs with IEEE fp32 products, which
    Triton lowers to FMAs), every autotune config compiled for sm_90 without a GPU (float32 and bfloat16)."""
    return gemm_reports(arch_num, cuda_cores=True)


def triton_predictions(reports: Sequence[KernelReport], arch: str = "sm_90") -> List[Prediction]:
    """Per benchmark shape, pass and dtype: the CUDA-core Triton config with the best issue-bound prediction
    (the autotuner picks by measurement on a GPU; this is the best it could do by this model): FP32 peak x the
    hot loop's FMA share x useful multiply-adds / the multiply-adds of the GEMM steps the kernel walks."""
    out = []
    for shape, n, c, size, kh, kw, pass_, useful, dtype, tdt in _prediction_cases():
        best = None
        for r in reports:
            work = gemm_step_work(r, tdt, pass_, n, c, size, kh, kw)
            if work is None or not r.ffma_share:
                continue
            steps, flops = work
            util = useful / (steps * flops / 2)
            occ = occupancy(arch, r.regs, r.static_smem, 32 * r.config["num_warps"])
            pred = Prediction(shape, pass_, dtype, "triton", r.kernel, r.kernel.split("[")[1].split("]")[0],
                              r.regs, r.spill_bytes, r.static_smem, 32 * r.config["num_warps"], occ["fraction"],
                              occ["limiter"], r.ffma_share, util, PEAK_FP32_TFLOPS[arch] * r.ffma_share * util,
                              "code outside the FMA loop (the outer filter-row/input-row loop, the finiteness "
                              "check, stores, the weight gradient's partial sums), the per-call band table and "
                              "padded input, memory stalls")
            if best is None or pred.predicted_useful_tflops > best.predicted_useful_tflops:
                best = pred
        if best:
            out.append(best)
    return out


def _prediction_cases():
    """(shape, n, c, size, kh, kw, pass, useful multiply-adds, torch dtype name, Triton dtype) of the benchmark."""
    for shape, n, c, size, kh, kw in SHAPES:
        useful = _useful_macs(n, c, size, size, kh, kw, (kh // 2, kw // 2))
        for pass_ in ("forward", "backward_input", "backward_weight"):
            for dtype, tdt in (("float32", "fp32"), ("bfloat16", "bf16")):
                yield shape, n, c, size, kh, kw, pass_, useful, dtype, tdt


# ---- the tensor-core kernels ---------------------------------------------------------------------------------------
#: Dense tensor-core peaks of the H100 SXM (TFLOP/s): wgmma (HGMMA) from the data sheet; mma.sync (HMMA) on sm_90
#: is ASSUMED to reach two thirds of it (it is not specified; published microbenchmarks put it near there).
PEAK_MMA_TFLOPS = {"HGMMA": {"bf16": 989.4, "fp32": 494.7}, "HMMA": {"bf16": 659.6, "fp32": 329.8}}
SM90_SMS, SM90_CLOCK_GHZ, SMEM_BYTES_PER_CLK = 132, 1.98, 128


def tensorcore_reports(arch_num: int = 90) -> List[KernelReport]:
    """Every autotune config of the tensor-core kernels (lkconv/tensorcore_kernels.py) for sm_90: bfloat16, and
    float32 as TF32, for NCHW-contiguous tensors (unit innermost strides)."""
    return gemm_reports(arch_num, cuda_cores=False)


def gemm_reports(arch_num: int, cuda_cores: bool) -> List[KernelReport]:
    """The Toeplitz/Hankel GEMM kernels (lkconv/tensorcore_kernels.py), every autotune config, as the launchers
    run them: on the tensor cores (bf16; fp32 as TF32) or, `cuda_cores`, with IEEE fp32 products (the `triton`
    backend; bf16 widened to fp32)."""
    from lkconv import tensorcore_kernels as tc

    def flags(dtype, config):
        if config.get("ALIGN", 1) * (4 if dtype == "fp32" else 2) > 16:  # never picked: 16 bytes at most
            return None
        return dict(HAS_BIAS=False, TF32=dtype == "fp32" and not cuda_cores, IEEE_FP32=cuda_cores)

    # The forward's ALIGN (rows start on ALIGN-element boundaries) follows the map width: each that the benchmark
    # shapes need is compiled.
    # A tall filter runs transposed: unit row strides instead of unit column strides, ALIGN 1.
    aligns = sorted({tc.alignment_for(size, (), e) for *_, size, kh, kw in SHAPES for e in (2, 4) if kh <= kw})
    correlate = [(("BLOCK_M", "BLOCK_N", "ALIGN"), (*b, a)) for b in tc.CORRELATE_BLOCKS for a in aligns]
    transposed = [(("BLOCK_M", "BLOCK_N", "ALIGN"), (*b, 1)) for b in tc.CORRELATE_BLOCKS]
    wgrad = [(("BLOCK_I", "BLOCK_J", "BLOCK_X", "ALIGN"), (*b, a)) for b in tc.WGRAD_BLOCKS for a in aligns]
    prefix = "fma_" if cuda_cores else ""
    kernels = [(prefix + "toeplitz_correlate", tc._toeplitz_correlate_kernel, correlate, flags, ("s_sw", "o_sw")),
               (prefix + "toeplitz_correlate_transposed", tc._toeplitz_correlate_kernel, transposed, flags,
                ("s_sh", "o_sh")),
               (prefix + "hankel_wgrad", tc._hankel_wgrad_kernel, wgrad, flags, ("x_sw", "g_sw"))]
    return _compile_triton(kernels, arch_num, warps_list=tc.CUDA_CORE_WARPS if cuda_cores else tc.TENSOR_CORE_WARPS)


def gemm_step_work(r: KernelReport, tdt: str, pass_: str, n: int, c: int, size: int, kh: int, kw: int):
    """(GEMM steps over all channels, FLOPs per step) of GEMM kernel report `r` for one benchmark case, following
    the kernel's own walk; None when the launcher would not run this compiled variant for it (another pass,
    dtype, ALIGN, or the transposed form)."""
    from lkconv import tensorcore_kernels as tc
    from lkconv.triton_kernels import _useful_taps

    kind = r.kernel.split()[1].removeprefix("fma_")
    if not r.kernel.endswith(tdt) or (pass_ == "backward_weight") != (kind == "hankel_wgrad"):
        return None
    pad = (kh // 2, kw // 2)
    off = pad if pass_ != "backward_input" else (kh - 1 - pad[0], kw - 1 - pad[1])
    i0, i1 = _useful_taps(kh, size, size, off[0])
    j0, j1 = _useful_taps(kw, size, size, off[1])
    khc, kwc = i1 - i0 + 1, j1 - j0 + 1
    elem = 4 if tdt == "fp32" else 2
    cfg = r.config
    if kind.startswith("toeplitz_correlate"):
        # The launcher's choice: transposed for a tall filter, ALIGN from the map width.
        tall = kh > kw
        align = 1 if tall else tc.alignment_for(size, (), elem)
        if (kind == "toeplitz_correlate_transposed") != tall or cfg["ALIGN"] != align:
            return None
        bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
        rows, cols = ((khc, off[0] - i0), (kwc, off[1] - j0)) if not tall else \
            ((kwc, off[1] - j0), (khc, off[0] - i0))
        steps = c * toeplitz_steps(bm, bn, n, size, size, size, size, rows[0], cols[0], rows[1], cols[1],
                                   (-cols[1]) % 16)
        return steps, 2 * bm * 16 * bn
    bi, bj, bx = cfg["BLOCK_I"], cfg["BLOCK_J"], cfg["BLOCK_X"]
    if cfg["ALIGN"] != tc.alignment_for(size, (), elem):
        return None
    steps = c * hankel_steps(bi, bj, bx, n, size, size, size, size, khc, kwc, pad[0] - i0, pad[1] - j0, cfg["ALIGN"])
    return steps, 2 * bi * bx * bj


def toeplitz_steps(bm: int, bn: int, n: int, h: int, w: int, oh: int, ow: int, khc: int, kwc: int, off_t: int,
                   off_l: int, shift: int = 0) -> int:
    """MMA steps (one filter row x 16 source columns) that one channel of the Toeplitz correlation issues over
    the batch, following the kernel's own walk: tiles of `bm` rows counted over (row, image), filter rows and
    16-column steps that read padding only skipped; `shift`: the columns the window starts left of the first
    tap's, for aligned loads."""
    steps = 0
    for m0 in range(0, n * oh, bm):
        ys = [m // n for m in range(m0, min(m0 + bm, n * oh))]
        i_lo, i_hi = max(0, off_t - max(ys)), min(khc, h + off_t - min(ys))
        for x0 in range(0, ow, bn):
            col0 = x0 - off_l - shift
            kb_lo = max(0, -col0) // 16
            kb_hi = min(_ceil_div(min(bn, ow - x0) + kwc - 1 + shift, 16), _ceil_div(w - col0, 16))
            steps += max(0, i_hi - i_lo) * max(0, kb_hi - kb_lo)
    return steps


def hankel_steps(bi: int, bj: int, bx: int, n: int, h: int, w: int, oh: int, ow: int, khc: int, kwc: int,
                 pad_t: int, pad_l: int, align: int = 1) -> int:
    """MMA steps (one input row x BX output columns) of one channel's Hankel weight gradient, over its tap
    blocks, following the kernel's skips (`pad_t`, `pad_l` for the cropped filter; the column walk starts on an
    `align` boundary)."""
    steps = 0
    for ib in range(_ceil_div(khc, bi)):
        rows = sum(1 for sy in range(h) if 0 <= sy + pad_t - ib * bi and sy + pad_t - ib * bi - (bi - 1) < oh)
        for jb in range(_ceil_div(kwc, bj)):
            x_lo = max(0, pad_l - jb * bj - (bj - 1)) // align * align
            x_hi = min(ow, w + pad_l - jb * bj)
            steps += n * rows * max(0, _ceil_div(x_hi - x_lo, bx))
    return steps


def tensorcore_predictions(reports: Sequence[KernelReport]) -> List[Prediction]:
    """Per benchmark shape, pass and dtype: the tensor-core config with the best prediction. A step of one program
    takes the longest of its issue time (the hot loop's instructions of all its warps over the SM's 4 schedulers),
    its MMA time (at the peak of the MMA kind in the loop) and its shared-memory time (operands staged and read
    back, 128 B/clk); enough resident programs are assumed to overlap the three."""
    clock = SM90_SMS * SM90_CLOCK_GHZ * 1e9
    out = []
    for shape, n, c, size, kh, kw, pass_, useful, dtype, tdt in _prediction_cases():
        elem = 4 if tdt == "fp32" else 2
        best = None
        for r in reports:
            work = gemm_step_work(r, tdt, pass_, n, c, size, kh, kw)
            if work is None or not r.hot_loop.get("MMA") or not work[0]:
                continue
            steps, flops = work
            cfg, warps = r.config, r.config["num_warps"]
            m, n_, k = ((cfg["BLOCK_M"], cfg["BLOCK_N"], 16) if "BLOCK_M" in cfg
                        else (cfg["BLOCK_I"], cfg["BLOCK_J"], cfg["BLOCK_X"]))
            operands = (m * k + k * n_) * elem
            mma_kind = "HGMMA" if r.note == "HGMMA" else "HMMA"
            instructions = sum(r.hot_loop.values()) * warps
            times = {"issue": instructions / 4,
                     "MMA": flops / (PEAK_MMA_TFLOPS[mma_kind][tdt] * 1e12 / clock),
                     "shared memory": 2 * operands / SMEM_BYTES_PER_CLK}
            bound = max(times, key=times.get)
            util = useful / (steps * flops / 2)
            tflops = flops / times[bound] * clock / 1e12 * util
            occ = occupancy("sm_90", r.regs, r.static_smem, 32 * warps)
            pred = Prediction(shape, pass_, dtype, "tensorcore", r.kernel,
                              r.kernel.split("[")[1].split("]")[0] + f", {mma_kind}", r.regs, r.spill_bytes,
                              r.static_smem, 32 * warps, occ["fraction"], occ["limiter"], 0.0, util, tflops,
                              "code outside the MMA loop (the outer filter-row/input-row loop, the finiteness "
                              "check, stores, the weight gradient's partial sums), the per-call band table "
                              "and padded input, latency not hidden by other programs",
                              step_instructions=instructions, step_mma_flops=flops,
                              step_smem_bytes=2 * operands, step_global_bytes=operands, bound=bound)
            if best is None or pred.predicted_useful_tflops > best.predicted_useful_tflops:
                best = pred
        if best:
            out.append(best)
    return out


# ---- output ---------------------------------------------------------------------------------------------------------
def table(predictions: Sequence[Prediction], reports: Sequence[KernelReport]) -> str:
    lines = ["PREDICTED (static, from the sm_90 code; no GPU measured these)", "",
             f"{'shape':<12} {'pass':<16} {'dtype':<9} {'impl':<7} {'config':<38} {'regs':>4} {'spill':>5} {'occ':>5} "
             f"{'FFMA%':>6} {'useful%':>7} {'pred. useful TFLOP/s':>21}"]
    for p in predictions:
        lines.append(f"{p.shape:<12} {p.pass_:<16} {p.dtype:<9} {p.impl:<7} {p.config[:38]:<38} {p.regs:>4} "
                     f"{p.spill_bytes:>5} "
                     f"{100 * p.occupancy:>4.0f}% {100 * p.ffma_share:>5.1f}% {100 * p.utilization:>6.1f}% "
                     f"{p.predicted_useful_tflops:>21.1f}")
    lines += ["", f"{'kernel':<72} {'regs':>4} {'spill':>5} {'hot loop: instructions by class':<40}"]
    for r in reports:
        mix = " ".join(f"{k}:{v}" for k, v in sorted(r.hot_loop.items(), key=lambda kv: -kv[1]))
        lines.append(f"{r.kernel[:72]:<72} {r.regs:>4} {r.spill_bytes:>5} FFMA {100 * r.ffma_share:.0f}% | {mix}"
                     + (f" ({r.note})" if r.note else ""))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sass", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="sm_90,sm_80", help="comma list of sm_90, sm_80")
    p.add_argument("--no-triton", action="store_true", help="only the CUDA kernels")
    p.add_argument("--out", default=None, help="results JSON (predictions, labelled static)")
    p.add_argument("--cache", default=os.path.join(ROOT, "build", "sass"), help="where cubins are cached")
    args = p.parse_args(argv)
    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    bad = [a for a in archs if a not in PEAK_FP32_TFLOPS]
    if bad:
        p.error(f"argument --arch: unknown {bad}; choose from {', '.join(PEAK_FP32_TFLOPS)}")
    try:
        all_reports, predictions = [], []
        for arch in archs:
            reports = kernel_reports(arch, compile_cuda(arch, args.cache))
            all_reports += reports
            if arch == "sm_90":
                predictions += cuda_predictions(reports, arch)
        if not args.no_triton:
            triton = triton_reports(90)
            all_reports += triton
            predictions += triton_predictions(triton)
            tensorcore = tensorcore_reports(90)
            all_reports += tensorcore
            predictions += tensorcore_predictions(tensorcore)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"python -m bench.sass: error: {exc}", file=sys.stderr)
        return 2
    print(table(predictions, all_reports))
    if args.out:
        from .environment import describe_environment

        import torch

        data = dict(kind="predicted (static)", environment=describe_environment(torch.device("cpu"), measure_cpu=False),
                    peak_fp32_tflops=PEAK_FP32_TFLOPS, peak_mma_tflops=PEAK_MMA_TFLOPS,
                    model=__doc__.split("\n\n")[1],
                    predictions=[dataclasses.asdict(x) for x in predictions],
                    kernels=[dataclasses.asdict(r) for r in all_reports])
        from .results import _atomic_write

        _atomic_write(args.out, json.dumps(data, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
