// Emulation stand-in for c10/cuda/CUDAException.h: the same two macros, on the emulated runtime.
#pragma once
#include <c10/util/Exception.h>

#include "../../../lkemu.h"

#define C10_CUDA_CHECK(EXPR)                                                                       \
  do {                                                                                             \
    const cudaError_t lkemu_status = (EXPR);                                                       \
    TORCH_CHECK(lkemu_status == cudaSuccess, "CUDA error (emulated): ", cudaGetErrorString(lkemu_status)); \
  } while (0)

// After a launch: raise what the emulation found while running it.
#define C10_CUDA_KERNEL_LAUNCH_CHECK() ::lkemu::raise_pending_errors()
