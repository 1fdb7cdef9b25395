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

// acc[q][r] += sum_{j in [jlo, jhi)} w[q][j] * src[x0 + j + r] (vectors of L channels, pixels px elements
// apart), r < R, q < Q: one input row feeding Q output rows through Q filter rows (w[q] = w0 - q * kw * L, the
// filter row above). The window of R input vectors is rotated by renaming, not by moves: taps go in groups of R,
// and within a group tap k reads window slot (r + k) % R and refills slot k, all indices compile-time constants
// once the loops are unrolled. Reads exactly the pixels [x0 + jlo, x0 + jhi + R - 1) (the last tap refills
// nothing), so a source read in place is never read past its end. `src` points at pixel `base` of the row.
// KW > 0: the filter rows are KW taps (3x3, 5x5), and a block that takes them all runs them as straight-line
// code (the run-time tap loop and its branches cost a 3x3 kernel more than its 9 FMAs per vector).
template <typename T, int Q, int R, int KW>
static inline void cv_row(const T* src, int64_t px, int base, const T* w0, int64_t wq, int jlo, int jhi, int x0,
                          typename Vec<T>::type (&acc)[Q][R]) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  V win[R];
  if constexpr (KW > 0 && KW <= R) {
    if (jlo == 0 && jhi == KW) {
      const T* in = src + static_cast<int64_t>(x0 - base) * px;
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) win[r] = loadu<V>(in + r * px);
#pragma GCC unroll 16
      for (int k = 0; k < KW; ++k) {
#pragma GCC unroll 2
        for (int q = 0; q < Q; ++q) {
          const V wv = loadu<V>(w0 - q * wq + k * L);
#pragma GCC unroll 16
          for (int r = 0; r < R; ++r) acc[q][r] += win[(r + k) % R] * wv;
        }
        if (k + 1 < KW) win[k] = loadu<V>(in + (k + R) * px);
      }
      return;
    }
  }
  const T* in = src + static_cast<int64_t>(x0 + jlo - base) * px;  // window start of tap jlo
  const T* wp = w0 + static_cast<int64_t>(jlo) * L;
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) win[r] = loadu<V>(in + r * px);
  int j = jlo;
  for (; j + R < jhi; j += R, in += R * px, wp += R * L) {
#pragma GCC unroll 16
    for (int k = 0; k < R; ++k) {
#pragma GCC unroll 2
      for (int q = 0; q < Q; ++q) {
        const V wv = loadu<V>(wp - q * wq + k * L);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) acc[q][r] += win[(r + k) % R] * wv;
      }
      win[k] = loadu<V>(in + (k + R) * px);
    }
  }
  // The last taps (at least one, at most R), same slots.
#pragma GCC unroll 16
  for (int k = 0; k < R; ++k) {
    if (j + k >= jhi) break;
#pragma GCC unroll 2
    for (int q = 0; q < Q; ++q) {
      const V wv = loadu<V>(wp - q * wq + k * L);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) acc[q][r] += win[(r + k) % R] * wv;
    }
    if (j + k + 1 < jhi) win[k] = loadu<V>(in + (k + R) * px);
  }
}

// out[y + q][x0 + r] = bias + sum over the taps that touch the image, for r < R, q < Q (Q = 1 or 2 rows, the
// second sharing every input row load with the first).
template <typename T, int Q, int R, int KW>
static inline void cv_block(const T* src, int64_t src_row, int64_t src_px, int h, int bl, int wimg, int bt,
                            const T* w, int kh, int kw, const T* bias, T* out, int64_t out_row, int64_t out_px, int y,
                            int x0) {
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
  const int tlo = std::max(0, y - bt), thi = jlo < jhi ? std::min(h, y + Q - 1 + kh - bt) : tlo;
  for (int t = tlo; t < thi; ++t) {
    const T* row = src + static_cast<int64_t>(t) * src_row;
    const int i = t + bt - y;  // filter row of output row y; output row y + 1 uses i - 1
    if (Q == 2 && i >= 1 && i < kh) {
      cv_row<T, Q, R, KW>(row, src_px, bl, w + i * wq, wq, jlo, jhi, x0, acc);
    } else {
#pragma GCC unroll 2
      for (int q = 0; q < Q; ++q) {
        if (i - q < 0 || i - q >= kh) continue;
        V one[1][R];  // register copies: taking acc[q]'s address would keep every accumulator in memory
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) one[0][r] = acc[q][r];
        cv_row<T, 1, R, KW>(row, src_px, bl, w + (i - q) * wq, wq, jlo, jhi, x0, one);
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
// where img is h rows of wimg pixels of L values, `src` pointing at its first pixel, pixels src_px and rows
// src_row elements apart. out is oh rows of ow pixels of L values, pixels out_px and rows out_row elements apart
// (a buffer, or a channels_last output tensor written in place).
// Two kinds of source (`exact`):
//   - a gathered buffer (exact = false): the bl columns left of the image and at least ow + kw + kCvMaxR - bl
//     - wimg right of it are zero and readable, so every block takes its windows whole;
//   - the caller's tensor read in place (exact = true): only the image is read. Blocks whose windows would
//     cross its left or right edge are computed one column at a time, each with its exact tap range; the rest
//     as above. For short filters on wide maps, where gathering the image costs as much as the arithmetic.
constexpr int kCvMaxR = 7;  // R accumulators + R window + 1 weight registers: 15 of 16 (AVX2), fine for AVX-512
// Columns per block: measured 2..7 on RepLKNet's stages and 7x7/13x13 kernels (AVX-512, 2 threads): 2 and 3 are
// load-bound, 5 was erratic, 4, 6 and 7 within noise of each other, 6 never the slowest.
constexpr int kCvBlock = 6;

// Two output rows per block where 32 vector registers hold 2 x R accumulators, the window and two weights.
constexpr int kCvRows = LKCONV_VEC_BYTES >= 64 ? 2 : 1;

struct CvSource {
  int64_t row, px;   // strides, elements
  int h, bl, wimg, bt;
};

// Output columns [x_lo, x_hi) in blocks of at most RB columns, balanced (a 7-wide map is 4 + 3, not 6 + 1: a
// 1-column block reloads its window for every tap, and a wide block over a short map spends most taps on the
// zero border).
template <typename T, int Q, int RB, int KW>
static void cv_span(const T* src, const CvSource& s, const T* w, int kh, int kw, const T* bias, T* orow,
                    int64_t out_row, int64_t out_px, int y, int x_lo, int x_hi) {
  if (x_hi <= x_lo) return;
  const int span = x_hi - x_lo;
  const int blocks = (span + RB - 1) / RB, base = span / blocks, wider = span % blocks;
  int x0 = x_lo;
  for (int b = 0; b < blocks; ++b) {
    const int width = base + (b < wider ? 1 : 0);
#define LKCONV_CV_BLOCK(R)                                                                                      \
  cv_block<T, Q, R, KW>(src, s.row, s.px, s.h, s.bl, s.wimg, s.bt, w, kh, kw, bias, orow, out_row, out_px, y, x0)
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

// The (KW - 1) / 2 edge columns of a "same"-padded KW-wide filter, read in place: output column x0 + r meets image
// column c0 + r + k through tap k, with c0 = -R on the left and wimg - KW + 1 on the right, so which taps fall
// outside the image is known at compile time and the block is straight-line code (one column at a time costs a
// 3x3 kernel's two edge columns as much as a sixth of the interior).
template <typename T, int Q, int KW, bool RIGHT>
static inline void cv_edge(const T* src, const CvSource& s, const T* w, int kh, const T* bias, T* orow,
                           int64_t out_row, int64_t out_px, int y, int x0) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  constexpr int R = (KW - 1) / 2;
  V acc[Q][R];
  const V b = loadu<V>(bias);
#pragma GCC unroll 2
  for (int q = 0; q < Q; ++q)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[q][r] = b;
  const int c0 = RIGHT ? s.wimg - KW + 1 : -R;
  const int tlo = std::max(0, y - s.bt), thi = std::min(s.h, y + Q - 1 + kh - s.bt);
  for (int t = tlo; t < thi; ++t) {
    const T* row = src + static_cast<int64_t>(t) * s.row;
    const int i = t + s.bt - y;
#pragma GCC unroll 2
    for (int q = 0; q < Q; ++q) {
      if (i - q < 0 || i - q >= kh) continue;
      const T* wr = w + static_cast<int64_t>(i - q) * KW * L;
#pragma GCC unroll 8
      for (int k = 0; k < KW; ++k) {
        const V wv = loadu<V>(wr + k * L);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r)
          if (RIGHT ? r + k <= KW - 2 : r + k >= R) acc[q][r] += loadu<V>(row + (c0 + r + k) * s.px) * wv;
      }
    }
  }
#pragma GCC unroll 2
  for (int q = 0; q < Q; ++q)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) storeu(orow + q * out_row + (x0 + r) * out_px, acc[q][r]);
}

template <typename T, int Q, int KW>
static void cv_rows(const T* src, const CvSource& s, bool exact, const T* w, int kh, int kw, const T* bias, T* out,
                    int64_t out_row, int64_t out_px, int y, int ow) {
  T* orow = out + y * out_row;
  if (!exact) return cv_span<T, Q, kCvBlock, KW>(src, s, w, kh, kw, bias, orow, out_row, out_px, y, 0, ow);
  // Whole windows from column x0 to x0 + R + kw - 2 lie in the image for x0 in [bl, bl + wimg - kw + 1 - R].
  const int x_a = std::min(ow, s.bl), x_b = std::max(x_a, std::min(ow, s.bl + s.wimg - kw + 1));
  if constexpr (KW > 0) {
    constexpr int R = (KW - 1) / 2;
    if (s.bl == R && s.wimg >= KW && x_b == R + s.wimg - KW + 1 && ow == x_b + R) {  // "same" padding
      cv_edge<T, Q, KW, false>(src, s, w, kh, bias, orow, out_row, out_px, y, 0);
      cv_span<T, Q, kCvBlock, KW>(src, s, w, kh, kw, bias, orow, out_row, out_px, y, x_a, x_b);
      cv_edge<T, Q, KW, true>(src, s, w, kh, bias, orow, out_row, out_px, y, x_b);
      return;
    }
  }
  cv_span<T, Q, 1, KW>(src, s, w, kh, kw, bias, orow, out_row, out_px, y, 0, x_a);
  cv_span<T, Q, kCvBlock, KW>(src, s, w, kh, kw, bias, orow, out_row, out_px, y, x_a, x_b);
  cv_span<T, Q, 1, KW>(src, s, w, kh, kw, bias, orow, out_row, out_px, y, x_b, ow);
}

template <typename T, int KW>
static void correlate_channels_kw(const T* src, const CvSource& s, bool exact, const T* w, int kh, int kw,
                                  const T* bias, T* out, int64_t out_row, int64_t out_px, int oh, int ow) {
  int y = 0;
  for (; y + kCvRows <= oh; y += kCvRows)
    cv_rows<T, kCvRows, KW>(src, s, exact, w, kh, kw, bias, out, out_row, out_px, y, ow);
  for (; y < oh; ++y) cv_rows<T, 1, KW>(src, s, exact, w, kh, kw, bias, out, out_row, out_px, y, ow);
}

template <typename T>
static void correlate_channels(const T* src, int64_t src_row, int64_t src_px, bool exact, int h, int bl, int wimg,
                               int bt, const T* w, int kh, int kw, const T* bias, T* out, int64_t out_row,
                               int64_t out_px, int oh, int ow) {
  const CvSource s{src_row, src_px, h, bl, wimg, bt};
  switch (kw) {
    case 3: return correlate_channels_kw<T, 3>(src, s, exact, w, kh, kw, bias, out, out_row, out_px, oh, ow);
    case 5: return correlate_channels_kw<T, 5>(src, s, exact, w, kh, kw, bias, out, out_row, out_px, oh, ow);
    default: return correlate_channels_kw<T, 0>(src, s, exact, w, kh, kw, bias, out, out_row, out_px, oh, ow);
  }
}

// Weight gradient of L channels at once for a K x K filter (3x3; 5x5 where 32 vector registers hold its 25
// accumulators), both tensors read in place (channels_last: pixels of L values, px elements apart):
//   res[i][j][l] += sum over output rows y in [y_lo, y_hi) and columns x < ow of
//                   g[y][x][l] * img[y + i - top][x + j - left][l]
// over the taps that read a real pixel of the h x w image. Every tap's accumulator stays in a register for the
// whole band of rows: per output pixel one load of g and K * K loads of the image feed K * K FMAs, where the
// plane cores' weight gradient gathers both tensors plane by plane first (for a 3x3 filter the gathering is
// most of its time).
template <typename T, int K>
static void wgrad_channels_k(const T* img, int64_t img_row, int64_t img_px, int h, int w, const T* g, int64_t g_row,
                             int64_t g_px, int ow, int top, int left, T* res, int y_lo, int y_hi) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  V acc[K][K];
#pragma GCC unroll 8
  for (int i = 0; i < K; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < K; ++j) acc[i][j] = V{};
  // Columns whose K taps all read real pixels; the others are computed tap by tap with their bounds.
  const int x_a = std::clamp(left, 0, ow), x_b = std::clamp(w + left - K + 1, x_a, ow);
  for (int y = y_lo; y < y_hi; ++y) {
    const int i_lo = std::max(0, top - y), i_hi = std::min(K, h + top - y);
    const T* grow = g + static_cast<int64_t>(y) * g_row;
    const T* irow = img + static_cast<int64_t>(y - top) * img_row;  // image row of tap row 0 (maybe outside)
    if (i_lo == 0 && i_hi == K) {
      for (int x = x_a; x < x_b; ++x) {
        const V gv = loadu<V>(grow + x * g_px);
        const T* base = irow + (x - left) * img_px;
#pragma GCC unroll 8
        for (int i = 0; i < K; ++i)
#pragma GCC unroll 8
          for (int j = 0; j < K; ++j) acc[i][j] += gv * loadu<V>(base + i * img_row + j * img_px);
      }
    } else {
      for (int x = x_a; x < x_b; ++x) {
        const V gv = loadu<V>(grow + x * g_px);
        const T* base = irow + (x - left) * img_px;
#pragma GCC unroll 8
        for (int i = 0; i < K; ++i) {
          if (i < i_lo || i >= i_hi) continue;
#pragma GCC unroll 8
          for (int j = 0; j < K; ++j) acc[i][j] += gv * loadu<V>(base + i * img_row + j * img_px);
        }
      }
    }
    // The edge columns, tap by tap (written out, not as a lambda: a reference to acc would keep it in memory).
    for (int part = 0; part < 2; ++part) {
      const int x_start = part ? x_b : 0, x_end = part ? ow : x_a;
      for (int x = x_start; x < x_end; ++x) {
        const V gv = loadu<V>(grow + x * g_px);
#pragma GCC unroll 8
        for (int i = 0; i < K; ++i) {
          if (i < i_lo || i >= i_hi) continue;
#pragma GCC unroll 8
          for (int j = 0; j < K; ++j) {
            const int col = x + j - left;
            if (col >= 0 && col < w) acc[i][j] += gv * loadu<V>(irow + i * img_row + col * img_px);
          }
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < K; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < K; ++j) {
      T* r = res + (i * K + j) * L;
      storeu(r, loadu<V>(r) + acc[i][j]);
    }
}

// The largest K of wgrad_channels: 5x5 needs 25 accumulators and two more vectors, so 32 vector registers.
constexpr int kWgradChannelsMaxK = LKCONV_VEC_BYTES >= 64 ? 5 : 3;

template <typename T>
static bool wgrad_channels(const T* img, int64_t img_row, int64_t img_px, int h, int w, const T* g, int64_t g_row,
                           int64_t g_px, int ow, int top, int left, int k, T* res, int y_lo, int y_hi) {
  switch (k) {
    case 3: wgrad_channels_k<T, 3>(img, img_row, img_px, h, w, g, g_row, g_px, ow, top, left, res, y_lo, y_hi);
      return true;
    case 5:
      if constexpr (kWgradChannelsMaxK >= 5) {
        wgrad_channels_k<T, 5>(img, img_row, img_px, h, w, g, g_row, g_px, ow, top, left, res, y_lo, y_hi);
        return true;
      }
      return false;
    default: return false;
  }
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
