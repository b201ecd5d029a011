// CPU entry points of the local correlation ops and their registration. Every entry point
// follows one order: check → clamp the window to the image (checks.h, effective_kernel_size) →
// float16/bfloat16 computed in float32 → allocate the outputs in the layout rule's format
// (checks.h, layout_of) → return early when there is no pixel → run.
//
// Files of the CPU backend:
//   simd.h          vector types, exp/log, masked loads, transposes, group-size dispatch
//   rows.h          row-segment geometry, NCHW/NHWC addressing, the two row kernels
//   forward.cpp     the forward users run (logits once per pixel pair, softmax, gathers)
//   backward.cpp    the backward users run (gathers only, no atomics)
//   pixelwise.cpp   the per-pixel CUDA math run on the CPU, for tests
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "../checks.h"
#include "kernels.h"
#include "rows.h"

namespace lcblock::cpu {
namespace {

// float16 / bfloat16 on the CPU: computed in float32, results cast back.
bool is_reduced(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

at::Tensor to_float(const at::Tensor& t) { return t.to(at::kFloat); }

at::Tensor empty_lse(const at::Tensor& content) {
  return at::empty({content.size(0), content.size(2), content.size(3)},
                   content.options().dtype(lse_dtype(content.scalar_type())));
}

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& pattern, const at::Tensor& content,
                                               int64_t kernel_size, int64_t dilation,
                                               double scale) {
  check_pair(pattern, content, kernel_size, dilation, scale);
  kernel_size = effective_kernel_size(kernel_size, dilation, content.size(2), content.size(3));
  if (is_reduced(content)) {
    auto [out, lse] =
        forward_cpu(to_float(pattern), to_float(content), kernel_size, dilation, scale);
    return {out.to(content.scalar_type()), lse};
  }
  const at::Tensor p = dense(pattern), c = dense(content);
  at::Tensor out = empty_in_layout_of(c), lse = empty_lse(c);
  if (lse.numel() == 0) return {out, lse};
  forward_rows(p, c, out, lse, kernel_size, dilation, scale);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_out,
                                                const at::Tensor& pattern,
                                                const at::Tensor& content, const at::Tensor& out,
                                                const at::Tensor& lse, int64_t kernel_size,
                                                int64_t dilation, double scale) {
  check_backward(grad_out, pattern, content, out, lse, kernel_size, dilation, scale);
  kernel_size = effective_kernel_size(kernel_size, dilation, content.size(2), content.size(3));
  if (is_reduced(content)) {
    auto [gp, gc] = backward_cpu(to_float(grad_out), to_float(pattern), to_float(content),
                                 to_float(out), lse, kernel_size, dilation, scale);
    return {gp.to(pattern.scalar_type()), gc.to(content.scalar_type())};
  }
  const at::Tensor p = dense(pattern), c = dense(content);
  // Every element is written by the gathers (no accumulation), so no zero-fill.
  at::Tensor grad_pattern = empty_in_layout_of(p), grad_content = empty_in_layout_of(c);
  if (lse.numel() == 0) return {grad_pattern, grad_content};  // no pixels
  backward_rows(grad_out, p, c, out, lse.contiguous(), grad_pattern, grad_content, kernel_size,
                dilation, scale);
  return {grad_pattern, grad_content};
}

// The pixelwise runner computes NCHW; its outputs follow the layout rule as the others do.
std::tuple<at::Tensor, at::Tensor> pixelwise_forward_cpu(const at::Tensor& pattern,
                                                         const at::Tensor& content,
                                                         int64_t kernel_size, int64_t dilation,
                                                         double scale) {
  check_pair(pattern, content, kernel_size, dilation, scale);
  kernel_size = effective_kernel_size(kernel_size, dilation, content.size(2), content.size(3));
  auto [out, lse] = pixelwise_forward(pattern, content, kernel_size, dilation, scale);
  return {out.contiguous(layout_of(content)), lse};
}

std::tuple<at::Tensor, at::Tensor> pixelwise_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& pattern, const at::Tensor& content,
    const at::Tensor& out, const at::Tensor& lse, int64_t kernel_size, int64_t dilation,
    double scale) {
  check_backward(grad_out, pattern, content, out, lse, kernel_size, dilation, scale);
  kernel_size = effective_kernel_size(kernel_size, dilation, content.size(2), content.size(3));
  auto [gp, gc] =
      pixelwise_backward(grad_out, pattern, content, out, lse, kernel_size, dilation, scale);
  return {gp.contiguous(layout_of(pattern)), gc.contiguous(layout_of(content))};
}

}  // namespace

TORCH_LIBRARY_IMPL(lcblock_cuda, CPU, m) {
  m.impl("local_correlation_forward", &forward_cpu);
  m.impl("local_correlation_backward", &backward_cpu);
  m.impl("_pixelwise_forward", &pixelwise_forward_cpu);
  m.impl("_pixelwise_backward", &pixelwise_backward_cpu);
}

}  // namespace lcblock::cpu
