// The CUDA execution model on the host, for running lkconv's CUDA kernels on a CPU in the tests.
//
// The kernel sources (csrc/cuda/*.cu) are compiled unchanged with g++ against this header and the stub headers
// in include/ (cuda_runtime.h, c10/cuda/*.h), which shadow the real ones. What it provides:
//   - threads as fibers (ucontext): every CUDA thread of a block runs on its own stack until it reaches
//     __syncthreads(), a warp primitive or its end; the scheduler then runs the others (in forward, reverse or
//     shuffled order), so a barrier is a real barrier and a warp shuffle a real exchange between lanes;
//   - blockIdx/threadIdx/blockDim/gridDim, dim3, the launch (LKCONV_LAUNCH, see depthwise_cuda.cuh) with the
//     launch limits checked (block size, grid size, dynamic shared memory against the emulated GPU's limits
//     and against cudaFuncSetAttribute), and device attributes from a table of GPUs (lkemu.cpp);
//   - dynamic shared memory per block, accessed through SharedPtr/SharedRef, which check every access:
//     bounds, alignment, reads of never-written memory, and races (a word written by one thread and read or
//     written by another between the same two barriers). Shared memory starts filled with NaN bytes;
//   - __shfl_*_sync, __syncwarp, atomicAdd (fibers run one at a time, so an add is atomic), __ldg, fmaf.
// Errors are collected during the launch and raised by C10_CUDA_KERNEL_LAUNCH_CHECK() as a c10::Error naming
// the kernel, block, thread and offset.
//
// What it cannot show: timing, occupancy, bank conflicts, races between blocks through global memory, the
// hardware's own rounding of 16-bit conversions (c10's host conversions, round-to-nearest-even, are used).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#define LKCONV_CUDA_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define CUDA_VERSION 13000

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};

extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;
constexpr int warpSize = 32;

using cudaStream_t = struct lkemu_stream*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

template <typename T>
inline T min(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
inline T max(T a, T b) {
  return a < b ? b : a;
}

namespace lkemu {

// ---- shared memory ------------------------------------------------------------------------------------------
// The checked address to use for an access of `bytes` at `p` (a scratch word when the access is out of bounds,
// which is then reported instead of corrupting memory).
void* shared_access(const void* p, std::size_t bytes, bool write);
void* dynamic_shared_base();

template <typename T>
class SharedPtr;

template <typename T>
class SharedRef {
  using V = std::remove_const_t<T>;
  V* p_;

 public:
  explicit SharedRef(V* p) : p_(p) {}
  operator V() const {
    V v;
    std::memcpy(&v, shared_access(p_, sizeof(V), false), sizeof(V));
    return v;
  }
  const SharedRef& operator=(const V& v) const {
    static_assert(!std::is_const_v<T>, "write through a pointer to const shared memory");
    std::memcpy(shared_access(p_, sizeof(V), true), &v, sizeof(V));
    return *this;
  }
  const SharedRef& operator=(const SharedRef& other) const { return *this = static_cast<V>(other); }
  const SharedRef& operator+=(const V& v) const { return *this = static_cast<V>(static_cast<V>(*this) + v); }
  const SharedRef& operator-=(const V& v) const { return *this = static_cast<V>(static_cast<V>(*this) - v); }
  const SharedRef& operator*=(const V& v) const { return *this = static_cast<V>(static_cast<V>(*this) * v); }
  SharedPtr<T> operator&() const { return SharedPtr<T>(p_); }
};

template <typename T>
class SharedPtr {
  using V = std::remove_const_t<T>;
  V* p_ = nullptr;

 public:
  SharedPtr() = default;
  explicit SharedPtr(V* p) : p_(p) {}
  template <typename U, typename = std::enable_if_t<std::is_same_v<std::remove_const_t<U>, V> &&
                                                    (std::is_const_v<T> || !std::is_const_v<U>)>>
  SharedPtr(const SharedPtr<U>& other) : p_(other.raw()) {}
  V* raw() const { return p_; }
  SharedRef<T> operator[](std::int64_t i) const { return SharedRef<T>(p_ + i); }
  SharedRef<T> operator*() const { return SharedRef<T>(p_); }
  SharedPtr operator+(std::int64_t i) const { return SharedPtr(p_ + i); }
  SharedPtr operator-(std::int64_t i) const { return SharedPtr(p_ - i); }
  std::ptrdiff_t operator-(const SharedPtr& o) const { return p_ - o.p_; }
  SharedPtr& operator+=(std::int64_t i) {
    p_ += i;
    return *this;
  }
  SharedPtr& operator-=(std::int64_t i) {
    p_ -= i;
    return *this;
  }
  SharedPtr& operator++() {
    ++p_;
    return *this;
  }
  bool operator==(const SharedPtr& o) const { return p_ == o.p_; }
  bool operator!=(const SharedPtr& o) const { return p_ != o.p_; }
  bool operator<(const SharedPtr& o) const { return p_ < o.p_; }
};

template <typename T>
SharedPtr<T> operator+(std::int64_t i, const SharedPtr<T>& p) {
  return p + i;
}

template <typename T>
SharedPtr<T> dynamic_shared() {
  return SharedPtr<T>(static_cast<std::remove_const_t<T>*>(dynamic_shared_base()));
}

// ---- synchronisation and warps ------------------------------------------------------------------------------
void syncthreads(int line);
// Exchange within the warp: every lane in `mask` offers `value` and receives the value of lane `source(lane)`.
std::uint64_t warp_exchange(unsigned mask, std::uint64_t value, int kind, int arg, int width);
enum ShuffleKind { kShflXor = 0, kShflIdx = 1, kShflDown = 2, kShflUp = 3, kSyncWarp = 4 };

template <typename T>
T shuffle(unsigned mask, T value, int kind, int arg, int width) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 64 bits");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = warp_exchange(mask, bits, kind, arg, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// ---- launches -----------------------------------------------------------------------------------------------
using Body = void (*)(void*);
void record_func_attribute(const void* func, int attr, int value, cudaError_t* status);
// Checks the configuration, then runs the grid: body(state) in every thread of every block.
void run_grid(const void* func, const char* name, dim3 grid, dim3 block, std::size_t smem, Body body, void* state);

template <typename... Params>
class Launcher {
 public:
  Launcher(void (*kernel)(Params...), const char* name, dim3 grid, dim3 block, std::size_t smem)
      : kernel_(kernel), name_(name), grid_(grid), block_(block), smem_(smem) {}

  template <typename... Args>
  void operator()(Args&&... args) const {
    // Kernel parameters are copies, as on the device.
    std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
    struct State {
      void (*kernel)(Params...);
      std::tuple<std::decay_t<Params>...>* params;
    } state{kernel_, &params};
    run_grid(reinterpret_cast<const void*>(kernel_), name_, grid_, block_, smem_,
             [](void* s) {
               auto* st = static_cast<State*>(s);
               std::apply(st->kernel, *st->params);
             },
             &state);
  }

 private:
  void (*kernel_)(Params...);
  const char* name_;
  dim3 grid_, block_;
  std::size_t smem_;
};

template <typename... Params>
Launcher<Params...> launcher(void (*kernel)(Params...), const char* name, dim3 grid, dim3 block, std::size_t smem,
                             cudaStream_t) {
  return Launcher<Params...>(kernel, name, grid, block, smem);
}

// Raise (as c10::Error) what the last launch found, if anything.
void raise_pending_errors();

// For the emulation's own tests: a scratch copy of a kernel can switch a planted bug on with this (0: none).
extern int planted_bug;

}  // namespace lkemu

inline void __syncthreads_at(int line) { lkemu::syncthreads(line); }
#define __syncthreads() __syncthreads_at(__LINE__)
inline void __syncwarp(unsigned mask = 0xffffffffu) { lkemu::warp_exchange(mask, 0, lkemu::kSyncWarp, 0, 32); }

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return lkemu::shuffle(mask, v, lkemu::kShflXor, lane_mask, width);
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return lkemu::shuffle(mask, v, lkemu::kShflIdx, src, width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return lkemu::shuffle(mask, v, lkemu::kShflDown, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return lkemu::shuffle(mask, v, lkemu::kShflUp, static_cast<int>(delta), width);
}
template <typename T>
T __ldg(const T* p) {
  return *p;
}
template <typename T>
T atomicAdd(T* p, T v) {  // fibers run one at a time: a plain read-modify-write is atomic here
  T old = *p;
  *p = old + v;
  return old;
}

template <typename F>
cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
  cudaError_t status = cudaSuccess;
  lkemu::record_func_attribute(reinterpret_cast<const void*>(func), attr, value, &status);
  return status;
}
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
const char* cudaGetErrorString(cudaError_t error);
