// What the CPU forward and backward share: the row-segment geometry of the window, the layouts
// of the caller's tensors (NCHW or NHWC), per-thread scratch, and the two row kernels (dot
// products of pixel rows, and the gather y_i = Σ_o coef_o,i · src_{i+δo} vectorised over pixels).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../local_correlation_math.h"
#include "simd.h"

namespace lcblock::cpu {

// Pixels of a row segment: small enough that the rows one window row touches stay in L1.
constexpr int64_t kTileWidth = 64;
// Gather: channels per pass. Times the two vectors of a block, twelve accumulator chains: enough
// to keep both FMA pipes busy.
constexpr int kGatherChannels = 6;

// ---- geometry ---------------------------------------------------------------------------

// One window offset that is at least partly inside the image for the current row segment.
struct Offset {
  int64_t rows;   // a·dilation: rows from the pixel to the neighbour
  int64_t cols;   // b·dilation: columns from the pixel to the neighbour
  int64_t begin;  // valid segment positions [begin, end), relative to the segment start
  int64_t end;
  bool partial;  // not valid on the whole segment
};

// A row segment [w0, w0 + n) of row h of image b, and its in-image window offsets.
struct Segment {
  int64_t b = 0, h = 0, w0 = 0, n = 0;
  int64_t padded_n = 0;  // n rounded up to whole steps (kStep)
  // Positions [inner_begin, inner_end) where every offset is valid: blocks inside take the
  // gathers' fast path, without a per-offset test.
  int64_t inner_begin = 0, inner_end = 0;
  std::vector<Offset> offsets;
};

// n rounded up to whole steps of the row kernels.
template <typename T>
inline int64_t padded_to_steps(int64_t n) {
  return (n + kStep<T> - 1) / kStep<T> * kStep<T>;
}

struct Geometry {
  int64_t batch, height, width, radius, dilation, tiles;

  Geometry(const at::Tensor& content, int64_t kernel_size, int64_t dilation_)
      : batch(content.size(0)),
        height(content.size(2)),
        width(content.size(3)),
        radius(kernel_size / 2),
        dilation(dilation_),
        tiles((content.size(3) + kTileWidth - 1) / kTileWidth) {}

  int64_t items() const { return batch * height * tiles; }

  template <typename T>
  void segment(int64_t item, Segment& s) const {
    s.b = item / (height * tiles);
    s.h = (item / tiles) % height;
    s.w0 = (item % tiles) * kTileWidth;
    s.n = std::min(kTileWidth, width - s.w0);
    s.padded_n = padded_to_steps<T>(s.n);
    s.offsets.clear();
    int64_t a_lo, a_hi;
    valid_offsets(s.h, height, radius, dilation, a_lo, a_hi);
    for (int64_t a = a_lo; a <= a_hi; ++a) {
      for (int64_t bo = -radius; bo <= radius; ++bo) {
        int64_t begin, end;
        valid_span(bo * dilation, width, begin, end);
        begin = std::max(begin, s.w0) - s.w0;
        end = std::min(end, s.w0 + s.n) - s.w0;
        if (begin >= end) continue;
        s.offsets.push_back({a * dilation, bo * dilation, begin, end, begin > 0 || end < s.n});
      }
    }
    s.inner_begin = 0;
    s.inner_end = s.n;
    for (const Offset& off : s.offsets) {
      s.inner_begin = std::max(s.inner_begin, off.begin);
      s.inner_end = std::min(s.inner_end, off.end);
    }
  }
};

// Multiply-adds a parallel range gets at least (tens of microseconds on one core): a smaller
// call runs on the calling thread instead of paying a fork and join for a few microseconds of
// work per thread.
constexpr int64_t kMinRangeWork = int64_t(1) << 18;

// Image rows per parallel range (at::parallel_for's grain over B·H rows): at least a few ring
// lengths, so that warm-up rows stay a small part, and at least kMinRangeWork multiply-adds of
// `channels` per window offset.
inline int64_t row_grain(const Geometry& g, int64_t kernel_size, int64_t channels) {
  const int64_t per_row = std::max<int64_t>(1, g.width * kernel_size * kernel_size * channels);
  return std::max({int64_t(1), 4 * g.radius * g.dilation, kMinRangeWork / per_row});
}

// Per-thread scratch rows, aligned to cache lines (unaligned 32-byte loads that straddle two
// lines cost twice).
template <typename T>
class Scratch {
 public:
  explicit Scratch(int64_t n) : storage_(n + kAlign) {
    const auto addr = reinterpret_cast<std::uintptr_t>(storage_.data());
    data_ = storage_.data() + (kAlign - (addr / sizeof(T)) % kAlign) % kAlign;
  }
  T* data() { return data_; }

 private:
  static constexpr int64_t kAlign = 64 / sizeof(T);
  std::vector<T> storage_;
  T* data_;
};

// Per-thread storage of one call's rings and row copies: a single zeroed torch allocation (so
// the benchmark's memory accounting sees it) that each ring takes its part of, 64-byte aligned.
// One allocation per thread and call instead of one per ring: on LCNet's 12×12 maps the
// backward's nine rings cost ~1.7 µs each, a few percent of the call.
template <typename T>
class Workspace {
 public:
  // n elements rounded up to whole cache lines: what take(n) uses of the workspace.
  static int64_t aligned(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

  Workspace(int64_t elements, const at::TensorOptions& options)
      : storage_(at::zeros({std::max<int64_t>(elements, 1)}, options)),
        next_(storage_.mutable_data_ptr<T>()),
        left_(elements) {}
  // n zeroed elements, aligned to a cache line.
  T* take(int64_t n) {
    n = aligned(n);
    TORCH_INTERNAL_ASSERT(n <= left_, "lcblock CPU workspace too small");
    T* p = next_;
    next_ += n;
    left_ -= n;
    return p;
  }

 private:
  static constexpr int64_t kAlign = 64 / sizeof(T);
  at::Tensor storage_;
  T* next_;
  int64_t left_;
};

// ---- row kernels ------------------------------------------------------------------------

// acc[k][p] = Σ_c a[c·stride + p] · b[k][c·stride + p] for k < N, p in [0, padded_n): N dot
// products that share the pixel's own row `a` (N window offsets at once, so each load of `a`
// serves N multiply-adds). Eight accumulator vectors stay in registers across the channel loop.
template <int N, int64_t V = kVectorsPerBlock / N, typename T>
inline void dot_rows(T* const (&acc)[N], const T* a, const T* const (&b)[N], int64_t channels,
                     int64_t stride, int64_t p_end, int64_t p_begin = 0, T scale = T(1)) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t p0 = p_begin; p0 < p_end; p0 += V * L) {
    Vec<T> r[N][V] = {};
    for (int64_t c = 0, i = p0; c < channels; ++c, i += stride) {
#pragma GCC unroll 8
      for (int64_t v = 0; v < V; ++v) {
        const Vec<T> av = load(a + i + v * L);
#pragma GCC unroll 8
        for (int k = 0; k < N; ++k) r[k][v] += av * load(b[k] + i + v * L);
      }
    }
    for (int k = 0; k < N; ++k) {
#pragma GCC unroll 8
      for (int64_t v = 0; v < V; ++v) store(acc[k] + p0 + v * L, r[k][v] * scale);
    }
  }
}

// One dot product per pixel, p in [0, padded_n) (padded_n a multiple of kStep): whole blocks of
// eight vectors, then the remaining steps of two.
template <typename T>
inline void dot_rows(T* acc, const T* a, const T* b, int64_t channels, int64_t stride,
                     int64_t padded_n) {
  T* const accs[1] = {acc};
  const T* const bs[1] = {b};
  const int64_t blocks = padded_n / kBlock<T> * kBlock<T>;
  dot_rows<1>(accs, a, bs, channels, stride, blocks);
  dot_rows<1, 2>(accs, a, bs, channels, stride, padded_n, blocks);
}

// For N channels ch of src: out[ch][p] = Σ_o coef[o][p] · src[ch][p + delta_o] over the offsets
// valid at p, p in [0, n): the gather that forms y, dx and dc (N channels at once, so each load
// of a weight serves N multiply-adds). coef[o] is offset o's row of coefficients at the segment
// start (padded_n values; lanes where the offset is not valid may hold anything). Vectors
// that straddle the edge of an offset's valid span (or the segment's end) take the valid lanes
// one by one, so `src` is never read outside the image: it may be the caller's NCHW tensor.
template <int N, int64_t V, typename T>
void gather_channels(T* const (&out)[N], const T* const* coef, const T* const (&src)[N],
                     const int64_t* delta, const Segment& s, const T* row_scale) {
  constexpr int64_t L = kLanes<T>;
  const int64_t n_off = static_cast<int64_t>(s.offsets.size());
  for (int64_t p0 = 0; p0 < s.padded_n; p0 += V * L) {
    Vec<T> r[N][V] = {};
    if (s.inner_begin <= p0 && p0 + V * L <= s.inner_end) {  // every offset valid: no tests
      const T* const s0 = src[0] + p0;
      for (int64_t o = 0; o < n_off; ++o) {
        const T* w = coef[o] + p0;
        const int64_t i = delta[o];
#pragma GCC unroll 8
        for (int64_t v = 0; v < V; ++v) {
          const Vec<T> wv = load(w + v * L);
#pragma GCC unroll 8
          for (int k = 0; k < N; ++k) r[k][v] += wv * load(s0 + (src[k] - src[0]) + i + v * L);
        }
      }
    } else {
      for (size_t o = 0; o < s.offsets.size(); ++o) {
        const Offset& off = s.offsets[o];
        const T* w = coef[o] + p0;
        const int64_t i = delta[o] + p0;
        if (off.begin <= p0 && p0 + V * L <= off.end) {  // the whole block is valid
#pragma GCC unroll 8
          for (int64_t v = 0; v < V; ++v) {
            const Vec<T> wv = load(w + v * L);
#pragma GCC unroll 8
            for (int k = 0; k < N; ++k) r[k][v] += wv * load(src[k] + i + v * L);
          }
          continue;
        }
        // Fully unrolled, so r[k][v] keep constant indices and stay in registers.
#pragma GCC unroll 8
        for (int64_t v = 0; v < V; ++v) {
          const int64_t lo = std::max<int64_t>(off.begin - p0 - v * L, 0);
          const int64_t hi = std::min<int64_t>(off.end - p0 - v * L, L);
          if (lo >= hi) continue;
          const Vec<T> wv = load(w + v * L);
          if (lo == 0 && hi == L) {
#pragma GCC unroll 8
            for (int k = 0; k < N; ++k) r[k][v] += wv * load(src[k] + i + v * L);
          } else {
            const auto inside = lane_mask<T>(lo, hi);
            const Vec<T> zero = {};
#pragma GCC unroll 8
            for (int k = 0; k < N; ++k) {
              r[k][v] += inside ? wv * masked_load(src[k] + i + v * L, inside) : zero;
            }
          }
        }
      }
    }
    if (row_scale != nullptr) {
      for (int k = 0; k < N; ++k) {
#pragma GCC unroll 8
        for (int64_t v = 0; v < V; ++v) r[k][v] *= load(row_scale + p0 + v * L);
      }
    }
    const int64_t n = std::min(V * L, s.n - p0);
    for (int k = 0; k < N; ++k) {
      if (n == V * L) {
#pragma GCC unroll 8
        for (int64_t v = 0; v < V; ++v) store(out[k] + p0 + v * L, r[k][v]);
      } else if (n > 0) {
        T tmp[V * L];
        for (int64_t v = 0; v < V; ++v) store(tmp + v * L, r[k][v]);
        std::copy(tmp, tmp + n, out[k] + p0);
      }
    }
  }
}

// Where gather_rows reads: channel 0 of the segment start, the distance between channels, and
// the distance to each window offset's neighbour. row_of(dr) is channel 0, column 0 of image
// row s.h + dr in the operand's storage (the caller's NCHW tensor, an operand copy or a ring of
// rows); the channel rows of one image row lie channel_stride apart. The distances go into the
// caller's `storage`, reused from segment to segment (no allocation per segment).
template <typename T>
struct Source {
  const T* row;
  int64_t channels;
  int64_t channel_stride;
  const int64_t* delta;

  template <typename RowOf>
  Source(int64_t channels_, int64_t channel_stride_, const Segment& s, RowOf&& row_of,
         std::vector<int64_t>& storage)
      : row(row_of(0) + s.w0), channels(channels_), channel_stride(channel_stride_) {
    const T* origin = row_of(0);
    storage.clear();
    for (const Offset& off : s.offsets) storage.push_back(row_of(off.rows) - origin + off.cols);
    delta = storage.data();
  }
};

// gather_channels over every channel of src, four at a time; outputs multiplied by
// row_scale[p] when it is given.
template <typename T>
void gather_rows(T* out, int64_t out_stride, const T* const* coef, const Source<T>& src,
                 const Segment& s,
                 const T* row_scale = nullptr) {
  constexpr int64_t V = 2;
  const T* row = src.row;
  const int64_t* delta = src.delta;
  auto group = [&](int64_t ch, auto size) {
    constexpr int N = decltype(size)::value;
    T* outs[N];
    const T* rows[N];
    for (int k = 0; k < N; ++k) {
      outs[k] = out + (ch + k) * out_stride;
      rows[k] = row + (ch + k) * src.channel_stride;
    }
    gather_channels<N, V>(outs, coef, rows, delta, s, row_scale);
  };
  for_each_group<kGatherChannels>(src.channels, group);
}

// ---- the caller's tensors ---------------------------------------------------------------------

// A (B, C, H, W) tensor of the caller as the kernels address it: NCHW or NHWC (channels_last),
// whichever layout_of (checks.h) gives it; `dense` makes any other strides NCHW-contiguous.
// T is const for inputs.
template <typename T>
struct Planes {
  T* data;
  int64_t channels, height, width;
  bool channels_last;

  Planes(const at::Tensor& t, T* data_)
      : data(data_),
        channels(t.size(1)),
        height(t.size(2)),
        width(t.size(3)),
        channels_last(layout_of(t) == at::MemoryFormat::ChannelsLast) {}
  // Channel 0 of pixel (b, h, w).
  T* at(int64_t b, int64_t h, int64_t w) const {
    return channels_last ? data + ((b * height + h) * width + w) * channels
                         : data + ((b * channels * height + h) * width + w);
  }
  // Copies image row h of image b into `to`, channel rows `pitch` apart (the layout the row
  // kernels read): C row copies from NCHW, one transpose from NHWC.
  void copy_row_to(int64_t b, int64_t h, std::remove_const_t<T>* to, int64_t pitch) const {
    const T* from = at(b, h, 0);
    if (channels_last) {
      transpose(from, channels, to, pitch, width, channels);
    } else {
      for (int64_t c = 0; c < channels; ++c) {
        std::memcpy(to + c * pitch, from + c * height * width, width * sizeof(T));
      }
    }
  }
};

// The tensor itself when layout_of says channels_last (it is then NHWC-contiguous), else an
// NCHW-contiguous one (a copy only for other strides).
inline at::Tensor dense(const at::Tensor& t) {
  return layout_of(t) == at::MemoryFormat::ChannelsLast ? t : t.contiguous();
}

// Channel rows are padded to an odd number of cache lines. With a power-of-two pitch (a
// 128-float row is 512 bytes) the 32 channel rows a dot product walks fall into 8 of the 64
// L1 sets and evict each other; an odd pitch spreads them over all sets.
inline int64_t row_pitch_for(int64_t width, size_t element_size) {
  const int64_t line = 64 / static_cast<int64_t>(element_size);
  int64_t lines = (width + line - 1) / line;
  if (lines % 2 == 0) ++lines;
  return lines * line;
}

// Runs gather(out, out_stride), a gather_rows writing the segment's channel rows, into `dst`:
// straight into an NCHW tensor, or into `scratch` (channels × kTileWidth) and then transposed
// into the NHWC tensor's pixels.
template <typename T, typename Gather>
void gather_into(const Planes<T>& dst, const Segment& s, T* scratch, Gather&& gather) {
  if (!dst.channels_last) {
    gather(dst.at(s.b, s.h, s.w0), dst.height * dst.width);
    return;
  }
  gather(scratch, kTileWidth);
  transpose(static_cast<const T*>(scratch), kTileWidth, dst.at(s.b, s.h, s.w0), dst.channels,
            dst.channels, s.n);
}

// ---- logits once per pixel pair ---------------------------------------------------------
//
// The logits are symmetric: logit(i, i + δ) = <x_i, x_{i+δ}> = logit(i + δ, i). Only the
// "forward" half of the window is computed, the offsets (a, b) with a > 0, or a = 0 and b >= 0
// (25 of 49 for k = 7); the other half of a pixel's logits are the forward logits of pixels
// in the rows above (or to the left), read back from a ring of the last radius·dilation + 1
// rows' forward logits. A thread walks a range of rows of one image top to bottom, so every
// logit is computed once, plus radius·dilation warm-up rows where a range starts.

// The forward half of the window, and where to find each window offset's logit.
struct HalfWindow {
  struct Forward {
    int64_t a, b;  // window offset in units of the dilation; a > 0 or (a == 0 and b >= 0)
  };
  std::vector<Forward> forward;
  std::vector<int64_t> index;  // for offset (a, b) at (a + radius)·k + b + radius: its
                               // mirror's (−a, −b) position in `forward` when a < 0 or
                               // (a == 0 and b < 0), else its own

  HalfWindow(int64_t radius) {
    const int64_t k = 2 * radius + 1;
    index.assign(k * k, -1);
    for (int64_t a = 0; a <= radius; ++a) {
      for (int64_t b = a == 0 ? 0 : -radius; b <= radius; ++b) {
        index[(a + radius) * k + b + radius] = static_cast<int64_t>(forward.size());
        index[(radius - a) * k + radius - b] = static_cast<int64_t>(forward.size());
        forward.push_back({a, b});
      }
    }
  }
  static bool is_forward(int64_t a, int64_t b) { return a > 0 || (a == 0 && b >= 0); }
};

// r % n for every image row r, looked up: the rings are addressed a few times per window offset
// and row, and a 64-bit division there cost a few percent of the backward on LCNet's 12×12 maps.
class RingSlots {
 public:
  RingSlots(int64_t height, int64_t n) : slot_(static_cast<size_t>(height)) {
    for (int64_t r = 0; r < height; ++r) slot_[r] = static_cast<int32_t>(r % n);
  }
  int64_t operator()(int64_t r) const { return slot_[static_cast<size_t>(r)]; }

 private:
  std::vector<int32_t> slot_;
};

// Columns kept on each side of a ring row: the window's reach, rounded up to 64 bytes of float
// so that row starts stay aligned.
inline int64_t ring_margin(const Geometry& g) { return (g.radius * g.dilation + 15) / 16 * 16; }

// Per-thread ring of forward logits: ring_rows rows of (forward offsets) × (margin + padded
// width + margin). Margins let a backward offset read its mirror at x + b·dilation without a
// test (those lanes are masked when out of the image).
template <typename T>
struct LogitRing {
  int64_t rows, offsets, margin, stride;
  RingSlots slot;
  T* base;

  // Workspace elements of a ring of n_forward offsets.
  static int64_t elements(const Geometry& g, int64_t n_forward) {
    return Workspace<T>::aligned((g.radius * g.dilation + 1) * n_forward *
                                 (2 * ring_margin(g) + g.tiles * kTileWidth));
  }
  // Zeroed (Workspace): margins and columns past the row are never written, and the backward's
  // unmasked gathers read them (as zero pair values).
  LogitRing(const Geometry& g, int64_t n_forward, Workspace<T>& ws)
      : rows(g.radius * g.dilation + 1),
        offsets(n_forward),
        margin(ring_margin(g)),
        stride(2 * margin + g.tiles * kTileWidth),
        slot(g.height, rows),
        base(ws.take(elements(g, n_forward))) {}
  // Logit of forward offset f at column x of image row h (x may be off the row by a margin).
  T* at(int64_t h, int64_t f, int64_t x) {
    return base + (slot(h) * offsets + f) * stride + margin + x;
  }
};

// Per-thread ring of image rows of one operand, each laid out (C, pitch) with zeroed margins
// of `margin` columns: the layout the pixel-vectorised row kernels read. The forward copies the
// pattern rows h to h + radius·dilation its logits read (copying a row just before it is used
// keeps it in L1/L2 for the dot products) and, for an NHWC content gathered by pixel rows, the
// content rows h − radius·dilation to h + radius·dilation. From NCHW a row is C row copies, from
// NHWC one transpose; the ring is all the extra memory the operand needs.
template <typename T>
struct ChannelRows {
  Planes<const T> src;
  int64_t slots, margin, pitch, slot_size;
  RingSlots slot;
  T* base;
  int64_t loaded_b = -1, loaded_hi = -1;  // rows up to loaded_hi of image loaded_b

  // Workspace elements of `slots` rows of `channels` (reads from −margin to padded_width + margin).
  static int64_t elements(int64_t channels, int64_t slots, int64_t margin, int64_t padded_width) {
    const int64_t pitch = row_pitch_for(2 * margin + padded_width, sizeof(T));
    return Workspace<T>::aligned(slots * channels * pitch + pitch + margin);
  }
  ChannelRows(const Planes<const T>& src_, int64_t slots_, int64_t margin_, int64_t padded_width,
              Workspace<T>& ws)
      : src(src_),
        slots(slots_),
        margin(margin_),
        pitch(row_pitch_for(2 * margin_ + padded_width, sizeof(T))),
        slot_size(src_.channels * pitch),
        slot(src_.height, slots_),
        base(ws.take(elements(src_.channels, slots_, margin_, padded_width))) {}
  // Channel 0, column 0 of image row h (which must be loaded).
  const T* row(int64_t h) const { return base + slot(h) * slot_size + margin; }
  // Makes rows [lo, hi] of image b available (hi − lo < slots).
  void advance(int64_t b, int64_t lo, int64_t hi) {
    if (b != loaded_b || lo > loaded_hi) loaded_b = b, loaded_hi = lo - 1;
    for (int64_t r = std::max(loaded_hi + 1, lo); r <= hi; ++r) {
      src.copy_row_to(b, r, base + slot(r) * slot_size + margin, pitch);
    }
    loaded_hi = std::max(loaded_hi, hi);
  }
};

}  // namespace lcblock::cpu
