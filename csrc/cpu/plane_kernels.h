// Vectorised single-plane cores of the CPU depthwise convolution.
//
// This header is included by one translation unit per instruction set (plane_kernels_*.cpp), each after a
// `#pragma GCC target(...)` and with LKCONV_VEC_BYTES / LKCONV_ISA set, so the same source compiles to AVX-512,
// AVX2 and baseline code and the fastest one is picked at run time (no -march=native: a wheel built on one
// machine must not crash with an illegal instruction on another).
//
// The cores work on zero-padded, contiguous planes prepared by the caller (depthwise_cpu.cpp), so they have no
// bounds checks and no layout logic. GCC vector extensions keep them readable and portable across ISAs.
#ifndef LKCONV_VEC_BYTES
#error "define LKCONV_VEC_BYTES before including plane_kernels.h"
#endif

namespace LKCONV_ISA {

template <typename T>
struct Vec {
  static constexpr int kLanes = LKCONV_VEC_BYTES / static_cast<int>(sizeof(T));
  typedef T type __attribute__((vector_size(LKCONV_VEC_BYTES)));
};

// Lane masks: integer vectors of the same width, for `mask ? a : b` selects.
template <typename T>
struct Mask {
  typedef typename std::conditional<sizeof(T) == 4, int32_t, int64_t>::type lane_t;
  typedef lane_t type __attribute__((vector_size(LKCONV_VEC_BYTES)));
};

template <typename V, typename T>
static inline V loadu(const T* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));  // unaligned load, no aliasing trouble
  return v;
}

template <typename V, typename T>
static inline void storeu(T* p, const V& v) {
  __builtin_memcpy(p, &v, sizeof(V));
}

// Register blocking. Accumulators must fit in the register file: 32 zmm with AVX-512, 16 ymm/xmm otherwise.
#if LKCONV_VEC_BYTES >= 64
constexpr int kMaxColVecs = 4;  // forward: R=4 rows x 4 vectors = 16 accumulators
constexpr int kWgradRows = 4;   // weight gradient: 4 x 6 taps = 24 accumulators
#else
constexpr int kMaxColVecs = 2;
constexpr int kWgradRows = 2;
#endif
constexpr int kWgradCols = 6;

// Half-width vectors, for the last 8 (float) columns of a row: a 56-wide map is 3.5 full vectors.
template <typename T>
struct HalfVec {
  static constexpr int kLanes = Vec<T>::kLanes / 2;
  typedef T type __attribute__((vector_size(LKCONV_VEC_BYTES / 2)));
};

// One input row `srow` feeds output rows r of the block through filter row (t - r). `valid` says which of
// the R rows have a filter row for this t; ALL skips the test in the steady state, where every row does.
// NV full vectors and NH (0 or 1) half vectors of outputs per row.
template <typename T, int R, int NV, int NH, bool ALL>
static inline void fwd_row(const T* srow, const T* const* wrow, const bool* valid, int kw,
                           typename Vec<T>::type (&acc)[R][NV > 0 ? NV : 1],
                           typename HalfVec<T>::type (&acch)[R]) {
  using V = typename Vec<T>::type;
  using H = typename HalfVec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  for (int j = 0; j < kw; ++j) {
    V x[NV > 0 ? NV : 1];
    H xh;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) x[v] = loadu<V>(srow + v * L + j);
    if (NH) xh = loadu<H>(srow + NV * L + j);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      if (ALL || valid[r]) {
        const T wv = wrow[r][j];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] += x[v] * wv;
        if (NH) acch[r] += xh * wv;
      }
    }
  }
}

// out[r][x] = sum_{i<kh, j<kw} w[i][j] * src[r + i][x + j] for r < R, x < NV * L + NH * L / 2.
// Rows of src outside [rlo, rhi) are zero (padding) and are skipped.
template <typename T, int R, int NV, int NH>
static void fwd_block(const T* src, int64_t ss, const T* w, int kh, int kw, T* out, int64_t os, int rlo, int rhi) {
  using V = typename Vec<T>::type;
  using H = typename HalfVec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  V acc[R][NV > 0 ? NV : 1];
  H acch[R];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
    acch[r] = H{};
  }
  const T* wrow[R];
  bool valid[R];
  const int t_end = std::min(R + kh - 1, rhi);
  for (int t = std::max(0, rlo); t < t_end; ++t) {
    bool all = true;
    for (int r = 0; r < R; ++r) {
      const int i = t - r;
      valid[r] = i >= 0 && i < kh;
      wrow[r] = w + (valid[r] ? i : 0) * kw;
      all = all && valid[r];
    }
    // Partial rows skip the missing filter rows instead of multiplying by zero, so an Inf or NaN in the
    // input cannot leak into outputs whose window does not contain it.
    if (all)
      fwd_row<T, R, NV, NH, true>(src + t * ss, wrow, valid, kw, acc, acch);
    else
      fwd_row<T, R, NV, NH, false>(src + t * ss, wrow, valid, kw, acc, acch);
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < NV; ++v) storeu(out + r * os + v * L, acc[r][v]);
    if (NH) storeu(out + r * os + NV * L, acch[r]);
  }
}

template <typename T, int R>
static void fwd_rows(const T* src, int64_t ss, const T* w, int kh, int kw, T* out, int64_t os, int ow, int rlo,
                     int rhi) {
  constexpr int L = Vec<T>::kLanes, HL = L / 2;
  constexpr int W = kMaxColVecs * L;
  int x0 = 0;
  for (; x0 + W <= ow; x0 += W) fwd_block<T, R, kMaxColVecs, 0>(src + x0, ss, w, kh, kw, out + x0, os, rlo, rhi);
  // The rest in half vectors: 1 .. 2 * kMaxColVecs of them.
  const int halves = (ow - x0 + HL - 1) / HL;
#define LKCONV_FWD_TAIL(NV, NH) fwd_block<T, R, NV, NH>(src + x0, ss, w, kh, kw, out + x0, os, rlo, rhi)
  switch (halves) {
    case 0: break;
    case 1: LKCONV_FWD_TAIL(0, 1); break;
    case 2: LKCONV_FWD_TAIL(1, 0); break;
#if LKCONV_VEC_BYTES >= 64
    case 3: LKCONV_FWD_TAIL(1, 1); break;
    case 4: LKCONV_FWD_TAIL(2, 0); break;
    case 5: LKCONV_FWD_TAIL(2, 1); break;
    case 6: LKCONV_FWD_TAIL(3, 0); break;
    case 7: LKCONV_FWD_TAIL(3, 1); break;
    default: LKCONV_FWD_TAIL(4, 0); break;
#else
    case 3: LKCONV_FWD_TAIL(1, 1); break;
    default: LKCONV_FWD_TAIL(2, 0); break;
#endif
  }
#undef LKCONV_FWD_TAIL
}

// Valid correlation of one padded plane: out[y][x] = sum_{i,j} w[i][j] * src[y + i][x + j], y < oh, x < ow.
// Only rows [rlo, rhi) of src may be non-zero (the rest is padding, skipped: small maps under large kernels
// are mostly padding).
// The caller provides src with at least round_up(oh, 4) + kh - 1 rows and round_up(ow, L) + kw - 1 columns,
// and out with round_up(oh, 4) rows of round_up(ow, L) columns (the extra outputs are scratch).
template <typename T>
static void correlate_plane(const T* src, int64_t ss, const T* w, int kh, int kw, T* out, int64_t os, int oh,
                            int ow, int rlo, int rhi) {
  // Taller row blocks reuse each loaded input vector across more outputs; short filters would mostly run
  // the partial-row path, so they get shorter blocks.
  int y = 0;
  if (kh >= 4)
    for (; y + 4 <= oh; y += 4) fwd_rows<T, 4>(src + y * ss, ss, w, kh, kw, out + y * os, os, ow, rlo - y, rhi - y);
  for (; y + 2 <= oh; y += 2) fwd_rows<T, 2>(src + y * ss, ss, w, kh, kw, out + y * os, os, ow, rlo - y, rhi - y);
  for (; y < oh; ++y) fwd_rows<T, 1>(src + y * ss, ss, w, kh, kw, out + y * os, os, ow, rlo - y, rhi - y);
}

// Input row t meets gradient row y = t - ii for each filter row ii of the block: the J input vectors loaded
// for (t, x) are reused by all I rows, so a block does I*J FMAs per I+J loads. `valid` marks the rows ii
// whose y lies inside the gradient; ALL skips the test in the steady state.
template <typename T, int I, int J, bool ALL, bool TAIL>
static inline void wgrad_row(const T* srow, const T* const* grow, const bool* valid, int x,
                             const typename Mask<T>::type& in_tail, typename Vec<T>::type (&acc)[I][J]) {
  using V = typename Vec<T>::type;
  V s[J];
#pragma GCC unroll 8
  for (int j = 0; j < J; ++j) s[j] = loadu<V>(srow + x + j);
#pragma GCC unroll 4
  for (int i = 0; i < I; ++i) {
    if (ALL || valid[i]) {
      const V gv = loadu<V>(grow[i] + x);
#pragma GCC unroll 8
      for (int j = 0; j < J; ++j) {
        if (TAIL) {
          // Lanes past the row end are masked rather than multiplied by a zero gradient, which would turn
          // an Inf input beyond the window into NaN.
          const V p = gv * s[j];
          acc[i][j] += in_tail ? p : V{};
        } else {
          acc[i][j] += gv * s[j];
        }
      }
    }
  }
}

// acc[ii][jj] = sum_{y<oh, x<ow} g[y][x] * src[y + ii][x + jj]  for an I x J block of taps.
template <typename T, int I, int J>
static void wgrad_block(const T* src, int64_t ss, const T* g, int64_t gs, int oh, int ow, T* res, int64_t rs,
                        int rlo, int rhi) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  V acc[I][J];
  for (int i = 0; i < I; ++i)
    for (int j = 0; j < J; ++j) acc[i][j] = V{};
  const int full = ow / L;
  const int tail = ow - full * L;
  using M = typename Mask<T>::type;
  M lane;
  for (int l = 0; l < L; ++l) lane[l] = l;
  const M in_tail = lane < static_cast<typename Mask<T>::lane_t>(tail);
  const T* grow[I];
  bool valid[I];
  const int t_end = std::min(oh + I - 1, rhi);
  for (int t = std::max(0, rlo); t < t_end; ++t) {  // zero (padding) rows of src contribute nothing
    bool all = true;
    for (int i = 0; i < I; ++i) {
      const int y = t - i;
      valid[i] = y >= 0 && y < oh;
      grow[i] = g + (valid[i] ? y : 0) * gs;
      all = all && valid[i];
    }
    const T* srow = src + t * ss;
    if (all) {
      for (int xv = 0; xv < full; ++xv) wgrad_row<T, I, J, true, false>(srow, grow, valid, xv * L, in_tail, acc);
    } else {
      for (int xv = 0; xv < full; ++xv) wgrad_row<T, I, J, false, false>(srow, grow, valid, xv * L, in_tail, acc);
    }
    if (tail) wgrad_row<T, I, J, false, true>(srow, grow, valid, full * L, in_tail, acc);
  }
  for (int i = 0; i < I; ++i)
    for (int j = 0; j < J; ++j) {
      T sum = 0;
      for (int l = 0; l < L; ++l) sum += acc[i][j][l];  // fixed order: deterministic
      res[i * rs + j] = sum;
    }
}

// res[i][j] = sum_{y<oh, x<ow} g[y][x] * src[y + i][x + j] for i < kh, j < kw (res row stride rs); only rows
// [rlo, rhi) of src may be non-zero.
// g needs round_up(ow, L) readable columns per row; src needs oh + round_up(kh, 4) - 1 rows and
// round_up(ow, L) + kw - 1 columns; res needs round_up(kh, 4) rows of kw columns.
template <typename T>
static void wgrad_plane(const T* src, int64_t ss, const T* g, int64_t gs, int oh, int ow, int kh, int kw, T* res,
                        int64_t rs, int rlo, int rhi) {
  constexpr int I = kWgradRows, J = kWgradCols;
  for (int i0 = 0; i0 < kh; i0 += I) {
    const T* s = src + i0 * ss;
    T* r = res + i0 * rs;
    int j0 = 0;
    for (; j0 + J <= kw; j0 += J) wgrad_block<T, I, J>(s + j0, ss, g, gs, oh, ow, r + j0, rs, rlo - i0, rhi - i0);
    // A narrower last block instead of wasted taps: small kernels would otherwise do up to 6x the work.
    switch (kw - j0) {
      case 0: break;
      case 1: wgrad_block<T, I, 1>(s + j0, ss, g, gs, oh, ow, r + j0, rs, rlo - i0, rhi - i0); break;
      case 2: wgrad_block<T, I, 2>(s + j0, ss, g, gs, oh, ow, r + j0, rs, rlo - i0, rhi - i0); break;
      case 3: wgrad_block<T, I, 3>(s + j0, ss, g, gs, oh, ow, r + j0, rs, rlo - i0, rhi - i0); break;
      case 4: wgrad_block<T, I, 4>(s + j0, ss, g, gs, oh, ow, r + j0, rs, rlo - i0, rhi - i0); break;
      default: wgrad_block<T, I, 5>(s + j0, ss, g, gs, oh, ow, r + j0, rs, rlo - i0, rhi - i0); break;
    }
  }
}

}  // namespace LKCONV_ISA
