// Forward and backward-input of the depthwise convolution on CUDA: both are a correlation of a zero-padded
// plane with a (possibly flipped) filter, so one kernel serves both passes.
//
// Tiling: a block holds `planes` channel planes, each a (tile_rows * RY) x TW output tile. The source tile
// with its halo and the cropped filters sit in shared memory (as float). Each thread owns one output column
// and RY consecutive rows, and walks every filter column j top to bottom: one shared-memory load of a source
// value and one of a filter value feed RY FMAs (the filter values slide through a register window). Threads
// of a warp read consecutive columns, so the source loads are conflict-free and the filter loads broadcast.
//
// Layouts: the loader walks the tile channel-fastest for channels_last tensors (so a block's `planes`
// channels are read contiguously) and column-fastest otherwise; nothing is copied to another layout.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "depthwise_cuda.cuh"

namespace lkconv {
namespace cuda {
namespace {

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}

template <typename T, int TW, int RY>
__global__ void __launch_bounds__(256) correlate_kernel(const CorrelateParams p) {
  LKCONV_DYNAMIC_SMEM(float, smem);
  const int P = p.planes, TR = p.tile_rows, TH = TR * RY;
  const int SR = TH + p.khc - 1, SC = TW + p.kwc - 1;  // source tile incl. halo
  LKCONV_SMEM_PTR(float) s_src = smem;                                  // [P][SR][SC]
  LKCONV_SMEM_PTR(float) s_w = smem + static_cast<int64_t>(P) * SR * SC;  // [P][khc][kwc]

  const int groups_per_n = (p.c + P - 1) / P;
  const int n = blockIdx.x / groups_per_n;
  const int c0 = (blockIdx.x % groups_per_n) * P;
  const int y0 = blockIdx.y * TH, x0 = blockIdx.z * TW;
  const T* src = static_cast<const T*>(p.src);
  const T* w = static_cast<const T*>(p.w);
  const int nthreads = blockDim.x;
  const bool channels_fastest = p.src_v.sc == 1;

  // Filters of the block's channels, cropped (and flipped for backward-input).
  const int taps = p.khc * p.kwc;
  for (int e = threadIdx.x; e < P * taps; e += nthreads) {
    const int pl = e / taps, t = e % taps;
    const int c = c0 + pl;
    float v = 0.f;
    if (c < p.c) {
      int i = p.ki0 + t / p.kwc, j = p.kj0 + t % p.kwc;
      if (p.flip) i = p.kh - 1 - i, j = p.kw - 1 - j;
      v = to_float(w[c * p.w_sc + i * p.w_sh + j * p.w_sw]);
    }
    s_w[e] = v;
  }
  // Source tile with halo; zero outside the image (that is the padding) and for channels past C.
  const int tile_elems = SR * SC;
  for (int e = threadIdx.x; e < P * tile_elems; e += nthreads) {
    int pl, r, col;
    if (channels_fastest) {
      pl = e % P;
      const int rc = e / P;
      r = rc / SC, col = rc % SC;
    } else {
      pl = e / tile_elems;
      const int rc = e % tile_elems;
      r = rc / SC, col = rc % SC;
    }
    const int c = c0 + pl;
    const int sy = y0 + r - p.off_t, sx = x0 + col - p.off_l;
    float v = 0.f;
    if (c < p.c && sy >= 0 && sy < p.h && sx >= 0 && sx < p.w_)
      v = to_float(src[n * p.src_v.sn + c * p.src_v.sc + sy * p.src_v.sh + sx * p.src_v.sw]);
    s_src[static_cast<int64_t>(pl) * tile_elems + r * SC + col] = v;
  }
  __syncthreads();

  const int lx = threadIdx.x % TW;
  const int rest = threadIdx.x / TW;
  const int tr = rest % TR, pl = rest / TR;
  if (pl >= P) return;
  const int row0 = tr * RY;
  LKCONV_SMEM_PTR(const float) s_plane = s_src + static_cast<int64_t>(pl) * tile_elems + row0 * SC + lx;
  LKCONV_SMEM_PTR(const float) s_filter = s_w + pl * taps;

  float acc[RY];
#pragma unroll
  for (int r = 0; r < RY; ++r) acc[r] = 0.f;

  const int khc = p.khc;
  for (int j = 0; j < p.kwc; ++j) {
    LKCONV_SMEM_PTR(const float) scol = s_plane + j;
    LKCONV_SMEM_PTR(const float) wcol = s_filter + j;
    // win[r] = f[t - r][j]: the filter value that source row t contributes to output row r.
    float win[RY];
#pragma unroll
    for (int r = 0; r < RY; ++r) win[r] = 0.f;
    for (int t = 0; t < RY + khc - 1; ++t) {
#pragma unroll
      for (int r = RY - 1; r > 0; --r) win[r] = win[r - 1];
      win[0] = t < khc ? wcol[t * p.kwc] : 0.f;
      const float v = scol[t * SC];
      if (t >= RY - 1 && t < khc) {  // every row of the strip has a filter row here
#pragma unroll
        for (int r = 0; r < RY; ++r) acc[r] = fmaf(win[r], v, acc[r]);
      } else {
        // Strip edges: rows without a filter row for this t are skipped, not multiplied by zero, so an Inf
        // in the input cannot become a NaN in an output that does not see it.
#pragma unroll
        for (int r = 0; r < RY; ++r)
          if (t - r >= 0 && t - r < khc) acc[r] = fmaf(win[r], v, acc[r]);
      }
    }
  }

  const int c = c0 + pl;
  const int x = x0 + lx;
  if (c >= p.c || x >= p.ow) return;
  const float b = p.bias ? to_float(static_cast<const T*>(p.bias)[c]) : 0.f;
  T* out = static_cast<T*>(p.out) + n * p.out_v.sn + c * p.out_v.sc + x * p.out_v.sw;
#pragma unroll
  for (int r = 0; r < RY; ++r) {
    const int y = y0 + row0 + r;
    if (y < p.oh) out[y * p.out_v.sh] = static_cast<T>(acc[r] + b);
  }
}

struct Config {
  int tw, ry, planes, tile_rows;
  size_t smem;
};

int next_pow2(int v) {
  int p = 1;
  while (p < v) p <<= 1;
  return p;
}

size_t smem_bytes(int tw, int ry, int planes, int tile_rows, int khc, int kwc) {
  const size_t sr = tile_rows * ry + khc - 1, sc = tw + kwc - 1;
  return sizeof(float) * static_cast<size_t>(planes) * (sr * sc + static_cast<size_t>(khc) * kwc);
}

// Tile shape by map size: 32-wide tiles for wide maps, narrower tiles with several planes per block for the
// deep stages (7x7, 14x14) so few threads idle; channels_last blocks take >= 8 channels to read coalesced.
// When the tile does not fit the GPU's shared memory: fewer planes, then fewer rows, then narrower and shorter
// strips; false (and why) when even the smallest tile does not fit.
bool choose_config(int oh, int ow, int khc, int kwc, bool channels_last, size_t smem_limit, Config* out,
                   std::string* why) {
  Config cfg;
  cfg.tw = ow > 16 ? 32 : (ow > 8 ? 16 : 8);
  cfg.ry = oh >= 16 ? 8 : 4;
  const int max_rows = 256 / cfg.tw;
  cfg.tile_rows = std::min(max_rows, next_pow2((oh + cfg.ry - 1) / cfg.ry));
  if (channels_last) cfg.tile_rows = std::min(cfg.tile_rows, std::max(1, max_rows / 8));
  cfg.planes = max_rows / cfg.tile_rows;
  while (true) {
    cfg.smem = smem_bytes(cfg.tw, cfg.ry, cfg.planes, cfg.tile_rows, khc, kwc);
    if (cfg.smem <= smem_limit) {
      *out = cfg;
      return true;
    }
    if (cfg.planes > 1) {
      cfg.planes /= 2;
    } else if (cfg.tile_rows > 1) {
      cfg.tile_rows /= 2;
    } else if (cfg.tw > 8) {
      cfg.tw /= 2;
    } else if (cfg.ry > 4) {
      cfg.ry /= 2;
    } else {
      *why = "a " + std::to_string(khc) + "x" + std::to_string(kwc) + " filter needs " + std::to_string(cfg.smem) +
             " bytes of shared memory even with the smallest tile, more than this GPU offers (" +
             std::to_string(smem_limit) + ")";
      return false;
    }
  }
}

template <typename T, int TW, int RY>
void launch_typed(const CorrelateParams& p, const Config& cfg, cudaStream_t stream) {
  if (cfg.smem > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(correlate_kernel<T, TW, RY>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(cfg.smem)));
  const int th = cfg.tile_rows * RY;
  const int64_t plane_groups = static_cast<int64_t>(p.n) * ((p.c + cfg.planes - 1) / cfg.planes);
  TORCH_CHECK(plane_groups < (1LL << 31), "lkconv cuda: too many planes (", plane_groups, " blocks)");
  const int64_t row_tiles = (p.oh + th - 1) / th, col_tiles = (p.ow + TW - 1) / TW;
  TORCH_CHECK(row_tiles < 65536 && col_tiles < 65536, "lkconv cuda: feature map too large (", p.oh, "x", p.ow,
              ")");
  dim3 grid(static_cast<unsigned>(plane_groups), static_cast<unsigned>(row_tiles),
            static_cast<unsigned>(col_tiles));
  dim3 block(TW * cfg.tile_rows * cfg.planes);
  LKCONV_LAUNCH(grid, block, cfg.smem, stream, correlate_kernel<T, TW, RY>)(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch(const CorrelateParams& p, const Config& cfg, cudaStream_t stream) {
  const int key = cfg.tw * 10 + cfg.ry;
  switch (key) {
    case 328: launch_typed<T, 32, 8>(p, cfg, stream); break;
    case 324: launch_typed<T, 32, 4>(p, cfg, stream); break;
    case 168: launch_typed<T, 16, 8>(p, cfg, stream); break;
    case 164: launch_typed<T, 16, 4>(p, cfg, stream); break;
    case 88: launch_typed<T, 8, 8>(p, cfg, stream); break;
    case 84: launch_typed<T, 8, 4>(p, cfg, stream); break;
    default: TORCH_CHECK(false, "lkconv cuda: no tile configuration ", cfg.tw, "x", cfg.ry);
  }
}

View4 view(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

}  // namespace

// The taps [lo, hi] of a filter side that can touch real pixels when out[y] reads src[y + i - offset].
static void useful_taps(int k, int src_len, int out_len, int offset, int* lo, int* hi) {
  *lo = std::max(0, offset - out_len + 1);
  *hi = std::min(k - 1, offset + src_len - 1);
}

TileConfig correlate_tile_config(int src_h, int src_w, int out_h, int out_w, int kh, int kw, int off_t, int off_l,
                                 bool channels_last) {
  TileConfig out;
  int i_lo, i_hi, j_lo, j_hi;
  useful_taps(kh, src_h, out_h, off_t, &i_lo, &i_hi);
  useful_taps(kw, src_w, out_w, off_l, &j_lo, &j_hi);
  if (i_hi < i_lo || j_hi < j_lo) return out;  // no kernel runs: the result is the bias
  Config cfg;
  out.khc = i_hi - i_lo + 1, out.kwc = j_hi - j_lo + 1;
  if (choose_config(out_h, out_w, out.khc, out.kwc, channels_last, current_device_limits().smem_per_block_optin,
                    &cfg, &out.refusal)) {
    out.kernel = "correlate_kernel";
    out.a = cfg.tw, out.b = cfg.ry, out.c = cfg.planes, out.d = cfg.tile_rows, out.smem = cfg.smem;
    out.threads = cfg.tw * cfg.tile_rows * cfg.planes;
  }
  return out;
}

void correlate(const at::Tensor& src, const at::Tensor& weight, const at::Tensor* bias, at::Tensor& out, int off_t,
               int off_l, bool flip) {
  const int kh = weight.size(2), kw = weight.size(3);
  const int h = src.size(2), w = src.size(3), oh = out.size(2), ow = out.size(3);
  int i_lo, i_hi, j_lo, j_hi;
  useful_taps(kh, h, oh, off_t, &i_lo, &i_hi);
  useful_taps(kw, w, ow, off_l, &j_lo, &j_hi);
  if (i_hi < i_lo || j_hi < j_lo) {  // every tap reads padding only: the output is the bias
    if (bias)
      out.copy_(bias->view({1, -1, 1, 1}).expand_as(out));
    else
      out.zero_();
    return;
  }
  CorrelateParams p{};
  p.src = src.data_ptr();
  p.w = weight.data_ptr();
  p.bias = bias ? bias->data_ptr() : nullptr;
  p.out = out.data_ptr();
  p.n = src.size(0), p.c = src.size(1), p.h = h, p.w_ = w, p.oh = oh, p.ow = ow;
  p.src_v = view(src), p.out_v = view(out);
  p.w_sc = weight.stride(0), p.w_sh = weight.stride(2), p.w_sw = weight.stride(3);
  p.kh = kh, p.kw = kw, p.ki0 = i_lo, p.kj0 = j_lo, p.khc = i_hi - i_lo + 1, p.kwc = j_hi - j_lo + 1;
  p.off_t = off_t - i_lo, p.off_l = off_l - j_lo;
  p.flip = flip;

  const DeviceLimits limits = current_device_limits();
  const bool channels_last = src.stride(1) == 1 && src.size(1) > 1;
  Config cfg;
  std::string why;
  TORCH_CHECK(choose_config(oh, ow, p.khc, p.kwc, channels_last, limits.smem_per_block_optin, &cfg, &why),
              "lkconv cuda: ", why);
  p.planes = cfg.planes, p.tile_rows = cfg.tile_rows;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  switch (src.scalar_type()) {
    case at::kFloat: launch<float>(p, cfg, stream); break;
    case at::kHalf: launch<at::Half>(p, cfg, stream); break;
    case at::kBFloat16: launch<at::BFloat16>(p, cfg, stream); break;
    default: TORCH_CHECK(false, "lkconv cuda: unsupported dtype ", src.scalar_type());
  }
}

}  // namespace cuda
}  // namespace lkconv
