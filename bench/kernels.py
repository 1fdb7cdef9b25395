"""Kernel-level benchmark: every lkconv backend against F.conv2d (NCHW and channels_last), per pass.

A row is one (shape, kernel, dtype, pass, implementation, layout). Every benchmarked call is first checked
against a float64 reference: its error goes in the row, and a call whose error exceeds twice PyTorch's own
(plus a floor) is marked wrong and gets no speed-up.
"""

from __future__ import annotations

import importlib
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

import lkconv
from lkconv.geometry import describe

from .timing import time_fn

log = logging.getLogger(__name__)

PASSES = ("forward", "backward_input", "backward_weight", "fwd_bwd")
LAYOUTS = ("nchw", "channels_last")

# (name, channels, map size, kernel or None for "the swept/chosen k")
REPLKNET_31B = [("replknet31b.s1", 128, 56, 31), ("replknet31b.s2", 256, 28, 29), ("replknet31b.s3", 512, 14, 27),
                ("replknet31b.s4", 1024, 7, 13)]
CONVNEXT_T = [("convnext_t.s1", 96, 56, None), ("convnext_t.s2", 192, 28, None), ("convnext_t.s3", 384, 14, None),
              ("convnext_t.s4", 768, 7, None)]


@dataclass(frozen=True)
class Shape:
    name: str
    n: int
    c: int
    size: int
    k: int  # kernel height (and width unless kw is given)
    kw: int = 0  # kernel width of a rectangular kernel; 0: square

    @property
    def kernel(self):
        return (self.k, self.kw or self.k)


@dataclass
class Row:
    shape: str
    n: int
    c: int
    size: int
    k: int
    dtype: str
    pass_: str
    impl: str
    layout: str
    median_ms: float = math.nan
    p20_ms: float = math.nan
    p80_ms: float = math.nan
    nominal_flops: float = 0.0
    useful_flops: float = 0.0
    max_rel_err: float = math.nan
    correct: bool = True
    speedup_vs_torch_nchw: float = math.nan
    speedup_vs_torch_channels_last: float = math.nan
    peak_fraction: float = math.nan  # useful FLOP/s over the machine's measured FMA peak (CPU)
    note: str = ""

    def key(self):
        return (self.shape, self.n, self.c, self.size, self.k, self.dtype, self.pass_, self.impl, self.layout)

    def rate(self, useful: bool = True) -> float:
        """FLOP/s (useful or nominal)."""
        flops = self.useful_flops if useful else self.nominal_flops
        return flops / (self.median_ms * 1e-3) if self.median_ms == self.median_ms and self.median_ms > 0 else 0.0

    def as_dict(self):
        d = asdict(self)
        d["pass"] = d.pop("pass_")
        return d


@dataclass
class Impl:
    """A depthwise implementation with F.conv2d's signature, run in one memory layout."""

    name: str
    fn: Callable
    layout: str
    backend: Optional[str] = None  # lkconv backend to force ("auto": let the dispatcher choose)
    is_reference: bool = False  # PyTorch's own F.conv2d

    def __call__(self, x, w, b, padding):
        if self.backend is None:
            return self.fn(x, w, b, 1, padding, 1, x.shape[1])
        if self.backend == "auto":
            return self.fn(x, w, b, 1, padding)
        with lkconv.use_backend(self.backend):
            return self.fn(x, w, b, 1, padding)


def torch_impls() -> List[Impl]:
    return [Impl("torch", F.conv2d, layout, is_reference=True) for layout in LAYOUTS]


def lkconv_impls(device: torch.device, layouts: Sequence[str]) -> List[Impl]:
    out = []
    for backend, status in lkconv.available_backends().items():
        if backend == "torch" or status != "available":
            continue
        if device.type == "cpu" and backend != "cpu":
            continue  # the Triton interpreter is for testing, not timing
        if device.type == "cuda" and backend == "cpu":
            continue
        out += [Impl(f"lkconv-{backend}", lkconv.depthwise_conv2d, layout, backend=backend) for layout in layouts]
    # What a user gets: the dispatcher's choice (which may be PyTorch's own kernel where that is faster).
    out += [Impl("lkconv-auto", lkconv.depthwise_conv2d, layout, backend="auto") for layout in layouts]
    return out


def extra_impl(spec: str, layouts: Sequence[str]) -> List[Impl]:
    """`module:callable`: any implementation with F.conv2d's signature (input, weight, bias, stride, padding,
    dilation, groups), e.g. a locally built implicit-GEMM extension."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"expected module:callable, got {spec!r}")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"cannot import {module!r} ({exc})") from None
    fn = getattr(mod, attr, None)
    if fn is None:
        raise AttributeError(f"module {module!r} has no attribute {attr!r}")
    if not callable(fn):
        raise TypeError(f"{spec} is not callable")
    return [Impl(spec, fn, layout) for layout in layouts]


SHAPE_SETS = ("sweep", "replknet31b", "convnext", "rect")
# Rectangular kernels (SLaK's decomposed 51x5 / 5x51 pair) on the sweep's map.
RECT_KERNELS = ((51, 5), (5, 51))


def shapes_for(kind: str, kernel_sizes: Sequence[int], batch: int, convnext_k: int, sweep_channels: int,
               sweep_size: int) -> List[Shape]:
    if kind == "sweep":
        return [Shape(f"sweep.c{sweep_channels}.{sweep_size}", batch, sweep_channels, sweep_size, k)
                for k in kernel_sizes]
    if kind == "replknet31b":
        return [Shape(name, batch, c, s, k) for name, c, s, k in REPLKNET_31B]
    if kind == "rect":
        return [Shape(f"rect.c{sweep_channels}.{sweep_size}.{kh}x{kw}", batch, sweep_channels, sweep_size, kh, kw)
                for kh, kw in RECT_KERNELS]
    if kind == "convnext":
        return [Shape(name.replace("_t", f"_t.k{convnext_k}"), batch, c, s, convnext_k) for name, c, s, _ in
                CONVNEXT_T]
    raise ValueError(f"unknown shape set {kind!r} (sweep, replknet31b, convnext, rect)")


@dataclass
class Problem:
    """Inputs of one (shape, dtype, layout), plus float64 reference results."""

    x: torch.Tensor
    w: torch.Tensor
    b: torch.Tensor
    g: torch.Tensor
    padding: Tuple[int, int]
    ref: Dict[str, torch.Tensor] = field(default_factory=dict)


def make_problem(shape: Shape, dtype: torch.dtype, layout: str, device: torch.device, with_ref: bool) -> Problem:
    gen = torch.Generator(device="cpu").manual_seed(0)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape.n, shape.c, shape.size, shape.size, generator=gen)
    kh, kw = shape.kernel
    w = torch.randn(shape.c, 1, kh, kw, generator=gen) / max(kh, kw)
    b = torch.randn(shape.c, generator=gen)
    g = torch.randn(shape.n, shape.c, shape.size, shape.size, generator=gen)
    to = dict(device=device, dtype=dtype)
    p = Problem(x.to(**to).contiguous(memory_format=fmt), w.to(**to), b.to(**to),
                g.to(**to).contiguous(memory_format=fmt), (kh // 2, kw // 2))
    if with_ref:
        x64, w64, b64 = (t.to(device=device, dtype=torch.float64).requires_grad_() for t in (p.x, p.w, p.b))
        y64 = F.conv2d(x64, w64, b64, 1, p.padding, 1, shape.c)
        gx, gw = torch.autograd.grad(y64, (x64, w64), p.g.double())
        p.ref = {"forward": y64.detach(), "backward_input": gx, "backward_weight": gw}
    return p


def pass_callable(impl: Impl, pass_: str, p: Problem) -> Callable[[], object]:
    """A zero-argument callable running one pass of `impl` on problem `p` (graph built once outside)."""
    if pass_ == "forward":
        return lambda: impl(p.x, p.w, p.b, p.padding)
    if pass_ == "backward_input":
        x = p.x.detach().requires_grad_()
        y = impl(x, p.w, p.b, p.padding)
        return lambda: torch.autograd.grad(y, x, p.g, retain_graph=True)
    if pass_ == "backward_weight":
        w = p.w.detach().requires_grad_()
        y = impl(p.x, w, None, p.padding)
        return lambda: torch.autograd.grad(y, w, p.g, retain_graph=True)
    if pass_ == "fwd_bwd":
        x, w, b = (t.detach().requires_grad_() for t in (p.x, p.w, p.b))

        def run():
            y = impl(x, w, b, p.padding)
            return torch.autograd.grad(y, (x, w, b), p.g)

        return run
    raise ValueError(pass_)


def pass_results(impl: Impl, pass_: str, p: Problem) -> Dict[str, torch.Tensor]:
    """The tensors a pass produces, for the correctness column."""
    x, w, b = (t.detach().requires_grad_() for t in (p.x, p.w, p.b))
    y = impl(x, w, b, p.padding)
    out = {}
    if pass_ in ("forward", "fwd_bwd"):
        out["forward"] = y.detach()
    if pass_ != "forward":
        gx, gw = torch.autograd.grad(y, (x, w), p.g)
        if pass_ in ("backward_input", "fwd_bwd"):
            out["backward_input"] = gx
        if pass_ in ("backward_weight", "fwd_bwd"):
            out["backward_weight"] = gw
    return out


def relative_error(results: Dict[str, torch.Tensor], ref: Dict[str, torch.Tensor]) -> float:
    errs = [((r - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-30)).item()
            for k, r in results.items()]
    return max(errs) if errs else math.nan


def run(shapes: Sequence[Shape], dtypes: Sequence[torch.dtype], layouts: Sequence[str], passes: Sequence[str],
        impls: Sequence[Impl], device: torch.device, quick: bool, progress=None) -> List[Row]:
    """Measure every (shape, dtype, pass) for every implementation; PyTorch in both layouts always."""
    rows: List[Row] = []
    references = [i for i in impls if i.is_reference]
    others = [i for i in impls if not i.is_reference and i.layout in layouts]
    for shape in shapes:
        for dtype in dtypes:
            problems = {layout: make_problem(shape, dtype, layout, device, with_ref=True) for layout in LAYOUTS}
            call = describe(problems["nchw"].x, problems["nchw"].w, padding=problems["nchw"].padding)
            per_pass_nominal = 2.0 * shape.n * shape.c * call.out_h * call.out_w * shape.kernel[0] * shape.kernel[1]
            per_pass_useful = 2.0 * shape.n * shape.c * call.useful_taps()
            for pass_ in passes:
                mult = 3 if pass_ == "fwd_bwd" else 1
                group: List[Row] = []
                torch_err: Dict[str, float] = {}
                for impl in references + others:
                    p = problems[impl.layout]
                    row = Row(shape.name, shape.n, shape.c, shape.size, shape.k, str(dtype).replace("torch.", ""),
                              pass_, impl.name, impl.layout, nominal_flops=mult * per_pass_nominal,
                              useful_flops=mult * per_pass_useful)
                    try:
                        row.max_rel_err = relative_error(pass_results(impl, pass_, p), p.ref)
                        if impl.is_reference:
                            torch_err[impl.layout] = row.max_rel_err
                        else:
                            bound = 2 * max(torch_err.values(), default=0.0) + 8 * torch.finfo(dtype).eps
                            row.correct = row.max_rel_err <= bound
                        if not row.correct:
                            row.note = f"WRONG: error {row.max_rel_err:.2e} > {bound:.2e}; not timed"
                            log.warning("%s %s %s %s: %s", shape.name, pass_, impl.name, impl.layout, row.note)
                        else:
                            t = time_fn(pass_callable(impl, pass_, p), device, quick)
                            row.median_ms, row.p20_ms, row.p80_ms = t.median_ms, t.p20_ms, t.p80_ms
                    except torch.cuda.OutOfMemoryError:
                        row.note = "out of memory"
                        torch.cuda.empty_cache()
                    except lkconv.BackendNotSupportedError as exc:
                        # By design, not a failure: e.g. the tensor cores take float32 only on the TF32 opt-in.
                        row.note = f"refused: {'; '.join(exc.reasons)[:200]}"
                        log.info("%s %s %s: %s", shape.name, pass_, impl.name, row.note)
                    except RuntimeError as exc:
                        row.note = f"failed: {str(exc).splitlines()[0][:200]}"
                        log.warning("%s %s %s: %s", shape.name, pass_, impl.name, row.note)
                    group.append(row)
                    if progress:
                        progress(row)
                ref_time = {r.layout: r.median_ms for r in group if r.impl == "torch"}
                for r in group:
                    if r.correct and r.median_ms == r.median_ms:
                        r.speedup_vs_torch_nchw = ref_time.get("nchw", math.nan) / r.median_ms
                        r.speedup_vs_torch_channels_last = ref_time.get("channels_last", math.nan) / r.median_ms
                rows += group
    return rows
