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
#include <cstring>
#include <mutex>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "../tiled/tiled_host.h"

namespace lcblock {
namespace tiled {

// How the emulator orders the threads of a phase (docs/cuda.md, "The emulator"). Between two
// barriers a GPU runs a block's threads in no defined order, so results must not depend on it:
// tests run the same case in every order and require bitwise equal results.
enum class ThreadOrder : int { kAscending = 0, kReversed = 1, kShuffled = 2, kMixed = 3 };
static std::atomic<int> g_thread_order{static_cast<int>(ThreadOrder::kMixed)};

// Per block: which thread wrote and which thread(s) read each shared slot in the current phase,
// and, for the tests' bank model and halo check, optionally every access of one block of each
// kernel as (kernel, phase, thread, kind, slot) with the value stored or loaded.
enum TraceKernel : int {
  kTraceForward = 0,
  kTraceDelta = 1,
  kTraceGradContent = 2,
  kTraceGradPattern = 3
};
constexpr int kNone = -1;  // no thread yet
constexpr int kMany = -2;  // several threads (readers only)

struct SmemTrace {
  int64_t block = 0;  // the block recorded, in every kernel
  std::vector<int64_t> rows;
  std::vector<double> values;
};

struct SmemTracker {
  const char* base = nullptr;
  int64_t elem_bytes = 0;
  int64_t kernel = 0;
  int64_t block = 0;
  int64_t phase = 0;
  int thread = -1;
  std::vector<int> writer;
  std::vector<int> reader;
  SmemTrace* trace = nullptr;  // set only while the traced block runs
};
static thread_local SmemTracker* t_tracker = nullptr;

namespace {

int64_t slot_index(const SmemTracker& tr, const void* slot, const char* what) {
  const int64_t index = (static_cast<const char*>(slot) - tr.base) / tr.elem_bytes;
  TORCH_CHECK(index >= 0 && index < static_cast<int64_t>(tr.writer.size()),
              "tiled emulation: thread ", tr.thread, " ", what, " outside shared memory (slot ",
              index, " of ", tr.writer.size(), ")");
  return index;
}

void record(const SmemTracker& tr, int64_t kind, int64_t index, const void* slot) {
  if (tr.trace == nullptr) return;
  tr.trace->rows.insert(tr.trace->rows.end(), {tr.kernel, tr.phase, tr.thread, kind, index});
  tr.trace->values.push_back(tr.elem_bytes == 4 ? double(*static_cast<const float*>(slot))
                                                : *static_cast<const double*>(slot));
}

}  // namespace

// The emulator's side of smem_store (tiled_kernels.h): a slot that another thread wrote or read
// in this phase is a race on the GPU (write-write, or write-after-read: a missing barrier).
void note_smem_store(const void* slot) {
  SmemTracker* tr = t_tracker;
  if (tr == nullptr || tr->thread < 0) return;
  const int64_t index = slot_index(*tr, slot, "stored");
  int& writer = tr->writer[index];
  TORCH_CHECK(writer == kNone || writer == tr->thread, "tiled emulation: threads ", writer, " and ",
              tr->thread, " both wrote shared slot ", index, " in phase ", tr->phase, " of block ",
              tr->block, " (a write-write race on the GPU)");
  const int reader = tr->reader[index];
  TORCH_CHECK(reader == kNone || reader == tr->thread, "tiled emulation: thread ", tr->thread,
              " wrote shared slot ", index, " that ",
              reader == kMany ? std::string("several threads") : "thread " + std::to_string(reader),
              " read in the same phase ", tr->phase, " of block ", tr->block,
              " (a write-after-read race on the GPU: a missing barrier)");
  writer = tr->thread;
  record(*tr, 0, index, slot);
}

// The emulator's side of smem_load: a slot that another thread wrote in this phase is a
// read-after-write race on the GPU (a missing barrier between a staging and a compute phase).
void note_smem_load(const void* slot) {
  SmemTracker* tr = t_tracker;
  if (tr == nullptr || tr->thread < 0) return;
  const int64_t index = slot_index(*tr, slot, "loaded");
  const int writer = tr->writer[index];
  TORCH_CHECK(writer == kNone || writer == tr->thread, "tiled emulation: thread ", tr->thread,
              " read shared slot ", index, " that thread ", writer, " wrote in the same phase ",
              tr->phase, " of block ", tr->block,
              " (a read-after-write race on the GPU: a missing barrier)");
  int& reader = tr->reader[index];
  reader = (reader == kNone || reader == tr->thread) ? tr->thread : kMany;
  record(*tr, 1, index, slot);
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
      std::fill(tr->writer.begin(), tr->writer.end(), kNone);
      std::fill(tr->reader.begin(), tr->reader.end(), kNone);
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
// g_trace, when set (_tiled_smem_trace), receives every shared access of its block.
SmemTrace* g_trace = nullptr;

template <typename acc_t, typename Body>
void for_each_block(int kernel, const Launch& launch, Body&& body) {
  SmemTrace* trace = g_trace;
  at::parallel_for(0, launch.blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> smem(kSmemElems);
    SmemTracker tracker;
    tracker.base = reinterpret_cast<const char*>(smem.data());
    tracker.elem_bytes = sizeof(acc_t);
    tracker.kernel = kernel;
    tracker.writer.assign(kSmemElems, kNone);
    tracker.reader.assign(kSmemElems, kNone);
    t_tracker = &tracker;
    for (int64_t block = begin; block < end; ++block) {
      std::fill(smem.begin(), smem.end(), std::numeric_limits<acc_t>::quiet_NaN());
      tracker.block = block;
      tracker.trace = trace != nullptr && trace->block == block ? trace : nullptr;
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
    for_each_block<acc_t>(kTraceForward, l, [&](int block, acc_t* smem) {
      gather_block<HostExec, kGatherGroup, kGatherOut, true>(a, block, smem);
    });
  }
  template <typename scalar_t>
  static void delta(const ArgsOf<scalar_t>& a, const Launch& l) {
    using acc_t = at::opmath_type<scalar_t>;
    for_each_block<acc_t>(kTraceDelta, l,
                          [&](int block, acc_t*) { delta_block<HostExec>(a, block); });
  }
  template <typename scalar_t>
  static void grad_content(const ArgsOf<scalar_t>& a, const Launch& l) {
    using acc_t = at::opmath_type<scalar_t>;
    for_each_block<acc_t>(kTraceGradContent, l, [&](int block, acc_t* smem) {
      gather_block<HostExec, kGatherGroup, kGatherOut, false>(a, block, smem);
    });
  }
  template <typename scalar_t>
  static void grad_pattern(const ArgsOf<scalar_t>& a, const Launch& l) {
    using acc_t = at::opmath_type<scalar_t>;
    for_each_block<acc_t>(kTraceGradPattern, l, [&](int block, acc_t* smem) {
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

// Every shared-memory access of one block (`block`, the same index in every kernel) of the
// forward and, when grad_out is given, of the backward (scale 1), in the order each thread
// issues them (threads run in ascending order): rows (kernel, phase, thread, kind, slot), kernel
// 0 forward, 2 grad_content, 3 grad_pattern (1, delta, uses no shared memory), kind 0 store
// and 1 load, slot in accumulation-type elements from the start of shared memory; and the value
// of each access. The tests' bank model and halo check read it, so that they use the kernels'
// own indexing (stage_region, stage_pixel, accumulate_*) rather than a copy of it.
std::tuple<at::Tensor, at::Tensor> tiled_smem_trace(const at::Tensor& pattern,
                                                    const at::Tensor& content,
                                                    const std::optional<at::Tensor>& grad_out,
                                                    int64_t kernel_size, int64_t dilation,
                                                    int64_t block) {
  TORCH_CHECK(block >= 0, "_tiled_smem_trace: block must be >= 0, got ", block);
  static std::mutex lock;
  const std::lock_guard<std::mutex> hold(lock);
  const int previous = g_thread_order.exchange(static_cast<int>(ThreadOrder::kAscending));
  SmemTrace trace;
  trace.block = block;
  g_trace = &trace;
  try {
    auto [out, lse] = tiled_forward<EmulatedBackend>(pattern, content, kernel_size, dilation, 1.0);
    if (grad_out.has_value()) {
      tiled_backward<EmulatedBackend>(*grad_out, pattern, content, out, lse, kernel_size, dilation,
                                      1.0);
    }
  } catch (...) {
    g_trace = nullptr;
    g_thread_order.store(previous);
    throw;
  }
  g_trace = nullptr;
  g_thread_order.store(previous);
  const int64_t rows = static_cast<int64_t>(trace.values.size());
  return {at::from_blob(trace.rows.data(), {rows, 5}, at::kLong).clone(),
          at::from_blob(trace.values.data(), {rows}, at::kDouble).clone()};
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
  m.def(
      "_tiled_smem_trace(Tensor pattern, Tensor content, Tensor? grad_out, int kernel_size, "
      "int dilation, int block=0) -> (Tensor, Tensor)",
      &tiled::tiled_smem_trace);
}

}  // namespace lcblock
