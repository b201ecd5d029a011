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

#include <algorithm>
#include <atomic>
#include <mutex>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "../tiled/tiled_host.h"

namespace lcblock {
namespace tiled {

// How the emulator orders the threads of a phase (docs/cuda.md, "The emulator"). Between two
// barriers a GPU runs a block's threads in no defined order, so results must not depend on it:
// tests run the same case in every order and require bitwise equal results.
enum class ThreadOrder : int { kAscending = 0, kReversed = 1, kShuffled = 2, kMixed = 3 };
static std::atomic<int> g_thread_order{static_cast<int>(ThreadOrder::kMixed)};

// Per block: which thread wrote each shared slot in the current phase (-1: none yet), and,
// for the bank model of the tests, optionally every store as (phase, thread, slot).
struct SmemTracker {
  const char* base = nullptr;
  int64_t elem_bytes = 0;
  int64_t block = 0;
  int64_t phase = 0;
  int thread = -1;
  std::vector<int> owner;
  std::vector<int64_t>* trace = nullptr;
};
static thread_local SmemTracker* t_tracker = nullptr;

// The emulator's side of smem_store (tiled_kernels.h): records the storing thread per slot.
void note_smem_store(const void* slot) {
  SmemTracker* tr = t_tracker;
  if (tr == nullptr || tr->thread < 0) return;
  const int64_t index = (static_cast<const char*>(slot) - tr->base) / tr->elem_bytes;
  TORCH_CHECK(index >= 0 && index < static_cast<int64_t>(tr->owner.size()),
              "tiled emulation: thread ", tr->thread, " stored outside shared memory (slot ", index,
              " of ", tr->owner.size(), ")");
  int& owner = tr->owner[index];
  TORCH_CHECK(owner < 0 || owner == tr->thread, "tiled emulation: threads ", owner, " and ",
              tr->thread, " both wrote shared slot ", index, " in phase ", tr->phase,
              " of block ", tr->block, " (a write-write race on the GPU)");
  owner = tr->thread;
  if (tr->trace) tr->trace->insert(tr->trace->end(), {tr->phase, tr->thread, index});
}

namespace {

// Executor of the block code on the CPU: one state per thread of the block, poisoned with
// 0xFF bytes (NaN in every float field) because GPU registers start undefined, so a state field
// read before it is written poisons the results. Each phase runs its threads in the order
// g_thread_order selects; kMixed rotates ascending, reversed and shuffled from phase to phase
// and block to block, so that every test meets all three.
template <class State>
struct HostExec {
  static_assert(std::is_trivially_copyable_v<State>, "per-thread state is registers");
  std::vector<State> st;
  std::vector<int> order;
  int64_t phase = 0;

  HostExec() : st(kThreads), order(kThreads) {
    std::memset(static_cast<void*>(st.data()), 0xFF, sizeof(State) * st.size());
  }

  template <class F>
  void run(F&& f) {
    SmemTracker* tr = t_tracker;
    const int64_t block = tr ? tr->block : 0;
    int mode = g_thread_order.load(std::memory_order_relaxed);
    if (mode == static_cast<int>(ThreadOrder::kMixed)) mode = static_cast<int>((block + phase) % 3);
    std::iota(order.begin(), order.end(), 0);
    if (mode == static_cast<int>(ThreadOrder::kReversed)) {
      std::reverse(order.begin(), order.end());
    } else if (mode == static_cast<int>(ThreadOrder::kShuffled)) {
      std::mt19937 rng(static_cast<uint32_t>(block * 7919 + phase * 104729 + 1));
      std::shuffle(order.begin(), order.end(), rng);
    }
    if (tr) {
      tr->phase = phase;
      std::fill(tr->owner.begin(), tr->owner.end(), -1);
    }
    for (const int t : order) {
      if (tr) tr->thread = t;
      f(t, st[t]);
    }
    if (tr) tr->thread = -1;
    ++phase;
  }
};

// Runs body(block, smem) for every block of the grid; smem is a fresh per-block buffer
// filled with NaN, so a read of shared memory that was not staged shows up in the results.
// g_trace, when set (_tiled_smem_trace), receives every shared store of block 0 only.
std::vector<int64_t>* g_trace = nullptr;

template <typename acc_t, typename Body>
void for_each_block(const Launch& launch, Body&& body) {
  std::vector<int64_t>* trace = g_trace;
  const int64_t blocks = trace ? std::min<int64_t>(launch.blocks, 1) : launch.blocks;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> smem(kSmemElems);
    SmemTracker tracker;
    tracker.base = reinterpret_cast<const char*>(smem.data());
    tracker.elem_bytes = sizeof(acc_t);
    tracker.owner.assign(kSmemElems, -1);
    tracker.trace = trace;
    t_tracker = &tracker;
    for (int64_t block = begin; block < end; ++block) {
      std::fill(smem.begin(), smem.end(), std::numeric_limits<acc_t>::quiet_NaN());
      tracker.block = block;
      body(static_cast<int>(block), smem.data());
    }
    t_tracker = nullptr;
  });
}

struct EmulatedBackend {
  struct Guard {  // the CPU needs no device guard
    explicit Guard(c10::Device) {}
  };
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
      grad_pattern_block<HostExec, kPatternGroup, pattern_out<scalar_t>()>(a, block, smem);
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

// Sets the thread order of the emulator's phases (ThreadOrder: 0 ascending, 1 reversed,
// 2 shuffled, 3 mixed, the default) for the whole process; returns the previous one.
int64_t tiled_emulation_order(int64_t order) {
  TORCH_CHECK(order >= 0 && order <= 3,
              "_tiled_emulation_order: order must be 0 (ascending), 1 (reversed), 2 (shuffled) or "
              "3 (mixed), got ",
              order);
  return g_thread_order.exchange(static_cast<int>(order));
}

// Every shared-memory store of block 0 of the forward, as rows (phase, thread, slot) in the
// order the threads issue them: the tests' bank-conflict model reads it, so that the model
// uses the kernel's own indexing (stage_region, stage_pixel) rather than a copy of it.
at::Tensor tiled_smem_trace(const at::Tensor& pattern, const at::Tensor& content,
                            int64_t kernel_size, int64_t dilation) {
  static std::mutex lock;
  const std::lock_guard<std::mutex> hold(lock);
  const int previous = g_thread_order.exchange(static_cast<int>(ThreadOrder::kAscending));
  std::vector<int64_t> trace;
  g_trace = &trace;
  try {
    tiled_forward<EmulatedBackend>(pattern, content, kernel_size, dilation, 1.0);
  } catch (...) {
    g_trace = nullptr;
    g_thread_order.store(previous);
    throw;
  }
  g_trace = nullptr;
  g_thread_order.store(previous);
  const int64_t rows = static_cast<int64_t>(trace.size()) / 3;
  return at::from_blob(trace.data(), {rows, 3}, at::kLong).clone();
}

// The launch configuration, for tests that pick shapes around tile and region boundaries:
// (tile_h, tile_w, threads, stage_channels, max_region_cols, gather_group, gather_out,
//  pattern_group, pattern_out, shared_bytes_float32, pattern_out_float64, plane,
//  gather_barriers, pattern_barriers, pattern_barriers_float64, delta_barriers).
std::vector<int64_t> tiled_config() {
  return {kTileH,
          kTileW,
          kThreads,
          kStage,
          kMaxCols,
          kGatherGroup,
          kGatherOut,
          kPatternGroup,
          kPatternOut,
          static_cast<int64_t>(kSmemElems * sizeof(float)),
          kPatternOutDouble,
          kPlane,
          gather_barriers(kGatherOut),
          pattern_barriers(kPatternOut),
          pattern_barriers(kPatternOutDouble),
          kDeltaBarriers};
}

}  // namespace
}  // namespace tiled

TORCH_LIBRARY_IMPL(lcblock_cuda, CPU, m) {
  m.impl("_tiled_forward", &tiled::tiled_forward_cpu);
  m.impl("_tiled_backward", &tiled::tiled_backward_cpu);
}

TORCH_LIBRARY_FRAGMENT(lcblock_cuda, m) {
  m.def("_tiled_config() -> int[]", &tiled::tiled_config);
  m.def("_tiled_emulation_order(int order) -> int", &tiled::tiled_emulation_order);
  m.def("_tiled_smem_trace(Tensor pattern, Tensor content, int kernel_size, int dilation) -> Tensor",
        &tiled::tiled_smem_trace);
}

}  // namespace lcblock
