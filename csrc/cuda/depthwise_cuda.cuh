// Shared definitions of the CUDA depthwise kernels: parameter structs and host-side helpers.
#pragma once

#include <cstdint>

namespace lkconv {
namespace cuda {

// A strided 4-D tensor view (N, C, H, W); int64 strides so that no offset can overflow.
struct View4 {
  int64_t sn, sc, sh, sw;
};

// out[n, c, y, x] = sum_{i < khc, j < kwc} f[c, i, j] * src[n, c, y + i - off_t, x + j - off_l]  (+ bias[c])
// where f is the filter cropped to its useful taps: f[c, i, j] = w[c, ki0 + i, kj0 + j], or the 180-degree
// turned filter when `flip` (backward-input). Out-of-image source pixels read as zero.
struct CorrelateParams {
  const void* src;
  const void* w;
  const void* bias;  // may be null
  void* out;
  int n, c, h, w_;    // source dims
  int oh, ow;         // result dims
  View4 src_v, out_v;
  int64_t w_sc, w_sh, w_sw;
  int kh, kw;         // full filter
  int ki0, kj0;       // first useful tap (in the flipped filter when flip)
  int khc, kwc;       // useful taps
  int off_t, off_l;   // source offset of tap (0, 0) of the cropped filter
  int flip;
  int planes;         // planes (channels) per block
  int tile_rows;      // thread rows per plane: tile height = tile_rows * RY
};

// grad_w[c, ki0 + i, kj0 + j] = sum_{n, y, x} grad_out[n, c, y, x] * x[n, c, y + ki0 + i - pad_t, x + kj0 + j - pad_l]
struct WgradParams {
  const void* x;
  const void* g;
  float* partial;     // [c][splits][khc][kwc]
  int n, c, h, w_;
  int oh, ow;
  View4 x_v, g_v;
  int ki0, kj0, khc, kwc;
  int pad_t, pad_l;
  int splits;         // blocks per channel; each reduces a fixed, strided subset of the tiles
};

// Device limits the tiling depends on, for the current device (no ATen CUDA context header needed, so a
// toolkit without the cuBLAS/cuSPARSE headers still builds the kernels).
struct DeviceLimits {
  size_t smem_per_block_optin;
  int sm_count;
};
DeviceLimits current_device_limits();

}  // namespace cuda
}  // namespace lkconv
