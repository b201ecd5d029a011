// The CPU runner of the per-pixel (CUDA) math: the functions of local_correlation_math.h, i.e.
// exactly the code the CUDA kernels run, looped over the pixels with at::parallel_for. Slow; it
// exists so that CPU tests check the CUDA math (including its float16/bfloat16 paths).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../problem.h"
#include "kernels.h"

namespace lcblock::cpu {

std::tuple<at::Tensor, at::Tensor> pixelwise_forward(const at::Tensor& pattern,
                                                     const at::Tensor& content, int64_t kernel_size,
                                                     int64_t dilation, double scale) {
  const Inputs in(pattern, content);
  at::Tensor out = at::empty(content.sizes(), content.options());
  at::Tensor lse = at::empty({content.size(0), content.size(2), content.size(3)},
                             content.options().dtype(lse_dtype(content.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, content.scalar_type(), "local_correlation_pixelwise_forward", [&] {
        using lse_t = lse_scalar_t<scalar_t>;
        const auto prob = make_problem<scalar_t>(in, kernel_size, dilation, scale);
        const int64_t plane = prob.first.plane();
        scalar_t* y = out.mutable_data_ptr<scalar_t>();
        lse_t* l = lse.mutable_data_ptr<lse_t>();
        at::parallel_for(0, prob.batch * plane, 256, [&](int64_t first, int64_t last) {
          for (int64_t idx = first; idx < last; ++idx) {
            const int64_t b = idx / plane;
            forward_pixel<kChannelChunk>(prob.image(b), idx % plane,
                                         y + b * prob.first.content_channels * plane,
                                         l + b * plane);
          }
        });
      });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> pixelwise_backward(const at::Tensor& grad_out,
                                                      const at::Tensor& pattern,
                                                      const at::Tensor& content,
                                                      const at::Tensor& out, const at::Tensor& lse,
                                                      int64_t kernel_size, int64_t dilation,
                                                      double scale) {
  const Inputs in(pattern, content);
  at::Tensor grad_pattern = at::empty(in.pattern.sizes(), in.pattern.options());
  at::Tensor grad_content = at::empty(in.content.sizes(), in.content.options());
  const at::Tensor dy = grad_out.contiguous(), y = out.contiguous(), l = lse.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, content.scalar_type(), "local_correlation_pixelwise_backward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        using lse_t = lse_scalar_t<scalar_t>;
        const auto prob = make_problem<scalar_t>(in, kernel_size, dilation, scale);
        const int64_t plane = prob.first.plane();
        const int64_t cp = prob.first.pattern_channels, cc = prob.first.content_channels;
        std::vector<acc_t> delta(prob.batch * plane);
        const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
        const scalar_t* yp = y.const_data_ptr<scalar_t>();
        at::parallel_for(0, prob.batch * plane, 256, [&](int64_t first, int64_t last) {
          for (int64_t idx = first; idx < last; ++idx) {
            const int64_t b = idx / plane;
            delta[idx] = pixel_delta<scalar_t, acc_t>(dyp + b * cc * plane, yp + b * cc * plane,
                                                      idx % plane, cc, plane);
          }
        });
        at::parallel_for(0, prob.batch * plane, 256, [&](int64_t first, int64_t last) {
          for (int64_t idx = first; idx < last; ++idx) {
            const int64_t b = idx / plane;
            const Grads<scalar_t, acc_t, lse_t> g{
                dyp + b * cc * plane, l.const_data_ptr<lse_t>() + b * plane,
                delta.data() + b * plane,
                grad_pattern.mutable_data_ptr<scalar_t>() + b * cp * plane,
                grad_content.mutable_data_ptr<scalar_t>() + b * cc * plane};
            backward_pixel<kChannelChunk>(prob.image(b), g, idx % plane);
          }
        });
      });
  return {grad_pattern, grad_content};
}

}  // namespace lcblock::cpu
