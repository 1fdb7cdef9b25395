// The scheduler, shared-memory checker, launch checks and device table of the CUDA emulation (lkemu.h).
#include "lkemu.h"

#include <c10/util/Exception.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "lkemu_control.h"

// Under AddressSanitizer, tell it about every stack switch (fibers have their own stacks).
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define LKEMU_START_SWITCH(save, bottom, size) __sanitizer_start_switch_fiber(save, bottom, size)
#define LKEMU_FINISH_SWITCH(save, bottom, size) __sanitizer_finish_switch_fiber(save, bottom, size)
#else
#define LKEMU_START_SWITCH(save, bottom, size) ((void)0)
#define LKEMU_FINISH_SWITCH(save, bottom, size) ((void)0)
#endif

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace lkemu {
namespace {

// Emulated GPUs: shared memory per block (default and opt-in maximum) and SM count, as the CUDA runtime
// reports them (cudaDevAttrMaxSharedMemoryPerBlock / ...Optin / MultiProcessorCount).
const std::vector<DeviceSpec> kDevices = {
    {"h100", 49152, 232448, 132},    // H100 SXM: 227 KiB opt-in
    {"a100", 49152, 166912, 108},    // A100: 163 KiB opt-in
    {"rtx4090", 49152, 101376, 128}, // Ada/Ampere consumer cards: 99 KiB opt-in
    {"tiny", 49152, 49152, 2},       // no opt-in beyond 48 KiB, 2 SMs: forces the fallbacks
};
int g_device = 0;
Order g_order = Order::kForward;
std::uint64_t g_seed = 0;
std::map<const void*, int> g_max_dynamic_smem;  // per kernel, from cudaFuncSetAttribute
std::vector<LaunchRecord> g_launches;
std::vector<std::string> g_errors;
std::int64_t g_error_count = 0;
constexpr std::size_t kMaxErrors = 8;
constexpr std::size_t kStackBytes = 256 * 1024;

enum class State { kReady, kBarrier, kWarp, kExited };

struct Thread {
  ucontext_t ctx;
  State state = State::kReady;
  int barrier_line = 0;
  // A pending warp operation.
  unsigned mask = 0;
  int kind = 0, arg = 0, width = 32;
  std::uint64_t value = 0, result = 0;
};

// Per 2-byte unit of shared memory: who wrote and read it in which barrier interval ("epoch").
struct Shadow {
  std::uint32_t write_epoch, read_epoch;
  std::int32_t writer, reader;  // reader -2: several threads
  std::uint8_t written;
};

struct BlockRun {
  const char* kernel;
  Body body;
  void* state;
  std::vector<Thread> threads;
  ucontext_t scheduler;
  std::vector<unsigned char> smem;
  std::vector<Shadow> shadow;
  std::uint32_t epoch = 1;
  int current = -1;
  bool aborted = false;
  unsigned char scratch[64];
};

thread_local BlockRun* g_run = nullptr;
std::vector<char*> g_stacks;
// The scheduler's stack, as AddressSanitizer reports it when a fiber starts or resumes.
thread_local const void* g_sched_bottom = nullptr;
thread_local std::size_t g_sched_size = 0;

void report(const std::string& what) {
  ++g_error_count;
  if (g_errors.size() < kMaxErrors) g_errors.push_back(what);
}

std::string where() {
  std::ostringstream s;
  s << g_run->kernel << " block (" << blockIdx.x << "," << blockIdx.y << "," << blockIdx.z << ") thread ("
    << threadIdx.x << "," << threadIdx.y << "," << threadIdx.z << ")";
  return s.str();
}

char* stack(std::size_t i) {
  while (g_stacks.size() <= i) {
    // A guard page below each stack turns an overflow into a crash instead of silent corruption.
    void* mem = mmap(nullptr, kStackBytes + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(mem != MAP_FAILED, "CUDA emulation: cannot map a fiber stack");
    mprotect(mem, 4096, PROT_NONE);
    g_stacks.push_back(static_cast<char*>(mem) + 4096);
  }
  return g_stacks[i];
}

void set_thread_index(int t) {
  threadIdx.x = t % blockDim.x;
  threadIdx.y = (t / blockDim.x) % blockDim.y;
  threadIdx.z = t / (blockDim.x * blockDim.y);
}

void trampoline(int t) {
  LKEMU_FINISH_SWITCH(nullptr, &g_sched_bottom, &g_sched_size);
  BlockRun* run = g_run;
  run->body(run->state);
  run->threads[t].state = State::kExited;
  LKEMU_START_SWITCH(nullptr, g_sched_bottom, g_sched_size);  // this fiber's stack is done
  swapcontext(&run->threads[t].ctx, &run->scheduler);
}

void yield_to_scheduler() {
  BlockRun* run = g_run;
  void* fake_stack = nullptr;
  (void)fake_stack;
  LKEMU_START_SWITCH(&fake_stack, g_sched_bottom, g_sched_size);
  swapcontext(&run->threads[run->current].ctx, &run->scheduler);
  LKEMU_FINISH_SWITCH(fake_stack, &g_sched_bottom, &g_sched_size);
}

std::vector<int> order(int n, std::mt19937_64& rng) {
  std::vector<int> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  if (g_order == Order::kReverse) std::reverse(idx.begin(), idx.end());
  if (g_order == Order::kShuffled) std::shuffle(idx.begin(), idx.end(), rng);
  return idx;
}

// Completes the warp operations whose lanes have all arrived; returns whether any did.
bool resolve_warps(BlockRun& run) {
  bool progress = false;
  const int n = static_cast<int>(run.threads.size());
  for (int w0 = 0; w0 < n; w0 += 32) {
    const int lanes = std::min(32, n - w0);
    unsigned mask = 0;
    int first = -1;
    for (int l = 0; l < lanes; ++l)
      if (run.threads[w0 + l].state == State::kWarp) {
        if (first < 0) first = l;
        mask = run.threads[w0 + l].mask;
      }
    if (first < 0) continue;
    bool complete = true;
    for (int l = 0; l < 32; ++l) {
      if (!(mask >> l & 1u)) continue;
      if (l >= lanes) {
        std::ostringstream s;
        s << "warp operation with mask 0x" << std::hex << mask << " names lanes beyond the block in " << run.kernel;
        report(s.str());
        run.aborted = true;
        return false;
      }
      const Thread& th = run.threads[w0 + l];
      if (th.state != State::kWarp) {
        complete = false;
        if (th.state == State::kExited || th.state == State::kBarrier) {
          std::ostringstream s;
          s << run.kernel << ": warp " << w0 / 32 << " waits in a warp operation for lane " << l << ", which "
            << (th.state == State::kExited ? "has exited" : "waits at __syncthreads");
          report(s.str());
          run.aborted = true;
          return false;
        }
      } else if (th.mask != mask || th.kind != run.threads[w0 + first].kind) {
        report(std::string(run.kernel) + ": lanes of one warp disagree on a warp operation's mask or kind");
        run.aborted = true;
        return false;
      }
    }
    if (!complete) continue;
    for (int l = 0; l < 32; ++l) {
      if (!(mask >> l & 1u)) continue;
      Thread& th = run.threads[w0 + l];
      const int width = th.width, base = l - l % width, pos = l % width;
      int src = l;
      switch (th.kind) {
        case kShflXor: src = base + ((pos ^ th.arg) % width); break;
        case kShflIdx: src = base + ((th.arg % width + width) % width); break;
        case kShflDown: src = pos + th.arg < width ? l + th.arg : l; break;
        case kShflUp: src = pos - th.arg >= 0 ? l - th.arg : l; break;
        default: break;
      }
      if (th.kind != kSyncWarp && !(mask >> src & 1u)) {
        report(std::string(run.kernel) + ": a shuffle reads lane " + std::to_string(src) + ", outside its mask");
        src = l;
      }
      th.result = run.threads[w0 + src].value;
    }
    for (int l = 0; l < 32; ++l)
      if (mask >> l & 1u) run.threads[w0 + l].state = State::kReady;
    progress = true;
  }
  return progress;
}

void run_block(BlockRun& run, int nthreads, std::mt19937_64& rng) {
  run.threads.assign(nthreads, Thread{});
  std::fill(run.smem.begin(), run.smem.end(), 0xFF);  // NaN in every float type: unwritten data shows
  std::fill(run.shadow.begin(), run.shadow.end(), Shadow{0, 0, -1, -1, 0});
  run.epoch = 1;
  for (int t = 0; t < nthreads; ++t) {
    Thread& th = run.threads[t];
    getcontext(&th.ctx);
    th.ctx.uc_stack.ss_sp = stack(t);
    th.ctx.uc_stack.ss_size = kStackBytes;
    th.ctx.uc_link = nullptr;
    makecontext(&th.ctx, reinterpret_cast<void (*)()>(trampoline), 1, t);
  }
  while (!run.aborted) {
    bool ran = false;
    for (int t : order(nthreads, rng)) {
      if (run.threads[t].state != State::kReady) continue;
      run.current = t;
      set_thread_index(t);
      void* fake_stack = nullptr;
      (void)fake_stack;
      LKEMU_START_SWITCH(&fake_stack, stack(t), kStackBytes);
      swapcontext(&run.scheduler, &run.threads[t].ctx);
      LKEMU_FINISH_SWITCH(fake_stack, nullptr, nullptr);
      ran = true;
      if (run.aborted) return;
    }
    if (resolve_warps(run) || ran) continue;
    int live = 0, at_barrier = 0, line = -1;
    bool same_line = true;
    for (const Thread& th : run.threads) {
      if (th.state == State::kExited) continue;
      ++live;
      if (th.state == State::kBarrier) {
        ++at_barrier;
        if (line >= 0 && th.barrier_line != line) same_line = false;
        line = th.barrier_line;
      }
    }
    if (live == 0) return;
    std::ostringstream s;
    if (at_barrier == live && at_barrier < nthreads) {
      s << run.kernel << " block (" << blockIdx.x << "," << blockIdx.y << "," << blockIdx.z << "): __syncthreads "
        << "(line " << line << ") reached after " << nthreads - live << " thread(s) of the block exited";
      report(s.str());
      run.aborted = true;
    } else if (at_barrier == live && !same_line) {
      s << run.kernel << ": threads of one block wait at different __syncthreads calls (divergent barrier)";
      report(s.str());
      run.aborted = true;
    } else if (at_barrier == live) {
      ++run.epoch;
      for (Thread& th : run.threads)
        if (th.state == State::kBarrier) th.state = State::kReady;
    } else {
      s << run.kernel << ": deadlock (" << at_barrier << " of " << live << " live threads at __syncthreads, the "
        << "others in warp operations that cannot complete)";
      report(s.str());
      run.aborted = true;
    }
  }
}

}  // namespace

// ---- the API of lkemu.h ---------------------------------------------------------------------------------------
void* dynamic_shared_base() {
  TORCH_CHECK(g_run != nullptr, "CUDA emulation: shared memory used outside a kernel");
  return g_run->smem.data();
}

void* shared_access(const void* p, std::size_t bytes, bool write) {
  BlockRun& run = *g_run;
  const auto* base = run.smem.data();
  const std::ptrdiff_t off = static_cast<const unsigned char*>(p) - base;
  const std::size_t size = run.smem.size();
  if (off < 0 || static_cast<std::size_t>(off) + bytes > size) {
    std::ostringstream s;
    s << where() << ": shared-memory " << (write ? "write" : "read") << " of " << bytes << " bytes at offset "
      << off << " is outside the block's " << size << " bytes";
    report(s.str());
    return run.scratch;
  }
  if (off % bytes != 0) {
    std::ostringstream s;
    s << where() << ": misaligned shared-memory access of " << bytes << " bytes at offset " << off;
    report(s.str());
  }
  const int me = run.current;
  for (std::size_t u = off / 2; u < (off + bytes + 1) / 2; ++u) {
    Shadow& sh = run.shadow[u];
    const char* problem = nullptr;
    int other = -1;
    if (write) {
      if (sh.write_epoch == run.epoch && sh.writer != me) {
        problem = "written by two threads between the same barriers";
        other = sh.writer;
      } else if (sh.read_epoch == run.epoch && sh.reader != me) {
        problem = "written after another thread read it between the same barriers";
        other = sh.reader;
      }
      sh.write_epoch = run.epoch;
      sh.writer = me;
      sh.written = 1;
    } else {
      if (!sh.written) {
        std::ostringstream s;
        s << where() << ": read of never-written shared memory at offset " << 2 * u;
        report(s.str());
      } else if (sh.write_epoch == run.epoch && sh.writer != me) {
        problem = "read while another thread wrote it between the same barriers";
        other = sh.writer;
      }
      if (sh.read_epoch == run.epoch && sh.reader != me)
        sh.reader = -2;
      else if (sh.read_epoch != run.epoch)
        sh.reader = me;
      sh.read_epoch = run.epoch;
    }
    if (problem) {
      std::ostringstream s;
      s << where() << ": race on shared memory at offset " << 2 * u << ": " << problem << " (the other: "
        << (other == -2 ? std::string("several threads") : "thread " + std::to_string(other)) << ")";
      report(s.str());
    }
  }
  return const_cast<void*>(p);
}

void syncthreads(int line) {
  TORCH_CHECK(g_run != nullptr, "CUDA emulation: __syncthreads outside a kernel");
  Thread& th = g_run->threads[g_run->current];
  th.state = State::kBarrier;
  th.barrier_line = line;
  yield_to_scheduler();
}

std::uint64_t warp_exchange(unsigned mask, std::uint64_t value, int kind, int arg, int width) {
  TORCH_CHECK(g_run != nullptr, "CUDA emulation: warp operation outside a kernel");
  BlockRun& run = *g_run;
  Thread& th = run.threads[run.current];
  const int lane = run.current % 32;
  if (!(mask >> lane & 1u)) {
    report(where() + ": a lane calls a warp operation with a mask that does not include itself");
    return value;
  }
  if (width < 1 || width > 32 || (width & (width - 1))) {
    report(where() + ": shuffle width must be a power of two up to 32");
    width = 32;
  }
  th.state = State::kWarp;
  th.mask = mask, th.kind = kind, th.arg = arg, th.width = width, th.value = value;
  yield_to_scheduler();
  return th.result;
}

void record_func_attribute(const void* func, int attr, int value, cudaError_t* status) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || static_cast<std::size_t>(value) > kDevices[g_device].smem_optin) {
      *status = cudaErrorInvalidValue;
      return;
    }
    g_max_dynamic_smem[func] = value;
  }
}

void run_grid(const void* func, const char* name, dim3 grid, dim3 block, std::size_t smem, Body body, void* state) {
  g_errors.clear();
  g_error_count = 0;
  g_launches.push_back({name, {grid.x, grid.y, grid.z}, {block.x, block.y, block.z}, smem});
  const DeviceSpec& dev = kDevices[g_device];
  const std::int64_t threads = static_cast<std::int64_t>(block.x) * block.y * block.z;
  std::ostringstream bad;
  if (threads < 1 || threads > 1024 || block.z > 64)
    bad << "block of " << block.x << "x" << block.y << "x" << block.z << " threads (at most 1024, z <= 64)";
  else if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    bad << "grid of " << grid.x << "x" << grid.y << "x" << grid.z << " blocks";
  else if (smem > dev.smem_optin)
    bad << smem << " bytes of dynamic shared memory, more than the " << dev.name << "'s " << dev.smem_optin;
  else if (smem > dev.smem_default) {
    auto it = g_max_dynamic_smem.find(func);
    if (it == g_max_dynamic_smem.end() || static_cast<std::size_t>(it->second) < smem)
      bad << smem << " bytes of dynamic shared memory without cudaFuncSetAttribute("
          << "cudaFuncAttributeMaxDynamicSharedMemorySize) allowing them";
  }
  if (!bad.str().empty()) {
    report(std::string("launch of ") + name + " refused: " + bad.str());
    return;
  }
  BlockRun run;
  run.kernel = name;
  run.body = body;
  run.state = state;
  run.smem.assign(smem, 0);
  run.shadow.assign((smem + 1) / 2, Shadow{});
  blockDim = block;
  gridDim = grid;
  std::mt19937_64 rng(g_seed);
  BlockRun* outer = g_run;
  g_run = &run;
  for (unsigned z = 0; z < grid.z && !run.aborted; ++z)
    for (unsigned y = 0; y < grid.y && !run.aborted; ++y)
      for (unsigned x = 0; x < grid.x && !run.aborted; ++x) {
        blockIdx = {x, y, z};
        run_block(run, static_cast<int>(threads), rng);
      }
  g_run = outer;
}

void raise_pending_errors() {
  if (g_error_count == 0) return;
  std::ostringstream s;
  s << "CUDA emulation found " << g_error_count << " error(s)";
  for (const auto& e : g_errors) s << "\n  " << e;
  g_errors.clear();
  g_error_count = 0;
  TORCH_CHECK(false, s.str());
}

int planted_bug = 0;

// ---- control (lkemu_control.h) ---------------------------------------------------------------------------------
const std::vector<DeviceSpec>& devices() { return kDevices; }

void select_device(const std::string& name) {
  for (std::size_t i = 0; i < kDevices.size(); ++i)
    if (name == kDevices[i].name) {
      g_device = static_cast<int>(i);
      g_max_dynamic_smem.clear();  // attributes belong to a device
      return;
    }
  TORCH_CHECK(false, "CUDA emulation: unknown device ", name);
}

const DeviceSpec& current_device() { return kDevices[g_device]; }

void set_schedule(Order order, std::uint64_t seed) {
  g_order = order;
  g_seed = seed;
}

std::vector<LaunchRecord> take_launches() { return std::exchange(g_launches, {}); }

}  // namespace lkemu

// ---- the CUDA runtime functions the host code calls -------------------------------------------------------------
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  const auto& dev = lkemu::current_device();
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(dev.smem_default); return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = dev.sm_count; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(dev.smem_optin); return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
  }
  return "unknown error";
}
