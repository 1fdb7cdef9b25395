// Emulation stand-in for c10/cuda/CUDAStream.h: one (null) stream; launches run synchronously.
#pragma once
#include "../../../lkemu.h"

namespace c10 {
namespace cuda {
struct CUDAStream {
  operator cudaStream_t() const { return nullptr; }
  cudaStream_t stream() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(signed char = -1) { return {}; }
}  // namespace cuda
}  // namespace c10
