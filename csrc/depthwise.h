// Declarations of the compiled passes. Padding is (top, bottom, left, right); stride and dilation are 1.
// `algorithm` picks the correlation cores of forward/backward-input: 0 by shape, 1 plane, 2 channel-vectorised
// over a gathered copy, 3 channel-vectorised reading a channels_last source in place.
#pragma once
#include <torch/extension.h>

namespace lkconv {
namespace cpu {
at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                   at::IntArrayRef padding, bool channels_last, int64_t algorithm = 0);
at::Tensor backward_input(const at::Tensor& grad_out, const at::Tensor& weight, int64_t in_h, int64_t in_w,
                          at::IntArrayRef padding, bool channels_last, int64_t algorithm = 0);
at::Tensor backward_weight(const at::Tensor& grad_out, const at::Tensor& input, int64_t kh, int64_t kw,
                           at::IntArrayRef padding);
// Whether the channel cores read a channels_last source in place (rather than gathering it) for a filter kw
// taps wide (after cropping) on a batch of `images` maps `width` pixels wide, when nothing forces a choice.
bool channels_read_in_place(int64_t kw, int64_t width, int64_t images, int64_t row_bytes);
bool prefers_channel_cores(bool channels_last, int64_t out_width, int64_t kw);
// Measured float32 FMA peak of this machine's picked instruction set over torch's threads, GFLOP/s.
double fma_peak_gflops(double seconds);
}  // namespace cpu

#ifdef LKCONV_WITH_CUDA
namespace cuda {
void bind(pybind11::module& m);
}  // namespace cuda
#endif
}  // namespace lkconv
