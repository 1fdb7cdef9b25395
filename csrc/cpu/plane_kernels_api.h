// Entry points of the vectorised plane cores (plane_kernels.h), one table per instruction set.
#pragma once
#include <cstdint>

namespace lkconv {
namespace cpu {

template <typename T>
using CorrelateFn = void (*)(const T* src, int64_t src_stride, const T* w, int kh, int kw, T* out,
                             int64_t out_stride, int oh, int ow, int row_lo, int row_hi);
template <typename T>
using WgradFn = void (*)(const T* src, int64_t src_stride, const T* g, int64_t g_stride, int oh, int ow, int kh,
                         int kw, T* res, int64_t res_stride, int row_lo, int row_hi);

// Channel-vectorised correlation (channel_kernels.h): a source of pixels of `lanes` values (a zero-bordered
// buffer, or the caller's channels_last tensor read in place: `exact`); outputs of `lanes` values, out_px
// elements apart in rows out_row elements apart.
template <typename T>
using ChannelsFn = void (*)(const T* src, int64_t src_row, int64_t src_px, bool exact, int h, int bl, int wimg,
                            int bt, const T* w, int kh, int kw, const T* bias, T* out, int64_t out_row,
                            int64_t out_px, int oh, int ow);

// Channel-vectorised weight gradient of a K x K filter (channel_kernels.h), both tensors read in place; returns
// false (and does nothing) for a K it has no core for (K other than 3 and 5, or K > channels_wgrad_max_k).
template <typename T>
using ChannelsWgradFn = bool (*)(const T* img, int64_t img_row, int64_t img_px, int h, int w, const T* g,
                                 int64_t g_row, int64_t g_px, int ow, int top, int left, int k, T* res, int y_lo,
                                 int y_hi);

// Between an NCHW channel group and pixels of `lanes` channels (lane_transpose.h): pack writes dst[x * lanes + g] =
// src[g * src_row + x] (lanes from count on zero), unpack writes dst[g * dst_row + x] = src[x * lanes + g].
template <typename T>
using PackLanesFn = void (*)(const T* src, int64_t src_row, int count, int n, T* dst);
template <typename T>
using UnpackLanesFn = void (*)(const T* src, int count, int n, T* dst, int64_t dst_row);

struct PlaneKernels {
  const char* isa;
  CorrelateFn<float> correlate_f32;
  CorrelateFn<double> correlate_f64;
  WgradFn<float> wgrad_f32;
  WgradFn<double> wgrad_f64;
  ChannelsFn<float> channels_f32;
  ChannelsFn<double> channels_f64;
  int lanes_f32, lanes_f64;  // channels per vector of the channel-vectorised cores
  ChannelsWgradFn<float> channels_wgrad_f32;
  ChannelsWgradFn<double> channels_wgrad_f64;
  int channels_wgrad_max_k;
  double (*fma_loop_f32)(int64_t iters);  // 12 chains x lanes_f32 x 2 FLOP per iteration
  PackLanesFn<float> pack_lanes_f32;
  PackLanesFn<double> pack_lanes_f64;
  UnpackLanesFn<float> unpack_lanes_f32;
  UnpackLanesFn<double> unpack_lanes_f64;
};

// The fastest table this CPU can run (chosen once, from cpuid).
const PlaneKernels& plane_kernels();

// Per-ISA tables; only call one after checking that the CPU supports it.
PlaneKernels plane_kernels_generic();
#if defined(__x86_64__) && defined(__GNUC__)
PlaneKernels plane_kernels_avx2();
PlaneKernels plane_kernels_avx512();
#endif

}  // namespace cpu
}  // namespace lkconv
