// Python bindings of DaTaSeg's multi-scale deformable attention kernel (extension dataseg._C).
// Argument checks live here so that the .cu file holds only the kernels and their launch.
#include <torch/extension.h>

#include <vector>

at::Tensor ms_deform_attn_cuda_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_loc,
                                       const at::Tensor& attn_weight);

std::vector<at::Tensor> ms_deform_attn_cuda_backward(const at::Tensor& value,
                                                     const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_loc,
                                                     const at::Tensor& attn_weight,
                                                     const at::Tensor& grad_output);

namespace {

void check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                  const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                  const at::Tensor& attn_weight) {
  const std::vector<std::pair<const char*, const at::Tensor*>> all = {
      {"value", &value},
      {"spatial_shapes", &spatial_shapes},
      {"level_start_index", &level_start_index},
      {"sampling_locations", &sampling_loc},
      {"attention_weights", &attn_weight}};
  for (const auto& kv : all) {
    TORCH_CHECK(kv.second->is_cuda(), "ms_deform_attn: ", kv.first, " must be a CUDA tensor");
    TORCH_CHECK(kv.second->is_contiguous(), "ms_deform_attn: ", kv.first,
                " must be contiguous");
    TORCH_CHECK(kv.second->device() == value.device(), "ms_deform_attn: ", kv.first,
                " is on ", kv.second->device(), " but value is on ", value.device());
  }
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong &&
                  level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes and level_start_index must be int64");
  TORCH_CHECK(sampling_loc.scalar_type() == value.scalar_type() &&
                  attn_weight.scalar_type() == value.scalar_type(),
              "ms_deform_attn: value, sampling_locations and attention_weights must share a "
              "dtype");
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must be (N, S, M, D)");
  TORCH_CHECK(sampling_loc.dim() == 6 && sampling_loc.size(5) == 2,
              "ms_deform_attn: sampling_locations must be (N, Lq, M, L, P, 2)");
  TORCH_CHECK(attn_weight.dim() == 5, "ms_deform_attn: attention_weights must be (N, Lq, M, L, P)");
  const int64_t n = value.size(0), m = value.size(2), l = spatial_shapes.size(0);
  TORCH_CHECK(sampling_loc.size(0) == n && sampling_loc.size(2) == m && sampling_loc.size(3) == l,
              "ms_deform_attn: sampling_locations does not match value / spatial_shapes");
  for (int i = 0; i < 5; ++i) {
    TORCH_CHECK(attn_weight.size(i) == sampling_loc.size(i),
                "ms_deform_attn: attention_weights does not match sampling_locations");
  }
}

at::Tensor forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                   const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                   const at::Tensor& attn_weight) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  return ms_deform_attn_cuda_forward(value, spatial_shapes, level_start_index, sampling_loc,
                                     attn_weight);
}

std::vector<at::Tensor> backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index,
                                 const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                 const at::Tensor& grad_output) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  TORCH_CHECK(grad_output.is_cuda() && grad_output.is_contiguous(),
              "ms_deform_attn: grad_output must be a contiguous CUDA tensor");
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == value.size(0) &&
                  grad_output.size(1) == sampling_loc.size(1) &&
                  grad_output.size(2) == value.size(2) * value.size(3),
              "ms_deform_attn: grad_output must be (N, Lq, M*D)");
  return ms_deform_attn_cuda_backward(value, spatial_shapes, level_start_index, sampling_loc,
                                      attn_weight, grad_output.to(value.scalar_type()));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "DaTaSeg CUDA kernels (multi-scale deformable attention)";
  m.def("ms_deform_attn_forward", &forward,
        "deformable attention forward: (value, spatial_shapes, level_start_index, "
        "sampling_locations, attention_weights) -> (N, Lq, M*D)");
  m.def("ms_deform_attn_backward", &backward,
        "deformable attention backward: (..., grad_output) -> [grad_value, "
        "grad_sampling_locations, grad_attention_weights]");
}
