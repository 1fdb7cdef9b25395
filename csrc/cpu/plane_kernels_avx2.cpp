// The plane cores compiled for avx2 (32-byte vectors); see plane_kernels.h (and channel_kernels.h, lane_transpose.h).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "plane_kernels_api.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define LKCONV_VEC_BYTES 32
#define LKCONV_ISA avx2
namespace lkconv {
namespace cpu {
#include "plane_kernels.h"
#include "channel_kernels.h"
#include "lane_transpose.h"

PlaneKernels plane_kernels_avx2() {
  return {"avx2", &avx2::correlate_plane<float>, &avx2::correlate_plane<double>, &avx2::wgrad_plane<float>,
          &avx2::wgrad_plane<double>, &avx2::correlate_channels<float>,
          &avx2::correlate_channels<double>, avx2::Vec<float>::kLanes, avx2::Vec<double>::kLanes,
          &avx2::wgrad_channels<float>, &avx2::wgrad_channels<double>, avx2::kWgradChannelsMaxK,
          &avx2::fma_loop<float>, &avx2::pack_lanes<float>, &avx2::pack_lanes<double>,
          &avx2::unpack_lanes<float>, &avx2::unpack_lanes<double>};
}
}  // namespace cpu
}  // namespace lkconv
#pragma GCC pop_options
#endif
