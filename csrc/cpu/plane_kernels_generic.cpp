// The plane cores compiled for generic (16-byte vectors); see plane_kernels.h (and channel_kernels.h, lane_transpose.h).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "plane_kernels_api.h"


#define LKCONV_VEC_BYTES 16
#define LKCONV_ISA generic
namespace lkconv {
namespace cpu {
#include "plane_kernels.h"
#include "channel_kernels.h"
#include "lane_transpose.h"

PlaneKernels plane_kernels_generic() {
  return {"generic", &generic::correlate_plane<float>, &generic::correlate_plane<double>, &generic::wgrad_plane<float>,
          &generic::wgrad_plane<double>, &generic::correlate_channels<float>,
          &generic::correlate_channels<double>, generic::Vec<float>::kLanes, generic::Vec<double>::kLanes,
          &generic::wgrad_channels<float>, &generic::wgrad_channels<double>, generic::kWgradChannelsMaxK,
          &generic::fma_loop<float>, &generic::pack_lanes<float>, &generic::pack_lanes<double>,
          &generic::unpack_lanes<float>, &generic::unpack_lanes<double>};
}
}  // namespace cpu
}  // namespace lkconv

