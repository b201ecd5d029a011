// Argument validation shared by every backend's entry points. Each message names the
// argument and its value, since a user can reach these through torch.ops directly.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace lcblock {

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

// The window must be describable in int64: its extent (kernel_size // 2) · dilation, the
// farthest a neighbour lies from its pixel. Anything within it is valid and then clamped by
// effective_kernel_size; a ValueError (Python) otherwise.
inline void check_window_extent(int64_t kernel_size, int64_t dilation) {
  TORCH_CHECK_VALUE(kernel_size / 2 <= kInt64Max / dilation,
                    "local_correlation: expected the window extent (kernel_size // 2) * dilation "
                    "<= 9223372036854775807 (int64), got kernel_size=",
                    kernel_size, ", dilation=", dilation);
}

// The kernel size that gives the identical result at the cost of the image, not of the window:
// offsets beyond max(H, W) − 1 can never fall inside the image, so the radius is clamped to
// (max(H, W) − 1) // dilation. Every entry point calls this after check_pair (docs/DESIGN.md,
// 'Border rule'); lcblock_cuda/_checks.py mirrors it for the Python entry.
inline int64_t effective_kernel_size(int64_t kernel_size, int64_t dilation, int64_t height,
                                     int64_t width) {
  const int64_t reach = std::max<int64_t>(std::max(height, width) - 1, 0);
  return 2 * std::min(kernel_size / 2, reach / dilation) + 1;
}

// The layout rule of every output (CPU and CUDA alike): out and grad_content take content's
// layout, grad_pattern takes pattern's; channels_last when the tensor is channels_last-contiguous
// and not plain-contiguous, NCHW-contiguous otherwise. lse is always a contiguous (B, H, W)
// tensor. lcblock_cuda/ops.py's fake kernels apply the same rule.
inline at::MemoryFormat layout_of(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous()
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

// An uninitialised tensor shaped and laid out like `t` by the layout rule.
inline at::Tensor empty_in_layout_of(const at::Tensor& t) {
  return at::empty(t.sizes(), t.options().memory_format(layout_of(t)));
}

inline void check_pair(const at::Tensor& pattern, const at::Tensor& content, int64_t kernel_size,
                       int64_t dilation, double scale) {
  TORCH_CHECK(pattern.dim() == 4,
              "local_correlation: expected pattern to be 4-D (B, C, H, W), got ", pattern.dim(),
              "-D");
  TORCH_CHECK(content.dim() == 4,
              "local_correlation: expected content to be 4-D (B, C, H, W), got ", content.dim(),
              "-D");
  TORCH_CHECK(at::isFloatingType(pattern.scalar_type()),
              "local_correlation: expected pattern to have a floating-point dtype, got ",
              pattern.scalar_type());
  TORCH_CHECK(pattern.scalar_type() == content.scalar_type(),
              "local_correlation: expected pattern and content to have the same dtype, got ",
              pattern.scalar_type(), " and ", content.scalar_type());
  TORCH_CHECK(pattern.device() == content.device(),
              "local_correlation: expected pattern and content on the same device, got ",
              pattern.device(), " and ", content.device());
  TORCH_CHECK(pattern.size(0) == content.size(0) && pattern.size(2) == content.size(2) &&
                  pattern.size(3) == content.size(3),
              "local_correlation: expected pattern and content to share batch, height and width, "
              "got pattern ",
              pattern.sizes(), " and content ", content.sizes());
  TORCH_CHECK(kernel_size >= 1 && kernel_size % 2 == 1,
              "local_correlation: expected kernel_size to be an odd integer >= 1, got ",
              kernel_size);
  TORCH_CHECK(dilation >= 1, "local_correlation: expected dilation >= 1, got ", dilation);
  check_window_extent(kernel_size, dilation);
  TORCH_CHECK(std::isfinite(scale), "local_correlation: expected a finite scale, got ", scale);
}

// The one home of the log-sum-exp dtype rule (Python: lcblock_cuda/_checks.py, lse_dtype):
// float64 for float64 inputs (so float64 gradcheck is exact), float32 otherwise (float32,
// float16, bfloat16 accumulate in float32). lse_scalar_t is the same rule at compile time.
template <typename scalar_t>
using lse_scalar_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
inline at::ScalarType lse_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_backward(const at::Tensor& grad_out, const at::Tensor& pattern,
                           const at::Tensor& content, const at::Tensor& out, const at::Tensor& lse,
                           int64_t kernel_size, int64_t dilation, double scale) {
  check_pair(pattern, content, kernel_size, dilation, scale);
  TORCH_CHECK(grad_out.sizes() == content.sizes(),
              "local_correlation_backward: expected grad_out of shape ", content.sizes(), ", got ",
              grad_out.sizes());
  TORCH_CHECK(out.sizes() == content.sizes(), "local_correlation_backward: expected out of shape ",
              content.sizes(), ", got ", out.sizes());
  TORCH_CHECK(
      grad_out.scalar_type() == content.scalar_type() && out.scalar_type() == content.scalar_type(),
      "local_correlation_backward: expected grad_out and out of dtype ", content.scalar_type(),
      ", got ", grad_out.scalar_type(), " and ", out.scalar_type());
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == content.size(0) && lse.size(1) == content.size(2) &&
                  lse.size(2) == content.size(3),
              "local_correlation_backward: expected lse of shape (B, H, W) = (", content.size(0),
              ", ", content.size(2), ", ", content.size(3), "), got ", lse.sizes());
  TORCH_CHECK(lse.scalar_type() == lse_dtype(content.scalar_type()),
              "local_correlation_backward: expected lse of dtype ",
              lse_dtype(content.scalar_type()), ", got ", lse.scalar_type());
  for (const at::Tensor* t : {&grad_out, &out, &lse}) {
    TORCH_CHECK(t->device() == content.device(),
                "local_correlation_backward: expected every tensor on ", content.device(),
                ", got one on ", t->device());
  }
}

}  // namespace lcblock
