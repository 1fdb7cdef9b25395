// Shared definitions of the CUDA depthwise kernels: parameter structs and host-side helpers.
#pragma once

#include <cstdint>
#include <string>

// The few spellings that differ between nvcc and the CUDA emulation (csrc/cuda_emulation), which compiles these
// same sources for the host to run them in the tests: kernel launches, dynamic shared memory and pointers into
// it (checked accesses under emulation), and the device that tensors must be on.
#ifdef LKCONV_CUDA_EMULATION
#include "lkemu.h"
#define LKCONV_LAUNCH(grid, block, smem, stream, ...) \
  ::lkemu::launcher(__VA_ARGS__, #__VA_ARGS__, grid, block, smem, stream)
#define LKCONV_DYNAMIC_SMEM(T, name) const ::lkemu::SharedPtr<T> name = ::lkemu::dynamic_shared<T>()
#define LKCONV_SMEM_PTR(T) ::lkemu::SharedPtr<T>
#define LKCONV_SMEM_CAST(T, p) ::lkemu::SharedPtr<T>(reinterpret_cast<std::remove_const_t<T>*>((p).raw()))
#define LKCONV_ON_DEVICE(t) ((t).is_cpu())
#define LKCONV_DEVICE_KIND "CPU (CUDA emulation)"
#else
#define LKCONV_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define LKCONV_DYNAMIC_SMEM(T, name) extern __shared__ T name[]
#define LKCONV_SMEM_PTR(T) T*
#define LKCONV_SMEM_CAST(T, p) reinterpret_cast<T*>(p)
#define LKCONV_ON_DEVICE(t) ((t).is_cuda())
#define LKCONV_DEVICE_KIND "CUDA"
#endif

namespace lkconv {
namespace cuda {

#if defined(__CUDACC__) || defined(LKCONV_CUDA_EMULATION)
// Four floats from shared memory in one 16-byte load (LDS.128); `p` must be 16-byte aligned (the emulation
// checks it). Device code only: the host-compiled launcher files do not see it.
#ifdef LKCONV_CUDA_EMULATION
struct alignas(16) Float4 {
  float x, y, z, w;
};
inline Float4 load4(::lkemu::SharedPtr<const float> p) {
  return ::lkemu::SharedPtr<const Float4>(reinterpret_cast<Float4*>(p.raw()))[0];
}
#else
using Float4 = float4;
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
#endif
#endif

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
  int lanes_x;        // threads across the tile: tile width = lanes_x * 4
  int src_rows;       // source rows held in shared memory per plane (the halo rows outside the map are not)
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

// The weight gradient of small maps the filter spans (wgrad_dense_kernel.cu): an H x W "same" call whose cropped
// filter is (2H - 1) x (2W - 1). Blocks of R columns (NB per row) and `images` images per block of `warps` warps.
struct DenseWgradPlan {
  int r = 0, nb = 0, warps = 0, images = 0;
  size_t smem = 0;
};
// False where the dense kernel does not apply (or does not fit `smem_limit`): the tile kernel runs.
bool dense_wgrad_plan(int n, int h, int w, int oh, int ow, int khc, int kwc, size_t smem_limit, DenseWgradPlan* plan);
// Writes p.partial ([c][p.splits][2H - 1][2W - 1], p.splits = ceil(n / plan.images)).
template <typename T>
void launch_dense_wgrad(const WgradParams& p, const DenseWgradPlan& plan, cudaStream_t stream);

// The forward / backward-input of small maps the filter spans (correlate_dense_kernel.cu): an H x W "same" call
// whose cropped filter is (2H - 1) x (2W - 1), a batch of 8 or more. RX columns x 8 images per thread; blocks of
// `channels` channels x `images` images, `threads` threads.
struct DenseCorrelatePlan {
  int rx = 0, images = 0, channels = 0, threads = 0;
  size_t smem = 0;
};
// False where the dense kernel does not apply (or does not fit `smem_limit`): the tile kernel runs.
bool dense_correlate_plan(int n, int h, int w, int oh, int ow, int khc, int kwc, size_t smem_limit,
                          DenseCorrelatePlan* plan);
template <typename T>
void launch_dense_correlate(const CorrelateParams& p, const DenseCorrelatePlan& plan, cudaStream_t stream);

// Device limits the tiling depends on, for the current device (no ATen CUDA context header needed, so a
// toolkit without the cuBLAS/cuSPARSE headers still builds the kernels).
struct DeviceLimits {
  size_t smem_per_block_optin;
  int sm_count;
};
DeviceLimits current_device_limits();

// The tile configuration a launcher picks for a call on the current GPU (without launching), or why none fits
// its shared memory (`refusal`); the launchers use the same code, so a call that is not refused up front runs.
// For the correlation: tile width, rows per thread, planes per block, thread rows per plane (each thread holds
// rows per thread x 4 columns); for the weight
// gradient: rows and images per tile, tile width, and the cropped filter rounded to the tap blocks.
struct TileConfig {
  std::string kernel;  // "" when no kernel runs (every tap reads padding only)
  int a = 0, b = 0, c = 0, d = 0, khc = 0, kwc = 0, khp = 0, kwp = 0;
  size_t smem = 0;
  int threads = 0;
  std::string refusal;
};
TileConfig correlate_tile_config(int n, int src_h, int src_w, int out_h, int out_w, int kh, int kw, int off_t,
                                 int off_l, bool channels_last, int element_size);
TileConfig weight_grad_tile_config(int n, int h, int w, int oh, int ow, int kh, int kw, int pad_t, int pad_l);

}  // namespace cuda
}  // namespace lkconv
