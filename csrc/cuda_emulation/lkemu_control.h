// What the Python side of the CUDA emulation controls: the emulated GPU, the thread schedule, the launch log.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace lkemu {

struct DeviceSpec {
  const char* name;
  std::size_t smem_default;  // dynamic shared memory per block without opting in
  std::size_t smem_optin;    // cudaDevAttrMaxSharedMemoryPerBlockOptin
  int sm_count;
};

struct LaunchRecord {
  std::string kernel;
  unsigned grid[3], block[3];
  std::size_t smem;
};

enum class Order { kForward, kReverse, kShuffled };

const std::vector<DeviceSpec>& devices();
void select_device(const std::string& name);
const DeviceSpec& current_device();
void set_schedule(Order order, std::uint64_t seed);
std::vector<LaunchRecord> take_launches();

}  // namespace lkemu
