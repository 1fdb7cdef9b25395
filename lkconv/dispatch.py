"""Which backend runs a call: forced by `use_backend`/LKCONV_BACKEND, else the first that accepts it.

Unforced order on CUDA: the tensor-core or the CUDA-core kernels first, by the predicted figures for the pass and
shape, then the other, then triton, then the PyTorch reference (see `CUDA_RULE` for the evidence);
on CPU: the C++ kernels, then the reference. A forced backend that refuses a call raises
BackendNotSupportedError naming the reasons; it never falls back.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from typing import Dict, Iterator, List, Optional

import torch

from .backends import BACKENDS, Backend, BackendNotSupportedError
from .geometry import ConvCall, IntPair, Padding, UnplannableCall, describe

ENV_VAR = "LKCONV_BACKEND"
PASSES = ("forward", "backward_input", "backward_weight")
_forced: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("lkconv_backend", default=None)


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown lkconv backend {name!r}; choose one of {sorted(BACKENDS)}")
    return name


def forced_backend() -> Optional[str]:
    """The backend forced by `use_backend` (innermost wins) or the LKCONV_BACKEND variable, else None."""
    name = _forced.get()
    if name is None:
        name = os.environ.get(ENV_VAR) or None
    if name in (None, "auto"):
        return None
    return _check_name(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run every lkconv call inside the block on backend `name` ("cpu", "cuda", "tensorcore", "triton", "torch",
    or "auto").

    A call that backend cannot run raises BackendNotSupportedError instead of falling back.

    The backend is chosen when the ops run, so wrap the call of a torch.compile'd function (`with
    use_backend("cpu"): compiled(x)`), not code inside it: Dynamo cannot trace the context variable."""
    if torch.compiler.is_compiling():
        raise RuntimeError(
            "lkconv.use_backend cannot be entered inside a torch.compile'd region; wrap the call of the compiled "
            "function instead (`with lkconv.use_backend(...): compiled(x)`) or set LKCONV_BACKEND")
    if name != "auto":
        _check_name(name)
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def _order(call: ConvCall) -> List[str]:
    if call.device.type == "cuda":
        return _cuda_order(call)
    # Triton takes CPU tensors only under its interpreter and only when forced (a testing tool): not asked here.
    return ["cpu", "torch"]


#: Which GPU kernels go first on CUDA devices. Every GPU backend is verified in every test run (the CUDA kernels
#: under the CUDA emulation, the Triton and tensor-core kernels under the interpreter); no GPU has measured them,
#: so the static prediction of `python -m bench.sass` (bench/results/sass-static.json) decides until
#: measurements exist. The CUDA-core kernels go before the CUDA-core Triton kernels unless those are predicted
#: TRITON_MARGIN times faster, which they are nowhere: 1.25x faster at 28x28 k29 forward (less than what the
#: two models leave out differently: the CUDA one counts its loaders, the Triton one not its band table, padded
#: copies and outer loop) to 36x slower (the Triton GEMMs spend FMAs on the Toeplitz/Hankel zeros, most on 7x7
#: maps and in the weight gradient, where the CUDA kernels' dense pixel-pair walks spend none). The tensor-core
#: kernels (16-bit, or float32 once the user opts in to TF32) beat the CUDA-core kernels where the
#: Toeplitz/Hankel tiles are mostly useful work: forward and backward-input on maps of 14 and more with a filter
#: side of 27 and more (bf16 56x56 k31: 206 vs 39; 14x14 k27: 126 vs 55; 51x5: 200 vs 39; TF32 14x14 k27: 85 vs
#: 55), not on 7x7 maps (bf16 7x7 k13: 18 vs 42), and the weight gradient on maps of 28 and more with a filter
#: side of 27 and more in 16 bits (56x56 k31 bf16: 103 vs 39; 51x5: 35 vs 22, on 64x16 tap blocks), both sides
#: in TF32 (51x5 TF32: 18 vs 23), not on a 14x14 map (bf16: 21 vs 47). Outside
#: the benchmark shapes the rule is the same thresholds (tests/test_dispatch.py checks them against the file).
#: How much faster the static prediction must put the CUDA-core Triton kernels for them to go before the CUDA
#: kernels (the two models leave out different work, so a small predicted lead is no evidence). No prediction
#: reaches it, so `_cuda_order` has no Triton-first case; tests/test_dispatch.py fails when one does.
TRITON_MARGIN = 1.25
CUDA_RULE = ("tensorcore first for 16-bit (and opted-in TF32) NCHW calls whose map and filter pass "
             "TENSORCORE_RULE, else cuda, then tensorcore, then triton: predicted (static) useful TFLOP/s, "
             "bench/results/sass-static.json; no GPU measurement yet")
#: (pass, "16-bit" | "tf32") -> (smallest output side, smallest filter side, which side: "longer" | "shorter") for
#: the tensor-core kernels to go first.
TENSORCORE_RULE = {("forward", "16-bit"): (14, 27, "longer"), ("backward_input", "16-bit"): (14, 27, "longer"),
                   ("backward_weight", "16-bit"): (28, 27, "longer"), ("forward", "tf32"): (14, 27, "longer"),
                   ("backward_input", "tf32"): (14, 27, "longer"), ("backward_weight", "tf32"): (28, 27, "shorter")}


def tensorcore_first(call: ConvCall) -> bool:
    """Whether the predicted figures put the tensor-core kernels before the CUDA-core ones for this call's pass,
    precision and shape (whether it may run float32 at all is the backend's own refusal: the TF32 opt-in). Only
    for NCHW tensors: the predictions are for their vector loads, which channels_last rows (C elements apart)
    do not allow."""
    if call.channels_last:
        return False
    precision = "16-bit" if call.dtype in (torch.float16, torch.bfloat16) else "tf32"
    min_map, min_kernel, which = TENSORCORE_RULE[(call.pass_name, precision)]
    side = max(call.kh, call.kw) if which == "longer" else min(call.kh, call.kw)
    return min(call.out_h, call.out_w) >= min_map and side >= min_kernel


def _cuda_order(call: ConvCall) -> List[str]:
    gpu = ["tensorcore", "cuda"] if tensorcore_first(call) else ["cuda", "tensorcore"]
    return gpu + ["triton", "torch"]


def select(call: ConvCall) -> Backend:
    forced = forced_backend()
    if forced is not None:
        backend = BACKENDS[forced]
        reasons = backend.reasons(call, forced=True)
        if reasons:
            raise BackendNotSupportedError(forced, reasons)
        return backend
    for name in _order(call):
        backend = BACKENDS[name]
        if not backend.reasons(call):
            return backend
    return BACKENDS["torch"]


def available_backends() -> Dict[str, str]:
    """Backend name -> "available" or the reason it cannot run on this machine/build."""
    return {name: (b.unavailable() or "available") for name, b in BACKENDS.items()}


def explain(input: torch.Tensor, weight: torch.Tensor, stride: IntPair = 1, padding: Padding = 0,
            dilation: IntPair = 1) -> str:
    """Which backend runs `depthwise_conv2d(input, weight, stride=..., padding=..., dilation=...)` and why each
    other backend refuses it."""
    if isinstance(input, torch.Tensor) and input.dim() == 3:  # unbatched, as depthwise_conv2d takes it
        input = input.unsqueeze(0)
    forced = forced_backend()
    try:
        call = describe(input, weight, stride, padding, dilation)
    except UnplannableCall as exc:
        shape = tuple(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__
        verdict = ("runs on: torch (F.conv2d computes it, or raises its own error for a malformed call)"
                   if forced in (None, "torch") else f"refused: forced backend {forced!r} cannot run it")
        return (f"call: input {shape}, weight {tuple(getattr(weight, 'shape', ()))}\n{verdict}, because "
                f"lkconv's op does not take it: {exc}")
    lines = [f"call: N={call.n} C={call.c} {call.h}x{call.w} k={call.kh}x{call.kw} padding={call.padding} "
             f"stride={call.stride} dilation={call.dilation} {call.dtype} on {call.device} "
             f"({'channels_last' if call.channels_last else 'NCHW'})"]
    chosen = {}
    for pass_name in PASSES:
        try:
            chosen[pass_name] = select(dataclasses.replace(call, pass_name=pass_name)).name
        except BackendNotSupportedError as exc:
            chosen[pass_name] = None
            lines.append(f"refused ({pass_name}): {exc}")
    how = f" (forced by use_backend/{ENV_VAR})" if forced else ""
    lines.append("runs on: " + ", ".join(f"{p} -> {b}" for p, b in chosen.items() if b) + how)
    if call.device.type == "cuda" and not forced:
        lines.append(f"rule: {CUDA_RULE}")
    for pass_name in PASSES:
        pcall = dataclasses.replace(call, pass_name=pass_name)
        others = [n for n in _order(pcall) + [n for n in BACKENDS if n not in _order(pcall)] if n != chosen[pass_name]]
        for name in others:
            reasons = BACKENDS[name].reasons(pcall, forced=forced == name)
            lines.append(f"  {pass_name} {name}: " + ("; ".join(reasons) if reasons else "could run it (lower priority)"))
    return "\n".join(lines)
