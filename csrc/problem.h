// Host-side helpers that turn validated tensors into the plain structs of
// local_correlation_math.h. Shared by the CPU and CUDA entry points.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "checks.h"
#include "local_correlation_math.h"

namespace lcblock {

// Contiguous NCHW inputs of one call; keeps the (possibly copied) tensors alive.
struct Inputs {
  at::Tensor pattern;
  at::Tensor content;

  Inputs(const at::Tensor& p, const at::Tensor& c)
      : pattern(p.contiguous()), content(c.contiguous()) {}
};

template <typename scalar_t>
Problem<scalar_t, at::opmath_type<scalar_t>> make_problem(const Inputs& in, int64_t kernel_size,
                                                          int64_t dilation, double scale) {
  using acc_t = at::opmath_type<scalar_t>;
  Problem<scalar_t, acc_t> p;
  p.first.pattern = in.pattern.const_data_ptr<scalar_t>();
  p.first.content = in.content.const_data_ptr<scalar_t>();
  p.first.pattern_channels = in.pattern.size(1);
  p.first.content_channels = in.content.size(1);
  p.first.height = in.content.size(2);
  p.first.width = in.content.size(3);
  p.first.radius = kernel_size / 2;
  p.first.dilation = dilation;
  p.first.scale = static_cast<acc_t>(scale);
  p.batch = in.content.size(0);
  return p;
}

// Outputs of the forward: (out, lse), contiguous.
inline std::tuple<at::Tensor, at::Tensor> empty_forward_outputs(const at::Tensor& c) {
  return {
      at::empty(c.sizes(), c.options().memory_format(at::MemoryFormat::Contiguous)),
      at::empty({c.size(0), c.size(2), c.size(3)}, c.options().dtype(lse_dtype(c.scalar_type())))};
}

}  // namespace lcblock
