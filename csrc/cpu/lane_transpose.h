// Between NCHW planes and the channel-vectorised cores' pixels of L channels: an L x L transpose in registers.
//
// Included by the per-ISA translation units after plane_kernels.h (it uses Vec, loadu, storeu). The channel
// cores read [row][col][L] buffers; an NCHW source has each channel's row contiguous instead, so gathering one
// value per store (and scattering one per load) cost about as much as the convolution itself at 28x28 3x3-7x7.
// Here L rows of L columns are loaded as L vectors, transposed by log2(L) rounds of two-source shuffles and
// stored as L pixels.

namespace LKCONV_ISA {

// m[i][l] <- m[l][i]. Round B swaps the off-diagonal B x B blocks of every 2B x 2B block.
template <typename T>
static inline void transpose_lanes(typename Vec<T>::type (&m)[Vec<T>::kLanes]) {
  using M = typename Mask<T>::type;
  constexpr int L = Vec<T>::kLanes;
#pragma GCC unroll 8
  for (int b = L / 2; b >= 1; b /= 2) {
    M lo, hi;
    for (int l = 0; l < L; ++l) {
      lo[l] = (l & b) ? L + l - b : l;  // first of the pair: its own low block, then the partner's low block
      hi[l] = (l & b) ? L + l : l + b;  // second: its own high block, then the partner's high block
    }
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) {
      if (i & b) continue;
      const auto a = m[i], c = m[i + b];
      m[i] = __builtin_shuffle(a, c, lo);
      m[i + b] = __builtin_shuffle(a, c, hi);
    }
  }
}

// dst[x * L + g] = src[g * src_row + x] for g < count (<= L), x < n; lanes from count on are zero.
template <typename T>
static void pack_lanes(const T* src, int64_t src_row, int count, int n, T* dst) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  int x = 0;
  for (; x + L <= n; x += L) {
    V m[L];
#pragma GCC unroll 16
    for (int g = 0; g < L; ++g) m[g] = g < count ? loadu<V>(src + g * src_row + x) : V{};
    transpose_lanes<T>(m);
#pragma GCC unroll 16
    for (int l = 0; l < L; ++l) storeu(dst + (x + l) * L, m[l]);
  }
  for (; x < n; ++x)
    for (int g = 0; g < L; ++g) dst[x * L + g] = g < count ? src[g * src_row + x] : T(0);
}

// dst[g * dst_row + x] = src[x * L + g] for g < count (<= L), x < n.
template <typename T>
static void unpack_lanes(const T* src, int count, int n, T* dst, int64_t dst_row) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  int x = 0;
  for (; x + L <= n; x += L) {
    V m[L];
#pragma GCC unroll 16
    for (int l = 0; l < L; ++l) m[l] = loadu<V>(src + (x + l) * L);
    transpose_lanes<T>(m);
    for (int g = 0; g < count; ++g) storeu(dst + g * dst_row + x, m[g]);
  }
  for (; x < n; ++x)
    for (int g = 0; g < count; ++g) dst[g * dst_row + x] = src[x * L + g];
}

}  // namespace LKCONV_ISA
