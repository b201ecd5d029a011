// Host side of the tiled kernels, shared by the CUDA entry points and the CPU emulation ops:
// argument checks, output allocation (layout rule), Args, launch configuration and dtype
// dispatch. `Backend` runs the four block functions of tiled_kernels.h over a Launch: the CUDA
// launcher as kernels, the emulator block by block, so both get exactly the same configuration.
// Every entry point: check → Backend::Guard (the CUDA device guard) → allocate → return early
// if empty → dispatch → launch on the current stream (STYLE.md, torchvision csrc/ops order).
//
// Layout rule (README, "CUDA kernels"; the CPU op and the Python fake kernels follow the same
// rule): inputs are read in place through their strides, never copied; out and grad_content
// take content's memory format (checks.h, layout_of), grad_pattern takes pattern's, lse is
// always a contiguous (B, H, W) tensor.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <type_traits>

#include "../checks.h"
#include "tiled_kernels.h"

namespace lcblock {
namespace tiled {

template <typename scalar_t>
using lse_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename scalar_t>
using ArgsOf = Args<scalar_t, at::opmath_type<scalar_t>, lse_type<scalar_t>>;

template <typename T>
Strided<T> strided(const at::Tensor& t) {
  using U = std::remove_const_t<T>;
  return {reinterpret_cast<T*>(t.data_ptr<U>()), t.stride(0), t.stride(1), t.stride(2),
          t.stride(3)};
}

// The Args fields common to every kernel; the radius and dilation are clamped to the image
// (offsets beyond it select nothing), so that they fit the kernels' 32-bit index math.
// `channels` outputs per pixel, out_per_pass per block: the kernel's G and OUT.
template <typename scalar_t>
ArgsOf<scalar_t> base_args(const at::Tensor& pattern, const at::Tensor& content,
                           int64_t kernel_size, int64_t dilation, double scale, int max_group,
                           int64_t channels, int out_per_pass, Launch& launch) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t height = content.size(2), width = content.size(3);
  TORCH_CHECK(height <= std::numeric_limits<int>::max() / 2 &&
                  width <= std::numeric_limits<int>::max() / 2 &&
                  pattern.size(1) <= std::numeric_limits<int>::max() &&
                  content.size(1) <= std::numeric_limits<int>::max(),
              "local_correlation: the tiled kernels need height, width and channels below 2^30, "
              "got pattern ",
              pattern.sizes(), " and content ", content.sizes());
  const int64_t extent = std::max<int64_t>(1, std::max(height, width));
  const int64_t radius = std::min<int64_t>(kernel_size / 2, extent);
  const int64_t dil = std::min<int64_t>(dilation, extent);
  launch =
      make_launch(content.size(0), height, width, radius, dil, max_group, channels, out_per_pass);
  ArgsOf<scalar_t> a{};
  a.pattern = strided<const scalar_t>(pattern);
  a.content = strided<const scalar_t>(content);
  a.batch = static_cast<int>(content.size(0));
  a.height = static_cast<int>(height);
  a.width = static_cast<int>(width);
  a.radius = static_cast<int>(radius);
  a.dilation = static_cast<int>(dil);
  a.pattern_channels = static_cast<int>(pattern.size(1));
  a.content_channels = static_cast<int>(content.size(1));
  a.scale = static_cast<acc_t>(scale);
  a.tiles_h = launch.tiles_h;
  a.tiles_w = launch.tiles_w;
  a.passes = launch.passes;
  a.group = launch.group;
  a.cols = launch.cols;
  return a;
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor> tiled_forward(const at::Tensor& pattern,
                                                 const at::Tensor& content, int64_t kernel_size,
                                                 int64_t dilation, double scale) {
  check_pair(pattern, content, kernel_size, dilation, scale);
  // After the checks, so that mixed devices get check_pair's message (docs/cuda.md, "Entry
  // points"); the emulator's Guard does nothing.
  const typename Backend::Guard device_guard(content.device());
  kernel_size = effective_kernel_size(kernel_size, dilation, content.size(2), content.size(3));
  at::Tensor out = empty_in_layout_of(content);
  at::Tensor lse = at::empty({content.size(0), content.size(2), content.size(3)},
                             content.options().dtype(lse_dtype(content.scalar_type())));
  if (lse.numel() == 0) return {out, lse};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, content.scalar_type(), "local_correlation_forward_tiled", [&] {
        Launch launch;
        auto a = base_args<scalar_t>(pattern, content, kernel_size, dilation, scale, kGatherGroup,
                                     content.size(1), kGatherOut, launch);
        a.dst = strided<scalar_t>(out);
        a.lse_out = lse.mutable_data_ptr<lse_type<scalar_t>>();
        Backend::template forward<scalar_t>(a, launch);
      });
  return {out, lse};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor> tiled_backward(const at::Tensor& grad_out,
                                                  const at::Tensor& pattern,
                                                  const at::Tensor& content, const at::Tensor& out,
                                                  const at::Tensor& lse_in, int64_t kernel_size,
                                                  int64_t dilation, double scale) {
  check_backward(grad_out, pattern, content, out, lse_in, kernel_size, dilation, scale);
  const typename Backend::Guard device_guard(content.device());
  kernel_size = effective_kernel_size(kernel_size, dilation, content.size(2), content.size(3));
  at::Tensor grad_pattern = empty_in_layout_of(pattern);
  at::Tensor grad_content = empty_in_layout_of(content);
  if (lse_in.numel() == 0) return {grad_pattern, grad_content};
  const at::Tensor lse = lse_in.contiguous();  // (B, H, W): a copy only if it was strided
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, content.scalar_type(), "local_correlation_backward_tiled", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        at::Tensor delta =
            at::empty(lse.sizes(), lse.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        Launch delta_launch;  // one thread per pixel, one pass
        auto da = base_args<scalar_t>(pattern, content, kernel_size, dilation, scale, 1, 1, 1,
                                      delta_launch);
        da.grad_out = strided<const scalar_t>(grad_out);
        da.out = strided<const scalar_t>(out);
        da.delta_out = delta.mutable_data_ptr<acc_t>();
        Backend::template delta<scalar_t>(da, delta_launch);
        Launch launch;
        auto a = base_args<scalar_t>(pattern, content, kernel_size, dilation, scale, kGatherGroup,
                                     content.size(1), kGatherOut, launch);
        a.grad_out = da.grad_out;
        a.lse = lse.const_data_ptr<lse_type<scalar_t>>();
        a.dst = strided<scalar_t>(grad_content);
        Backend::template grad_content<scalar_t>(a, launch);
        Launch pattern_launch;
        auto pa = base_args<scalar_t>(pattern, content, kernel_size, dilation, scale, kPatternGroup,
                                      pattern.size(1), pattern_out<scalar_t>(), pattern_launch);
        pa.grad_out = a.grad_out;
        pa.lse = a.lse;
        pa.delta = delta.const_data_ptr<acc_t>();
        pa.dst = strided<scalar_t>(grad_pattern);
        Backend::template grad_pattern<scalar_t>(pa, pattern_launch);
      });
  return {grad_pattern, grad_content};
}

}  // namespace tiled
}  // namespace lcblock
