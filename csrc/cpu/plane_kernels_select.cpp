// Picks the widest instruction set the running CPU supports, once.
#include "plane_kernels_api.h"

namespace lkconv {
namespace cpu {

static PlaneKernels select_plane_kernels() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return plane_kernels_avx512();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return plane_kernels_avx2();
#endif
  return plane_kernels_generic();
}

const PlaneKernels& plane_kernels() {
  static const PlaneKernels table = select_plane_kernels();
  return table;
}

}  // namespace cpu
}  // namespace lkconv
