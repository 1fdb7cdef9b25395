// Backward-weight of the depthwise convolution on small maps that the filter spans ("dense"). When every
// (output-gradient pixel, input pixel) pair of a channel meets a tap - an H x W "same" call whose cropped filter
// is (2H - 1) x (2W - 1), e.g. RepLKNet's 14x14 maps with 27x27 filters and 7x7 maps with 13x13 -
//   grad_w[c, pad_t + dy, pad_l + dx] = sum_n sum_{y, x} g[n, c, y, x] * in[n, c, y + dy, x + dx]
// is, per row offset dy, the matrix M_dy[x, t] = sum_{n, y} g[n, c, y, x] * in[n, c, y + dy, t] summed along its
// diagonals (dx = t - x). M_dy is an outer-product accumulation, so every multiply-add is a useful one; the tile
// kernel (wgrad_kernel.cu) multiplies blocks of taps against column steps that are mostly padding at these sizes.
//
// Design (predicted by `python -m bench.sass`):
//  - Grid (splits, C): a block owns one channel and a group of its images, all held in shared memory as fp32.
//    A row is cut into NB blocks of R columns, each padded to RP floats (zeros), so R values are RP/4 LDS.128.
//  - Row offsets come in pairs: unit d (0 <= d < H) sums dy = d over the rows y < H - d, then dy = d - H over the
//    rest. Every unit takes H row pairs per image, whatever d.
//  - A warp runs one unit at a time, so d is warp-uniform and its row loops never diverge. Its 32 lanes are
//    (q, s): q = (bx, bt) names one R x R block of M, held as register accumulators (R*R FFMAs per 2 * RP/4
//    LDS.128); s is the slice of the group's images the lane sums (images s, s + SLICES, ...).
//  - After each row offset a lane folds its block into 2R - 1 diagonal sums (real columns only: a zero-padded
//    column times an Inf input is never added), the warp's slices are summed by a fixed-order reduce-scatter of
//    shuffles, and the sums land in the block's table [dy][q][diagonal]. At the end the block adds, per tap, the
//    diagonals of the blocks that hold it (fixed order) and writes its partial sums; the tile kernel's finalize
//    adds the groups in order. No atomics: bitwise reproducible, like the tile kernel.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "depthwise_cuda.cuh"

namespace lkconv {
namespace cuda {
namespace {

constexpr int kDenseMaxWarps = 8;
constexpr int kDiagPad = 16;      // diagonal sums per block, padded to a power of two for the reduce-scatter
constexpr int kMaxDenseRows = 32;  // taller maps keep the tile kernel (their units would not fit a block's table)
constexpr size_t kDenseSmemBudget = 72 * 1024;  // three blocks per H100 SM (228 KiB)

__host__ __device__ constexpr int padded4(int r) { return (r + 3) / 4 * 4; }

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}

// The RP values of one R-column block of a shared row (16-byte aligned).
template <int R>
__device__ __forceinline__ void load_block(float (&v)[padded4(R)], LKCONV_SMEM_PTR(const float) p) {
#pragma unroll
  for (int k = 0; k < padded4(R) / 4; ++k) {
    const Float4 f = load4(p + 4 * k);
    v[4 * k] = f.x, v[4 * k + 1] = f.y, v[4 * k + 2] = f.z, v[4 * k + 3] = f.w;
  }
}

// acc[a][b] += g_row[a] * x_row[b] over `rows` consecutive row pairs starting at gp / xp (RS floats apart: a
// compile-time stride, so the unrolled rows' loads take immediate offsets).
template <int R, int RS>
__device__ __forceinline__ void accumulate_rows(float (&acc)[R][R], LKCONV_SMEM_PTR(const float) gp,
                                                LKCONV_SMEM_PTR(const float) xp, int rows) {
  LKCONV_SMEM_PTR(const float) g_end = gp + rows * RS;
#pragma unroll 2
  for (; gp != g_end; gp += RS, xp += RS) {
    float g[padded4(R)], x[padded4(R)];
    load_block<R>(g, gp);
    load_block<R>(x, xp);
#pragma unroll
    for (int a = 0; a < R; ++a)
#pragma unroll
      for (int b = 0; b < R; ++b) acc[a][b] = fmaf(g[a], x[b], acc[a][b]);
  }
}

// acc = the lane's R x R block of M summed over `rows` row pairs of each of its images (s, s + SLICES, ... <
// count); g0 / x0 point at the first pair of image s. The first row sets acc (acc = g x), so a block needs no
// reset after the previous offset's fold.
template <int R, int RS, int SLICES>
__device__ __forceinline__ void sum_offset(float (&acc)[R][R], LKCONV_SMEM_PTR(const float) g0,
                                           LKCONV_SMEM_PTR(const float) x0, int rows, int s, int count,
                                           int image_stride) {
  if (s >= count) {  // a slice past the group's images (its last, partial group)
#pragma unroll
    for (int a = 0; a < R; ++a)
#pragma unroll
      for (int b = 0; b < R; ++b) acc[a][b] = 0.f;
    return;
  }
  {
    float g[padded4(R)], x[padded4(R)];
    load_block<R>(g, g0);
    load_block<R>(x, x0);
#pragma unroll
    for (int a = 0; a < R; ++a)
#pragma unroll
      for (int b = 0; b < R; ++b) acc[a][b] = g[a] * x[b];
  }
  accumulate_rows<R, RS>(acc, g0 + RS, x0 + RS, rows - 1);
  for (int im = s + SLICES; im < count; im += SLICES) {
    const int offset = (im - s) * image_stride;
    accumulate_rows<R, RS>(acc, g0 + offset, x0 + offset, rows);
  }
}

// One level of the slices' reduce-scatter: of its COUNT values a lane keeps the half its HALF bit names and adds
// the partner's copy of it; at COUNT 1 the pair adds its single value (both lanes get the same sum, a + b = b + a).
// `first` tracks which of the kDiagPad sums v[0] is.
template <int HALF, int COUNT>
__device__ __forceinline__ void reduce_slices(float (&v)[kDiagPad], int s, int& first) {
  if constexpr (HALF >= 1) {
    const bool upper = s & HALF;
    if constexpr (COUNT > 1) {
      constexpr int K = COUNT / 2;
#pragma unroll
      for (int e = 0; e < K; ++e) {
        const float send = upper ? v[e] : v[e + K];
        const float keep = upper ? v[e + K] : v[e];
        v[e] = keep + __shfl_xor_sync(0xffffffffu, send, HALF);
      }
      if (upper) first += K;
      reduce_slices<HALF / 2, K>(v, s, first);
    } else {
      v[0] += __shfl_xor_sync(0xffffffffu, v[0], HALF);
      reduce_slices<HALF / 2, 1>(v, s, first);
    }
  }
}

// The warp's block sums of one row offset into table[q][0 .. 2R-1): fold, reduce the slices, store.
template <int R, int NB>
__device__ __forceinline__ void flush_block(float (&acc)[R][R], int s, int bx, int bt, int w,
                                            LKCONV_SMEM_PTR(float) table_q) {
  constexpr int SLICES = 32 / (NB * NB);
  float v[kDiagPad];
#pragma unroll
  for (int e = 0; e < kDiagPad; ++e) v[e] = 0.f;
  if (bx * R + R > w || bt * R + R > w) {  // a block past the map's last column (never at 7 or 14 columns)
    const int rows_real = w - bx * R, cols_real = w - bt * R;
#pragma unroll
    for (int a = 0; a < R; ++a)
#pragma unroll
      for (int b = 0; b < R; ++b)
        if (a >= rows_real || b >= cols_real) acc[a][b] = 0.f;
  }
#pragma unroll
  for (int a = 0; a < R; ++a)
#pragma unroll
    for (int b = 0; b < R; ++b) v[b - a + R - 1] += acc[a][b];
  int first = 0;
  reduce_slices<SLICES / 2, kDiagPad>(v, s, first);
  constexpr int HELD = SLICES >= kDiagPad ? 1 : kDiagPad / SLICES;  // sums a lane ends with
  constexpr int COPIES = SLICES > kDiagPad ? SLICES / kDiagPad : 1;  // lanes holding the same ones
  if (s % COPIES == 0) {
#pragma unroll
    for (int e = 0; e < HELD; ++e)
      if (first + e < 2 * R - 1) table_q[first + e] = v[e];
  }
}

template <typename T, int R, int NB>
__global__ void __launch_bounds__(kDenseMaxWarps * 32) wgrad_dense_kernel(const WgradParams p, const int images,
                                                                           const int image_stride) {
  constexpr int RP = padded4(R), RS = NB * RP, Q = NB * NB, SLICES = 32 / Q, DIAG = 2 * R - 1;
  static_assert(32 % RS == 0, "a row of blocks divides a warp (the loader keeps one column per thread)");
  LKCONV_DYNAMIC_SMEM(float, smem);
  const int H = p.h, W = p.w_, IS = image_stride;
  LKCONV_SMEM_PTR(float) s_g = smem;                      // [images][H][RS] (image stride IS)
  LKCONV_SMEM_PTR(float) s_x = s_g + images * IS;         // [images][H][RS]
  LKCONV_SMEM_PTR(float) s_table = s_x + images * IS;     // [2H - 1][Q][kDiagPad]
  const int c = blockIdx.y, split = blockIdx.x, n0 = split * images;
  const int count = min(images, p.n - n0);
  const T* xp = static_cast<const T*>(p.x);
  const T* gp = static_cast<const T*>(p.g);

  // Both tensors' rows, blocks of R real columns padded with zeros. RS divides the block size, so a thread keeps
  // one column (whether it is real is known once) and walks rows (image, row) by pointer increments, with a carry
  // into the next image; neighbouring threads read neighbouring columns.
  {
    const int step = blockDim.x / RS, col = threadIdx.x % RS;
    const int k = col % RP, x = (col / RP) * R + k;
    const bool real = k < R && x < W;
    const int dim = step / H, dr = step % H;
    int im = (threadIdx.x / RS) / H, r = (threadIdx.x / RS) % H;
    const int64_t x0 = real ? x : 0;  // a padding column's pointer stays at column 0 and is never read
    const T* gq = gp + (n0 + im) * p.g_v.sn + c * p.g_v.sc + r * p.g_v.sh + x0 * p.g_v.sw;
    const T* xq = xp + (n0 + im) * p.x_v.sn + c * p.x_v.sc + r * p.x_v.sh + x0 * p.x_v.sw;
    const int64_t g_next = dim * p.g_v.sn + dr * p.g_v.sh, g_carry = p.g_v.sn - H * p.g_v.sh;
    const int64_t x_next = dim * p.x_v.sn + dr * p.x_v.sh, x_carry = p.x_v.sn - H * p.x_v.sh;
    int s_at = im * IS + r * RS + col;
    const int s_next = dim * IS + dr * RS, s_carry = IS - H * RS;
    for (int row = threadIdx.x / RS; row < count * H; row += step) {
      s_g[s_at] = real ? to_float(*gq) : 0.f;
      s_x[s_at] = real ? to_float(*xq) : 0.f;
      r += dr, gq += g_next, xq += x_next, s_at += s_next;
      if (r >= H) r -= H, gq += g_carry, xq += x_carry, s_at += s_carry;
    }
  }
  __syncthreads();

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int q = lane / SLICES, s = lane % SLICES, bx = q / NB, bt = q % NB;
  float acc[R][R];
  LKCONV_SMEM_PTR(const float) g_base = s_g + s * IS + bx * RP;
  LKCONV_SMEM_PTR(const float) x_base = s_x + s * IS + bt * RP;
  for (int d = warp; d < H; d += warps) {
    // dy = d: gradient rows 0 .. H - d - 1 against input rows d .. H - 1.
    sum_offset<R, RS, SLICES>(acc, g_base, x_base + d * RS, H - d, s, count, IS);
    flush_block<R, NB>(acc, s, bx, bt, W, s_table + ((d + H - 1) * Q + q) * kDiagPad);
    if (d == 0) continue;
    // dy = d - H: gradient rows H - d .. H - 1 against input rows 0 .. d - 1.
    sum_offset<R, RS, SLICES>(acc, g_base + (H - d) * RS, x_base, d, s, count, IS);
    flush_block<R, NB>(acc, s, bx, bt, W, s_table + ((d - 1) * Q + q) * kDiagPad);
  }
  __syncthreads();

  // tap (dy, dx) = sum over the blocks (bx, bt) whose diagonal dx - (bt - bx) R holds it, in order of q.
  const int taps_w = 2 * W - 1, taps = (2 * H - 1) * taps_w;
  float* out = p.partial + (static_cast<int64_t>(c) * p.splits + split) * taps;
  for (int t = threadIdx.x; t < taps; t += blockDim.x) {
    const int row = t / taps_w, dx = t % taps_w - (W - 1);
    float sum = 0.f;
#pragma unroll
    for (int qq = 0; qq < Q; ++qq) {
      const int diag = dx - (qq % NB - qq / NB) * R + R - 1;
      if (diag >= 0 && diag < DIAG) sum += s_table[(row * Q + qq) * kDiagPad + diag];
    }
    out[t] = sum;
  }
}

int dense_row_stride(int r, int nb) { return nb * padded4(r); }
// Images at a stride of 4 floats past a multiple of 32: the lanes' slices start in different banks.
int dense_image_stride(int h, int r, int nb) { return (h * dense_row_stride(r, nb) + 31) / 32 * 32 + 4; }

size_t dense_smem_floats(int h, int r, int nb, int images) {
  return 2 * static_cast<size_t>(images) * dense_image_stride(h, r, nb) +
         static_cast<size_t>(2 * h - 1) * nb * nb * kDiagPad;
}

template <typename T, int R, int NB>
void launch_shape(const WgradParams& p, const DenseWgradPlan& plan, cudaStream_t stream) {
  const int is = dense_image_stride(p.h, R, NB);
  if (plan.smem > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(wgrad_dense_kernel<T, R, NB>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(plan.smem)));
  LKCONV_LAUNCH(dim3(p.splits, p.c), plan.warps * 32, plan.smem, stream, wgrad_dense_kernel<T, R, NB>)(
      p, plan.images, is);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

bool dense_wgrad_plan(int n, int h, int w, int oh, int ow, int khc, int kwc, size_t smem_limit,
                      DenseWgradPlan* plan) {
  if (oh != h || ow != w || khc != 2 * h - 1 || kwc != 2 * w - 1 || h > kMaxDenseRows || w > 28) return false;
  DenseWgradPlan out;
  // Blocks of R columns: R = 7 for 5..7, 9..14 and 17..28 columns, R = 4 for 1..4, 8 and 15..16; NB of them,
  // a power of two so that 32 / NB^2 lanes share a block.
  out.r = (w <= 4 || w == 8 || w == 15 || w == 16) ? 4 : 7;
  const int need = (w + out.r - 1) / out.r;
  out.nb = need <= 1 ? 1 : need <= 2 ? 2 : 4;
  const int slices = 32 / (out.nb * out.nb);
  const int per_lane = (h + kDenseMaxWarps - 1) / kDenseMaxWarps;  // units per warp
  out.warps = (h + per_lane - 1) / per_lane;
  const size_t limit = std::min(smem_limit, kDenseSmemBudget);
  // As many images per slice as the batch has (at most 8), while the block fits its shared-memory budget.
  int per_slice = std::min(8, (n + slices - 1) / slices);
  while (per_slice > 1 && dense_smem_floats(h, out.r, out.nb, per_slice * slices) * sizeof(float) > limit)
    --per_slice;
  out.images = std::min(n, per_slice * slices);
  while (out.images > 1 && dense_smem_floats(h, out.r, out.nb, out.images) * sizeof(float) > limit)
    out.images /= 2;
  out.smem = dense_smem_floats(h, out.r, out.nb, out.images) * sizeof(float);
  if (out.smem > limit) return false;
  *plan = out;
  return true;
}

template <typename T>
void launch_dense_wgrad(const WgradParams& p, const DenseWgradPlan& plan, cudaStream_t stream) {
  if (plan.r == 4) {
    if (plan.nb == 1) launch_shape<T, 4, 1>(p, plan, stream);
    else if (plan.nb == 2) launch_shape<T, 4, 2>(p, plan, stream);
    else launch_shape<T, 4, 4>(p, plan, stream);
  } else {
    if (plan.nb == 1) launch_shape<T, 7, 1>(p, plan, stream);
    else if (plan.nb == 2) launch_shape<T, 7, 2>(p, plan, stream);
    else launch_shape<T, 7, 4>(p, plan, stream);
  }
}

template void launch_dense_wgrad<float>(const WgradParams&, const DenseWgradPlan&, cudaStream_t);
template void launch_dense_wgrad<at::Half>(const WgradParams&, const DenseWgradPlan&, cudaStream_t);
template void launch_dense_wgrad<at::BFloat16>(const WgradParams&, const DenseWgradPlan&, cudaStream_t);

}  // namespace cuda
}  // namespace lkconv
