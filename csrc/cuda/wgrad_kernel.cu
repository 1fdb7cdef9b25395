// Backward-weight of the depthwise convolution on CUDA:
//   grad_w[c, i, j] = sum_{n, y, x} grad_out[n, c, y, x] * input[n, c, y + i - pad_t, x + j - pad_l].
//
// Grid: (splits, C). A block owns one channel and a fixed, strided subset of the tiles (images x rows x
// columns) of that channel; a tile's input (with its halo) and output gradient sit in shared memory. Maps that
// the filter spans (every pixel pair meets a tap: 14x14 k27, 7x7 k13) go to the dense kernel instead
// (wgrad_dense_kernel.cu), which multiplies only pixel pairs; both end in this file's ordered sum of the splits.
//
// Design (from the sm_90 code, see `python -m bench.sass`):
//  - A warp owns a 4 x 8 block of taps (IY x JX = 32: one per lane after the reduction); the block's 8 warps
//    deal the tap blocks out round-robin. Lanes take the tile's rows (of all its images) that can meet the tap
//    block through real input rows; rows that only meet padding are skipped, as are the column steps whose
//    input columns are all padding (both ranges are uniform across the warp, since its lanes share the taps).
//  - A lane walks its row 4 columns at a time: one LDS.128 of the output gradient and, per tap row, one
//    LDS.128 that slides a 12-wide input window in registers feed 4 x 8 x 4 = 128 FFMAs (~5 loads per 128).
//    Row strides are odd multiples of 16 bytes, so the lanes' different rows hit different banks.
//  - After each (tile, tap block) the warp sums its lanes' 32 x 32 partial sums with a reduce-scatter
//    (31 shuffles instead of 32 x 5) and lane l adds tap l to the block's accumulator in shared memory; the
//    blocks' partial sums go to a workspace that a second kernel adds up in split order. Every sum has a fixed
//    order and there are no atomics: the result is bitwise reproducible, so the deterministic mode costs
//    nothing.
//  - Only real output-gradient entries are multiplied: the last, partial column step runs only its real
//    columns, and rows past the map or images past the batch are never visited (a zero gradient times an Inf
//    input would be a NaN tap).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "depthwise_cuda.cuh"

namespace lkconv {
namespace cuda {
namespace {

constexpr int IY = 4, JX = 8;  // taps per warp (and per lane before the reduction)
constexpr int kVec = 4;        // columns per step = floats per LDS.128
constexpr int kWarps = 8;

__host__ __device__ inline int round_up(int v, int m) { return (v + m - 1) / m * m; }
// A row stride of an odd number of 16-byte vectors: lanes reading the same column of consecutive rows with
// LDS.128 hit different banks.
__host__ __device__ inline int odd_vectors(int v) {
  v = round_up(v, kVec);
  return (v / kVec) % 2 ? v : v + kVec;
}

struct WgradTile {
  int tile_h;    // rows per image in a tile
  int images;    // images per tile
  int tile_w;    // columns per tile
  int khp, kwp;  // cropped filter rounded up to the tap blocks
  __host__ __device__ int sx_rows() const { return tile_h + khp - 1; }
  __host__ __device__ int sx_cols() const { return odd_vectors(tile_w + kwp); }  // + slack for the window
  __host__ __device__ int sg_cols() const { return odd_vectors(tile_w); }
  size_t smem_floats() const {
    return static_cast<size_t>(images) * (sx_rows() * sx_cols() + tile_h * sg_cols()) +
           static_cast<size_t>(khp) * kwp;
  }
};

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}

// acc[a][b] += sum_{u < COLS} g[u] * x_a[u + b], x_a = the 12-wide window (v0, v1, v2) of tap row a.
template <int COLS>
__device__ __forceinline__ void column_step(float (&acc)[IY][JX], const Float4& g4, const Float4 (&v0)[IY],
                                            const Float4 (&v1)[IY], const Float4 (&v2)[IY]) {
  const float g[kVec] = {g4.x, g4.y, g4.z, g4.w};
#pragma unroll
  for (int a = 0; a < IY; ++a) {
    const float x[12] = {v0[a].x, v0[a].y, v0[a].z, v0[a].w, v1[a].x, v1[a].y,
                         v1[a].z, v1[a].w, v2[a].x, v2[a].y, v2[a].z, v2[a].w};
#pragma unroll
    for (int u = 0; u < COLS; ++u)
#pragma unroll
      for (int b = 0; b < JX; ++b) acc[a][b] = fmaf(g[u], x[u + b], acc[a][b]);
  }
}

// One output-gradient row against the warp's tap block: columns [x, x_end) from x (a multiple of 4); grow and
// xrow point at column 0 of the gradient row and of the first tap row's input (at the block's first tap).
__device__ __forceinline__ void gradient_row(float (&acc)[IY][JX], LKCONV_SMEM_PTR(const float) grow,
                                             LKCONV_SMEM_PTR(const float) xrow, int sxc, int x, int x_end) {
  Float4 v0[IY], v1[IY], v2[IY];
  auto load_window = [&](Float4(&v)[IY], int col) {
#pragma unroll
    for (int a = 0; a < IY; ++a) v[a] = load4(xrow + a * sxc + col);
  };
  load_window(v0, x);
  load_window(v1, x + kVec);
  // Three steps per iteration with the window's roles rotated, so it slides without register moves.
  for (; x + 3 * kVec <= x_end; x += 3 * kVec) {
    load_window(v2, x + 2 * kVec);
    column_step<kVec>(acc, load4(grow + x), v0, v1, v2);
    load_window(v0, x + 3 * kVec);
    column_step<kVec>(acc, load4(grow + x + kVec), v1, v2, v0);
    load_window(v1, x + 4 * kVec);
    column_step<kVec>(acc, load4(grow + x + 2 * kVec), v2, v0, v1);
  }
  for (; x + kVec <= x_end; x += kVec) {
    load_window(v2, x + 2 * kVec);
    column_step<kVec>(acc, load4(grow + x), v0, v1, v2);
#pragma unroll
    for (int a = 0; a < IY; ++a) v0[a] = v1[a], v1[a] = v2[a];
  }
  const int rest = x_end - x;  // 0..3 real columns in the last step
  if (rest > 0) {
#pragma unroll
    for (int a = 0; a < IY; ++a) v2[a] = load4(xrow + a * sxc + x + 2 * kVec);
    const Float4 g4 = load4(grow + x);
    if (rest == 1) column_step<1>(acc, g4, v0, v1, v2);
    else if (rest == 2) column_step<2>(acc, g4, v0, v1, v2);
    else column_step<3>(acc, g4, v0, v1, v2);
  }
}

// Lane l ends with the warp's sum of value l (of 32), in a fixed order: at each halving, a lane keeps the half
// of its values whose index has its lane bit and sends the other half to its partner (31 shuffles in all).
template <int HALF>
__device__ __forceinline__ void reduce_halve(float (&v)[32], int lane) {
  const bool upper = lane & HALF;
#pragma unroll
  for (int e = 0; e < HALF; ++e) {
    const float send = upper ? v[e] : v[e + HALF];
    const float keep = upper ? v[e + HALF] : v[e];
    v[e] = keep + __shfl_xor_sync(0xffffffffu, send, HALF);
  }
}

__device__ __forceinline__ float reduce_scatter(const float (&acc)[IY][JX], int lane) {
  float v[32];
#pragma unroll
  for (int e = 0; e < 32; ++e) v[e] = acc[e / JX][e % JX];
  reduce_halve<16>(v, lane);
  reduce_halve<8>(v, lane);
  reduce_halve<4>(v, lane);
  reduce_halve<2>(v, lane);
  reduce_halve<1>(v, lane);
  return v[0];
}

// Rows [sy0, sy0 + R) x columns [sx0, sx0 + C) of images n0 .. n0 + IMG - 1 of channel c into shared memory
// ([image][row][column]), zero outside the map ([0, h) x [0, w)), past the batch and from column `col_end` on.
// (image, row, column) digits advance by blockDim.x with carries, and the global and shared offsets with them,
// instead of dividing or multiplying per element.
template <typename T>
__device__ __forceinline__ void load_tile(const T* t, const View4& v, LKCONV_SMEM_PTR(float) dst, int c, int n0,
                                          int IMG, int R, int C, int sy0, int sx0, int n_total, int h, int w,
                                          int col_end) {
  const int nthreads = blockDim.x, plane = R * C;
  const int dcol = nthreads % C, dr = (nthreads / C) % R, dim = nthreads / plane;
  int col = threadIdx.x % C, r = (threadIdx.x / C) % R, im = threadIdx.x / plane;
  const int64_t g_step = dim * v.sn + dr * v.sh + dcol * v.sw, g_carry_col = v.sh - C * v.sw,
                g_carry_row = v.sn - R * v.sh;
  // Offset of element (im, r, col); it may lie outside the tensor (only real elements are read).
  int64_t g = (n0 + im) * v.sn + c * v.sc + static_cast<int64_t>(sy0 + r) * v.sh +
              static_cast<int64_t>(sx0 + col) * v.sw;
  const int images = min(IMG, n_total - n0), col_lo = -sx0, col_hi = min(w - sx0, col_end - sx0);
  for (int e = threadIdx.x; e < IMG * plane; e += nthreads) {
    const int sy = sy0 + r;
    dst[e] = im < images && sy >= 0 && sy < h && col >= col_lo && col < col_hi ? to_float(t[g]) : 0.f;
    col += dcol, r += dr, im += dim, g += g_step;
    if (col >= C) col -= C, ++r, g += g_carry_col;
    if (r >= R) r -= R, ++im, g += g_carry_row;
  }
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32, 2) wgrad_kernel(const WgradParams p, const WgradTile tile) {
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
  const int tap_blocks_j = tile.kwp / JX, tap_blocks = (tile.khp / IY) * tap_blocks_j;

  for (int64_t u = split; u < units; u += p.splits) {
    const int ct = static_cast<int>(u % col_tiles);
    const int rt = static_cast<int>((u / col_tiles) % row_tiles);
    const int ig = static_cast<int>(u / (static_cast<int64_t>(col_tiles) * row_tiles));
    const int y0 = rt * TH, x0 = ct * TW, n0 = ig * IMG;
    __syncthreads();  // the previous tile is no longer read
    // Input tile with halo (zero outside the map and past the batch), and the output gradient's rows (zero past
    // the map, the batch and the tile's columns).
    load_tile(xp, p.x_v, s_x, c, n0, IMG, SXR, SXC, y0 + p.ki0 - p.pad_t, x0 + p.kj0 - p.pad_l, p.n, p.h, p.w_,
              p.w_);
    load_tile(gp, p.g_v, s_g, c, n0, IMG, TH, SGC, y0, x0, p.n, p.oh, p.ow, x0 + TW);
    __syncthreads();

    const int rows = min(TH, p.oh - y0), cols = min(TW, p.ow - x0), images = min(IMG, p.n - n0);
    const int top = p.pad_t - p.ki0 - y0;   // input tile row of map row 0
    const int left = p.pad_l - p.kj0 - x0;  // input tile column of map column 0
    for (int tb = warp; tb < tap_blocks; tb += kWarps) {
      const int i0 = (tb / tap_blocks_j) * IY, j0 = (tb % tap_blocks_j) * JX;
      // Rows r whose input rows r + i0 .. r + i0 + IY - 1 touch the map; column steps whose input columns
      // x + j0 .. x + j0 + 10 touch it (x_lo a multiple of 4, x_end capped at the real columns).
      const int r_lo = max(0, top - i0 - IY + 1), r_hi = min(rows, top + p.h - i0);
      const int x_lo = max(0, left - j0 - (kVec + JX - 2)) / kVec * kVec;
      const int x_end = min(cols, round_up(max(0, left + p.w_ - j0), kVec));
      const int nrows = max(0, r_hi - r_lo);
      float acc[IY][JX];
#pragma unroll
      for (int a = 0; a < IY; ++a)
#pragma unroll
        for (int b = 0; b < JX; ++b) acc[a][b] = 0.f;
      if (x_lo < x_end) {
        for (int k = lane; k < images * nrows; k += 32) {
          const int im = k / nrows, r = r_lo + k % nrows;
          gradient_row(acc, s_g + im * g_elems + r * SGC, s_x + im * x_elems + (r + i0) * SXC + j0, SXC, x_lo,
                       x_end);
        }
      }
      const float v = reduce_scatter(acc, lane);
      s_acc[(i0 + lane / JX) * tile.kwp + j0 + lane % JX] += v;
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

// The tile kernel (or, with `dense`, the dense one) into a per-split workspace, then the ordered sum of the splits.
template <typename T>
void launch(WgradParams p, const WgradTile& tile, const DenseWgradPlan* dense, at::Tensor& grad_w, int kh, int kw,
            cudaStream_t stream) {
  auto partial = at::empty({static_cast<int64_t>(p.c) * p.splits * p.khc * p.kwc},
                           grad_w.options().dtype(at::kFloat));
  p.partial = partial.data_ptr<float>();
  TORCH_CHECK(p.c < 65536, "lkconv cuda: at most 65535 channels, got ", p.c);
  if (dense) {
    launch_dense_wgrad<T>(p, *dense, stream);
  } else {
    const size_t smem = tile.smem_floats() * sizeof(float);
    if (smem > 48 * 1024)
      C10_CUDA_CHECK(cudaFuncSetAttribute(wgrad_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
    LKCONV_LAUNCH(dim3(p.splits, p.c), kWarps * 32, smem, stream, wgrad_kernel<T>)(p, tile);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int64_t total = static_cast<int64_t>(p.c) * p.khc * p.kwc;
  const int threads = 256;
  LKCONV_LAUNCH(static_cast<unsigned>((total + threads - 1) / threads), threads, 0, stream, wgrad_finalize_kernel<T>)(
      p.partial, grad_w.data_ptr<T>(), p.c, p.splits, p.khc, p.kwc, kh, kw, p.ki0, p.kj0);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Tiles of whole rows: up to 64 columns (64-column tiles across wider maps), up to 64 rows, and as many images as
// make ~112 rows a tile (so a warp's lanes have several rows each and the reduction is amortised), never more
// than the batch. While the tile does not fit the GPU's shared memory: fewer images, then fewer rows, then
// narrower tiles. False (and why) when nothing fits.
bool choose_tile(int n, int oh, int ow, int khc, int kwc, size_t smem_limit, WgradTile* out, std::string* why) {
  WgradTile tile;
  tile.tile_w = std::min(64, round_up(ow, kVec));
  tile.tile_h = std::min(64, oh);
  tile.images = std::max(1, std::min(n, (112 + tile.tile_h - 1) / tile.tile_h));
  tile.khp = round_up(khc, IY), tile.kwp = round_up(kwc, JX);
  while (tile.smem_floats() * sizeof(float) > smem_limit) {
    if (tile.images > 1) {
      tile.images = (tile.images + 1) / 2;
    } else if (tile.tile_h > 1) {
      tile.tile_h = (tile.tile_h + 1) / 2;
    } else if (tile.tile_w > kVec) {
      tile.tile_w = std::max(kVec, tile.tile_w / 2);
    } else {
      *why = "the weight gradient of a " + std::to_string(khc) + "x" + std::to_string(kwc) + " filter needs " +
             std::to_string(tile.smem_floats() * sizeof(float)) + " bytes of shared memory even with the " +
             "smallest tile, more than this GPU offers (" + std::to_string(smem_limit) + ")";
      return false;
    }
  }
  *out = tile;
  return true;
}

void useful_range(int k, int pad, int in_len, int out_len, int* lo, int* hi) {
  *lo = std::max(0, pad - out_len + 1);
  *hi = std::min(k - 1, pad + in_len - 1);
}

}  // namespace

TileConfig weight_grad_tile_config(int n, int h, int w, int oh, int ow, int kh, int kw, int pad_t, int pad_l) {
  TileConfig out;
  int i_lo, i_hi, j_lo, j_hi;
  useful_range(kh, pad_t, h, oh, &i_lo, &i_hi);
  useful_range(kw, pad_l, w, ow, &j_lo, &j_hi);
  if (i_hi < i_lo || j_hi < j_lo) return out;
  out.khc = i_hi - i_lo + 1, out.kwc = j_hi - j_lo + 1;
  const size_t smem_limit = current_device_limits().smem_per_block_optin;
  DenseWgradPlan dense;
  if (dense_wgrad_plan(n, h, w, oh, ow, out.khc, out.kwc, smem_limit, &dense)) {
    out.kernel = "wgrad_dense_kernel";
    out.a = dense.r, out.b = dense.images, out.c = dense.nb, out.d = dense.warps;
    out.smem = dense.smem;
    out.threads = dense.warps * 32;
    return out;
  }
  WgradTile tile;
  if (choose_tile(n, oh, ow, out.khc, out.kwc, smem_limit, &tile, &out.refusal)) {
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

  const size_t smem_limit = current_device_limits().smem_per_block_optin;
  const int sms = current_device_limits().sm_count;
  WgradTile tile{};
  DenseWgradPlan dense;
  const bool use_dense = dense_wgrad_plan(p.n, h, w, oh, ow, p.khc, p.kwc, smem_limit, &dense);
  if (use_dense) {
    p.splits = (p.n + dense.images - 1) / dense.images;  // one image group per block
  } else {
    std::string why;
    TORCH_CHECK(choose_tile(p.n, oh, ow, p.khc, p.kwc, smem_limit, &tile, &why), "lkconv cuda: ", why);
    // Enough blocks to fill the GPU about four times over; the split count depends on the shape and the GPU
    // only, never on timing, so results are reproducible run to run on the same GPU.
    const int64_t units = static_cast<int64_t>((p.n + tile.images - 1) / tile.images) *
                          ((oh + tile.tile_h - 1) / tile.tile_h) * ((ow + tile.tile_w - 1) / tile.tile_w);
    p.splits = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(units, (4LL * sms + p.c - 1) / p.c)));
  }
  const DenseWgradPlan* dense_plan = use_dense ? &dense : nullptr;

  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  switch (input.scalar_type()) {
    case at::kFloat: launch<float>(p, tile, dense_plan, grad_w, kh, kw, stream); break;
    case at::kHalf: launch<at::Half>(p, tile, dense_plan, grad_w, kh, kw, stream); break;
    case at::kBFloat16: launch<at::BFloat16>(p, tile, dense_plan, grad_w, kh, kw, stream); break;
    default: TORCH_CHECK(false, "lkconv cuda: unsupported dtype ", input.scalar_type());
  }
}

}  // namespace cuda
}  // namespace lkconv
