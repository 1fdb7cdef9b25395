"""The C++ CPU kernels (csrc/cpu): vectorised, multi-threaded, stride 1 and dilation 1.

Forward and backward-input run on one of two correlation cores: the plane cores (vectors along a row of one
channel) or the channel-vectorised cores (vectors across 16 channels of a pixel, padding taps skipped), picked
by shape in C++ (`prefer_channels` in csrc/cpu/depthwise_cpu.cpp); the channel cores take a channels_last source
either as a gathered, zero-bordered copy or read in place (`read_in_place`, same file). `cpu_algorithm` forces one
("planes", "channels" = gathered, "channels_in_place"), for tests and measurements."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch

from .. import _ext
from .base import Backend, common_refusals

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
ALGORITHMS = {"auto": 0, "planes": 1, "channels": 2, "channels_in_place": 3}
_algorithm = contextvars.ContextVar("lkconv_cpu_algorithm", default="auto")


@contextlib.contextmanager
def cpu_algorithm(name: str) -> Iterator[None]:
    """Within the block, the CPU forward/backward-input use the named correlation cores ("auto", "planes",
    "channels" or "channels_in_place")."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown CPU algorithm {name!r} (one of {', '.join(ALGORITHMS)})")
    token = _algorithm.set(name)
    try:
        yield
    finally:
        _algorithm.reset(token)


#: (largest kernel side, smallest N*C*H*W): channels_last float32 forward and backward-input calls with kernels
#: up to that side over activations at least that large go to oneDNN (the torch backend). Empty since the channel
#: cores read channels_last sources in place (csrc/cpu/depthwise_cpu.cpp, `read_in_place`): measured
#: (bench/results/cpu-rules.json), lkconv's best core is on par or faster at every shape (0.99-3.2x at 3x3 and
#: 5x5, forward and input gradient; before, oneDNN's sweep over all channels of a pixel row beat the cores'
#: gathered copies of 16 channels at a time for 3x3/5x5 kernels over activations of 0.7M/1.0M values and more). A test holds this table
#: to its evidence file: every row where oneDNN is more than 15% faster must be routed to it.
ONEDNN_CHANNELS_LAST: tuple = ()

#: NCHW float32 forwards that go to PyTorch's kernel (oneDNN): kernels up to `max_kernel` on maps `widths[0]` to
#: `widths[1]` wide over activations (N*C*H*W) of at least `min_values`, except where a row is whole vectors of
#: the plane cores. Measured (bench/results/cpu-rules.json and widths 20-40, N=4, C=256): oneDNN's NCHW path
#: (reorder to channel blocks, its jit kernel, reorder back) is 1.05-1.2x faster there at 3x3 and 5x5 (24, 28 and
#: 40 wide); lkconv is faster on rows of whole vectors (32 wide: 1.1-1.3x), on 20-wide maps, with one image
#: (1.4-1.7x at 28x28), from 7x7 kernels (on par at 28x28, then ahead), on 56x56 maps (on par at 3x3-7x7) and on
#: maps up to 14 wide (the channel cores: 1.0-1.3x at batch 4, 1.1-2x with one image). The input gradient stays on
#: lkconv everywhere (1.1-1.3x at 28x28 5x5-7x7; 0.97x at 3x3 with 256 channels, within noise).
ONEDNN_NCHW_FORWARD = {"max_kernel": 5, "widths": (21, 55), "min_values": 580_000}

#: {layout: (largest kernel side, widest map or None, smallest batch)}: float32 weight gradients with kernels up to
#: that side (on maps up to that width, from that batch on) go to PyTorch's kernel (the torch backend). Measured
#: (bench/results/cpu-rules.json): at 3x3 PyTorch's NCHW weight gradient is 1.1-2.6x faster than lkconv's
#: plane-core one at batch 4 on maps up to 28 wide (0.88-1.02x at 56x56), and 1.2-1.7x slower with one image (on
#: par at 7x7, 1024 channels).
#: channels_last weight gradients run on lkconv's channel-vectorised core (3x3 and 5x5, whole vectors of channels:
#: 1.0-3.5x oneDNN's speed at 3x3, on par from 256 channels at batch 4 and 1.3-3.5x below that); a 3x3 one goes
#: to oneDNN where it does not apply (a channel count that is not a multiple of the vector width: oneDNN is 1.6-5x
#: faster than the plane cores there) and where it measured slower (256 channels or more on maps of 28 and more at
#: batch 4, where a pixel's channels are 1 KiB apart and the image rows thrash the L1 sets: 0.87x).
#: From 5x5 up lkconv's weight gradient is faster everywhere (3x to 48x).
ONEDNN_WEIGHT_GRAD = {"channels_last": (3, None, 1), "nchw": (3, 28, 4)}


def _onednn_nchw_forward(call) -> bool:
    rule = ONEDNN_NCHW_FORWARD
    lo, hi = rule["widths"]
    whole_vectors = call.out_w % _ext._C.cpu_channel_lanes() == 0
    return (max(call.kh, call.kw) <= rule["max_kernel"] and lo <= call.out_w <= hi and not whole_vectors
            and call.n * call.c * call.h * call.w >= rule["min_values"])


def _channel_weight_grad_applies(call) -> bool:
    """Whether lkconv's channel-vectorised weight gradient takes this channels_last float32 call and is not
    measured slower than oneDNN's for it."""
    slower = call.kh <= 3 and call.c >= 256 and call.w >= 28 and call.n >= 4
    return (call.c % _ext._C.cpu_channel_lanes() == 0 and call.kh == call.kw and call.kh in (3, 5)
            and call.kh <= min(call.h, call.w) and not slower)


class CpuBackend(Backend):
    name = "cpu"

    def unavailable(self):
        return _ext.LOAD_ERROR

    def refusals(self, call):
        return common_refusals(call, ("cpu",), DTYPES)

    def auto_refusals(self, call):
        # Measured rules (bench/results/cpu-rules.json, `python -m bench.cpu_rules`: ConvNeXt-T and RepLKNet-31B
        # stage shapes, batch 1 and 4, kernels 3-29): ONEDNN_NCHW_FORWARD, ONEDNN_CHANNELS_LAST (now empty) and
        # ONEDNN_WEIGHT_GRAD.
        k = max(call.kh, call.kw)
        if not (call.dtype == torch.float32 and call.unit_stride_dilation):
            return []
        if call.pass_name == "backward_weight":
            max_kernel, max_width, min_batch = ONEDNN_WEIGHT_GRAD["channels_last" if call.channels_last else "nchw"]
            if call.channels_last and _channel_weight_grad_applies(call):
                return []
            if k <= max_kernel and (max_width is None or call.w <= max_width) and call.n >= min_batch:
                layout = "channels_last" if call.channels_last else "NCHW"
                return [f"PyTorch's weight gradient is faster for {layout} kernels up to {max_kernel}x{max_kernel}"
                        + (f" on maps up to {max_width} wide" if max_width else "")
                        + (f" at batch {min_batch} and more" if min_batch > 1 else "")
                        + " (measured, bench/results/cpu-rules.json)"]
            return []
        if not call.channels_last:
            if call.pass_name == "forward" and _onednn_nchw_forward(call):
                rule = ONEDNN_NCHW_FORWARD
                return [f"oneDNN (torch backend) is faster for NCHW forwards with kernels up to "
                        f"{rule['max_kernel']}x{rule['max_kernel']} on maps {rule['widths'][0]}-{rule['widths'][1]} "
                        f"wide (rows not whole vectors) over {rule['min_values']:,} values or more (measured, "
                        "bench/results/cpu-rules.json)"]
            return []
        for max_kernel, min_values in ONEDNN_CHANNELS_LAST:
            if k <= max_kernel and call.n * call.c * call.h * call.w >= min_values:
                return [f"oneDNN (torch backend) is faster for channels_last forward/backward-input with kernels up "
                        f"to {max_kernel}x{max_kernel} on activations of {min_values:,} values or more (measured, "
                        "bench/results/cpu-rules.json)"]
        return []

    def forward(self, input, weight, bias, call):
        return _ext._C.cpu_forward(input, weight, bias, list(call.padding), call.channels_last,
                                   ALGORITHMS[_algorithm.get()])

    def backward_input(self, grad_out, weight, call):
        # call.channels_last describes grad_out here (the op builds the call from it).
        return _ext._C.cpu_backward_input(grad_out, weight, call.h, call.w, list(call.padding), call.channels_last,
                                          ALGORITHMS[_algorithm.get()])

    def backward_weight(self, grad_out, input, call):
        return _ext._C.cpu_backward_weight(grad_out, input, call.kh, call.kw, list(call.padding))
