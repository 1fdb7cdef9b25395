// Channel-vectorised cores of the CPU depthwise correlation, for small maps.
//
// The plane cores (plane_kernels.h) vectorise along a row of one channel's plane: a 7-wide map fills half a
// vector, and every padding tap of a 13x13 kernel over a 7x7 map is multiplied by a zero. Here a vector holds
// the same pixel of L consecutive channels ([row][col][L] buffers, gathered by the caller), so the lanes are
// always full whatever the map size, and each output row block meets only the filter rows and columns that
// touch real pixels: the loop bounds skip the padding instead of multiplying it.
//
// Per block of Q output rows (2 with AVX-512) x R output columns and per image row that meets them, a window
// of R input vectors slides along the image row: each tap costs Q weight loads, one new input load and Q x R
// FMAs. Image rows outside the map are never visited, and taps whose window lies wholly in the zero columns
// around the image are skipped.
// Included by the per-ISA translation units after plane_kernels.h (it reuses Vec, loadu, storeu).

namespace LKCONV_ISA {

// acc[q][r] += sum_{j in [jlo, jhi)} w[q][j] * src[x0 + j + r] (vectors of L channels), r < R, q < Q: one
// input row feeding Q output rows through Q filter rows (w[q] = w0 - q * kw * L, the filter row above).
// The window of R input vectors is rotated by renaming, not by moves: taps go in groups of R, and within a
// group tap k reads window slot (r + k) % R and refills slot k, all indices compile-time constants once the
// loops are unrolled.
template <typename T, int Q, int R>
static inline void cv_row(const T* src, const T* w0, int64_t wq, int jlo, int jhi, int x0,
                          typename Vec<T>::type (&acc)[Q][R]) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  V win[R];
  const T* in = src + static_cast<int64_t>(x0 + jlo) * L;  // window start of tap jlo
  const T* wp = w0 + static_cast<int64_t>(jlo) * L;
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) win[r] = loadu<V>(in + r * L);
  int j = jlo;
  for (; j + R <= jhi; j += R, in += R * L, wp += R * L) {
#pragma GCC unroll 16
    for (int k = 0; k < R; ++k) {
#pragma GCC unroll 2
      for (int q = 0; q < Q; ++q) {
        const V wv = loadu<V>(wp - q * wq + k * L);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) acc[q][r] += win[(r + k) % R] * wv;
      }
      win[k] = loadu<V>(in + (k + R) * L);
    }
  }
  // The last taps (fewer than R), same slots.
#pragma GCC unroll 16
  for (int k = 0; k < R; ++k) {
    if (j + k >= jhi) break;
#pragma GCC unroll 2
    for (int q = 0; q < Q; ++q) {
      const V wv = loadu<V>(wp - q * wq + k * L);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) acc[q][r] += win[(r + k) % R] * wv;
    }
    win[k] = loadu<V>(in + (k + R) * L);
  }
}

// out[y + q][x0 + r] = bias + sum over the taps that touch the image, for r < R, q < Q (Q = 1 or 2 rows, the
// second sharing every input row load with the first).
template <typename T, int Q, int R>
static inline void cv_block(const T* src, int64_t src_row, int h, int bl, int wimg, int bt, const T* w, int kh,
                            int kw, const T* bias, T* out, int64_t out_row, int64_t out_px, int y, int x0) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  V acc[Q][R];
  const V b = loadu<V>(bias);
#pragma GCC unroll 2
  for (int q = 0; q < Q; ++q)
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[q][r] = b;
  // Taps j whose window [x0 + j, x0 + j + R) meets the image columns [bl, bl + wimg) of the buffer; image
  // rows t = y + i - bt inside [0, h) with a filter row for output row y (i) or y + 1 (i - 1).
  const int jlo = std::max(0, bl - x0 - R + 1), jhi = std::min(kw, bl + wimg - x0);
  const int64_t wq = static_cast<int64_t>(kw) * L;  // one filter row
  const int tlo = std::max(0, y - bt), thi = std::min(h, y + Q - 1 + kh - bt);
  for (int t = tlo; t < thi; ++t) {
    const T* row = src + static_cast<int64_t>(t) * src_row;
    const int i = t + bt - y;  // filter row of output row y; output row y + 1 uses i - 1
    if (Q == 2 && i >= 1 && i < kh) {
      cv_row<T, Q, R>(row, w + i * wq, wq, jlo, jhi, x0, acc);
    } else {
#pragma GCC unroll 2
      for (int q = 0; q < Q; ++q) {
        if (i - q < 0 || i - q >= kh) continue;
        V one[1][R];  // register copies: taking acc[q]'s address would keep every accumulator in memory
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) one[0][r] = acc[q][r];
        cv_row<T, 1, R>(row, w + (i - q) * wq, wq, jlo, jhi, x0, one);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) acc[q][r] = one[0][r];
      }
    }
  }
#pragma GCC unroll 2
  for (int q = 0; q < Q; ++q)
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) storeu(out + q * out_row + (x0 + r) * out_px, acc[q][r]);
}

// Valid correlation of L channels at once (small maps):
//   out[y][x][l] = bias[l] + sum_{i<kh, j<kw} w[i][j][l] * img[y + i - bt][x + j - bl][l]
// where img (h rows of wimg pixels) sits in `src` at columns [bl, bl + wimg) of rows 0..h-1 (row stride
// src_row elements), the other columns being zero. out is oh rows of ow pixels of L values, pixels out_px
// and rows out_row elements apart (a buffer, or a channels_last output tensor written in place).
// src must have at least ow + kw + kCvMaxR readable columns per row.
constexpr int kCvMaxR = 7;  // R accumulators + R window + 1 weight registers: 15 of 16 (AVX2), fine for AVX-512
// Columns per block: measured 2..7 on RepLKNet's stages and 7x7/13x13 kernels (AVX-512, 2 threads): 2 and 3 are
// load-bound, 5 was erratic, 4, 6 and 7 within noise of each other, 6 never the slowest.
constexpr int kCvBlock = 6;

// Two output rows per block where 32 vector registers hold 2 x R accumulators, the window and two weights.
constexpr int kCvRows = LKCONV_VEC_BYTES >= 64 ? 2 : 1;

// A row of outputs in blocks of at most RB columns, balanced (a 7-wide map is 4 + 3, not 6 + 1: a 1-column block
// reloads its window for every tap, and a wide block over a short map spends most taps on the zero border).
template <typename T, int Q, int RB>
static void cv_rows(const T* src, int64_t src_row, int h, int bl, int wimg, int bt, const T* w, int kh, int kw,
                    const T* bias, T* out, int64_t out_row, int64_t out_px, int y, int ow) {
  T* orow = out + y * out_row;
  const int blocks = (ow + RB - 1) / RB, base = ow / blocks, wider = ow % blocks;
  int x0 = 0;
  for (int b = 0; b < blocks; ++b) {
    const int width = base + (b < wider ? 1 : 0);
#define LKCONV_CV_BLOCK(R) \
  cv_block<T, Q, R>(src, src_row, h, bl, wimg, bt, w, kh, kw, bias, orow, out_row, out_px, y, x0)
    switch (width) {
      case 1: LKCONV_CV_BLOCK(1); break;
      case 2: LKCONV_CV_BLOCK(2); break;
      case 3: LKCONV_CV_BLOCK(3); break;
      case 4: LKCONV_CV_BLOCK(4); break;
      case 5: LKCONV_CV_BLOCK(5); break;
      case 6: LKCONV_CV_BLOCK(6); break;
      default: LKCONV_CV_BLOCK(7); break;
    }
#undef LKCONV_CV_BLOCK
    x0 += width;
  }
}

template <typename T>
static void correlate_channels(const T* src, int64_t src_row, int h, int bl, int wimg, int bt, const T* w, int kh,
                               int kw, const T* bias, T* out, int64_t out_row, int64_t out_px, int oh, int ow) {
  int y = 0;
  for (; y + kCvRows <= oh; y += kCvRows)
    cv_rows<T, kCvRows, kCvBlock>(src, src_row, h, bl, wimg, bt, w, kh, kw, bias, out, out_row, out_px, y, ow);
  for (; y < oh; ++y)
    cv_rows<T, 1, kCvBlock>(src, src_row, h, bl, wimg, bt, w, kh, kw, bias, out, out_row, out_px, y, ow);
}

// The machine's FMA peak, for the benchmark's "fraction of peak" column: `iters` rounds of 12 independent
// vector FMA chains (more than latency x throughput on current cores). Returns a checksum so the loop stays.
template <typename T>
static double fma_loop(int64_t iters) {
  using V = typename Vec<T>::type;
  constexpr int kChains = 12;
  V acc[kChains];
  const V a = V{} + T(0.999999), b = V{} + T(1e-7);
#pragma GCC unroll 12
  for (int k = 0; k < kChains; ++k) acc[k] = V{} + T(k);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int k = 0; k < kChains; ++k) acc[k] = acc[k] * a + b;
  }
  V total = V{};
#pragma GCC unroll 12
  for (int k = 0; k < kChains; ++k) total += acc[k];
  T lanes[Vec<T>::kLanes];
  storeu(lanes, total);  // lanes through memory only once, so the chains stay in registers
  double sum = 0;
  for (int l = 0; l < Vec<T>::kLanes; ++l) sum += lanes[l];
  return sum;
}

}  // namespace LKCONV_ISA
