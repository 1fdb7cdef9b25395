// Host side of the CUDA kernels: argument checks (clear errors instead of illegal accesses), device guard,
// output allocation, and the Python bindings.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <torch/extension.h>

#include <limits>
#include <string>

#include "../depthwise.h"
#include "depthwise_cuda.cuh"

namespace lkconv {
namespace cuda {

// Defined in correlate_kernel.cu and wgrad_kernel.cu.
void correlate(const at::Tensor& src, const at::Tensor& weight, const at::Tensor* bias, at::Tensor& out, int off_t,
               int off_l, bool flip);
void weight_grad(const at::Tensor& grad_out, const at::Tensor& input, at::Tensor& grad_w, int pad_t, int pad_l);

DeviceLimits current_device_limits() {
  int device = 0, smem = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return {static_cast<size_t>(smem), sms};
}

namespace {

constexpr int kMaxKernel = 127;

void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(LKCONV_ON_DEVICE(t), "lkconv cuda: ", name, " must be a " LKCONV_DEVICE_KIND " tensor, got ",
              t.device());
  TORCH_CHECK(t.device() == like.device(), "lkconv cuda: ", name, " is on ", t.device(), " but expected ",
              like.device());
  TORCH_CHECK(t.dim() == 4, "lkconv cuda: ", name, " must be 4-D, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "lkconv cuda: ", name, " has dtype ", t.scalar_type(),
              " but expected ", like.scalar_type());
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
              "lkconv cuda: dtype must be float32, float16 or bfloat16, got ", st);
  // Indices inside the kernels are int (dims) and int64 (offsets); the dims must fit an int.
  for (int d = 0; d < 4; ++d)
    TORCH_CHECK(t.size(d) < std::numeric_limits<int>::max(), "lkconv cuda: ", name, " dimension ", d,
                " is too large (", t.size(d), ")");
}

void check_filter(const at::Tensor& w, int64_t c) {
  TORCH_CHECK(w.size(0) == c && w.size(1) == 1, "lkconv cuda: depthwise weight must have shape (", c,
              ", 1, kh, kw), got ", w.sizes());
  TORCH_CHECK(w.size(2) >= 1 && w.size(3) >= 1 && w.size(2) <= kMaxKernel && w.size(3) <= kMaxKernel,
              "lkconv cuda: kernel ", w.size(2), "x", w.size(3), " outside 1..", kMaxKernel);
}

void check_padding(at::IntArrayRef padding) {
  TORCH_CHECK(padding.size() == 4, "lkconv cuda: padding must be (top, bottom, left, right), got ", padding);
  for (auto v : padding)
    TORCH_CHECK(v >= 0 && v < (1 << 20), "lkconv cuda: padding out of range: ", padding);
}

at::MemoryFormat memory_format(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// The kernels address tensors through strides, so any layout works; a tensor with overlapping or negative
// strides (e.g. an expanded gradient) is made dense once, in its own memory format.
at::Tensor dense(const at::Tensor& t) {
  if (t.is_non_overlapping_and_dense()) return t;
  return t.contiguous(t.suggest_memory_format());
}

int64_t out_len(int64_t in, int64_t k, int64_t before, int64_t after) { return in + before + after - k + 1; }

}  // namespace

at::Tensor forward(const at::Tensor& input_, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                   at::IntArrayRef padding, bool channels_last) {
  check_tensor(input_, "input", input_);
  check_tensor(weight, "weight", input_);
  check_filter(weight, input_.size(1));
  check_padding(padding);
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = dense(input_);
  const int64_t oh = out_len(input.size(2), weight.size(2), padding[0], padding[1]);
  const int64_t ow = out_len(input.size(3), weight.size(3), padding[2], padding[3]);
  TORCH_CHECK(oh > 0 && ow > 0, "lkconv cuda: output would be empty (", oh, "x", ow, ")");
  at::Tensor b;
  if (bias.has_value()) {
    b = bias->contiguous();
    TORCH_CHECK(LKCONV_ON_DEVICE(b) && b.device() == input.device() && b.scalar_type() == input.scalar_type(),
                "lkconv cuda: bias must be a ", input.scalar_type(), " tensor on ", input.device());
    TORCH_CHECK(b.dim() == 1 && b.size(0) == input.size(1), "lkconv cuda: bias must have shape (", input.size(1),
                "), got ", b.sizes());
  }
  auto out = at::empty({input.size(0), input.size(1), oh, ow}, input.options(), memory_format(channels_last));
  if (out.numel() == 0) return out;
  correlate(input, weight, b.defined() ? &b : nullptr, out, static_cast<int>(padding[0]),
            static_cast<int>(padding[2]), /*flip=*/false);
  return out;
}

at::Tensor backward_input(const at::Tensor& grad_out_, const at::Tensor& weight, int64_t in_h, int64_t in_w,
                          at::IntArrayRef padding, bool channels_last) {
  check_tensor(grad_out_, "grad_output", grad_out_);
  check_tensor(weight, "weight", grad_out_);
  check_filter(weight, grad_out_.size(1));
  check_padding(padding);
  const c10::cuda::CUDAGuard guard(grad_out_.device());
  const at::Tensor grad_out = dense(grad_out_);
  const int64_t kh = weight.size(2), kw = weight.size(3);
  TORCH_CHECK(out_len(in_h, kh, padding[0], padding[1]) == grad_out.size(2) &&
                  out_len(in_w, kw, padding[2], padding[3]) == grad_out.size(3),
              "lkconv cuda: grad_output shape ", grad_out.sizes(), " does not match input size ", in_h, "x", in_w);
  auto grad_in = at::empty({grad_out.size(0), grad_out.size(1), in_h, in_w}, grad_out.options(),
                           memory_format(channels_last));
  if (grad_in.numel() == 0) return grad_in;
  correlate(grad_out, weight, nullptr, grad_in, static_cast<int>(kh - 1 - padding[0]),
            static_cast<int>(kw - 1 - padding[2]), /*flip=*/true);
  return grad_in;
}

at::Tensor backward_weight(const at::Tensor& grad_out_, const at::Tensor& input_, int64_t kh, int64_t kw,
                           at::IntArrayRef padding, bool deterministic) {
  // The kernels are deterministic by construction (fixed-order reductions, no atomics); the flag is accepted
  // so callers can state the requirement.
  (void)deterministic;
  check_tensor(grad_out_, "grad_output", grad_out_);
  check_tensor(input_, "input", grad_out_);
  check_padding(padding);
  TORCH_CHECK(kh >= 1 && kw >= 1 && kh <= kMaxKernel && kw <= kMaxKernel, "lkconv cuda: kernel ", kh, "x", kw,
              " outside 1..", kMaxKernel);
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor grad_out = dense(grad_out_), input = dense(input_);
  TORCH_CHECK(grad_out.size(0) == input.size(0) && grad_out.size(1) == input.size(1) &&
                  out_len(input.size(2), kh, padding[0], padding[1]) == grad_out.size(2) &&
                  out_len(input.size(3), kw, padding[2], padding[3]) == grad_out.size(3),
              "lkconv cuda: grad_output shape ", grad_out.sizes(), " does not match input shape ", input.sizes());
  auto grad_w = at::zeros({input.size(1), 1, kh, kw}, input.options());
  if (input.numel() == 0) return grad_w;  // no channels, images or pixels: nothing to sum
  weight_grad(grad_out, input, grad_w, static_cast<int>(padding[0]), static_cast<int>(padding[2]));
  return grad_w;
}

// The tile configuration of a pass of a (stride 1) call on this GPU, or why none fits: the launchers' own
// choice, evaluated without launching, so the Python backend refuses what would fail mid-call.
TileConfig tile_config(const std::string& pass, int64_t h, int64_t w, int64_t kh, int64_t kw,
                       at::IntArrayRef padding, bool channels_last, int64_t element_size, int64_t batch) {
  TORCH_CHECK(element_size == 2 || element_size == 4, "lkconv cuda: element size ", element_size, " not 2 or 4");
  check_padding(padding);
  TORCH_CHECK(kh >= 1 && kw >= 1 && kh <= kMaxKernel && kw <= kMaxKernel, "lkconv cuda: kernel ", kh, "x", kw,
              " outside 1..", kMaxKernel);
  TORCH_CHECK(h >= 1 && w >= 1 && h < (1 << 30) && w < (1 << 30), "lkconv cuda: map size ", h, "x", w);
  const int64_t oh = out_len(h, kh, padding[0], padding[1]), ow = out_len(w, kw, padding[2], padding[3]);
  if (oh < 1 || ow < 1) return {};
  const int es = static_cast<int>(element_size);
  // The batch decides between the dense kernels and the tile kernels (and the weight gradient's images per
  // tile), so the backend passes the call's own; without one (0) the configuration assumes images enough.
  TORCH_CHECK(batch >= 0 && batch < (1 << 30), "lkconv cuda: batch ", batch);
  const int n = batch ? static_cast<int>(batch) : 1 << 20;
  if (pass == "forward")
    return correlate_tile_config(n, h, w, oh, ow, kh, kw, padding[0], padding[2], channels_last, es);
  if (pass == "backward_input")
    return correlate_tile_config(n, oh, ow, h, w, kh, kw, kh - 1 - padding[0], kw - 1 - padding[2], channels_last,
                                 es);
  if (pass == "backward_weight")
    return weight_grad_tile_config(n, h, w, oh, ow, kh, kw, padding[0], padding[2]);
  TORCH_CHECK(false, "lkconv cuda: unknown pass ", pass);
}

pybind11::dict tile_config_dict(const std::string& pass, int64_t h, int64_t w, int64_t kh, int64_t kw,
                                at::IntArrayRef padding, bool channels_last, int64_t element_size, int64_t batch) {
  namespace py = pybind11;
  const TileConfig c = tile_config(pass, h, w, kh, kw, padding, channels_last, element_size, batch);
  py::dict d;
  d["kernel"] = c.kernel;
  d["refusal"] = c.refusal;
  d["smem"] = c.smem;
  d["threads"] = c.threads;
  d["useful_taps"] = py::make_tuple(c.khc, c.kwc);
  if (c.kernel == "correlate_kernel") {
    d["tile_w"] = c.a, d["rows_per_thread"] = c.b, d["planes"] = c.c, d["thread_rows"] = c.d;
  } else if (c.kernel == "wgrad_kernel") {
    d["tile_h"] = c.a, d["images"] = c.b, d["tile_w"] = c.c, d["taps_padded"] = py::make_tuple(c.khp, c.kwp);
  } else if (c.kernel == "correlate_dense_kernel") {
    d["block_cols"] = c.a, d["images"] = c.b, d["channels"] = c.c;
  } else if (c.kernel == "wgrad_dense_kernel") {
    d["block_cols"] = c.a, d["images"] = c.b, d["blocks_per_row"] = c.c, d["warps"] = c.d;
  }
  return d;
}

void bind(pybind11::module& m) {
  namespace py = pybind11;
  m.def("cuda_forward", &forward, "depthwise forward, CUDA", py::arg("input"), py::arg("weight"), py::arg("bias"),
        py::arg("padding"), py::arg("channels_last"));
  m.def("cuda_backward_input", &backward_input, "depthwise backward-input, CUDA", py::arg("grad_output"),
        py::arg("weight"), py::arg("in_h"), py::arg("in_w"), py::arg("padding"), py::arg("channels_last"));
  m.def("cuda_backward_weight", &backward_weight, "depthwise backward-weight, CUDA", py::arg("grad_output"),
        py::arg("input"), py::arg("kh"), py::arg("kw"), py::arg("padding"), py::arg("deterministic"));
  m.def("cuda_tile_config", &tile_config_dict,
        "the tile configuration a pass of a call gets on the current GPU, or why none fits (key 'refusal')",
        py::arg("pass_name"), py::arg("h"), py::arg("w"), py::arg("kh"), py::arg("kw"), py::arg("padding"),
        py::arg("channels_last"), py::arg("element_size") = 4, py::arg("batch") = 0);
  m.def("cuda_build_info", [] {
    return std::string("CUDA ") + std::to_string(CUDA_VERSION / 1000) + "." + std::to_string(CUDA_VERSION % 1000 / 10);
  });
}

}  // namespace cuda
}  // namespace lkconv
