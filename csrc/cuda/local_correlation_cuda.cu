// CUDA kernels of the local correlation op: launchers around the block code of
// csrc/tiled/tiled_kernels.h, which the CPU ops `_tiled_forward/_tiled_backward` run too
// (csrc/cpu/tiled_emulation.cpp), thread by thread between the barriers, with the same launch
// configuration (csrc/tiled/tiled_host.h). So the CPU tests check the tile indexing, halo
// loads, channel chunks and masking these kernels execute.
//
// Every entry point follows one order: check → device guard → allocate (outputs in the inputs'
// memory formats) → return early if empty → dispatch (float, double, half, bfloat16; half and
// bfloat16 accumulate in float) → launch on the current stream → C10_CUDA_KERNEL_LAUNCH_CHECK()
// (csrc/tiled/tiled_host.h).
//
// Budget (README, "CUDA kernels"; tests/test_cuda_resources.py): 256-thread blocks, at most
// 64 registers per thread (__launch_bounds__(256, 4)), no local memory and ~21 KB of static
// shared memory, i.e. 4 blocks = 32 of 64 warps (50 % theoretical occupancy) on sm_80 and sm_90.
// float64 is outside the budget: it gets 2 blocks per SM (128 registers), and no kernel of any
// dtype uses a stack frame or local memory on any built arch (grad_pattern<double> keeps 8
// output channels per pass for that, tiled_kernels.h, kPatternOutDouble).
// Design notes and the resource table: README, "CUDA kernels"; how this is checked without a
// GPU: docs/DESIGN.md, "CUDA builds without a GPU".
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../tiled/tiled_host.h"

namespace lcblock {
namespace tiled {
namespace {

// Executor of the block code on the GPU: the calling thread's state lives in registers and
// every phase ends with a block barrier.
template <class State>
struct DeviceExec {
  State st;

  template <class F>
  LC_HD void run(F&& f) {
#ifdef __CUDA_ARCH__
    f(static_cast<int>(threadIdx.x), st);
    __syncthreads();
#endif
  }
};

__device__ __forceinline__ int block_index() { return static_cast<int>(blockIdx.x); }

template <typename scalar_t>
constexpr int min_blocks() {
  return std::is_same_v<scalar_t, double> ? 2 : 4;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, min_blocks<scalar_t>())
    forward_kernel(const ArgsOf<scalar_t> args) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t smem[kSmemElems];
  gather_block<DeviceExec, kGatherGroup, kGatherOut, true>(args, block_index(), smem);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, min_blocks<scalar_t>())
    delta_kernel(const ArgsOf<scalar_t> args) {
  delta_block<DeviceExec>(args, block_index());
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, min_blocks<scalar_t>())
    grad_content_kernel(const ArgsOf<scalar_t> args) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t smem[kSmemElems];
  gather_block<DeviceExec, kGatherGroup, kGatherOut, false>(args, block_index(), smem);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, min_blocks<scalar_t>())
    grad_pattern_kernel(const ArgsOf<scalar_t> args) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t smem[kSmemElems];
  grad_pattern_block<DeviceExec, kPatternGroup, pattern_out<scalar_t>()>(args, block_index(), smem);
}

unsigned grid_of(const Launch& launch) {
  TORCH_CHECK(launch.blocks <= std::numeric_limits<int>::max(),
              "local_correlation: the input needs ", launch.blocks,
              " tiles, more than one CUDA grid holds (2^31 - 1)");
  return static_cast<unsigned>(launch.blocks);
}

struct CudaBackend {
  using Guard = c10::cuda::CUDAGuard;
  template <typename scalar_t>
  static void forward(const ArgsOf<scalar_t>& a, const Launch& l) {
    forward_kernel<scalar_t><<<grid_of(l), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename scalar_t>
  static void delta(const ArgsOf<scalar_t>& a, const Launch& l) {
    delta_kernel<scalar_t><<<grid_of(l), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename scalar_t>
  static void grad_content(const ArgsOf<scalar_t>& a, const Launch& l) {
    grad_content_kernel<scalar_t><<<grid_of(l), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename scalar_t>
  static void grad_pattern(const ArgsOf<scalar_t>& a, const Launch& l) {
    grad_pattern_kernel<scalar_t><<<grid_of(l), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& pattern,
                                                const at::Tensor& content, int64_t kernel_size,
                                                int64_t dilation, double scale) {
  return tiled_forward<CudaBackend>(pattern, content, kernel_size, dilation, scale);
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_out,
                                                 const at::Tensor& pattern,
                                                 const at::Tensor& content, const at::Tensor& out,
                                                 const at::Tensor& lse, int64_t kernel_size,
                                                 int64_t dilation, double scale) {
  return tiled_backward<CudaBackend>(grad_out, pattern, content, out, lse, kernel_size, dilation,
                                     scale);
}

}  // namespace
}  // namespace tiled

TORCH_LIBRARY_IMPL(lcblock_cuda, CUDA, m) {
  m.impl("local_correlation_forward", &tiled::forward_cuda);
  m.impl("local_correlation_backward", &tiled::backward_cuda);
}

}  // namespace lcblock
