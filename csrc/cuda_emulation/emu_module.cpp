// The Python module of the CUDA emulation: the CUDA bindings (cuda_forward, cuda_backward_input, ...) exactly as
// the real extension has them, on CPU tensors, plus the controls of the emulated machine.
#include <torch/extension.h>

#include "../cuda/depthwise_cuda.cuh"
#include "lkemu.h"
#include "lkemu_control.h"

namespace lkconv {
namespace cuda {
void bind(pybind11::module& m);
}  // namespace cuda
}  // namespace lkconv

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lkconv's CUDA kernels under the CUDA execution-model emulation (CPU tensors)";
  lkconv::cuda::bind(m);
  m.attr("with_cuda") = true;
  m.attr("emulated") = true;
  m.def("devices", [] {
    std::vector<std::string> names;
    for (const auto& d : lkemu::devices()) names.push_back(d.name);
    return names;
  });
  m.def("select_device", &lkemu::select_device, py::arg("name"));
  m.def("current_device", [] { return std::string(lkemu::current_device().name); });
  m.def("set_schedule", [](const std::string& order, uint64_t seed) {
    if (order == "forward")
      lkemu::set_schedule(lkemu::Order::kForward, seed);
    else if (order == "reverse")
      lkemu::set_schedule(lkemu::Order::kReverse, seed);
    else if (order == "shuffled")
      lkemu::set_schedule(lkemu::Order::kShuffled, seed);
    else
      TORCH_CHECK(false, "schedule must be forward, reverse or shuffled, got ", order);
  }, py::arg("order"), py::arg("seed") = 0);
  m.def("set_planted_bug", [](int bug) { lkemu::planted_bug = bug; }, py::arg("bug"));
  m.def("take_launches", [] {
    py::list out;
    for (const auto& r : lkemu::take_launches())
      out.append(py::dict(py::arg("kernel") = r.kernel,
                          py::arg("grid") = py::make_tuple(r.grid[0], r.grid[1], r.grid[2]),
                          py::arg("block") = py::make_tuple(r.block[0], r.block[1], r.block[2]),
                          py::arg("smem") = r.smem));
    return out;
  });
}
