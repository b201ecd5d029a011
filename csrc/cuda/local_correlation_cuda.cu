// CUDA kernels of the local correlation op: thin launchers around the per-pixel functions of
// local_correlation_math.h, which the CPU "_pixelwise" ops run too (so CPU tests check the
// math these kernels execute).
//
// Every entry point follows one order: check → device guard → allocate → return early if
// empty → current stream → dispatch (float, double, half, bfloat16; half and bfloat16
// accumulate in float) → launch → C10_CUDA_KERNEL_LAUNCH_CHECK().
//
// Reads go through the read-only data cache: consecutive threads take consecutive pixels of a
// row, so every channel read of a warp is one coalesced segment, and the k² window reuse is
// served by L1/L2. A shared-memory halo tile was not added: no GPU was available to measure
// whether it pays against the cached reads (see README, "CUDA").
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "../problem.h"

namespace lcblock {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t work) {
  // Grid-stride loops below, so the grid may be capped; 2^20 blocks keep every SM busy.
  return std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, 1 << 20));
}

template <typename scalar_t>
using lse_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Thread mapping: one thread per output pixel (b, h, w) of the batch, grid-stride.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(Problem<scalar_t, at::opmath_type<scalar_t>> prob, scalar_t* __restrict__ out,
                   lse_type<scalar_t>* __restrict__ lse) {
  const int64_t plane = prob.first.plane();
  const int64_t total = prob.batch * plane;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t b = idx / plane;
    forward_pixel<kChannelChunk>(prob.image(b), idx - b * plane,
                                 out + b * prob.first.content_channels * plane, lse + b * plane);
  }
}

// Thread mapping: one thread per pixel (b, h, w): D = <dy, y> there.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    delta_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ out,
                 int64_t batch, int64_t channels, int64_t plane,
                 at::opmath_type<scalar_t>* __restrict__ delta) {
  const int64_t total = batch * plane;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t b = idx / plane;
    const int64_t offset = b * channels * plane;
    delta[idx] = pixel_delta<scalar_t, at::opmath_type<scalar_t>>(
        grad_out + offset, out + offset, idx - b * plane, channels, plane);
  }
}

// Thread mapping: one thread per input pixel (b, h, w): all channels of dx and dc there.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(Problem<scalar_t, at::opmath_type<scalar_t>> prob,
                    const scalar_t* __restrict__ grad_out,
                    const lse_type<scalar_t>* __restrict__ lse,
                    const at::opmath_type<scalar_t>* __restrict__ delta,
                    scalar_t* __restrict__ grad_pattern, scalar_t* __restrict__ grad_content) {
  const int64_t plane = prob.first.plane();
  const int64_t total = prob.batch * plane;
  const int64_t cp = prob.first.pattern_channels, cc = prob.first.content_channels;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t b = idx / plane;
    const Grads<scalar_t, at::opmath_type<scalar_t>, lse_type<scalar_t>> g{
        grad_out + b * cc * plane, lse + b * plane, delta + b * plane,
        grad_pattern + b * cp * plane, grad_content + b * cc * plane};
    backward_pixel<kChannelChunk>(prob.image(b), g, idx - b * plane);
  }
}

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& pattern,
                                                const at::Tensor& content, int64_t kernel_size,
                                                int64_t dilation, double scale) {
  check_pair(pattern, content, kernel_size, dilation, scale);
  const c10::cuda::CUDAGuard device_guard(content.device());
  const Inputs in(pattern, content);
  auto [out, lse] = empty_forward_outputs(content);
  if (lse.numel() == 0) return {out, lse};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, content.scalar_type(),
                                  "local_correlation_forward_cuda", [&] {
    const auto prob = make_problem<scalar_t>(in, kernel_size, dilation, scale);
    forward_kernel<scalar_t><<<blocks_for(lse.numel()), kThreads, 0, stream>>>(
        prob, out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<lse_type<scalar_t>>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_out,
                                                 const at::Tensor& pattern,
                                                 const at::Tensor& content, const at::Tensor& out,
                                                 const at::Tensor& lse, int64_t kernel_size,
                                                 int64_t dilation, double scale) {
  check_backward(grad_out, pattern, content, out, lse, kernel_size, dilation, scale);
  const c10::cuda::CUDAGuard device_guard(content.device());
  const Inputs in(pattern, content);
  at::Tensor grad_pattern = at::zeros(in.pattern.sizes(), in.pattern.options());
  at::Tensor grad_content = at::zeros(in.content.sizes(), in.content.options());
  if (lse.numel() == 0) return {grad_pattern, grad_content};
  const at::Tensor dy = grad_out.contiguous(), y = out.contiguous(), l = lse.contiguous();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, content.scalar_type(),
                                  "local_correlation_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto prob = make_problem<scalar_t>(in, kernel_size, dilation, scale);
    const int64_t plane = prob.first.plane();
    at::Tensor delta = at::empty(l.sizes(), l.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    delta_kernel<scalar_t><<<blocks_for(l.numel()), kThreads, 0, stream>>>(
        dy.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), prob.batch,
        prob.first.content_channels, plane, delta.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    backward_kernel<scalar_t><<<blocks_for(l.numel()), kThreads, 0, stream>>>(
        prob, dy.const_data_ptr<scalar_t>(), l.const_data_ptr<lse_type<scalar_t>>(),
        delta.const_data_ptr<acc_t>(), grad_pattern.mutable_data_ptr<scalar_t>(),
        grad_content.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_pattern, grad_content};
}

}  // namespace

TORCH_LIBRARY_IMPL(lcblock_cuda, CUDA, m) {
  m.impl("local_correlation_forward", &forward_cuda);
  m.impl("local_correlation_backward", &backward_cuda);
}

}  // namespace lcblock
