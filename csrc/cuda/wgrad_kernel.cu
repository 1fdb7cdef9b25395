// Backward-weight of the depthwise convolution on CUDA:
//   grad_w[c, i, j] = sum_{n, y, x} grad_out[n, c, y, x] * input[n, c, y + i - pad_t, x + j - pad_l].
//
// Grid: (splits, C). A block owns one channel and a fixed, strided subset of the (images, rows, columns)
// tiles of that channel. In a tile, each warp lane owns one output row (of one image: with short maps a warp
// spans several images) and a 4x4 block of taps; it slides along the row keeping 4 input windows in
// registers, so one gradient load and four input loads feed 16 FMAs, and lanes read different rows (odd
// shared-memory row strides: conflict-free). Warps take different tap blocks. Per tile, each warp sums its
// lanes with a fixed butterfly and adds the result to the block's accumulator in shared memory; the blocks'
// partial sums go to a workspace that a second kernel adds up in split order. No atomics anywhere: the
// result is bitwise reproducible, so the deterministic mode costs nothing.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "depthwise_cuda.cuh"

namespace lkconv {
namespace cuda {
namespace {

constexpr int IY = 4, JX = 4;  // taps per thread
constexpr int kWarps = 8;

struct WgradTile {
  int tile_h;  // rows per image in a tile (lanes per image)
  int images;  // images per tile: tile_h * images == 32
  int tile_w;  // columns per tile
  int khp, kwp;  // cropped filter rounded up to the tap blocks
  __host__ __device__ int sx_rows() const { return tile_h + khp - 1; }
  __host__ __device__ int sx_cols() const { return tile_w + kwp - 1; }  // odd: conflict-free row access
  __host__ __device__ int sg_cols() const { return tile_w + 1; }
  size_t smem_floats() const {
    return static_cast<size_t>(images) * (sx_rows() * sx_cols() + tile_h * sg_cols()) +
           static_cast<size_t>(khp) * kwp;
  }
};

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32) wgrad_kernel(const WgradParams p, const WgradTile tile) {
  LKCONV_DYNAMIC_SMEM(float, smem);
  const int TH = tile.tile_h, IMG = tile.images, TW = tile.tile_w;
  const int SXR = tile.sx_rows(), SXC = tile.sx_cols(), SGC = tile.sg_cols();
  const int x_elems = SXR * SXC, g_elems = TH * SGC;
  LKCONV_SMEM_PTR(float) s_x = smem;                               // [IMG][SXR][SXC]
  LKCONV_SMEM_PTR(float) s_g = s_x + IMG * x_elems;                // [IMG][TH][SGC]
  LKCONV_SMEM_PTR(float) s_acc = s_g + IMG * g_elems;              // [khp][kwp]
  const int taps = tile.khp * tile.kwp;
  for (int e = threadIdx.x; e < taps; e += blockDim.x) s_acc[e] = 0.f;

  const int c = blockIdx.y, split = blockIdx.x;
  const T* xp = static_cast<const T*>(p.x);
  const T* gp = static_cast<const T*>(p.g);
  const int img_groups = (p.n + IMG - 1) / IMG;
  const int row_tiles = (p.oh + TH - 1) / TH, col_tiles = (p.ow + TW - 1) / TW;
  const int64_t units = static_cast<int64_t>(img_groups) * row_tiles * col_tiles;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int my_img = lane / TH, my_y = lane % TH;
  const int tap_blocks_j = tile.kwp / JX, tap_blocks = (tile.khp / IY) * tap_blocks_j;

  for (int64_t u = split; u < units; u += p.splits) {
    const int ct = static_cast<int>(u % col_tiles);
    const int rt = static_cast<int>((u / col_tiles) % row_tiles);
    const int ig = static_cast<int>(u / (static_cast<int64_t>(col_tiles) * row_tiles));
    const int y0 = rt * TH, x0 = ct * TW, n0 = ig * IMG;
    __syncthreads();  // the previous tile is no longer read
    for (int e = threadIdx.x; e < IMG * x_elems; e += blockDim.x) {
      const int im = e / x_elems, r = (e % x_elems) / SXC, col = e % SXC;
      const int n = n0 + im;
      const int sy = y0 + r + p.ki0 - p.pad_t, sx = x0 + col + p.kj0 - p.pad_l;
      float v = 0.f;
      if (n < p.n && sy >= 0 && sy < p.h && sx >= 0 && sx < p.w_)
        v = to_float(xp[n * p.x_v.sn + c * p.x_v.sc + sy * p.x_v.sh + sx * p.x_v.sw]);
      s_x[e] = v;
    }
    for (int e = threadIdx.x; e < IMG * g_elems; e += blockDim.x) {
      const int im = e / g_elems, r = (e % g_elems) / SGC, col = e % SGC;
      const int n = n0 + im, y = y0 + r, x = x0 + col;
      float v = 0.f;
      if (col < TW && n < p.n && y < p.oh && x < p.ow)
        v = to_float(gp[n * p.g_v.sn + c * p.g_v.sc + y * p.g_v.sh + x * p.g_v.sw]);
      s_g[e] = v;
    }
    __syncthreads();

    // Only real gradient entries are visited (no zero-gradient products with real inputs, which would turn
    // an Inf input into a NaN tap).
    const bool row_valid = n0 + my_img < p.n && y0 + my_y < p.oh;
    const int cols = min(TW, p.ow - x0);
    LKCONV_SMEM_PTR(const float) grow = s_g + my_img * g_elems + my_y * SGC;
    for (int tb = warp; tb < tap_blocks; tb += kWarps) {
      const int i0 = (tb / tap_blocks_j) * IY, j0 = (tb % tap_blocks_j) * JX;
      float acc[IY][JX];
#pragma unroll
      for (int a = 0; a < IY; ++a)
#pragma unroll
        for (int b = 0; b < JX; ++b) acc[a][b] = 0.f;
      if (row_valid) {
        LKCONV_SMEM_PTR(const float) xrow = s_x + my_img * x_elems + (my_y + i0) * SXC + j0;
        float win[IY][JX];
#pragma unroll
        for (int a = 0; a < IY; ++a)
#pragma unroll
          for (int b = 0; b < JX - 1; ++b) win[a][b] = xrow[a * SXC + b];
        for (int x = 0; x < cols; ++x) {
          const float gv = grow[x];
#pragma unroll
          for (int a = 0; a < IY; ++a) {
            win[a][JX - 1] = xrow[a * SXC + x + JX - 1];
#pragma unroll
            for (int b = 0; b < JX; ++b) acc[a][b] = fmaf(gv, win[a][b], acc[a][b]);
#pragma unroll
            for (int b = 0; b < JX - 1; ++b) win[a][b] = win[a][b + 1];
          }
        }
      }
      // Sum over the warp's rows in a fixed butterfly order, then lane 0 owns the tap block.
#pragma unroll
      for (int a = 0; a < IY; ++a)
#pragma unroll
        for (int b = 0; b < JX; ++b) {
          float v = acc[a][b];
#pragma unroll
          for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
          if (lane == 0) s_acc[(i0 + a) * tile.kwp + j0 + b] += v;
        }
    }
  }
  __syncthreads();
  float* out = p.partial + (static_cast<int64_t>(c) * p.splits + split) * p.khc * p.kwc;
  for (int e = threadIdx.x; e < p.khc * p.kwc; e += blockDim.x)
    out[e] = s_acc[(e / p.kwc) * tile.kwp + e % p.kwc];
}

// grad_w[c, ki0 + i, kj0 + j] = sum over splits (in order) of the partial sums.
template <typename T>
__global__ void wgrad_finalize_kernel(const float* partial, T* grad_w, int c_total, int splits, int khc, int kwc,
                                      int kh, int kw, int ki0, int kj0) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t taps = static_cast<int64_t>(khc) * kwc;
  if (e >= c_total * taps) return;
  const int64_t c = e / taps;
  const int t = static_cast<int>(e % taps);
  float sum = 0.f;
  for (int s = 0; s < splits; ++s) sum += partial[(c * splits + s) * taps + t];
  grad_w[c * kh * kw + (ki0 + t / kwc) * kw + kj0 + t % kwc] = static_cast<T>(sum);
}

int round_up(int v, int m) { return (v + m - 1) / m * m; }

int next_pow2(int v) {
  int p = 1;
  while (p < v) p <<= 1;
  return p;
}

template <typename T>
void launch(WgradParams p, const WgradTile& tile, at::Tensor& grad_w, int kh, int kw, cudaStream_t stream) {
  const size_t smem = tile.smem_floats() * sizeof(float);
  if (smem > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(wgrad_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  auto partial = at::empty({static_cast<int64_t>(p.c) * p.splits * p.khc * p.kwc},
                           grad_w.options().dtype(at::kFloat));
  p.partial = partial.data_ptr<float>();
  TORCH_CHECK(p.c < 65536, "lkconv cuda: at most 65535 channels, got ", p.c);
  LKCONV_LAUNCH(dim3(p.splits, p.c), kWarps * 32, smem, stream, wgrad_kernel<T>)(p, tile);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t total = static_cast<int64_t>(p.c) * p.khc * p.kwc;
  const int threads = 256;
  LKCONV_LAUNCH(static_cast<unsigned>((total + threads - 1) / threads), threads, 0, stream, wgrad_finalize_kernel<T>)(
      p.partial, grad_w.data_ptr<T>(), p.c, p.splits, p.khc, p.kwc, kh, kw, p.ki0, p.kj0);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Rows per tile follow the map (a warp's lanes cover tile_h rows of 32 / tile_h images); columns start at 64
// and halve (to 4) while the tile does not fit the GPU's shared memory. False (and why) when nothing fits.
bool choose_tile(int oh, int ow, int khc, int kwc, size_t smem_limit, WgradTile* out, std::string* why) {
  WgradTile tile;
  tile.tile_h = std::min(32, next_pow2(oh));
  tile.images = 32 / tile.tile_h;
  tile.tile_w = std::min(64, round_up(ow, 4));
  tile.khp = round_up(khc, IY), tile.kwp = round_up(kwc, JX);
  while (tile.smem_floats() * sizeof(float) > smem_limit) {
    if (tile.tile_w <= 4) {
      *why = "the weight gradient of a " + std::to_string(khc) + "x" + std::to_string(kwc) + " filter needs " +
             std::to_string(tile.smem_floats() * sizeof(float)) + " bytes of shared memory even with the " +
             "smallest tile, more than this GPU offers (" + std::to_string(smem_limit) + ")";
      return false;
    }
    tile.tile_w = std::max(4, tile.tile_w / 2);
  }
  *out = tile;
  return true;
}

void useful_range(int k, int pad, int in_len, int out_len, int* lo, int* hi) {
  *lo = std::max(0, pad - out_len + 1);
  *hi = std::min(k - 1, pad + in_len - 1);
}

}  // namespace

TileConfig weight_grad_tile_config(int h, int w, int oh, int ow, int kh, int kw, int pad_t, int pad_l) {
  TileConfig out;
  int i_lo, i_hi, j_lo, j_hi;
  useful_range(kh, pad_t, h, oh, &i_lo, &i_hi);
  useful_range(kw, pad_l, w, ow, &j_lo, &j_hi);
  if (i_hi < i_lo || j_hi < j_lo) return out;
  out.khc = i_hi - i_lo + 1, out.kwc = j_hi - j_lo + 1;
  WgradTile tile;
  if (choose_tile(oh, ow, out.khc, out.kwc, current_device_limits().smem_per_block_optin, &tile, &out.refusal)) {
    out.kernel = "wgrad_kernel";
    out.a = tile.tile_h, out.b = tile.images, out.c = tile.tile_w, out.khp = tile.khp, out.kwp = tile.kwp;
    out.smem = tile.smem_floats() * sizeof(float);
    out.threads = kWarps * 32;
  }
  return out;
}

void weight_grad(const at::Tensor& grad_out, const at::Tensor& input, at::Tensor& grad_w, int pad_t, int pad_l) {
  const int kh = grad_w.size(2), kw = grad_w.size(3);
  const int h = input.size(2), w = input.size(3), oh = grad_out.size(2), ow = grad_out.size(3);
  grad_w.zero_();
  int i_lo, i_hi, j_lo, j_hi;
  useful_range(kh, pad_t, h, oh, &i_lo, &i_hi);
  useful_range(kw, pad_l, w, ow, &j_lo, &j_hi);
  if (i_hi < i_lo || j_hi < j_lo || grad_w.numel() == 0 || input.numel() == 0) return;

  WgradParams p{};
  p.x = input.data_ptr(), p.g = grad_out.data_ptr();
  p.n = input.size(0), p.c = input.size(1), p.h = h, p.w_ = w, p.oh = oh, p.ow = ow;
  p.x_v = {input.stride(0), input.stride(1), input.stride(2), input.stride(3)};
  p.g_v = {grad_out.stride(0), grad_out.stride(1), grad_out.stride(2), grad_out.stride(3)};
  p.ki0 = i_lo, p.kj0 = j_lo, p.khc = i_hi - i_lo + 1, p.kwc = j_hi - j_lo + 1;
  p.pad_t = pad_t, p.pad_l = pad_l;

  WgradTile tile;
  std::string why;
  TORCH_CHECK(choose_tile(oh, ow, p.khc, p.kwc, current_device_limits().smem_per_block_optin, &tile, &why),
              "lkconv cuda: ", why);

  // Enough blocks to fill the GPU about four times over; the split count depends on the shape and the GPU
  // only, never on timing, so results are reproducible run to run on the same GPU.
  const int64_t units = static_cast<int64_t>((p.n + tile.images - 1) / tile.images) *
                        ((oh + tile.tile_h - 1) / tile.tile_h) * ((ow + tile.tile_w - 1) / tile.tile_w);
  const int sms = current_device_limits().sm_count;
  p.splits = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(units, (4LL * sms + p.c - 1) / p.c)));

  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  switch (input.scalar_type()) {
    case at::kFloat: launch<float>(p, tile, grad_w, kh, kw, stream); break;
    case at::kHalf: launch<at::Half>(p, tile, grad_w, kh, kw, stream); break;
    case at::kBFloat16: launch<at::BFloat16>(p, tile, grad_w, kh, kw, stream); break;
    default: TORCH_CHECK(false, "lkconv cuda: unsupported dtype ", input.scalar_type());
  }
}

}  // namespace cuda
}  // namespace lkconv
