// Block code of the tiled CUDA kernels, written once for two executors:
//   * the GPU (csrc/cuda/local_correlation_cuda.cu): one CUDA thread per "thread", the
//     per-thread state in registers, __syncthreads() after every phase;
//   * the CPU emulator (csrc/cpu/tiled_emulation.cpp): a loop over the threads of a block per
//     phase, one state struct per thread, so the barrier is the end of the loop.
// A kernel is a sequence of phases `ex.run([&](int t, State& st) { ... })`; every phase is
// followed by a block-wide barrier and the control flow between phases is block-uniform, so
// running the threads of one phase one after the other is exactly what the GPU computes.
// No warp shuffles, no atomics: every output element is written by one thread, from a fixed
// summation order, so results are bitwise deterministic (docs/DESIGN.md, "Gather-only
// backward").
//
// Tiling. A block owns a tile of kTileH × kTileW output pixels of one image (one thread per
// pixel). The window Ω is walked row of offsets by row of offsets a ∈ [-r, r]; each row is cut
// into groups of `group` consecutive column offsets b0 .. b0+group-1. For one group the block
// stages, channels in chunks of kStage, the "region" of the input that the group touches:
// kTileH rows × (kTileW + (group−1)·d) columns, from shared memory each thread reads its
// group's neighbours at columns tx + g·d. Each thread keeps `group` dot products (logits) in
// registers, and OUT output channels; outputs wider than OUT take several passes, one block
// each, that recompute the logits (LCNet's 9-36 channels: 1-3 passes). A pass always runs,
// even without output channels (the forward still writes lse, from pass 0). The window's rows
// and groups that miss the whole tile are skipped (block-uniform bounds from valid_offsets), so
// kernel sizes larger than the image cost what the clipped window costs.
//
// The weight formula and border rule come from local_correlation_math.h (valid_offsets,
// lc_exp/lc_log, softmax_rescale): a neighbour j of pixel i takes part iff its offset lies in
// valid_offsets' range for i; out-of-image pixels of a region are staged as zeros and never
// enter a sum.
//
// Layouts: every tensor is addressed through its own strides (Strided), so NCHW, NHWC
// (channels_last) and mixes of the two are read and written in place, without copies. The
// layout only decides the order in which a block's threads load a region: along columns for
// NCHW (a warp reads 32 consecutive pixels of one channel row), along channels for NHWC (a warp
// reads the kStage channels of consecutive pixels), so global loads are coalesced either way.
#pragma once

#include <cstdint>
#include <cstring>

#include "../local_correlation_math.h"

// Full unrolling of the fixed-size register loops (per-thread arrays must stay in registers).
#if defined(__CUDACC__)
#define LC_UNROLL _Pragma("unroll")
#define LC_NO_UNROLL _Pragma("unroll 1")
#else
#define LC_UNROLL
#define LC_NO_UNROLL
#endif

namespace lcblock {
namespace tiled {

constexpr int kTileH = 8;
constexpr int kTileW = 32;
constexpr int kThreads = kTileH * kTileW;
// Channels staged in shared memory per phase.
constexpr int kStage = 8;
// Widest region row: kTileW columns plus the (group−1)·d columns a group adds.
constexpr int kMaxCols = 64;
// Shared-memory plane of one staged channel, padded so that the NHWC scalar staging, whose
// warp stores the n channels of 32/n consecutive pixels (slot c·kPlane + pixel), hits 32
// different banks for n = 8 (channel c's pixels land in banks 12c mod 32 + 0..3) and at most 2
// lanes per bank for the tails n = 2..7; the NCHW and vector staging and the compute phases
// read or write consecutive slots of one plane, conflict-free whatever the padding
// (docs/cuda.md, "Shared-memory banks"; tests/test_cuda_emulation.py models the banks).
constexpr int kPlanePad = 12;
constexpr int kPlane = kTileH * kMaxCols + kPlanePad;
// Shared memory of a block, in accumulation-type elements: the region (kStage planes) and two
// per-pixel planes of the region (the lse and D of the neighbours, backward only).
constexpr int kSmemElems = kStage * kPlane + 2 * kTileH * kMaxCols;

// Window offsets per group and output channels per pass, per kernel. Chosen so that every
// float32/float16/bfloat16 kernel stays within 64 registers (README, "CUDA kernels").
constexpr int kGatherGroup = 7;  // forward and grad_content
constexpr int kGatherOut = 16;
constexpr int kPatternGroup = 4;  // grad_pattern: three per-neighbour sums per offset
constexpr int kPatternOut = 16;
// float64 grad_pattern: 16 double accumulators plus 3·G double sums do not fit the 128
// registers of 2 blocks per SM (sm_90 spilled 16 bytes to the stack); 8 per pass do, at the
// cost of recomputing the logits once more per 8 channels (docs/cuda.md, "Resources").
constexpr int kPatternOutDouble = 8;
template <typename scalar_t>
constexpr int pattern_out() {
  return sizeof(scalar_t) == 8 ? kPatternOutDouble : kPatternOut;
}

// Block barriers per kernel, one after every phase (DeviceExec::run), counted statically as
// the SASS holds them once the fixed-size loops are unrolled (tests/test_cuda_resources.py
// reads BAR.SYNC from the binary): the gather kernels run init, stage/compute of the logits,
// stage/compute of each of the OUT/kStage value chunks, and the store (4 + 2·chunks);
// grad_pattern runs init, the stage/compute pairs of the logits, <dy_i, c_j> and <dy_j, c_i>,
// the coefficients, OUT/kStage stage/compute pairs and the store (9 + 2·chunks).
constexpr int gather_barriers(int out) { return 4 + 2 * ((out + kStage - 1) / kStage); }
constexpr int pattern_barriers(int out) { return 9 + 2 * ((out + kStage - 1) / kStage); }
constexpr int kDeltaBarriers = 1;

// One tensor of shape (B, C, H, W) with arbitrary strides (in elements).
template <typename T>
struct Strided {
  T* ptr;
  int64_t sb, sc, sh, sw;

  LC_HD int64_t at(int64_t b, int64_t c, int64_t h, int64_t w) const {
    return b * sb + c * sc + h * sh + w * sw;
  }
  // Whether channels are the innermost dimension in memory (NHWC): decides the load order.
  LC_HD bool channels_inner() const {
    const int64_t ac = sc < 0 ? -sc : sc, aw = sw < 0 ? -sw : sw;
    return ac < aw;
  }
};

// Everything a kernel needs; fields a kernel does not use are null.
template <typename scalar_t, typename acc_t, typename lse_t>
struct Args {
  Strided<const scalar_t> pattern, content, grad_out, out;
  Strided<scalar_t> dst;  // out (forward), grad_pattern or grad_content
  const lse_t* lse;       // (B, H, W) contiguous, read by the backward kernels
  lse_t* lse_out;         // (B, H, W) contiguous, written by the forward
  const acc_t* delta;     // D, (B, H, W) contiguous, read by grad_pattern
  acc_t* delta_out;       // D, written by the delta kernel
  int batch, height, width, radius, dilation;
  int pattern_channels, content_channels;
  acc_t scale;
  int tiles_h, tiles_w;
  int passes;  // output-channel passes, one block each (OUT channels per pass)
  int group;   // window offsets per group, <= the kernel's G
  int cols;    // region columns: kTileW + (group − 1)·dilation <= kMaxCols
};

// Launch configuration shared by the CUDA launcher and the CPU emulator.
struct Launch {
  int tiles_h, tiles_w;
  int passes;      // ceil(channels / OUT), at least 1
  int64_t blocks;  // passes · batch · tiles_h · tiles_w, one 1-D grid
  int group, cols;
};

// A group holds at most max_group (the kernel's G) offsets, at most the window's width, and
// no more than fit in a kMaxCols-wide region at this dilation. The `channels` outputs of a
// pixel are computed out_per_pass at a time, each pass by its own block (the passes of a tile
// are independent), so small images still give the GPU enough blocks.
inline Launch make_launch(int64_t batch, int64_t height, int64_t width, int64_t radius,
                          int64_t dilation, int max_group, int64_t channels, int out_per_pass) {
  Launch l;
  l.tiles_h = static_cast<int>((height + kTileH - 1) / kTileH);
  l.tiles_w = static_cast<int>((width + kTileW - 1) / kTileW);
  l.passes =
      static_cast<int>(channels > out_per_pass ? (channels + out_per_pass - 1) / out_per_pass : 1);
  l.blocks = l.passes * batch * l.tiles_h * l.tiles_w;
  int64_t group = 1 + (kMaxCols - kTileW) / dilation;  // >= 1
  if (group > 2 * radius + 1) group = 2 * radius + 1;
  if (group > max_group) group = max_group;
  l.group = static_cast<int>(group);
  l.cols = kTileW + static_cast<int>((l.group - 1) * dilation);
  return l;
}

// Block-uniform facts of one tile: its image, origin and the union of its pixels' windows.
struct Tile {
  int pass, b, h0, w0;
  int a_lo, a_hi, b_lo, b_hi;
};

template <typename A>
LC_HD Tile tile_of(const A& args, int block) {
  Tile t;
  const int per_image = args.tiles_h * args.tiles_w;
  const int per_pass = args.batch * per_image;
  t.pass = block / per_pass;
  block -= t.pass * per_pass;
  t.b = block / per_image;
  const int rest = block - t.b * per_image;
  t.h0 = (rest / args.tiles_w) * kTileH;
  t.w0 = (rest % args.tiles_w) * kTileW;
  // Every pixel's range contains 0 and lo/hi fall with the position, so the union over the
  // tile is [lo(last row), hi(first row)] (same for columns).
  const int h_last = (t.h0 + kTileH < args.height ? t.h0 + kTileH : args.height) - 1;
  const int w_last = (t.w0 + kTileW < args.width ? t.w0 + kTileW : args.width) - 1;
  int unused;
  valid_offsets(h_last, args.height, args.radius, args.dilation, t.a_lo, unused);
  valid_offsets(t.h0, args.height, args.radius, args.dilation, unused, t.a_hi);
  valid_offsets(w_last, args.width, args.radius, args.dilation, t.b_lo, unused);
  valid_offsets(t.w0, args.width, args.radius, args.dilation, unused, t.b_hi);
  return t;
}

// The pixel of thread t and its own window range (empty when the pixel is outside the image).
struct Pixel {
  int h, w;
  int a_lo, a_hi, b_lo, b_hi;

  LC_HD bool inside() const { return a_lo <= a_hi; }
  LC_HD bool sees(int a, int b) const { return a >= a_lo && a <= a_hi && b >= b_lo && b <= b_hi; }
};

template <typename A>
LC_HD Pixel pixel_of(const A& args, const Tile& tile, int t) {
  Pixel p;
  p.h = tile.h0 + t / kTileW;
  p.w = tile.w0 + t % kTileW;
  if (p.h >= args.height || p.w >= args.width) {
    p.a_lo = p.b_lo = 1;
    p.a_hi = p.b_hi = 0;
    return p;
  }
  valid_offsets(p.h, args.height, args.radius, args.dilation, p.a_lo, p.a_hi);
  valid_offsets(p.w, args.width, args.radius, args.dilation, p.b_lo, p.b_hi);
  return p;
}

LC_HD int min3(int a, int b, int c) {
  const int ab = a < b ? a : b;
  return ab < c ? ab : c;
}

// Offset of thread t's neighbour g inside a region plane.
template <typename A>
LC_HD int region_index(const A& args, int t, int g) {
  return (t / kTileW) * args.cols + t % kTileW + g * args.dilation;
}

// Whether the kStage channels from c0 of every pixel of x are one aligned 16-byte multiple in
// memory (NHWC with a channel count that keeps pixels 16-byte aligned): then a thread stages a
// whole pixel with vector loads (float: two 16-byte loads, half/bfloat16: one).
template <typename scalar_t>
LC_HD bool pixels_are_vectors(const Strided<const scalar_t>& x, int c0) {
  constexpr int64_t bytes = sizeof(scalar_t);
  return x.sc == 1 && (kStage * bytes) % 16 == 0 && reinterpret_cast<uintptr_t>(x.ptr) % 16 == 0 &&
         (x.sb * bytes) % 16 == 0 && (x.sh * bytes) % 16 == 0 && (x.sw * bytes) % 16 == 0 &&
         (c0 * bytes) % 16 == 0;
}

#ifndef __CUDA_ARCH__
// The CPU emulator's record of shared-memory accesses (csrc/cpu/tiled_emulation.cpp).
void note_smem_store(const void* slot);
void note_smem_load(const void* slot);
#endif

// Every shared-memory access of the block code goes through smem_store / smem_load: on the GPU
// a plain store or load; on the CPU (the emulator) they also record which thread wrote or read
// which slot in the current phase, so that a slot that one thread writes and another thread
// writes or reads in the same phase is an error: a race on the GPU, i.e. a missing barrier
// (docs/cuda.md, "The emulator"). The bank model of tests/test_cuda_emulation.py reads the same
// record (_tiled_smem_trace).
template <typename acc_t>
LC_HD void smem_store(acc_t* slot, acc_t value) {
  *slot = value;
#ifndef __CUDA_ARCH__
  note_smem_store(slot);
#endif
}

template <typename acc_t>
LC_HD acc_t smem_load(const acc_t* slot) {
#ifndef __CUDA_ARCH__
  note_smem_load(slot);
#endif
  return *slot;
}

// Sixteen bytes as four 32-bit words: a uint4 on the GPU, four integers on the CPU.
struct Words16 {
  uint32_t w[4];
};

// The 16-byte fetch, the only part of stage_pixel that differs between the executors: one
// vector load through the read-only cache on the GPU, a memcpy on the CPU.
LC_HD Words16 load16(const void* p) {
  Words16 out;
#ifdef __CUDA_ARCH__
  const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
  out.w[0] = u.x;
  out.w[1] = u.y;
  out.w[2] = u.z;
  out.w[3] = u.w;
#else
  memcpy(out.w, p, 16);
#endif
  return out;
}

// Stages the kStage consecutive channels at p (16-byte aligned, see pixels_are_vectors) into
// dst[c · kPlane]: reads them as 16-byte vectors and unpacks the words bit-exactly (memcpy of
// scalars, which stays in registers), on the GPU and in the CPU emulator alike, so CPU tests
// run this unpack for every dtype (little-endian words: scalar 0 is the low half).
template <typename scalar_t, typename acc_t>
LC_HD void stage_pixel(const scalar_t* p, acc_t* dst) {
  constexpr int kBytes = sizeof(scalar_t);
  constexpr int kWords = kStage * kBytes / 16;
  Words16 raw[kWords];
  LC_UNROLL
  for (int k = 0; k < kWords; ++k) raw[k] = load16(reinterpret_cast<const char*>(p) + 16 * k);
  LC_UNROLL
  for (int c = 0; c < kStage; ++c) {
    const int byte = c * kBytes;
    const uint32_t word = raw[byte / 16].w[(byte % 16) / 4];
    scalar_t value;
    if constexpr (kBytes == 2) {
      const uint16_t bits = static_cast<uint16_t>(byte % 4 == 0 ? word & 0xffffu : word >> 16);
      memcpy(&value, &bits, 2);
    } else if constexpr (kBytes == 4) {
      memcpy(&value, &word, 4);
    } else {
      static_assert(kBytes == 8, "scalar types of 2, 4 or 8 bytes");
      const uint64_t bits = word | (uint64_t(raw[byte / 16].w[(byte % 16) / 4 + 1]) << 32);
      memcpy(&value, &bits, 8);
    }
    smem_store(dst + c * kPlane, static_cast<acc_t>(value));
  }
}

// Phase body: thread t's share of staging channels [c0, c0 + n) of x for window row a and the
// group starting at column offset b0 into region[c · kPlane + row · cols + col]. Out-of-image
// elements are staged as zeros.
template <typename scalar_t, typename acc_t, typename A>
LC_HD void stage_region(int t, const A& args, const Tile& tile, const Strided<const scalar_t>& x,
                        int a, int b0, int c0, int n, acc_t* region) {
  const int row0 = tile.h0 + a * args.dilation;
  const int col0 = tile.w0 + b0 * args.dilation;
  const int cols = args.cols;
  if (n == kStage && pixels_are_vectors(x, c0)) {  // one pixel's chunk per thread
    LC_NO_UNROLL
    for (int e = t; e < kTileH * cols; e += kThreads) {
      const int r = e / cols, q = e % cols;
      const int h = row0 + r, w = col0 + q;
      if (h >= 0 && h < args.height && w >= 0 && w < args.width) {
        stage_pixel(x.ptr + x.at(tile.b, c0, h, w), region + e);
      } else {
        LC_UNROLL
        for (int c = 0; c < kStage; ++c) smem_store(region + c * kPlane + e, acc_t(0));
      }
    }
    return;
  }
  const int total = n * kTileH * cols;
  const bool channels_inner = x.channels_inner();
  LC_NO_UNROLL
  for (int e = t; e < total; e += kThreads) {
    int c, r, q;
    if (channels_inner) {
      c = e % n;
      const int pix = e / n;
      q = pix % cols;
      r = pix / cols;
    } else {
      q = e % cols;
      const int rest = e / cols;
      r = rest % kTileH;
      c = rest / kTileH;
    }
    const int h = row0 + r, w = col0 + q;
    acc_t v = acc_t(0);
    if (h >= 0 && h < args.height && w >= 0 && w < args.width) {
      v = static_cast<acc_t>(x.ptr[x.at(tile.b, c0 + c, h, w)]);
    }
    smem_store(region + c * kPlane + r * cols + q, v);
  }
}

// Phase body: one per-pixel (B, H, W) plane (lse or D) over the same region.
template <typename T, typename acc_t, typename A>
LC_HD void stage_plane(int t, const A& args, const Tile& tile, const T* plane, int a, int b0,
                       acc_t* dst) {
  const int row0 = tile.h0 + a * args.dilation;
  const int col0 = tile.w0 + b0 * args.dilation;
  const int64_t base = int64_t(tile.b) * args.height * args.width;
  LC_NO_UNROLL
  for (int e = t; e < kTileH * args.cols; e += kThreads) {
    const int h = row0 + e / args.cols, w = col0 + e % args.cols;
    acc_t v = acc_t(0);
    if (h >= 0 && h < args.height && w >= 0 && w < args.width) {
      v = static_cast<acc_t>(plane[base + int64_t(h) * args.width + w]);
    }
    smem_store(dst + e, v);
  }
}

// Phase body: sums[g] += Σ_{c < n} own[c] · region[c][neighbour g] for thread t, where own is
// channel c0 + c of `x` at the thread's pixel. Pixels outside the image add nothing.
template <int G, typename scalar_t, typename acc_t, typename A>
LC_HD void accumulate_dots(int t, const A& args, const Tile& tile, const Pixel& px,
                           const Strided<const scalar_t>& x, int c0, int n, const acc_t* region,
                           acc_t (&sums)[G]) {
  if (!px.inside()) return;
  const int base = region_index(args, t, 0);
  const scalar_t* own_ptr = x.ptr + x.at(tile.b, c0, px.h, px.w);
  LC_UNROLL
  for (int c = 0; c < kStage; ++c) {
    if (c < n) {
      const acc_t own = static_cast<acc_t>(own_ptr[c * x.sc]);
      LC_UNROLL
      for (int g = 0; g < G; ++g) {
        if (g < args.group) {
          sums[g] += own * smem_load(region + c * kPlane + base + g * args.dilation);
        }
      }
    }
  }
}

// Phase body: acc[off + c] += Σ_g weight[g] · region[c][neighbour g], c < n. Neighbours of
// weight 0 are skipped, not multiplied: a group's last offsets may lie beyond the radius (k = 9:
// offsets 3..9 in one group of 7) on in-image pixels outside the window, whose inf or NaN must
// not reach the output (0 · inf = NaN), as in the CPU kernels (docs/cuda.md, "Non-finite
// inputs"). In-window weights that underflow to 0 add nothing either way.
template <int G, int OUT, typename acc_t, typename A>
LC_HD void accumulate_weighted(int t, const A& args, int off, int n, const acc_t* region,
                               const acc_t (&weight)[G], acc_t (&acc)[OUT]) {
  const int base = region_index(args, t, 0);
  LC_UNROLL
  for (int c = 0; c < kStage; ++c) {
    if (c < n && off + c < OUT) {
      acc_t sum = acc[off + c];
      LC_UNROLL
      for (int g = 0; g < G; ++g) {
        if (g < args.group && weight[g] != acc_t(0)) {
          sum += weight[g] * smem_load(region + c * kPlane + base + g * args.dilation);
        }
      }
      acc[off + c] = sum;
    }
  }
}

template <int G, int OUT, typename acc_t>
struct GatherState {
  acc_t acc[OUT];
  acc_t weight[G];  // logits, then weights, of the current group
  acc_t max_logit, sum;
};

// Forward (kForward: values = content, weights by an online softmax, writes out and lse) and
// grad_content (values = grad_out, w_ji = exp(logit_ij − L_j) with the neighbours' lse):
//   out_i  = Σ_{j∈Ω_i} w_ij c_j          dc_i = Σ_{j∈Ω_i} w_ji dy_j
template <template <class> class Exec, int G, int OUT, bool kForward, typename scalar_t,
          typename acc_t, typename lse_t>
LC_HD void gather_block(const Args<scalar_t, acc_t, lse_t>& args, int block, acc_t* smem) {
  using State = GatherState<G, OUT, acc_t>;
  Exec<State> ex;
  const Tile tile = tile_of(args, block);
  acc_t* region = smem;
  acc_t* neighbour_lse = smem + kStage * kPlane;
  const Strided<const scalar_t>& values = kForward ? args.content : args.grad_out;
  const int cp = args.pattern_channels, cv = args.content_channels;
  const int o0 = tile.pass * OUT;  // this block's output channels: [o0, o0 + OUT)
  {
    ex.run([&](int t, State& st) {
      LC_UNROLL
      for (int k = 0; k < OUT; ++k) st.acc[k] = acc_t(0);
      st.max_logit = -acc_t(INFINITY);
      st.sum = acc_t(0);
    });
    for (int a = tile.a_lo; a <= tile.a_hi; ++a) {
      for (int b0 = tile.b_lo; b0 <= tile.b_hi; b0 += args.group) {
        int c0 = 0;
        do {  // logits of the group, pattern channels in chunks (at least one phase)
          const int n = cp - c0 < kStage ? cp - c0 : kStage;
          ex.run([&](int t, State&) {
            stage_region<scalar_t>(t, args, tile, args.pattern, a, b0, c0, n, region);
            if (!kForward && c0 == 0) stage_plane(t, args, tile, args.lse, a, b0, neighbour_lse);
          });
          const bool last = c0 + kStage >= cp;
          ex.run([&](int t, State& st) {
            const Pixel px = pixel_of(args, tile, t);
            if (c0 == 0) {
              LC_UNROLL
              for (int g = 0; g < G; ++g) st.weight[g] = acc_t(0);
            }
            accumulate_dots<G>(t, args, tile, px, args.pattern, c0, n, region, st.weight);
            if (!last) return;
            // logits → weights; neighbours outside Ω_i (or past the group) get logit −∞,
            // weight 0 (they never reach lc_exp).
            const acc_t none = -acc_t(INFINITY);
            acc_t group_max = st.max_logit;
            LC_UNROLL
            for (int g = 0; g < G; ++g) {
              const bool seen = g < args.group && px.sees(a, b0 + g);
              st.weight[g] = seen ? st.weight[g] * args.scale : none;
              if (st.weight[g] > group_max) group_max = st.weight[g];
            }
            if (kForward) {
              const acc_t factor = softmax_rescale(st.max_logit, st.sum, group_max);
              LC_UNROLL
              for (int k = 0; k < OUT; ++k) st.acc[k] *= factor;
            }
            const int base = region_index(args, t, 0);
            LC_UNROLL
            for (int g = 0; g < G; ++g) {
              const acc_t logit = st.weight[g];
              acc_t w = acc_t(0);
              if (logit != none) {
                w = lc_exp(logit - (kForward
                                        ? st.max_logit
                                        : smem_load(neighbour_lse + base + g * args.dilation)));
              }
              st.weight[g] = w;
              if (kForward) st.sum += w;
            }
          });
          c0 += kStage;
        } while (c0 < cp);
        LC_UNROLL
        for (int sub = 0; sub < (OUT + kStage - 1) / kStage; ++sub) {
          const int v0 = o0 + sub * kStage;
          if (v0 < cv) {
            const int n = min3(kStage, cv - v0, OUT - sub * kStage);
            ex.run([&](int t, State&) {
              stage_region<scalar_t>(t, args, tile, values, a, b0, v0, n, region);
            });
            ex.run([&](int t, State& st) {
              accumulate_weighted<G, OUT>(t, args, sub * kStage, n, region, st.weight, st.acc);
            });
          }
        }
      }
    }
    ex.run([&](int t, State& st) {
      const Pixel px = pixel_of(args, tile, t);
      if (!px.inside()) return;
      const acc_t inv = kForward ? acc_t(1) / st.sum : acc_t(1);
      scalar_t* dst = args.dst.ptr + args.dst.at(tile.b, o0, px.h, px.w);
      LC_UNROLL
      for (int k = 0; k < OUT; ++k) {
        if (o0 + k < cv) dst[k * args.dst.sc] = static_cast<scalar_t>(st.acc[k] * inv);
      }
      if (kForward && o0 == 0) {
        args.lse_out[(int64_t(tile.b) * args.height + px.h) * args.width + px.w] =
            static_cast<lse_t>(st.max_logit + lc_log(st.sum));
      }
    });
  }
}

template <int G, int OUT, typename acc_t>
struct PatternState {
  acc_t acc[OUT];
  acc_t logit[G];  // logits, then the coefficient of x_j
  acc_t dy_c[G];   // <dy_i, c_j>
  acc_t c_dy[G];   // <dy_j, c_i>
};

// grad_pattern:
//   dx_i = s·Σ_{j∈Ω_i} [w_ij(<dy_i, c_j> − D_i) + w_ji(<dy_j, c_i> − D_j)] · x_j
template <template <class> class Exec, int G, int OUT, typename scalar_t, typename acc_t,
          typename lse_t>
LC_HD void grad_pattern_block(const Args<scalar_t, acc_t, lse_t>& args, int block, acc_t* smem) {
  using State = PatternState<G, OUT, acc_t>;
  Exec<State> ex;
  const Tile tile = tile_of(args, block);
  acc_t* region = smem;
  acc_t* neighbour_lse = smem + kStage * kPlane;
  acc_t* neighbour_delta = neighbour_lse + kTileH * kMaxCols;
  const int cp = args.pattern_channels, cc = args.content_channels;
  const int64_t plane = int64_t(args.height) * args.width;
  const int o0 = tile.pass * OUT;  // this block's output channels: [o0, o0 + OUT)
  {
    ex.run([&](int t, State& st) {
      LC_UNROLL
      for (int k = 0; k < OUT; ++k) st.acc[k] = acc_t(0);
    });
    for (int a = tile.a_lo; a <= tile.a_hi; ++a) {
      for (int b0 = tile.b_lo; b0 <= tile.b_hi; b0 += args.group) {
        int c0 = 0;
        do {  // logits
          const int n = cp - c0 < kStage ? cp - c0 : kStage;
          ex.run([&](int t, State&) {
            stage_region<scalar_t>(t, args, tile, args.pattern, a, b0, c0, n, region);
            if (c0 == 0) {
              stage_plane(t, args, tile, args.lse, a, b0, neighbour_lse);
              stage_plane(t, args, tile, args.delta, a, b0, neighbour_delta);
            }
          });
          ex.run([&](int t, State& st) {
            if (c0 == 0) {
              LC_UNROLL
              for (int g = 0; g < G; ++g) st.logit[g] = st.dy_c[g] = st.c_dy[g] = acc_t(0);
            }
            accumulate_dots<G>(t, args, tile, pixel_of(args, tile, t), args.pattern, c0, n, region,
                               st.logit);
          });
          c0 += kStage;
        } while (c0 < cp);
        for (c0 = 0; c0 < cc; c0 += kStage) {  // <dy_i, c_j>
          const int n = cc - c0 < kStage ? cc - c0 : kStage;
          ex.run([&](int t, State&) {
            stage_region<scalar_t>(t, args, tile, args.content, a, b0, c0, n, region);
          });
          ex.run([&](int t, State& st) {
            accumulate_dots<G>(t, args, tile, pixel_of(args, tile, t), args.grad_out, c0, n, region,
                               st.dy_c);
          });
        }
        for (c0 = 0; c0 < cc; c0 += kStage) {  // <dy_j, c_i>
          const int n = cc - c0 < kStage ? cc - c0 : kStage;
          ex.run([&](int t, State&) {
            stage_region<scalar_t>(t, args, tile, args.grad_out, a, b0, c0, n, region);
          });
          ex.run([&](int t, State& st) {
            accumulate_dots<G>(t, args, tile, pixel_of(args, tile, t), args.content, c0, n, region,
                               st.c_dy);
          });
        }
        ex.run([&](int t, State& st) {  // coefficients of x_j
          const Pixel px = pixel_of(args, tile, t);
          if (!px.inside()) return;
          const int64_t i = int64_t(tile.b) * plane + int64_t(px.h) * args.width + px.w;
          const acc_t lse_i = static_cast<acc_t>(args.lse[i]);
          const acc_t delta_i = args.delta[i];
          const int base = region_index(args, t, 0);
          LC_UNROLL
          for (int g = 0; g < G; ++g) {
            if (!(g < args.group && px.sees(a, b0 + g))) {
              st.logit[g] = acc_t(0);
              continue;
            }
            const int j = base + g * args.dilation;
            const acc_t logit = args.scale * st.logit[g];
            const acc_t w_ij = lc_exp(logit - lse_i);
            const acc_t w_ji = lc_exp(logit - smem_load(neighbour_lse + j));
            const acc_t coef = args.scale * (w_ij * (st.dy_c[g] - delta_i) +
                                             w_ji * (st.c_dy[g] - smem_load(neighbour_delta + j)));
            st.logit[g] = coef;
          }
        });
        LC_UNROLL
        for (int sub = 0; sub < (OUT + kStage - 1) / kStage; ++sub) {
          const int v0 = o0 + sub * kStage;
          if (v0 < cp) {
            const int n = min3(kStage, cp - v0, OUT - sub * kStage);
            ex.run([&](int t, State&) {
              stage_region<scalar_t>(t, args, tile, args.pattern, a, b0, v0, n, region);
            });
            ex.run([&](int t, State& st) {
              accumulate_weighted<G, OUT>(t, args, sub * kStage, n, region, st.logit, st.acc);
            });
          }
        }
      }
    }
    ex.run([&](int t, State& st) {
      const Pixel px = pixel_of(args, tile, t);
      if (!px.inside()) return;
      scalar_t* dst = args.dst.ptr + args.dst.at(tile.b, o0, px.h, px.w);
      LC_UNROLL
      for (int k = 0; k < OUT; ++k) {
        if (o0 + k < cp) dst[k * args.dst.sc] = static_cast<scalar_t>(st.acc[k]);
      }
    });
  }
}

struct NoState {};

// D_i = <dy_i, y_i>, one thread per pixel of the tile.
template <template <class> class Exec, typename scalar_t, typename acc_t, typename lse_t>
LC_HD void delta_block(const Args<scalar_t, acc_t, lse_t>& args, int block) {
  Exec<NoState> ex;
  const Tile tile = tile_of(args, block);
  ex.run([&](int t, NoState&) {
    const int h = tile.h0 + t / kTileW, w = tile.w0 + t % kTileW;
    if (h >= args.height || w >= args.width) return;
    const scalar_t* dy = args.grad_out.ptr + args.grad_out.at(tile.b, 0, h, w);
    const scalar_t* y = args.out.ptr + args.out.at(tile.b, 0, h, w);
    acc_t sum = acc_t(0);
    LC_NO_UNROLL
    for (int c = 0; c < args.content_channels; ++c) {
      sum += static_cast<acc_t>(dy[c * args.grad_out.sc]) * static_cast<acc_t>(y[c * args.out.sc]);
    }
    args.delta_out[(int64_t(tile.b) * args.height + h) * args.width + w] = sum;
  });
}

}  // namespace tiled
}  // namespace lcblock
