// The CPU computations behind the entry points of ops.cpp. Arguments are validated, the
// kernel size clamped (checks.h, effective_kernel_size), the dtype float32 or float64 (or any
// floating type for the pixelwise runner), and the outputs allocated by the caller in the layout
// rule's format (checks.h, layout_of).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

namespace lcblock::cpu {

// The row-vectorised kernels users run (forward.cpp, backward.cpp). Every tensor is NCHW- or
// NHWC-contiguous (rows.h, dense), each in its own layout; lse is a contiguous (B, H, W).
void forward_rows(const at::Tensor& pattern, const at::Tensor& content, at::Tensor& out,
                  at::Tensor& lse, int64_t kernel_size, int64_t dilation, double scale);
void backward_rows(const at::Tensor& grad_out, const at::Tensor& pattern, const at::Tensor& content,
                   const at::Tensor& out, const at::Tensor& lse, at::Tensor& grad_pattern,
                   at::Tensor& grad_content, int64_t kernel_size, int64_t dilation, double scale);

// The per-pixel functions of local_correlation_math.h (what the CUDA kernels run), looped over
// the pixels on the CPU (pixelwise.cpp). Slow; they exist so that tests exercise the CUDA math
// where no GPU is present. Return (out, lse) and (grad_pattern, grad_content), NCHW-contiguous.
std::tuple<at::Tensor, at::Tensor> pixelwise_forward(const at::Tensor& pattern,
                                                     const at::Tensor& content, int64_t kernel_size,
                                                     int64_t dilation, double scale);
std::tuple<at::Tensor, at::Tensor> pixelwise_backward(const at::Tensor& grad_out,
                                                      const at::Tensor& pattern,
                                                      const at::Tensor& content,
                                                      const at::Tensor& out, const at::Tensor& lse,
                                                      int64_t kernel_size, int64_t dilation,
                                                      double scale);

}  // namespace lcblock::cpu
