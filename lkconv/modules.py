"""`LKConv2d`: a drop-in `nn.Conv2d` for depthwise convolutions that runs on lkconv's kernels."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .functional import depthwise_conv2d


def _zero_padding() -> Tuple[int, int]:
    return (0, 0)


class LKConv2d(nn.Conv2d):
    """`nn.Conv2d` with `groups == in_channels == out_channels`, computed by `lkconv.depthwise_conv2d`.

    Same constructor, parameters (`weight` of shape (C, 1, kh, kw), `bias`) and state-dict keys as
    `nn.Conv2d`, so state dicts move between the two either way.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None):
        if not (groups == in_channels == out_channels):
            raise ValueError(
                "LKConv2d is a depthwise convolution and needs groups == in_channels == out_channels, got "
                f"in_channels={in_channels}, out_channels={out_channels}, groups={groups}; use nn.Conv2d "
                "for other convolutions")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = _zero_padding()
        else:
            padding = self.padding
        if torch.jit.is_scripting() or input.dim() < 3 or input.shape[-3] != self.in_channels:
            # TorchScript cannot compile lkconv's dispatch (scripted modules run F.conv2d, same results); a
            # channel count that does not match gets nn.Conv2d's own error message.
            return F.conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups)
        return self._lkconv_forward(input, weight, bias, padding)

    @torch.jit.unused
    def _lkconv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                        padding: Union[str, Tuple[int, ...]]) -> torch.Tensor:
        return depthwise_conv2d(input, weight, bias, self.stride, padding, self.dilation)

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d) -> "LKConv2d":
        """An LKConv2d with the configuration of `conv` that holds the very same Parameter objects (so an
        optimizer built on the old module keeps working)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta",
                  dtype=conv.weight.dtype)
        new.weight = conv.weight
        new.bias = conv.bias
        new.train(conv.training)
        return new
