// CPU depthwise convolution (stride 1, dilation 1): forward, backward-input and backward-weight.
//
// Why our own kernel rather than oneDNN through torch: measured on our 2-core AVX-512 machine (N=4, C=128,
// 56x56, k=31, fp32), oneDNN's channels_last forward takes ~32 ms and PyTorch's NCHW forward ~930 ms, while
// both PyTorch backward passes take ~2 s. These cores run the three passes in either layout in a few tens of
// milliseconds each (bench/cpu_kernel.py measures it).
//
// Every pass is one "valid correlation of a zero-padded plane" (plane_kernels.h):
//   forward:          y  = corr(pad(x),  w)            + bias
//   backward-input:   gx = corr(pad(gy), flip(w))      (padding mirrored: kh-1-top, kw-1-left)
//   backward-weight:  gw = sum_n corr(pad(x), gy)       (the gradient plays the filter's role)
// Planes are gathered from the tensor through its strides into a per-thread zero-padded buffer, so NCHW,
// channels_last and arbitrary views are read in place (no full-tensor copy), half types are widened to float,
// and filter taps that only ever see padding are cropped away (51x51 on 7x7 costs what 13x13 does).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <vector>

#include "plane_kernels_api.h"

namespace lkconv {
namespace cpu {
namespace {

constexpr int64_t kSlack = 16;  // extra zeroed columns/rows so vector loads past a row end stay in the buffer

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// The taps [lo, hi] of a filter side that can touch real pixels: out[y] uses src[y + i - offset], y < out_len.
struct TapRange {
  int64_t lo, hi;
  bool empty() const { return hi < lo; }
  int64_t size() const { return hi - lo + 1; }
};

TapRange useful_taps(int64_t k, int64_t src_len, int64_t out_len, int64_t offset) {
  return {std::max<int64_t>(0, offset - out_len + 1), std::min<int64_t>(k - 1, offset + src_len - 1)};
}

// G planes (consecutive channels) of a 4-D tensor: element (g, r, c) at data[g*plane_stride + r*row_stride +
// c*col_stride]. With channels_last tensors the G values of a pixel are adjacent, so gathering G planes in one
// sweep reads whole cache lines instead of one value per line.
template <typename S>
struct Planes {
  const S* data;
  int64_t count, rows, cols, plane_stride, row_stride, col_stride;
};

// dst[g][r][c] = src[g][r - top][c - left] for the image rows r in [top, top + src.rows); each dst plane is rows
// x cols with row stride ds, planes dp apart. Only the image's own rectangle is written: the columns around it
// must be zero already (the caller zeroes the buffer once; every plane of a call writes the same rectangle, so
// they stay zero: re-zeroing them per row was two libc calls a row, ~10% of a 28x28 3x3 call). Rows above and
// below the image (pure padding) are skipped by the plane cores (row_lo/row_hi), which for small maps under
// large kernels saves most of the work.
template <typename S, typename T>
void gather(const Planes<S>& src, int64_t top, int64_t left, T* dst, int64_t dp, int64_t rows, int64_t cols,
            int64_t ds) {
  const int64_t c0 = std::clamp<int64_t>(left, 0, cols);
  const int64_t c1 = std::clamp<int64_t>(left + src.cols, c0, cols);
  const int64_t r0 = std::clamp<int64_t>(top, 0, rows), r1 = std::clamp<int64_t>(top + src.rows, r0, rows);
  for (int64_t r = r0; r < r1; ++r) {
    const S* s = src.data + (r - top) * src.row_stride + (c0 - left) * src.col_stride;
    T* d = dst + r * ds;
    if (src.count == 1) {
      if (src.col_stride == 1 && std::is_same<S, T>::value) {
        std::memcpy(d + c0, s, (c1 - c0) * sizeof(T));
      } else if (src.col_stride == 1) {
        for (int64_t c = c0; c < c1; ++c) d[c] = static_cast<T>(s[c - c0]);
      } else {
        for (int64_t c = c0; c < c1; ++c) d[c] = static_cast<T>(s[(c - c0) * src.col_stride]);
      }
      continue;
    }
    for (int64_t c = c0; c < c1; ++c) {
      const S* px = s + (c - c0) * src.col_stride;
      for (int64_t g = 0; g < src.count; ++g) d[g * dp + c] = static_cast<T>(px[g * src.plane_stride]);
    }
  }
}

// out planes (strided, type S) = buf[g][:rows, :cols] + bias[g].
template <typename S, typename T>
void scatter(const T* buf, int64_t bp, int64_t bs, S* out, int64_t count, int64_t plane_stride, int64_t rows,
             int64_t cols, int64_t rstride, int64_t cstride, const T* bias) {
  for (int64_t r = 0; r < rows; ++r) {
    S* o = out + r * rstride;
    if (count == 1) {
      const T* b = buf + r * bs;
      if (cstride == 1) {  // a unit-stride row: a loop the compiler vectorises
        S* __restrict__ d = o;
        const T bv = bias[0];
        for (int64_t c = 0; c < cols; ++c) d[c] = static_cast<S>(b[c] + bv);
      } else {
        for (int64_t c = 0; c < cols; ++c) o[c * cstride] = static_cast<S>(b[c] + bias[0]);
      }
      continue;
    }
    for (int64_t c = 0; c < cols; ++c)
      for (int64_t g = 0; g < count; ++g)
        o[c * cstride + g * plane_stride] = static_cast<S>(buf[g * bp + r * bs + c] + bias[g]);
  }
}

// Channels handled together: a cache line of channels for channels_last tensors, one otherwise.
int64_t channel_group(const at::Tensor& t) {
  const bool channels_fastest = t.stride(1) == 1 && t.size(1) > 1;
  return channels_fastest ? std::max<int64_t>(1, 32 / t.element_size()) : 1;
}

template <typename T>
CorrelateFn<T> correlate_fn();
template <>
CorrelateFn<float> correlate_fn<float>() { return plane_kernels().correlate_f32; }
template <>
CorrelateFn<double> correlate_fn<double>() { return plane_kernels().correlate_f64; }
template <typename T>
WgradFn<T> wgrad_fn();
template <>
WgradFn<float> wgrad_fn<float>() { return plane_kernels().wgrad_f32; }
template <>
WgradFn<double> wgrad_fn<double>() { return plane_kernels().wgrad_f64; }

// Compute type: float for float/half/bfloat16 (widened while gathering), double for double.
template <typename S>
using acc_t = typename std::conditional<std::is_same<S, double>::value, double, float>::type;

// out[n, c] = corr(src[n, c] shifted by (top, left), filter[c]) + bias[c], for every plane.
// `flip` turns the filter by 180 degrees (backward-input).
template <typename S>
void correlate_all(const at::Tensor& src, const at::Tensor& filter, const S* bias, at::Tensor& out, int64_t top,
                   int64_t left, bool flip) {
  using T = acc_t<S>;
  const int64_t N = src.size(0), C = src.size(1), H = src.size(2), W = src.size(3);
  const int64_t OH = out.size(2), OW = out.size(3), kh = filter.size(2), kw = filter.size(3);
  const TapRange ti = useful_taps(kh, H, OH, top), tj = useful_taps(kw, W, OW, left);
  const S* sp = src.data_ptr<S>();
  const S* fp = filter.data_ptr<S>();
  S* op = out.data_ptr<S>();
  const auto ss = src.strides(), fs = filter.strides(), os = out.strides();
  const CorrelateFn<T> correlate = correlate_fn<T>();

  // Buffers sized for the cores' requirements (plane_kernels.h), plus slack.
  const int64_t khc = ti.empty() ? 0 : ti.size(), kwc = tj.empty() ? 0 : tj.size();
  const int64_t buf_rows = round_up(OH, 4) + khc + kSlack, buf_cols = round_up(OW, kSlack) + kwc + kSlack;
  const int64_t out_cols = round_up(OW, kSlack) + kSlack;

  const int64_t G = std::min(C, channel_group(src));
  const int64_t groups = (C + G - 1) / G;
  // Buffer rows that hold image rows; the others are padding.
  const int64_t row_lo = std::clamp<int64_t>(top - ti.lo, 0, buf_rows);
  const int64_t row_hi = std::clamp<int64_t>(top - ti.lo + H, row_lo, buf_rows);
  const int64_t src_plane = buf_rows * buf_cols, out_plane = (round_up(OH, 4) + kSlack) * out_cols;
  at::parallel_for(0, N * groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> sbuf(ti.empty() || tj.empty() ? 0 : G * src_plane);
    std::vector<T> obuf(G * out_plane);
    std::vector<T> wbuf(khc * kwc), bbuf(G);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / groups, c0 = (task % groups) * G, g_count = std::min(G, C - c0);
      S* o = op + n * os[0] + c0 * os[1];
      for (int64_t g = 0; g < g_count; ++g) bbuf[g] = bias ? static_cast<T>(bias[c0 + g]) : T(0);
      if (ti.empty() || tj.empty()) {  // every tap reads padding only
        std::fill(obuf.begin(), obuf.end(), T(0));
      } else {
        const Planes<S> planes{sp + n * ss[0] + c0 * ss[1], g_count, H, W, ss[1], ss[2], ss[3]};
        gather(planes, top - ti.lo, left - tj.lo, sbuf.data(), src_plane, buf_rows, buf_cols, buf_cols);
        for (int64_t g = 0; g < g_count; ++g) {
          // The cropped filter, flipped if asked, in the compute type.
          for (int64_t i = 0; i < khc; ++i)
            for (int64_t j = 0; j < kwc; ++j) {
              int64_t fi = ti.lo + i, fj = tj.lo + j;
              if (flip) fi = kh - 1 - fi, fj = kw - 1 - fj;
              wbuf[i * kwc + j] = static_cast<T>(fp[(c0 + g) * fs[0] + fi * fs[2] + fj * fs[3]]);
            }
          correlate(sbuf.data() + g * src_plane, buf_cols, wbuf.data(), static_cast<int>(khc),
                    static_cast<int>(kwc), obuf.data() + g * out_plane, out_cols, static_cast<int>(OH),
                    static_cast<int>(OW), static_cast<int>(row_lo), static_cast<int>(row_hi));
        }
      }
      scatter(obuf.data(), out_plane, out_cols, o, g_count, os[1], OH, OW, os[2], os[3], bbuf.data());
    }
  });
}

template <typename T>
ChannelsFn<T> channels_fn();
template <>
ChannelsFn<float> channels_fn<float>() { return plane_kernels().channels_f32; }
template <>
ChannelsFn<double> channels_fn<double>() { return plane_kernels().channels_f64; }
template <typename T>
ChannelsWgradFn<T> channels_wgrad_fn();
template <>
ChannelsWgradFn<float> channels_wgrad_fn<float>() { return plane_kernels().channels_wgrad_f32; }
template <>
ChannelsWgradFn<double> channels_wgrad_fn<double>() { return plane_kernels().channels_wgrad_f64; }
template <typename T>
int64_t lanes() { return std::is_same<T, double>::value ? plane_kernels().lanes_f64 : plane_kernels().lanes_f32; }
template <typename T>
PackLanesFn<T> pack_lanes_fn();
template <>
PackLanesFn<float> pack_lanes_fn<float>() { return plane_kernels().pack_lanes_f32; }
template <>
PackLanesFn<double> pack_lanes_fn<double>() { return plane_kernels().pack_lanes_f64; }
template <typename T>
UnpackLanesFn<T> unpack_lanes_fn();
template <>
UnpackLanesFn<float> unpack_lanes_fn<float>() { return plane_kernels().unpack_lanes_f32; }
template <>
UnpackLanesFn<double> unpack_lanes_fn<double>() { return plane_kernels().unpack_lanes_f64; }

// dst pixel p = src pixel p (L values each), pixels dst_px / src_px elements apart, for p < count. The copy
// size is a compile-time constant per case, so each pixel is a few vector moves (a copy loop over a run-time
// channel count cost ~0.5 ms of a 0.7 ms channels_last 56x56 call).
template <typename T, int L>
void copy_pixels_of(T* dst, int64_t dst_px, const T* src, int64_t src_px, int64_t count) {
  for (int64_t p = 0; p < count; ++p) std::memcpy(dst + p * dst_px, src + p * src_px, L * sizeof(T));
}

template <typename T>
void copy_pixels(int64_t L, T* dst, int64_t dst_px, const T* src, int64_t src_px, int64_t count) {
  switch (L) {
    case 2: return copy_pixels_of<T, 2>(dst, dst_px, src, src_px, count);
    case 4: return copy_pixels_of<T, 4>(dst, dst_px, src, src_px, count);
    case 8: return copy_pixels_of<T, 8>(dst, dst_px, src, src_px, count);
    case 16: return copy_pixels_of<T, 16>(dst, dst_px, src, src_px, count);
    default:
      for (int64_t p = 0; p < count; ++p) std::copy(src + p * src_px, src + p * src_px + L, dst + p * dst_px);
  }
}

// Which correlation cores a call uses: 1 = plane cores, 2 = channel-vectorised cores over a gathered copy,
// 3 = channel-vectorised cores reading a channels_last source in place (where its vectors are whole; else 2),
// 0 = pick by shape.
enum Algorithm : int64_t { kAuto = 0, kPlanes = 1, kChannels = 2, kChannelsInPlace = 3 };

// Whether the channel cores read a channels_last source in place rather than gathering it first: gathering
// gives every block whole windows over a zero border; reading in place saves a copy of the image (and walks
// memory nearly in order, every channel group per band of rows) but computes the columns within kw - 1 of the
// image's edges apart, as straight-line blocks for 3x3 and 5x5 "same" filters and one column at a time otherwise.
// Measured (float32, 2 threads, `python -m bench.cpu_rules`, bench/results/cpu-rules.json): in place is faster
// for 3-wide filters on maps of 28 and more or batches of 4 (1.3-1.6x at 56x56), for 5-wide filters on maps of
// 28 and more or of 14 and more with batches of 4 (1.1-1.4x) unless the image rows are a multiple of 4 KiB apart
// (512 channels of a 14-wide map: the five rows of a window fall into the same L1 sets, 0.82-0.92x in place), for
// 7-wide filters on maps of 56; gathering stays ahead for small maps of one image (0.6-0.9x in place at 7x7 and
// 14x14) and for wider filters and smaller maps (in place: down to 0.35x at 7x7, where most columns are edge
// columns). Calls of 0.01-0.03 ms, where the two are within noise of each other, decide the borders.
bool read_in_place(int64_t algorithm, int64_t kw, int64_t wimg, int64_t images, int64_t row_bytes) {
  if (algorithm != kAuto) return algorithm == kChannelsInPlace;
  if (kw <= 3) return wimg >= 28 || images >= 4;
  if (kw <= 5) return wimg >= 28 || (wimg >= 14 && images >= 4 && row_bytes % 4096 != 0);
  if (kw <= 7) return wimg >= 56;  // 0.96-1.18x
  return false;
}

// The same result as correlate_all by the channel-vectorised cores (channel_kernels.h): L channels of a
// pixel side by side in [row][col][L] buffers, so small maps fill the vectors and padding taps are skipped.
template <typename S>
void correlate_channels_all(const at::Tensor& src, const at::Tensor& filter, const S* bias, at::Tensor& out,
                            int64_t top, int64_t left, bool flip, int64_t algorithm) {
  using T = acc_t<S>;
  const int64_t N = src.size(0), C = src.size(1), H = src.size(2), W = src.size(3);
  const int64_t OH = out.size(2), OW = out.size(3), kh = filter.size(2), kw = filter.size(3);
  const TapRange ti = useful_taps(kh, H, OH, top), tj = useful_taps(kw, W, OW, left);
  const int64_t L = lanes<T>();
  const int64_t groups = (C + L - 1) / L;
  const int64_t khc = ti.empty() ? 0 : ti.size(), kwc = tj.empty() ? 0 : tj.size();
  // The cropped filter (flipped if asked), L channels per vector, zero in lanes past C: prepared by the task
  // that needs it, into a per-thread buffer (tasks run group by group, so each thread prepares a group once and
  // its images reuse it from L1/L2; a separate pass over all groups cost a third of a 7x7 map's run).
  const int64_t group_taps = std::max<int64_t>(khc * kwc, 1) * L;
  std::vector<T> bt(groups * L, T(0));
  const S* fp = filter.data_ptr<S>();
  const auto fs = filter.strides();
  auto prepare_filter = [&](int64_t group, T* wg) {
    const int64_t c0 = group * L, count = std::min(L, C - c0);
    for (int64_t l = 0; l < L; ++l) {
      if (l >= count) {
        for (int64_t t = 0; t < khc * kwc; ++t) wg[t * L + l] = T(0);
        continue;
      }
      const S* f = fp + (c0 + l) * fs[0];
      for (int64_t i = 0; i < khc; ++i)
        for (int64_t j = 0; j < kwc; ++j) {
          int64_t fi = ti.lo + i, fj = tj.lo + j;
          if (flip) fi = kh - 1 - fi, fj = kw - 1 - fj;
          wg[(i * kwc + j) * L + l] = static_cast<T>(f[fi * fs[2] + fj * fs[3]]);
        }
    }
  };
  for (int64_t c = 0; c < C; ++c) bt[c] = bias ? static_cast<T>(bias[c]) : T(0);
  // Where the image sits relative to the cropped taps. A negative offset (padding wider than the kernel in
  // backward-input) means the first image rows/columns are never read: they are cropped away.
  int64_t bl = left - tj.lo, btop = top - ti.lo;
  const int64_t skip_r = std::max<int64_t>(0, -btop), skip_c = std::max<int64_t>(0, -bl);
  const int64_t Hc = std::max<int64_t>(0, H - skip_r), Wc = std::max<int64_t>(0, W - skip_c);
  btop += skip_r, bl += skip_c;
  const int64_t cols = std::max(OW + kwc, bl + Wc) + kSlack;
  const S* sp = src.data_ptr<S>();
  S* op = out.data_ptr<S>();
  const auto ss = src.strides(), os = out.strides();
  const ChannelsFn<T> correlate = channels_fn<T>();
  const PackLanesFn<T> pack = pack_lanes_fn<T>();
  const UnpackLanesFn<T> unpack = unpack_lanes_fn<T>();
  constexpr bool same_type = std::is_same<S, T>::value;
  // Read in place where every vector of channels is whole and contiguous (channels_last, compute type, C a
  // multiple of L): see read_in_place for when that beats gathering.
  const bool in_place_src = std::is_same<S, T>::value && ss[1] == 1 && C % L == 0 && khc > 0 && kwc > 0 &&
                            Hc > 0 && Wc > 0 &&
                            read_in_place(algorithm, kwc, Wc, N, ss[2] * static_cast<int64_t>(sizeof(T)));
  if (in_place_src && os[1] == 1) {
    // Both tensors in place: a band of output rows at a time, every channel group in turn. A pixel's groups are
    // neighbouring cache lines, so the calls walk memory nearly in order, where group by group each pass over
    // the image strides through it C values at a time.
    std::vector<T> filters(groups * group_taps);
    for (int64_t g = 0; g < groups; ++g) prepare_filter(g, filters.data() + g * group_taps);
    const int64_t band = 4, bands = (OH + band - 1) / band;  // 2 and 8 rows measured within noise of 4
    at::parallel_for(0, N * bands, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / bands, y0 = task % bands * band, rows = std::min(band, OH - y0);
        const T* image = reinterpret_cast<const T*>(sp + n * ss[0] + skip_r * ss[2] + skip_c * ss[3]);
        T* o = reinterpret_cast<T*>(op + n * os[0] + y0 * os[2]);
        for (int64_t g = 0; g < groups; ++g)
          correlate(image + g * L, ss[2], ss[3], true, static_cast<int>(Hc), static_cast<int>(bl),
                    static_cast<int>(Wc), static_cast<int>(btop - y0), filters.data() + g * group_taps,
                    static_cast<int>(khc), static_cast<int>(kwc), bt.data() + g * L, o + g * L, os[2], os[3],
                    static_cast<int>(rows), static_cast<int>(OW));
      }
    });
    return;
  }
  at::parallel_for(0, N * groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> sbuf(in_place_src ? 0 : std::max<int64_t>(Hc, 1) * cols * L, T(0)), obuf(OH * OW * L),
        wbuf(group_taps);
    std::vector<T> flat(same_type && !in_place_src && ss[1] != 1 && ss[3] == 1 && ss[2] == Wc ? Hc * Wc * L : 0);
    int64_t prepared = -1;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t group = task / N, n = task % N, c0 = group * L, g_count = std::min(L, C - c0);
      // A whole vector of channels in the compute type: copied (or written) as vectors, not value by value.
      const bool whole_vectors = g_count == L && same_type;
      if (group != prepared && khc > 0 && kwc > 0) prepare_filter(group, wbuf.data()), prepared = group;
      const S* s = sp + n * ss[0] + c0 * ss[1] + skip_r * ss[2] + skip_c * ss[3];
      if (khc > 0 && kwc > 0 && !in_place_src) {
        // Gather the image into columns [bl, bl + Wc); the columns around it stay zero from the allocation.
        if (whole_vectors && ss[1] == 1) {  // one vector copy per pixel
          for (int64_t r = 0; r < Hc; ++r)
            copy_pixels<T>(L, sbuf.data() + (r * cols + bl) * L, L, reinterpret_cast<const T*>(s) + r * ss[2],
                           ss[3], Wc);
        } else if (ss[1] == 1) {  // channels fastest: copy pixel by pixel
          for (int64_t r = 0; r < Hc; ++r)
            for (int64_t c = 0; c < Wc; ++c) {
              const S* px = s + r * ss[2] + c * ss[3];
              T* d = sbuf.data() + (r * cols + bl + c) * L;
              for (int64_t g = 0; g < g_count; ++g) d[g] = static_cast<T>(px[g]);
            }
        } else if (same_type && ss[3] == 1 && ss[2] == Wc) {
          // Whole NCHW planes: one run of Hc * Wc values per channel, transposed L channels x L values at a time
          // (row by row, a 7- or 14-wide row would be all tail), then moved into the bordered rows.
          pack(reinterpret_cast<const T*>(s), ss[1], static_cast<int>(g_count), static_cast<int>(Hc * Wc),
               flat.data());
          for (int64_t r = 0; r < Hc; ++r)
            std::memcpy(sbuf.data() + (r * cols + bl) * L, flat.data() + r * Wc * L, Wc * L * sizeof(T));
        } else if (same_type && ss[3] == 1) {  // NCHW rows: L rows at a time, transposed in registers
          for (int64_t r = 0; r < Hc; ++r)
            pack(reinterpret_cast<const T*>(s) + r * ss[2], ss[1], static_cast<int>(g_count),
                 static_cast<int>(Wc), sbuf.data() + (r * cols + bl) * L);
        } else {
          for (int64_t g = 0; g < g_count; ++g)
            for (int64_t r = 0; r < Hc; ++r) {
              const S* row = s + g * ss[1] + r * ss[2];
              T* d = sbuf.data() + (r * cols + bl) * L + g;
              for (int64_t c = 0; c < Wc; ++c) d[c * L] = static_cast<T>(row[c * ss[3]]);
            }
        }
      }
      S* o = op + n * os[0] + c0 * os[1];
      // A channels_last output of the compute type takes the results in place; others go through obuf.
      const bool in_place = whole_vectors && os[1] == 1;
      const T* image = in_place_src ? reinterpret_cast<const T*>(s) : sbuf.data() + bl * L;
      correlate(image, in_place_src ? ss[2] : cols * L, in_place_src ? ss[3] : L, in_place_src,
                static_cast<int>(Hc), static_cast<int>(bl), static_cast<int>(Wc),
                static_cast<int>(btop), wbuf.data(), static_cast<int>(khc), static_cast<int>(kwc),
                bt.data() + group * L, in_place ? reinterpret_cast<T*>(o) : obuf.data(), in_place ? os[2] : OW * L,
                in_place ? os[3] : L, static_cast<int>(OH), static_cast<int>(OW));
      if (in_place) continue;
      if (os[1] == 1) {
        for (int64_t y = 0; y < OH; ++y)
          for (int64_t x = 0; x < OW; ++x) {
            const T* v = obuf.data() + (y * OW + x) * L;
            S* d = o + y * os[2] + x * os[3];
            for (int64_t g = 0; g < g_count; ++g) d[g] = static_cast<S>(v[g]);
          }
      } else if (same_type && os[3] == 1 && os[2] == OW) {  // whole NCHW planes: one run of OH * OW values
        unpack(obuf.data(), static_cast<int>(g_count), static_cast<int>(OH * OW), reinterpret_cast<T*>(o), os[1]);
      } else if (same_type && os[3] == 1) {
        for (int64_t y = 0; y < OH; ++y)
          unpack(obuf.data() + y * OW * L, static_cast<int>(g_count), static_cast<int>(OW),
                 reinterpret_cast<T*>(o) + y * os[2], os[1]);
      } else {
        for (int64_t g = 0; g < g_count; ++g)
          for (int64_t y = 0; y < OH; ++y) {
            S* d = o + g * os[1] + y * os[2];
            const T* v = obuf.data() + y * OW * L + g;
            for (int64_t x = 0; x < OW; ++x) d[x * os[3]] = static_cast<S>(v[x * L]);
          }
      }
    }
  });
}


// The channel-vectorised cores win (measured, float32, 2 threads, N = 1 and 4: bench/results/cpu-rules.json) for
// channels_last sources at every measured shape (their gather is a plain copy), and for NCHW sources (taken
// through L x L register transposes, lane_transpose.h) on maps up to 14 wide (1.3-4x), on 28-wide maps from 5x5
// on (1.2-1.6x; 3x3 within 5% either way), on 56-wide maps from 9x9 on (1.0-1.3x) and under kernels 31 or more
// wide on any map. The plane cores keep 56x56 maps under 3x3-7x7 kernels (1.0-1.4x) and wider maps under
// kernels up to 29 (unmeasured above 56, where the plane cores' rows only get longer).
bool prefer_channels(bool channels_fastest, int64_t ow, int64_t kw) {
  return channels_fastest || ow <= 14 || (ow <= 28 && kw >= 5) || (ow <= 56 && kw >= 9) || kw >= 31;
}

template <typename S>
void correlate(const at::Tensor& src, const at::Tensor& filter, const S* bias, at::Tensor& out, int64_t top,
               int64_t left, bool flip, int64_t algorithm) {
  TORCH_CHECK(algorithm >= kAuto && algorithm <= kChannelsInPlace, "lkconv cpu: algorithm must be 0 (auto), "
              "1 (planes), 2 (channels) or 3 (channels_in_place), got ", algorithm);
  const bool channels_fastest = src.stride(1) == 1 && src.size(1) > 1;
  const bool channels = algorithm == kChannels || algorithm == kChannelsInPlace ||
                        (algorithm == kAuto && prefer_channels(channels_fastest, out.size(3), filter.size(3)));
  if (channels)
    correlate_channels_all<S>(src, filter, bias, out, top, left, flip, algorithm);
  else
    correlate_all<S>(src, filter, bias, out, top, left, flip);
}

// The weight gradient by the channel-vectorised core (wgrad_channels in channel_kernels.h): both tensors
// channels_last in the compute type, whole vectors of channels, a square filter of a size it covers, every tap
// touching the map. Tasks are (image, band of output rows, channel group), neighbouring groups next to each other
// (neighbouring cache lines); each sums its band into its own slot and the slots are added in task order, in
// double, so the result does not depend on the threads. Returns false where it does not apply.
template <typename S>
bool weight_grad_channels(const at::Tensor& grad_out, const at::Tensor& input, at::Tensor& grad_w, int64_t top,
                          int64_t left) {
  using T = acc_t<S>;
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t OH = grad_out.size(2), OW = grad_out.size(3), k = grad_w.size(2);
  const int64_t L = lanes<T>();
  const auto xs = input.strides(), gs = grad_out.strides();
  if (!std::is_same<S, T>::value || xs[1] != 1 || gs[1] != 1 || C % L != 0 || grad_w.size(3) != k ||
      (k != 3 && k != 5) || k > plane_kernels().channels_wgrad_max_k)
    return false;
  const TapRange ti = useful_taps(k, H, OH, top), tj = useful_taps(k, W, OW, left);
  if (ti.empty() || tj.empty() || ti.lo != 0 || tj.lo != 0 || ti.size() != k || tj.size() != k) return false;
  const ChannelsWgradFn<T> wgrad = channels_wgrad_fn<T>();
  const int64_t groups = C / L, band = 8, bands = (OH + band - 1) / band, tasks = N * bands * groups;
  const int64_t slot = k * k * L;
  std::vector<T> partial(tasks * slot, T(0));
  const T* xp = reinterpret_cast<const T*>(input.data_ptr<S>());
  const T* gp = reinterpret_cast<const T*>(grad_out.data_ptr<S>());
  std::atomic<bool> done{true};  // written by the worker threads
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t group = task % groups, nb = task / groups, n = nb / bands, y0 = nb % bands * band;
      if (!wgrad(xp + n * xs[0] + group * L, xs[2], xs[3], static_cast<int>(H), static_cast<int>(W),
                 gp + n * gs[0] + group * L, gs[2], gs[3], static_cast<int>(OW), static_cast<int>(top),
                 static_cast<int>(left), static_cast<int>(k), partial.data() + task * slot, static_cast<int>(y0),
                 static_cast<int>(std::min(OH, y0 + band))))
        done = false;  // k past the core's reach: cannot happen after the check above
    }
  });
  TORCH_CHECK(done.load(), "lkconv cpu: channel weight-gradient core refused a ", k, "x", k, " filter");
  S* wp = grad_w.data_ptr<S>();
  const auto ws = grad_w.strides();
  for (int64_t group = 0; group < groups; ++group)
    for (int64_t t = 0; t < k * k; ++t)
      for (int64_t l = 0; l < L; ++l) {
        double sum = 0.0;
        for (int64_t nb = 0; nb < N * bands; ++nb)
          sum += static_cast<double>(partial[(nb * groups + group) * slot + t * L + l]);
        wp[(group * L + l) * ws[0] + (t / k) * ws[2] + (t % k) * ws[3]] = static_cast<S>(sum);
      }
  return true;
}

// grad_w[c] = sum_n corr(x[n, c] shifted by (top, left), grad_out[n, c]); only taps that touch real pixels.
template <typename S>
void weight_grad(const at::Tensor& grad_out, const at::Tensor& input, at::Tensor& grad_w, int64_t top, int64_t left) {
  using T = acc_t<S>;
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t OH = grad_out.size(2), OW = grad_out.size(3), kh = grad_w.size(2), kw = grad_w.size(3);
  const TapRange ti = useful_taps(kh, H, OH, top), tj = useful_taps(kw, W, OW, left);
  grad_w.zero_();
  if (ti.empty() || tj.empty() || N == 0) return;
  if (weight_grad_channels<S>(grad_out, input, grad_w, top, left)) return;
  const int64_t khc = ti.size(), kwc = tj.size();
  const S* xp = input.data_ptr<S>();
  const S* gp = grad_out.data_ptr<S>();
  const auto xs = input.strides(), gs = grad_out.strides();
  const WgradFn<T> wgrad = wgrad_fn<T>();

  const int64_t src_rows = OH + round_up(khc, 4) + kSlack, src_cols = round_up(OW, kSlack) + kwc + kSlack;
  const int64_t g_cols = round_up(OW, kSlack);
  const int64_t res_rows = round_up(khc, 4), res_cols = kwc;

  // Channel groups as in the forward pass; batch chunks per group depend on the shape only (never on the
  // thread count), and partial sums are added in chunk order, so the result is bitwise reproducible.
  const int64_t G = std::min(C, channel_group(input));
  const int64_t groups = (C + G - 1) / G;
  const int64_t chunks = std::min<int64_t>(N, std::max<int64_t>(1, (16 + groups - 1) / groups));
  std::vector<double> partial(C * chunks * khc * kwc, 0.0);
  const int64_t src_plane = src_rows * src_cols, g_plane = OH * g_cols;
  const int64_t row_lo = std::clamp<int64_t>(top - ti.lo, 0, src_rows);
  const int64_t row_hi = std::clamp<int64_t>(top - ti.lo + H, row_lo, src_rows);

  at::parallel_for(0, groups * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> sbuf(G * src_plane), gbuf(G * g_plane), res(res_rows * res_cols);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t group = p / chunks, chunk = p % chunks;
      const int64_t c0 = group * G, g_count = std::min(G, C - c0);
      const int64_t n0 = N * chunk / chunks, n1 = N * (chunk + 1) / chunks;
      for (int64_t n = n0; n < n1; ++n) {
        const Planes<S> x{xp + n * xs[0] + c0 * xs[1], g_count, H, W, xs[1], xs[2], xs[3]};
        const Planes<S> g{gp + n * gs[0] + c0 * gs[1], g_count, OH, OW, gs[1], gs[2], gs[3]};
        gather(x, top - ti.lo, left - tj.lo, sbuf.data(), src_plane, src_rows, src_cols, src_cols);
        gather(g, 0, 0, gbuf.data(), g_plane, OH, g_cols, g_cols);
        for (int64_t k = 0; k < g_count; ++k) {
          wgrad(sbuf.data() + k * src_plane, src_cols, gbuf.data() + k * g_plane, g_cols, static_cast<int>(OH),
                static_cast<int>(OW), static_cast<int>(khc), static_cast<int>(kwc), res.data(), res_cols,
                static_cast<int>(row_lo), static_cast<int>(row_hi));
          // Per-plane sums in the compute type, the batch reduction in double.
          double* acc = partial.data() + ((c0 + k) * chunks + chunk) * khc * kwc;
          for (int64_t i = 0; i < khc; ++i)
            for (int64_t j = 0; j < kwc; ++j) acc[i * kwc + j] += static_cast<double>(res[i * res_cols + j]);
        }
      }
    }
  });

  S* wp = grad_w.data_ptr<S>();
  const auto ws = grad_w.strides();
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < khc; ++i)
      for (int64_t j = 0; j < kwc; ++j) {
        double sum = 0.0;
        for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += partial[((c * chunks + chunk) * khc + i) * kwc + j];
        wp[c * ws[0] + (ti.lo + i) * ws[2] + (tj.lo + j) * ws[3]] = static_cast<S>(sum);
      }
}

void check_padding(at::IntArrayRef padding) {
  TORCH_CHECK(padding.size() == 4, "lkconv: padding must be (top, bottom, left, right), got ", padding);
  for (auto p : padding) TORCH_CHECK(p >= 0, "lkconv: padding must be non-negative, got ", padding);
}

void check_operand(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.device().is_cpu(), "lkconv cpu: ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 4, "lkconv cpu: ", name, " must be 4-D, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "lkconv cpu: ", name, " has dtype ", t.scalar_type(),
              " but expected ", like.scalar_type());
}

void check_filter(const at::Tensor& w, int64_t C) {
  TORCH_CHECK(w.size(0) == C && w.size(1) == 1, "lkconv cpu: depthwise weight must have shape (", C,
              ", 1, kh, kw), got ", w.sizes());
  TORCH_CHECK(w.size(2) > 0 && w.size(3) > 0, "lkconv cpu: empty filter ", w.sizes());
}

at::MemoryFormat memory_format(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

int64_t out_len(int64_t in, int64_t k, int64_t before, int64_t after) { return in + before + after - k + 1; }

}  // namespace

at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                   at::IntArrayRef padding, bool channels_last, int64_t algorithm) {
  check_operand(input, "input", input);
  check_operand(weight, "weight", input);
  check_filter(weight, input.size(1));
  check_padding(padding);
  const int64_t OH = out_len(input.size(2), weight.size(2), padding[0], padding[1]);
  const int64_t OW = out_len(input.size(3), weight.size(3), padding[2], padding[3]);
  TORCH_CHECK(OH > 0 && OW > 0, "lkconv cpu: output would be empty (", OH, "x", OW, ")");
  if (bias.has_value()) {
    TORCH_CHECK(bias->device().is_cpu() && bias->scalar_type() == input.scalar_type(),
                "lkconv cpu: bias must be a CPU tensor of dtype ", input.scalar_type());
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == input.size(1), "lkconv cpu: bias must have shape (",
                input.size(1), "), got ", bias->sizes());
  }
  auto out = at::empty({input.size(0), input.size(1), OH, OW}, input.options(), memory_format(channels_last));
  if (out.numel() == 0) return out;
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "lkconv_cpu_forward", [&] {
    correlate<scalar_t>(input, weight, b.defined() ? b.data_ptr<scalar_t>() : nullptr, out, padding[0],
                        padding[2], /*flip=*/false, algorithm);
  });
  return out;
}

at::Tensor backward_input(const at::Tensor& grad_out, const at::Tensor& weight, int64_t in_h, int64_t in_w,
                          at::IntArrayRef padding, bool channels_last, int64_t algorithm) {
  check_operand(grad_out, "grad_output", grad_out);
  check_operand(weight, "weight", grad_out);
  check_filter(weight, grad_out.size(1));
  check_padding(padding);
  const int64_t kh = weight.size(2), kw = weight.size(3);
  TORCH_CHECK(out_len(in_h, kh, padding[0], padding[1]) == grad_out.size(2) &&
                  out_len(in_w, kw, padding[2], padding[3]) == grad_out.size(3),
              "lkconv cpu: grad_output shape ", grad_out.sizes(), " does not match input size ", in_h, "x", in_w);
  auto grad_in = at::empty({grad_out.size(0), grad_out.size(1), in_h, in_w}, grad_out.options(),
                           memory_format(channels_last));
  if (grad_in.numel() == 0) return grad_in;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad_out.scalar_type(), "lkconv_cpu_backward_input", [&] {
    correlate<scalar_t>(grad_out, weight, nullptr, grad_in, kh - 1 - padding[0], kw - 1 - padding[2],
                        /*flip=*/true, algorithm);
  });
  return grad_in;
}

at::Tensor backward_weight(const at::Tensor& grad_out, const at::Tensor& input, int64_t kh, int64_t kw,
                           at::IntArrayRef padding) {
  check_operand(grad_out, "grad_output", grad_out);
  check_operand(input, "input", grad_out);
  check_padding(padding);
  TORCH_CHECK(kh > 0 && kw > 0, "lkconv cpu: kernel size must be positive, got ", kh, "x", kw);
  TORCH_CHECK(grad_out.size(0) == input.size(0) && grad_out.size(1) == input.size(1) &&
                  out_len(input.size(2), kh, padding[0], padding[1]) == grad_out.size(2) &&
                  out_len(input.size(3), kw, padding[2], padding[3]) == grad_out.size(3),
              "lkconv cpu: grad_output shape ", grad_out.sizes(), " does not match input shape ", input.sizes());
  auto grad_w = at::empty({input.size(1), 1, kh, kw}, input.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "lkconv_cpu_backward_weight", [&] {
    weight_grad<scalar_t>(grad_out, input, grad_w, padding[0], padding[2]);
  });
  return grad_w;
}

bool channels_read_in_place(int64_t kw, int64_t width, int64_t images, int64_t row_bytes) {
  return read_in_place(kAuto, kw, width, images, row_bytes);
}

bool prefers_channel_cores(bool channels_last, int64_t out_width, int64_t kw) {
  return prefer_channels(channels_last, out_width, kw);
}

double fma_peak_gflops(double seconds) {
  TORCH_CHECK(seconds > 0 && seconds < 60, "lkconv cpu: seconds must be in (0, 60), got ", seconds);
  const auto& k = plane_kernels();
  const int64_t threads = at::get_num_threads();
  const double flops_per_iter = 12.0 * k.lanes_f32 * 2.0;
  // Calibrate on one thread, then run every thread for about `seconds`.
  int64_t iters = 1 << 16;
  for (;;) {
    const auto t0 = std::chrono::steady_clock::now();
    volatile double sink = k.fma_loop_f32(iters);
    (void)sink;
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (dt > 0.02) {
      iters = static_cast<int64_t>(iters * seconds / dt) + 1;
      break;
    }
    iters *= 4;
  }
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<double> sink(threads);
  at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) sink[t] = k.fma_loop_f32(iters);
  });
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return threads * iters * flops_per_iter / dt / 1e9;
}

}  // namespace cpu
}  // namespace lkconv
