// Forward and backward-input of the depthwise convolution on small maps that the filter spans ("dense"). An
// H x W "same" call whose cropped filter is (2H - 1) x (2W - 1) meets every (output pixel, source pixel) pair of
// a channel through exactly one tap,
//   out[n, y, x] = sum_{y', x'} f[y' - y + H - 1, x' - x + W - 1] * src[n, y', x'],
// so a walk over the source pixels multiplies nothing but real pairs; the tile kernel (correlate_kernel.cu)
// multiplies chunks of taps that partly meet the zero halo (48% useful at 14x14 k27, 42% at 7x7 k13).
//
// Design (predicted by `python -m bench.sass`):
//  - Grid (image groups, channel groups): a block holds `channels` channels x `images` images of the source in
//    shared memory image-fastest ([channel][y'][x'][image], fp32), and each channel's cropped filter with its
//    rows reversed and zero-padded (frev[i][u] = f[i][2W - 2 - u] for u < 2W - 1, else 0).
//  - A thread owns output row y, RX columns (block bx) and RN = 8 images: RX x 8 register accumulators. Source
//    row y' meets it through filter row i = y' - y + H - 1, and source column x' = W - 1 - m through
//    frev[i][m + bx RX + a] for its columns a: consecutive in a and sliding by one per step of m. So RX steps
//    read 2RX - 1 filter values once (then compile-time register offsets) and, per step, the 8 images of one
//    source pixel (2 LDS.128, the same address across the warp's threads: a broadcast): RX x 8 FFMAs per step.
//  - Filter rows are 1 mod 32 floats apart, so the warp's threads (different rows y) read different banks.
//  - Each output is one fixed-order sum, written once with the bias: no partial sums, deterministic. Padded
//    image slots and columns past the map only feed accumulators that are never stored.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "depthwise_cuda.cuh"

namespace lkconv {
namespace cuda {
namespace {

constexpr int kImagesPerThread = 8;  // RN
constexpr int kMaxThreads = 256;
constexpr int kMaxImages = 64;       // images per block
constexpr int kMaxDenseRows = 32;
constexpr size_t kDenseSmemBudget = 72 * 1024;  // three blocks per H100 SM (228 KiB)

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}

__host__ __device__ inline int filter_stride(int w, int rx) { return (2 * w - 1 + rx + 31) / 32 * 32 + 1; }

// STEPS consecutive steps m0 .. m0 + STEPS - 1: fp points at frev[i][m0 + bx RX], sp at the images of source
// column x' = W - 1 - m0 (the next step's are `ip` floats lower).
template <int RX, int STEPS>
__device__ __forceinline__ void source_steps(float (&acc)[RX][kImagesPerThread], LKCONV_SMEM_PTR(const float) fp,
                                             LKCONV_SMEM_PTR(const float) sp, int ip) {
  float win[STEPS + RX - 1];
#pragma unroll
  for (int k = 0; k < STEPS + RX - 1; ++k) win[k] = fp[k];
#pragma unroll
  for (int s = 0; s < STEPS; ++s, sp -= ip) {
    const Float4 lo = load4(sp), hi = load4(sp + 4);
    const float v[kImagesPerThread] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
    for (int a = 0; a < RX; ++a)
#pragma unroll
      for (int b = 0; b < kImagesPerThread; ++b) acc[a][b] = fmaf(win[s + a], v[b], acc[a][b]);
  }
}

template <int RX, int STEPS>
__device__ __forceinline__ void remainder_steps(float (&acc)[RX][kImagesPerThread], LKCONV_SMEM_PTR(const float) fp,
                                                LKCONV_SMEM_PTR(const float) sp, int ip, int rest) {
  if constexpr (STEPS >= 1) {
    if (rest == STEPS)
      source_steps<RX, STEPS>(acc, fp, sp, ip);
    else
      remainder_steps<RX, STEPS - 1>(acc, fp, sp, ip, rest);
  }
}

template <typename T, int RX>
__global__ void __launch_bounds__(kMaxThreads) correlate_dense_kernel(const CorrelateParams p, const int images,
                                                                      const int channels, const int image_blocks) {
  LKCONV_DYNAMIC_SMEM(float, smem);
  const int H = p.h, W = p.w_, FW = filter_stride(W, RX), FH = 2 * H - 1, IP = images;
  const int nbx = (W + RX - 1) / RX;
  const int n0 = blockIdx.x * images, c0 = blockIdx.y * channels;
  LKCONV_SMEM_PTR(float) s_src = smem;                           // [channels][H][W][IP]
  LKCONV_SMEM_PTR(float) s_f = s_src + channels * H * W * IP;    // [channels][2H - 1][FW]
  const T* src = static_cast<const T*>(p.src);
  const T* w = static_cast<const T*>(p.w);

  // Filters, cropped (flipped for backward-input), each row reversed, zero past its 2W - 1 taps: a thread per
  // (channel, row) walks the row by pointer increments.
  for (int row = threadIdx.x; row < channels * FH; row += blockDim.x) {
    const int cl = row / FH, i = row % FH, c = c0 + cl;
    LKCONV_SMEM_PTR(float) d = s_f + row * FW;
    int u = 0;
    if (c < p.c) {
      // u = 0 is tap column 2W - 2 of the cropped filter; each next u one column to the left (to the right in
      // the flipped filter).
      const int fi = p.flip ? p.kh - 1 - (p.ki0 + i) : p.ki0 + i;
      const int fj = p.flip ? p.kw - 1 - (p.kj0 + 2 * W - 2) : p.kj0 + 2 * W - 2;
      const int64_t step = p.flip ? p.w_sw : -p.w_sw;
      const T* q = w + c * p.w_sc + fi * p.w_sh + fj * p.w_sw;
      for (; u < 2 * W - 1; ++u, q += step) d[u] = to_float(*q);
    }
    for (; u < FW; ++u) d[u] = 0.f;
  }
  // Sources, stored image-fastest: a thread streams whole planes (channel, image) in pixel order (or every
  // `parts`-th pixel of one, when the block has more threads than planes), by pointer increments. Images past the batch and
  // channels past C are zero (never stored back).
  {
    const int planes = channels * IP, parts = max(1, static_cast<int>(blockDim.x) / planes);
    for (int job = threadIdx.x; job < planes * parts; job += blockDim.x) {
      const int pl = job % planes, part = job / planes;
      const int cl = pl / IP, im = pl % IP;
      const bool real = n0 + im < p.n && c0 + cl < p.c;
      int x = part % W, y = part / W;  // pixel index `part`, then every `parts`-th
      const int dx = parts % W, dy = parts / W;
      const T* q = src + (real ? (n0 + im) * p.src_v.sn + (c0 + cl) * p.src_v.sc : 0) + y * p.src_v.sh +
                   x * p.src_v.sw;
      const int64_t q_next = dy * p.src_v.sh + dx * p.src_v.sw, q_carry = p.src_v.sh - W * p.src_v.sw;
      LKCONV_SMEM_PTR(float) d = s_src + (cl * H * W + part) * IP + im;
      for (int k = part; k < H * W; k += parts, d += parts * IP) {
        *d = real ? to_float(*q) : 0.f;
        x += dx, q += q_next;
        if (x >= W) x -= W, q += q_carry;
      }
    }
  }
  __syncthreads();

  // Thread -> (output row y, column block bx, image block ib, channel cl), rows fastest.
  const int y = threadIdx.x % H;
  int rest = threadIdx.x / H;
  const int bx = rest % nbx;
  rest /= nbx;
  const int ib = rest % image_blocks, cl = rest / image_blocks;
  if (cl >= channels || c0 + cl >= p.c) return;

  float acc[RX][kImagesPerThread];
#pragma unroll
  for (int a = 0; a < RX; ++a)
#pragma unroll
    for (int b = 0; b < kImagesPerThread; ++b) acc[a][b] = 0.f;
  LKCONV_SMEM_PTR(const float) f_row = s_f + (cl * FH + H - 1 - y) * FW + bx * RX;  // filter row of y' = 0
  LKCONV_SMEM_PTR(const float) s_row = s_src + (cl * H * W + W - 1) * IP + ib * kImagesPerThread;  // x' = W - 1
  for (int yy = 0; yy < H; ++yy, f_row += FW, s_row += W * IP) {
    int m0 = 0;
    for (; m0 + RX <= W; m0 += RX) source_steps<RX, RX>(acc, f_row + m0, s_row - m0 * IP, IP);
    remainder_steps<RX, RX - 1>(acc, f_row + m0, s_row - m0 * IP, IP, W - m0);
  }

  const int c = c0 + cl;
  const float bias = p.bias ? to_float(static_cast<const T*>(p.bias)[c]) : 0.f;
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int b = 0; b < kImagesPerThread; ++b) {
    const int64_t n = n0 + ib * kImagesPerThread + b;
    if (n >= p.n) break;
    T* orow = out + n * p.out_v.sn + static_cast<int64_t>(c) * p.out_v.sc + y * p.out_v.sh;
#pragma unroll
    for (int a = 0; a < RX; ++a) {
      const int x = bx * RX + a;
      if (x < W) orow[x * p.out_v.sw] = static_cast<T>(acc[a][b] + bias);
    }
  }
}

size_t dense_smem_floats(int h, int w, int rx, int images, int channels) {
  return static_cast<size_t>(channels) * (static_cast<size_t>(h) * w * images +
                                          static_cast<size_t>(2 * h - 1) * filter_stride(w, rx));
}

template <typename T, int RX>
void launch_rx(const CorrelateParams& p, const DenseCorrelatePlan& plan, cudaStream_t stream) {
  if (plan.smem > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(correlate_dense_kernel<T, RX>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(plan.smem)));
  const int64_t groups = (static_cast<int64_t>(p.n) + plan.images - 1) / plan.images;
  const int64_t channel_groups = (static_cast<int64_t>(p.c) + plan.channels - 1) / plan.channels;
  TORCH_CHECK(groups < (1LL << 31) && channel_groups < 65536, "lkconv cuda: too many images or channels");
  dim3 grid(static_cast<unsigned>(groups), static_cast<unsigned>(channel_groups));
  LKCONV_LAUNCH(grid, plan.threads, plan.smem, stream, correlate_dense_kernel<T, RX>)(
      p, plan.images, plan.channels, plan.images / kImagesPerThread);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

bool dense_correlate_plan(int n, int h, int w, int oh, int ow, int khc, int kwc, size_t smem_limit,
                          DenseCorrelatePlan* plan) {
  // Eight images per thread: a batch of fewer keeps the tile kernel, which does not pad images.
  if (n < kImagesPerThread || oh != h || ow != w || khc != 2 * h - 1 || kwc != 2 * w - 1 || h > kMaxDenseRows ||
      w > 28)
    return false;
  DenseCorrelatePlan out;
  out.rx = (w <= 4 || w == 8 || w == 15 || w == 16) ? 4 : 7;  // columns per thread, as the dense weight gradient
  const int nbx = (w + out.rx - 1) / out.rx;
  int image_blocks = std::min(kMaxImages, (n + kImagesPerThread - 1) / kImagesPerThread * kImagesPerThread) /
                     kImagesPerThread;
  while (image_blocks > 1 && h * nbx * image_blocks > kMaxThreads) image_blocks /= 2;
  if (h * nbx * image_blocks > kMaxThreads) return false;
  const size_t limit = std::min(smem_limit, kDenseSmemBudget);
  auto bytes = [&](int blocks, int channels) {
    return dense_smem_floats(h, w, out.rx, blocks * kImagesPerThread, channels) * sizeof(float);
  };
  while (image_blocks > 1 && bytes(image_blocks, 1) > limit) image_blocks /= 2;
  if (bytes(image_blocks, 1) > limit) return false;
  const int per_channel = h * nbx * image_blocks;
  out.channels = std::max(1, kMaxThreads / per_channel);
  while (out.channels > 1 && bytes(image_blocks, out.channels) > limit) --out.channels;
  out.images = image_blocks * kImagesPerThread;
  out.threads = (out.channels * per_channel + 31) / 32 * 32;
  out.smem = bytes(image_blocks, out.channels);
  *plan = out;
  return true;
}

template <typename T>
void launch_dense_correlate(const CorrelateParams& p, const DenseCorrelatePlan& plan, cudaStream_t stream) {
  if (plan.rx == 4)
    launch_rx<T, 4>(p, plan, stream);
  else
    launch_rx<T, 7>(p, plan, stream);
}

template void launch_dense_correlate<float>(const CorrelateParams&, const DenseCorrelatePlan&, cudaStream_t);
template void launch_dense_correlate<at::Half>(const CorrelateParams&, const DenseCorrelatePlan&, cudaStream_t);
template void launch_dense_correlate<at::BFloat16>(const CorrelateParams&, const DenseCorrelatePlan&, cudaStream_t);

}  // namespace cuda
}  // namespace lkconv
