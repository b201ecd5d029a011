// CPU emulation of the tiled CUDA kernels: the ops `_tiled_forward` and `_tiled_backward` run
// the block code of csrc/tiled/tiled_kernels.h with the CUDA launcher's configuration
// (csrc/tiled/tiled_host.h): for every block of the grid, every phase runs its kThreads
// threads one after the other, which is what the barrier after each phase guarantees on the
// GPU. Blocks are independent (no block reads what another writes), so they run in
// parallel. Not a public API: it exists so that CPU tests execute the GPU kernels' code
// (tile indexing, halo loads at the borders, channel chunks, masking, both layouts, float16 and
// bfloat16 storage), see tests/test_cuda_emulation.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../tiled/tiled_host.h"

namespace lcblock {
namespace tiled {
namespace {

// Executor of the block code on the CPU: one state per thread of the block.
template <class State>
struct HostExec {
  std::vector<State> st = std::vector<State>(kThreads);

  template <class F>
  void run(F&& f) {
    for (int t = 0; t < kThreads; ++t) f(t, st[t]);
  }
};

// Runs body(block, smem) for every block of the grid; smem is a fresh per-block buffer
// filled with NaN, so a read of shared memory that was not staged shows up in the results.
template <typename acc_t, typename Body>
void for_each_block(const Launch& launch, Body&& body) {
  at::parallel_for(0, launch.blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> smem(kSmemElems);
    for (int64_t block = begin; block < end; ++block) {
      std::fill(smem.begin(), smem.end(), std::numeric_limits<acc_t>::quiet_NaN());
      body(static_cast<int>(block), smem.data());
    }
  });
}

struct EmulatedBackend {
  template <typename scalar_t>
  static void forward(const ArgsOf<scalar_t>& a, const Launch& l) {
    using acc_t = at::opmath_type<scalar_t>;
    for_each_block<acc_t>(l, [&](int block, acc_t* smem) {
      gather_block<HostExec, kGatherGroup, kGatherOut, true>(a, block, smem);
    });
  }
  template <typename scalar_t>
  static void delta(const ArgsOf<scalar_t>& a, const Launch& l) {
    using acc_t = at::opmath_type<scalar_t>;
    for_each_block<acc_t>(l, [&](int block, acc_t*) { delta_block<HostExec>(a, block); });
  }
  template <typename scalar_t>
  static void grad_content(const ArgsOf<scalar_t>& a, const Launch& l) {
    using acc_t = at::opmath_type<scalar_t>;
    for_each_block<acc_t>(l, [&](int block, acc_t* smem) {
      gather_block<HostExec, kGatherGroup, kGatherOut, false>(a, block, smem);
    });
  }
  template <typename scalar_t>
  static void grad_pattern(const ArgsOf<scalar_t>& a, const Launch& l) {
    using acc_t = at::opmath_type<scalar_t>;
    for_each_block<acc_t>(l, [&](int block, acc_t* smem) {
      grad_pattern_block<HostExec, kPatternGroup, kPatternOut>(a, block, smem);
    });
  }
};

std::tuple<at::Tensor, at::Tensor> tiled_forward_cpu(const at::Tensor& pattern,
                                                     const at::Tensor& content, int64_t kernel_size,
                                                     int64_t dilation, double scale) {
  return tiled_forward<EmulatedBackend>(pattern, content, kernel_size, dilation, scale);
}

std::tuple<at::Tensor, at::Tensor> tiled_backward_cpu(const at::Tensor& grad_out,
                                                      const at::Tensor& pattern,
                                                      const at::Tensor& content,
                                                      const at::Tensor& out, const at::Tensor& lse,
                                                      int64_t kernel_size, int64_t dilation,
                                                      double scale) {
  return tiled_backward<EmulatedBackend>(grad_out, pattern, content, out, lse, kernel_size,
                                         dilation, scale);
}

// The launch configuration, for tests that pick shapes around tile and region boundaries:
// (tile_h, tile_w, threads, stage_channels, max_region_cols, gather_group, gather_out,
//  pattern_group, pattern_out, shared_bytes_float32).
std::vector<int64_t> tiled_config() {
  return {kTileH,      kTileW,
          kThreads,    kStage,
          kMaxCols,    kGatherGroup,
          kGatherOut,  kPatternGroup,
          kPatternOut, static_cast<int64_t>(kSmemElems * sizeof(float))};
}

}  // namespace
}  // namespace tiled

TORCH_LIBRARY_IMPL(lcblock_cuda, CPU, m) {
  m.impl("_tiled_forward", &tiled::tiled_forward_cpu);
  m.impl("_tiled_backward", &tiled::tiled_backward_cpu);
}

TORCH_LIBRARY_FRAGMENT(lcblock_cuda, m) { m.def("_tiled_config() -> int[]", &tiled::tiled_config); }

}  // namespace lcblock
