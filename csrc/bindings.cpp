// Python bindings of lkconv._C: thin wrappers, all argument checks live next to each kernel family.
#include <torch/extension.h>

#include "cpu/plane_kernels_api.h"
#include "depthwise.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lkconv compiled kernels (CPU always, CUDA when built with nvcc)";
  m.def("cpu_forward", &lkconv::cpu::forward, "depthwise forward, CPU", py::arg("input"), py::arg("weight"),
        py::arg("bias"), py::arg("padding"), py::arg("channels_last"), py::arg("algorithm") = 0);
  m.def("cpu_backward_input", &lkconv::cpu::backward_input, "depthwise backward-input, CPU", py::arg("grad_output"),
        py::arg("weight"), py::arg("in_h"), py::arg("in_w"), py::arg("padding"), py::arg("channels_last"),
        py::arg("algorithm") = 0);
  m.def("cpu_backward_weight", &lkconv::cpu::backward_weight, "depthwise backward-weight, CPU",
        py::arg("grad_output"), py::arg("input"), py::arg("kh"), py::arg("kw"), py::arg("padding"));
  m.def("cpu_channels_read_in_place", &lkconv::cpu::channels_read_in_place,
        "whether the channel cores read a channels_last source in place for this filter width, map width, batch and "
        "distance between image rows in bytes", py::arg("kw"), py::arg("width"), py::arg("images"),
        py::arg("row_bytes"));
  m.def("cpu_prefers_channel_cores", &lkconv::cpu::prefers_channel_cores,
        "whether an automatic forward/backward-input runs on the channel-vectorised cores (else the plane cores) "
        "for this source layout, output width and filter width", py::arg("channels_last"), py::arg("out_width"),
        py::arg("kw"));
  m.def("cpu_fma_peak_gflops", &lkconv::cpu::fma_peak_gflops, "measured float32 FMA peak over torch's threads",
        py::arg("seconds") = 0.5);
  m.def("cpu_channel_lanes", [] { return lkconv::cpu::plane_kernels().lanes_f32; },
        "float32 channels per vector of the channel-vectorised cores (their channels_last weight gradient needs a "
        "multiple of it)");
  m.def("cpu_isa", [] { return std::string(lkconv::cpu::plane_kernels().isa); },
        "instruction set of the CPU kernels picked for this machine");
#if defined(__clang__)
  m.attr("cxx_compiler") = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  m.attr("cxx_compiler") = std::string("gcc ") + __VERSION__;
#else
  m.attr("cxx_compiler") = std::string("unknown");
#endif
#ifdef LKCONV_WITH_CUDA
  m.attr("with_cuda") = true;
  lkconv::cuda::bind(m);
#else
  m.attr("with_cuda") = false;
#endif
}
