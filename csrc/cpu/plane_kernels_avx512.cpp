// The plane cores compiled for avx512 (64-byte vectors); see plane_kernels.h (and channel_kernels.h, lane_transpose.h).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "plane_kernels_api.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#define LKCONV_VEC_BYTES 64
#define LKCONV_ISA avx512
namespace lkconv {
namespace cpu {
#include "plane_kernels.h"
#include "channel_kernels.h"
#include "lane_transpose.h"

PlaneKernels plane_kernels_avx512() {
  return {"avx512", &avx512::correlate_plane<float>, &avx512::correlate_plane<double>, &avx512::wgrad_plane<float>,
          &avx512::wgrad_plane<double>, &avx512::correlate_channels<float>,
          &avx512::correlate_channels<double>, avx512::Vec<float>::kLanes, avx512::Vec<double>::kLanes,
          &avx512::wgrad_channels<float>, &avx512::wgrad_channels<double>, avx512::kWgradChannelsMaxK,
          &avx512::fma_loop<float>, &avx512::pack_lanes<float>, &avx512::pack_lanes<double>,
          &avx512::unpack_lanes<float>, &avx512::unpack_lanes<double>};
}
}  // namespace cpu
}  // namespace lkconv
#pragma GCC pop_options
#endif
