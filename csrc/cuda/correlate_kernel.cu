// Forward and backward-input of the depthwise convolution on CUDA: both are a correlation of a zero-padded
// plane with a (possibly flipped) filter, so one kernel serves both passes.
//
// Design (from the sm_90 code, see `python -m bench.sass`): the kernel is meant to be issue-bound on FFMA, so
// the hot loop has to be almost nothing but FFMAs.
//  - Register micro-tile: each thread owns RY rows x 4 columns of outputs (RY = 8 or 4, a template parameter).
//    It walks the source rows t of its strip; source row t meets output row r through filter row i = t - r, so
//    one source row in registers feeds all RY output rows.
//  - Filter taps in chunks of 4 columns: per chunk a thread loads 4 new source values (one LDS.128; the window
//    of 7 slides by one vector) and, per output row, 4 filter values (one LDS.128, the same address for every
//    thread of a plane: a broadcast), and issues 16 x RY FFMAs. The filter sits in shared memory chunk-major
//    ([chunk][row][4]) so the RY filter rows of a step are at compile-time offsets from one pointer, and the
//    source row at +16 bytes per chunk: no index arithmetic in the loop (predicted FFMA share ~90% at RY = 8).
//  - Strip edges (steps where some rows have no filter row) are peeled out of the hot loop: the rows that have
//    one (the first or the last K of the thread's rows, for filters of RY rows or more) run a K-row chunk loop
//    that shares the source window, so a row without a filter row does no work (and an Inf in the input cannot
//    become a NaN through a zero tap), and the last chunk of a width that is not a multiple of 4 runs only its
//    real taps, for the same reason.
//  - Padding skipped where it is known: each thread walks only the source rows inside the map and only the
//    chunks whose 7 source columns touch it; halo rows are not even held in shared memory (`src_rows`). What
//    remains is the zero halo columns inside a partly real chunk.
//  - Tiles sized to the map: lanes_x threads of 4 columns and tile_rows threads of RY rows per plane, chosen by
//    the launcher to cover the map with the least waste, and several planes per block for small maps.
// Maps that the filter spans (every output pixel meets every source pixel: 14x14 k27, 7x7 k13) with a batch of 8 or
// more go to the dense kernel instead (correlate_dense_kernel.cu), which walks source pixels only.
// Filters are held in shared memory as float; sources in the input's own type (16-bit inputs stay 16-bit: half
// the bytes per held row, so up to twice the planes per SM; a chunk's 4 values are then one LDS.64 and 4
// conversions, against 16 x RY FFMAs). Accumulation is fp32.
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

constexpr int kCols = 4;  // output columns per thread = filter taps per chunk = floats per LDS.128

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}

using ::lkconv::cuda::load4;  // the float overload (depthwise_cuda.cuh), beside the 16-bit one below

// Four 16-bit source values (one 8-byte load), widened.
template <typename T>
struct alignas(8) Quad {
  T v[4];
};
template <typename T>
__device__ __forceinline__ Float4 load4(LKCONV_SMEM_PTR(const T) p) {
  const Quad<T> q = LKCONV_SMEM_CAST(const Quad<T>, p)[0];
  return Float4{static_cast<float>(q.v[0]), static_cast<float>(q.v[1]), static_cast<float>(q.v[2]),
                static_cast<float>(q.v[3])};
}
#ifndef LKCONV_CUDA_EMULATION
// bfloat16 is the top half of a float: one shift or mask per value, no byte permutes.
template <>
__device__ __forceinline__ Float4 load4<at::BFloat16>(const at::BFloat16* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                     __uint_as_float(u.y & 0xffff0000u));
}
#endif

__host__ __device__ __forceinline__ int ceil_div(int a, int b) {  // b > 0, any sign of a
  return a >= 0 ? (a + b - 1) / b : -((-a) / b);
}

// acc[u] += sum_{jj < taps} w[jj] * win[u + jj] for the 4 columns u of one output row; win = (a, b).
template <int TAPS>
__device__ __forceinline__ void row_chunk(float* acc, const Float4& w4, const Float4& a, const Float4& b) {
  const float win[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
  const float w[4] = {w4.x, w4.y, w4.z, w4.w};
#pragma unroll
  for (int jj = 0; jj < TAPS; ++jj)
#pragma unroll
    for (int u = 0; u < kCols; ++u) acc[u] = fmaf(w[jj], win[u + jj], acc[u]);
}

// One source row against NR output rows (filter rows f, f - 4, ..., f - 4 (NR - 1) of each chunk): the full
// chunks [0, nfull), then the last chunk's `rem` taps when rem > 0.
template <int NR, typename S>
__device__ __forceinline__ void source_row(float (*acc)[kCols], LKCONV_SMEM_PTR(const S) src,
                                           LKCONV_SMEM_PTR(const float) f, int nfull, int rem, int chunk_stride) {
  Float4 a = load4(src);
#pragma unroll 2  // two chunks per iteration: the window slides by renaming registers, not moving them
  for (int ch = 0; ch < nfull; ++ch) {
    src += kCols;
    const Float4 b = load4(src);
#pragma unroll
    for (int r = 0; r < NR; ++r) row_chunk<4>(acc[r], load4(f - kCols * r), a, b);
    a = b;
    f += chunk_stride;
  }
  if (rem > 0) {
    const Float4 b = load4(src + kCols);
#pragma unroll
    for (int r = 0; r < NR; ++r) {
      const Float4 w4 = load4(f - kCols * r);
      if (rem == 1) row_chunk<1>(acc[r], w4, a, b);
      else if (rem == 2) row_chunk<2>(acc[r], w4, a, b);
      else row_chunk<3>(acc[r], w4, a, b);
    }
  }
}

// A strip-edge step whose K rows with a filter row are the first K (TOP) or the last K of the thread's RY rows:
// source_row<K> on them, sharing each source window across the K rows (K is a run-time value in 1 .. KMAX,
// dispatched to compile-time instantiations, so the accumulators stay in registers). f points at filter row t,
// the one output row 0 meets.
template <int RY, int KMAX, bool TOP, typename S>
__device__ __forceinline__ void edge_rows(float (&acc)[RY][kCols], int k, LKCONV_SMEM_PTR(const S) src,
                                          LKCONV_SMEM_PTR(const float) f, int nfull, int rem, int chunk_stride) {
  if constexpr (KMAX >= 1) {
    if (k == KMAX) {
      constexpr int R0 = TOP ? 0 : RY - KMAX;
      source_row<KMAX>(acc + R0, src, f - kCols * R0, nfull, rem, chunk_stride);
    } else {
      edge_rows<RY, KMAX - 1, TOP>(acc, k, src, f, nfull, rem, chunk_stride);
    }
  }
}

// The tile's source rows into shared memory ([plane][row][column], row 0 = source row sy0, column 0 = source
// column sx0; zero outside the map and for channels past C). Element e of the walk is (plane, row, column) in
// mixed radix, channel-fastest (channels_last sources: a pixel's planes are neighbours) or column-fastest; each
// thread advances its digits by blockDim.x with carries, and its global and shared offsets with them, instead of
// dividing or multiplying per element.
template <typename T, bool CHANNELS_FASTEST>
__device__ __forceinline__ void load_source_tile(const CorrelateParams& p, LKCONV_SMEM_PTR(T) s_src, int n, int c0,
                                                 int P, int rows, int SC, int SR, int sy0, int sx0) {
  const T* src = static_cast<const T*>(p.src);
  const int nthreads = blockDim.x;
  const int radix0 = CHANNELS_FASTEST ? P : SC, radix1 = CHANNELS_FASTEST ? SC : rows;
  // Strides of the digits in the source and in shared memory (digits: plane, column, row).
  const int64_t g0 = CHANNELS_FASTEST ? p.src_v.sc : p.src_v.sw, g1 = CHANNELS_FASTEST ? p.src_v.sw : p.src_v.sh,
                g2 = CHANNELS_FASTEST ? p.src_v.sh : p.src_v.sc;
  const int s0 = CHANNELS_FASTEST ? SR * SC : 1, s1 = CHANNELS_FASTEST ? 1 : SC, s2 = CHANNELS_FASTEST ? SC : SR * SC;
  const int step0 = nthreads % radix0, step1 = (nthreads / radix0) % radix1, step2 = nthreads / (radix0 * radix1);
  int d0 = threadIdx.x % radix0, d1 = (threadIdx.x / radix0) % radix1, d2 = threadIdx.x / (radix0 * radix1);
  const int64_t g_step = step0 * g0 + step1 * g1 + step2 * g2, g_carry0 = g1 - radix0 * g0,
                g_carry1 = g2 - radix1 * g1;
  const int s_step = step0 * s0 + step1 * s1 + step2 * s2, s_carry0 = s1 - radix0 * s0, s_carry1 = s2 - radix1 * s1;
  // Offsets of element (d0, d1, d2) from the tile's (plane 0, row 0, column 0), which may lie outside the tensor
  // (only offsets of real elements are read).
  int64_t g = n * p.src_v.sn + c0 * p.src_v.sc + sy0 * p.src_v.sh + static_cast<int64_t>(sx0) * p.src_v.sw +
              d0 * g0 + d1 * g1 + d2 * g2;
  int sh = d0 * s0 + d1 * s1 + d2 * s2;
  const int col_lo = -sx0, col_hi = p.w_ - sx0, planes = min(P, p.c - c0);  // the real columns and planes
  for (int e = threadIdx.x; e < P * rows * SC; e += nthreads) {
    const int pl = CHANNELS_FASTEST ? d0 : d2, col = CHANNELS_FASTEST ? d1 : d0;
    s_src[sh] = pl < planes && col >= col_lo && col < col_hi ? src[g] : T(0.f);
    d0 += step0, d1 += step1, d2 += step2, g += g_step, sh += s_step;
    if (d0 >= radix0) d0 -= radix0, ++d1, g += g_carry0, sh += s_carry0;
    if (d1 >= radix1) d1 -= radix1, ++d2, g += g_carry1, sh += s_carry1;
  }
}

template <typename T, int RY>
__global__ void __launch_bounds__(256) correlate_kernel(const CorrelateParams p) {
  LKCONV_DYNAMIC_SMEM(float, smem);
  const int P = p.planes, LY = p.tile_rows, LX = p.lanes_x;
  const int TW = LX * kCols, TH = LY * RY;
  const int khc = p.khc, kwc = p.kwc;
  const int chunks = (kwc + kCols - 1) / kCols, kwp = chunks * kCols;
  const int SC = TW + kwp;             // source columns per row: the tile, its halo, one vector of slack
  const int SR = p.src_rows;           // source rows held per plane
  const int taps = khc * kwp, chunk_stride = khc * kCols;
  LKCONV_SMEM_PTR(float) s_w = smem;                                                // [P][chunk][khc][4]
  LKCONV_SMEM_PTR(T) s_src = LKCONV_SMEM_CAST(T, smem + static_cast<int64_t>(P) * taps);  // [P][SR][SC]

  const int groups_per_n = (p.c + P - 1) / P;
  const int n = blockIdx.x / groups_per_n;
  const int c0 = (blockIdx.x % groups_per_n) * P;
  const int y0 = blockIdx.y * TH, x0 = blockIdx.z * TW;
  const T* w = static_cast<const T*>(p.w);
  const int nthreads = blockDim.x;
  const bool channels_fastest = p.src_v.sc == 1;

  // Filters of the block's channels, cropped (and flipped for backward-input), chunk-major; the taps past kwc
  // in the last chunk are zero (loaded with it, never multiplied). A thread per (plane, filter row) walks the row
  // by pointer increments.
  for (int row = threadIdx.x; row < P * khc; row += nthreads) {
    const int pl = row / khc, i = row % khc, c = c0 + pl;
    LKCONV_SMEM_PTR(float) d = s_w + pl * taps + i * kCols;
    const bool real = c < p.c;
    const int fi = p.flip ? p.kh - 1 - (p.ki0 + i) : p.ki0 + i, fj = p.flip ? p.kw - 1 - p.kj0 : p.kj0;
    const int64_t step = p.flip ? -p.w_sw : p.w_sw;
    const T* q = w + (real ? c * p.w_sc + fi * p.w_sh + fj * p.w_sw : 0);
    for (int j0 = 0; j0 < kwp; j0 += kCols, d += chunk_stride) {
#pragma unroll
      for (int u = 0; u < kCols; ++u) {
        const bool tap = real && j0 + u < kwc;
        d[u] = tap ? to_float(*q) : 0.f;
        if (tap) q += step;
      }
    }
  }
  // Source rows of the tile that lie inside the map, with the column halo (zero outside the map, which is the
  // padding, and for channels past C). Tile row sr is source row y0 + sr - off_t; row0 is the first held.
  const int row0 = max(0, p.off_t - y0);
  const int rows = min(TH + khc - 1, p.off_t - y0 + p.h) - row0;  // <= SR (the launcher sizes SR so)
  if (channels_fastest)
    load_source_tile<T, true>(p, s_src, n, c0, P, rows, SC, SR, y0 + row0 - p.off_t, x0 - p.off_l);
  else
    load_source_tile<T, false>(p, s_src, n, c0, P, rows, SC, SR, y0 + row0 - p.off_t, x0 - p.off_l);
  __syncthreads();

  const int lx = threadIdx.x % LX;
  const int rest = threadIdx.x / LX;
  const int ly = rest % LY, pl = rest / LY;
  const int first_row = ly * RY, first_col = lx * kCols;  // of the thread's outputs, in the tile

  // Source steps t (tile row first_row + t) inside the map, and chunks whose 7 source columns touch it.
  const int top = p.off_t - y0 - first_row;
  const int t_lo = max(0, top), t_hi = min(RY + khc - 1, top + p.h);
  const int left = x0 + first_col - p.off_l;  // map column of window position 0 in chunk 0
  const int ch_lo = max(0, ceil_div(-left - (2 * kCols - 2), kCols));
  const int ch_hi = min(chunks, ceil_div(p.w_ - left, kCols));
  const int last_taps = kwc - (chunks - 1) * kCols;  // 1..4
  const int nfull = ch_lo >= ch_hi ? 0 : (ch_hi == chunks && last_taps < kCols ? ch_hi - 1 : ch_hi) - ch_lo;
  const int rem = ch_lo < ch_hi && ch_hi == chunks && last_taps < kCols ? last_taps : 0;

  float acc[RY][kCols];
#pragma unroll
  for (int r = 0; r < RY; ++r)
#pragma unroll
    for (int u = 0; u < kCols; ++u) acc[r][u] = 0.f;

  // Row t of the source is at s_row + t * SC; filter row i of chunk ch at s_f + ch * chunk_stride + 4 i.
  LKCONV_SMEM_PTR(const T) s_row = s_src + static_cast<int64_t>(pl) * SR * SC +
                                   (first_row - row0) * SC + first_col + ch_lo * kCols;
  LKCONV_SMEM_PTR(const float) s_f = s_w + pl * taps + ch_lo * chunk_stride;
  // Steady steps: every output row has a filter row (i = t - r in [0, khc) for all r).
  const int steady_lo = max(t_lo, RY - 1), steady_hi = min(t_hi, khc);
  for (int t = steady_lo; t < steady_hi; ++t)
    source_row<RY>(acc, s_row + t * SC, s_f + t * kCols, nfull, rem, chunk_stride);
  // Strip edges: only the rows with a filter row. Those rows are consecutive; when they start at the first row or
  // end at the last (always, for filters of RY rows or more) they share each source window; otherwise (a
  // shorter filter) each row runs on its own.
  for (int t = t_lo; t < t_hi; ++t) {
    if (t >= steady_lo && t < steady_hi) continue;
    const int r_lo = max(0, t - khc + 1), r_hi = min(RY - 1, t);
    if (r_lo > r_hi) continue;
    if (r_lo == 0) {
      edge_rows<RY, RY - 1, true>(acc, r_hi + 1, s_row + t * SC, s_f + t * kCols, nfull, rem, chunk_stride);
    } else if (r_hi == RY - 1) {
      edge_rows<RY, RY - 1, false>(acc, RY - r_lo, s_row + t * SC, s_f + t * kCols, nfull, rem, chunk_stride);
    } else {
#pragma unroll
      for (int r = 1; r < RY - 1; ++r)
        if (r >= r_lo && r <= r_hi)
          source_row<1>(acc + r, s_row + t * SC, s_f + (t - r) * kCols, nfull, rem, chunk_stride);
    }
  }

  const int c = c0 + pl;
  if (c >= p.c) return;
  const float bias = p.bias ? to_float(static_cast<const T*>(p.bias)[c]) : 0.f;
  T* out = static_cast<T*>(p.out) + n * p.out_v.sn + c * p.out_v.sc;
#pragma unroll
  for (int r = 0; r < RY; ++r) {
    const int y = y0 + first_row + r;
    if (y >= p.oh) break;
#pragma unroll
    for (int u = 0; u < kCols; ++u) {
      const int x = x0 + first_col + u;
      if (x < p.ow) out[y * p.out_v.sh + x * p.out_v.sw] = static_cast<T>(acc[r][u] + bias);
    }
  }
}

struct Config {
  int ry, lanes_x, tile_rows, planes, src_rows;
  size_t smem;
  int threads() const { return lanes_x * tile_rows * planes; }
};

// Per plane: the filter (float) and the held source rows (in the input's type, `element_size` bytes).
size_t smem_bytes(const Config& c, int khc, int kwc, int element_size) {
  const size_t kwp = (kwc + kCols - 1) / kCols * kCols;
  const size_t sc = c.lanes_x * kCols + kwp;
  return static_cast<size_t>(c.planes) *
         (sizeof(float) * khc * kwp + static_cast<size_t>(element_size) * c.src_rows * sc);
}

// Source rows a block holds: the tile's rows with their halo, but never more than the map has.
int held_rows(const Config& c, int src_h, int khc) { return std::min(c.tile_rows * c.ry + khc - 1, src_h); }

// Tiles sized to the map. Columns: one tile across when the map is at most 128 wide (lanes_x = ow / 4 rounded
// up), else the width in 64..128 that wastes the fewest columns. Rows: RY = 8 unless 4 wastes fewer rows, as
// many thread rows as fit 256 threads (64 for channels_last, so that a block holds >= 4 channels and its loads
// are >= 16-byte runs), balanced over the row tiles. Planes: the count that leaves the fewest idle lanes, up to
// 224 threads (256 for channels_last) within 48 KiB of shared memory per block (so several blocks share an SM;
// 96 KiB for channels_last). When even one plane does not fit the GPU's shared memory: fewer thread rows, then narrower tiles; false (and why) when the
// smallest tile does not fit.
bool choose_config(int src_h, int oh, int ow, int khc, int kwc, bool channels_last, int element_size,
                   size_t smem_limit, Config* out, std::string* why) {
  Config cfg;
  const int lanes_needed = ceil_div(ow, kCols);
  if (lanes_needed <= 32) {
    cfg.lanes_x = lanes_needed;
  } else {
    cfg.lanes_x = 32;
    for (int lx = 32; lx >= 16; --lx)
      if (ceil_div(ow, lx * kCols) * lx < ceil_div(ow, cfg.lanes_x * kCols) * cfg.lanes_x) cfg.lanes_x = lx;
  }
  cfg.ry = ceil_div(oh, 4) * 4 < ceil_div(oh, 8) * 8 ? 4 : 8;
  const int thread_rows = ceil_div(oh, cfg.ry);
  const int max_rows = std::max(1, (channels_last ? 64 : 256) / cfg.lanes_x);
  const int row_tiles = ceil_div(thread_rows, std::min(thread_rows, max_rows));
  cfg.tile_rows = ceil_div(thread_rows, row_tiles);
  const size_t target = (channels_last ? 96 : 48) * 1024;
  const int max_threads = channels_last ? 256 : 224;
  while (true) {
    cfg.src_rows = held_rows(cfg, src_h, khc);
    cfg.planes = 1;
    cfg.smem = smem_bytes(cfg, khc, kwc, element_size);
    if (cfg.smem <= smem_limit) {
      const int per_plane = cfg.lanes_x * cfg.tile_rows;
      const size_t plane_bytes = cfg.smem;
      // The plane count that leaves the fewest idle lanes in the block's last warp (ties: more planes).
      double best = 0;
      for (int planes = 1; planes * per_plane <= std::max(max_threads, per_plane); ++planes) {
        if (planes > 1 && (planes * per_plane > 256 || plane_bytes * planes > target)) break;
        const int threads = planes * per_plane;
        const double used = static_cast<double>(threads) / (ceil_div(threads, 32) * 32);
        if (used >= best) best = used, cfg.planes = planes;
      }
      cfg.smem = smem_bytes(cfg, khc, kwc, element_size);
      *out = cfg;
      return true;
    }
    if (cfg.tile_rows > 1) {
      cfg.tile_rows = ceil_div(cfg.tile_rows, 2);
    } else if (cfg.lanes_x > 2) {
      cfg.lanes_x = ceil_div(cfg.lanes_x, 2);
    } else if (cfg.ry > 4) {
      cfg.ry = 4;
    } else {
      *why = "a " + std::to_string(khc) + "x" + std::to_string(kwc) + " filter needs " + std::to_string(cfg.smem) +
             " bytes of shared memory even with the smallest tile, more than this GPU offers (" +
             std::to_string(smem_limit) + ")";
      return false;
    }
  }
}

template <typename T, int RY>
void launch_typed(const CorrelateParams& p, const Config& cfg, cudaStream_t stream) {
  if (cfg.smem > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(correlate_kernel<T, RY>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(cfg.smem)));
  const int th = cfg.tile_rows * RY, tw = cfg.lanes_x * kCols;
  const int64_t plane_groups = static_cast<int64_t>(p.n) * ((p.c + cfg.planes - 1) / cfg.planes);
  TORCH_CHECK(plane_groups < (1LL << 31), "lkconv cuda: too many planes (", plane_groups, " blocks)");
  const int64_t row_tiles = (p.oh + th - 1) / th, col_tiles = (p.ow + tw - 1) / tw;
  TORCH_CHECK(row_tiles < 65536 && col_tiles < 65536, "lkconv cuda: feature map too large (", p.oh, "x", p.ow,
              ")");
  dim3 grid(static_cast<unsigned>(plane_groups), static_cast<unsigned>(row_tiles),
            static_cast<unsigned>(col_tiles));
  dim3 block(cfg.threads());
  LKCONV_LAUNCH(grid, block, cfg.smem, stream, correlate_kernel<T, RY>)(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch(const CorrelateParams& p, const Config& cfg, cudaStream_t stream) {
  switch (cfg.ry) {
    case 8: launch_typed<T, 8>(p, cfg, stream); break;
    case 4: launch_typed<T, 4>(p, cfg, stream); break;
    default: TORCH_CHECK(false, "lkconv cuda: no tile configuration with ", cfg.ry, " rows per thread");
  }
}

View4 view(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

}  // namespace

// The taps [lo, hi] of a filter side that can touch real pixels when out[y] reads src[y + i - offset].
static void useful_taps(int k, int src_len, int out_len, int offset, int* lo, int* hi) {
  *lo = std::max(0, offset - out_len + 1);
  *hi = std::min(k - 1, offset + src_len - 1);
}

TileConfig correlate_tile_config(int n, int src_h, int src_w, int out_h, int out_w, int kh, int kw, int off_t,
                                 int off_l, bool channels_last, int element_size) {
  TileConfig out;
  int i_lo, i_hi, j_lo, j_hi;
  useful_taps(kh, src_h, out_h, off_t, &i_lo, &i_hi);
  useful_taps(kw, src_w, out_w, off_l, &j_lo, &j_hi);
  if (i_hi < i_lo || j_hi < j_lo) return out;  // no kernel runs: the result is the bias
  Config cfg;
  out.khc = i_hi - i_lo + 1, out.kwc = j_hi - j_lo + 1;
  DenseCorrelatePlan dense;
  if (dense_correlate_plan(n, src_h, src_w, out_h, out_w, out.khc, out.kwc,
                           current_device_limits().smem_per_block_optin, &dense)) {
    out.kernel = "correlate_dense_kernel";
    out.a = dense.rx, out.b = dense.images, out.c = dense.channels, out.smem = dense.smem;
    out.threads = dense.threads;
    return out;
  }
  if (choose_config(src_h, out_h, out_w, out.khc, out.kwc, channels_last, element_size,
                    current_device_limits().smem_per_block_optin, &cfg, &out.refusal)) {
    out.kernel = "correlate_kernel";
    out.a = cfg.lanes_x * kCols, out.b = cfg.ry, out.c = cfg.planes, out.d = cfg.tile_rows, out.smem = cfg.smem;
    out.threads = cfg.threads();
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
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  DenseCorrelatePlan dense;
  if (dense_correlate_plan(p.n, h, w, oh, ow, p.khc, p.kwc, limits.smem_per_block_optin, &dense)) {
    switch (src.scalar_type()) {
      case at::kFloat: launch_dense_correlate<float>(p, dense, stream); break;
      case at::kHalf: launch_dense_correlate<at::Half>(p, dense, stream); break;
      case at::kBFloat16: launch_dense_correlate<at::BFloat16>(p, dense, stream); break;
      default: TORCH_CHECK(false, "lkconv cuda: unsupported dtype ", src.scalar_type());
    }
    return;
  }
  const bool channels_last = src.stride(1) == 1 && src.size(1) > 1;
  Config cfg;
  std::string why;
  const int element_size = static_cast<int>(src.element_size());
  TORCH_CHECK(choose_config(h, oh, ow, p.khc, p.kwc, channels_last, element_size, limits.smem_per_block_optin,
                            &cfg, &why),
              "lkconv cuda: ", why);
  p.planes = cfg.planes, p.tile_rows = cfg.tile_rows, p.lanes_x = cfg.lanes_x, p.src_rows = cfg.src_rows;
  switch (src.scalar_type()) {
    case at::kFloat: launch<float>(p, cfg, stream); break;
    case at::kHalf: launch<at::Half>(p, cfg, stream); break;
    case at::kBFloat16: launch<at::BFloat16>(p, cfg, stream); break;
    default: TORCH_CHECK(false, "lkconv cuda: unsupported dtype ", src.scalar_type());
  }
}

}  // namespace cuda
}  // namespace lkconv
