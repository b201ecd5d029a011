// CPU forward of the local correlation op (docs/DESIGN.md, 'CPU kernels'): each thread walks a
// range of image rows; logits are computed once per pixel pair (the symmetric half window, a
// ring of row logits), then a softmax left unnormalised (1/Σ is applied to the gathered output)
// and a gather, channels-last when the channels fill the vectors. Inputs and output may each be
// NCHW or NHWC: only the per-thread row copies and the output stores differ.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "kernels.h"
#include "rows.h"

namespace lcblock::cpu {
namespace {

// Window offsets per pass of the logits. Times the two vectors of a block, twelve accumulator
// chains: enough to keep both FMA pipes busy.
constexpr int kLogitOffsets = 6;

// Forward logits of image row h of image b for every column (in blocks of two vectors,
// kLogitOffsets offsets per pass over the pixel's features), scaled, into the ring. Offsets
// whose neighbour row is outside the image are skipped: no pixel ever reads them.
template <typename T>
void forward_logits_row(const Geometry& g, ChannelRows<T>& xs, const HalfWindow& half,
                        LogitRing<T>& ring, T scale, int64_t b, int64_t h) {
  constexpr int64_t V = 2, B = V * kLanes<T>;
  xs.advance(b, h, std::min(h + g.radius * g.dilation, g.height - 1));
  const T* xi = xs.row(h);
  int64_t n_valid = 0;
  while (n_valid < static_cast<int64_t>(half.forward.size()) &&
         h + half.forward[n_valid].a * g.dilation < g.height) {
    ++n_valid;  // `forward` is ordered by a
  }
  const int64_t padded_w = padded_to_steps<T>(g.width);
  auto group = [&](int64_t f, auto size) {
    constexpr int N = decltype(size)::value;
    T* l[N];
    const T* nb[N];
    for (int k = 0; k < N; ++k) {
      const HalfWindow::Forward& off = half.forward[f + k];
      l[k] = ring.at(h, f + k, 0);
      nb[k] = xs.row(h + off.a * g.dilation) + off.b * g.dilation;
    }
    for (int64_t p0 = 0; p0 < padded_w; p0 += B) {
      dot_rows<N, V>(l, xi, nb, xs.src.channels, xs.pitch, p0 + B, p0, scale);
    }
  };
  for_each_group<kLogitOffsets>(n_valid, group);
}

// Softmax over the offsets for the block [p0, p0 + V·L) of a segment, logits read from the
// ring (`logit[o]` points at the segment start of offset o's logits), left unnormalised in
// weight_row[o][p]: exp(logit − max). Writes 1 / Σ exp into inv_sum[p] (the gather applies it to
// its outputs) and the log-sum-exp of the block's valid positions.
template <int64_t V, typename T>
void block_softmax(const Segment& seg, const T* const* logit, T* const* weight_row, int64_t p0,
                   T* inv_sum, T* lse) {
  constexpr int64_t L = kLanes<T>;
  constexpr T kMinusInf = -std::numeric_limits<T>::infinity();
  const Vec<T> minus_inf = Vec<T>{} + kMinusInf;
  const size_t n_off = seg.offsets.size();
  // Masks of the offsets that are partly outside the image on this block.
  auto masked = [&](const Offset& off) {
    return off.partial && !(off.begin <= p0 && p0 + V * L <= off.end);
  };
  auto logit_at = [&](const Offset& off, const T* l, int64_t v) {
    const Vec<T> x = load(l + v * L);
    if (!masked(off)) return x;
    const auto inside = lane_mask<T>(off.begin - p0 - v * L, off.end - p0 - v * L);
    return inside ? x : minus_inf;  // out-of-image neighbours: no weight
  };
  Vec<T> m[V], sum[V];
  for (int64_t v = 0; v < V; ++v) m[v] = minus_inf, sum[v] = Vec<T>{};
  for (size_t o = 0; o < n_off; ++o) {
    const T* l = logit[o] + p0;
#pragma GCC unroll 8
    for (int64_t v = 0; v < V; ++v) {
      const Vec<T> x = logit_at(seg.offsets[o], l, v);
      m[v] = x > m[v] ? x : m[v];
    }
  }
  for (size_t o = 0; o < n_off; ++o) {
    const Offset& off = seg.offsets[o];
    const T* l = logit[o] + p0;
    T* w = weight_row[o] + p0;
    if (!masked(off)) {
#pragma GCC unroll 8
      for (int64_t v = 0; v < V; ++v) {
        const Vec<T> e = exp_nonpositive(load(l + v * L) - m[v]);
        store(w + v * L, e);
        sum[v] += e;
      }
    } else {
      for (int64_t v = 0; v < V; ++v) {
        const auto inside = lane_mask<T>(off.begin - p0 - v * L, off.end - p0 - v * L);
        const Vec<T> zero = {};
        const Vec<T> e = inside ? exp_nonpositive(load(l + v * L) - m[v]) : zero;
        store(w + v * L, e);
        sum[v] += e;
      }
    }
  }
  // Every valid position has its own pixel in the window: a finite max and a sum >= 1.
  const int64_t n = std::min(V * L, seg.n - p0);
  for (int64_t v = 0; v < V; ++v) {
    store(inv_sum + p0 + v * L, T(1) / sum[v]);
    const Vec<T> l = m[v] + log_vec(sum[v]);
    if ((v + 1) * L <= n) {
      store(lse + p0 + v * L, l);
    } else {
      for (int64_t t = v * L; t < n; ++t) lse[p0 + t] = l[t - v * L];
    }
  }
}

// ---- channels-last gather (forward) -------------------------------------------------------
//
// y_i = Σ_o w_o,i · c_{i+δo} vectorised over pixels loads every neighbour vector at a shifted,
// mostly cache-line-straddling address, once per multiply-add. Vectorised over channels
// instead, every load is aligned and one neighbour's channel vectors serve two pixels at once
// (i and i + dilation, whose windows overlap in all but one column), with the weights
// broadcast: about 0.8 loads per multiply-add instead of 1.25, none straddling. It needs the
// content rows channels-last (a per-thread ring, filled by 8×8 transposes from NCHW, by row
// copies from NHWC) and the output transposed back (written in place into an NHWC output whose
// channels fill the vectors); it pays when channels fill the vectors, see use_channels_last.

// Channel count rounded up to whole vectors, and whether the channels-last gather is used:
// when the padding wastes at most a third of the multiply-adds.
template <typename T>
int64_t padded_channels(int64_t channels) {
  return (channels + kLanes<T> - 1) / kLanes<T> * kLanes<T>;
}
template <typename T>
bool use_channels_last(int64_t channels) {
  return channels > 0 && 2 * padded_channels<T>(channels) <= 3 * channels;
}

// Per-thread ring of content rows h − radius·dilation to h + radius·dilation of one image,
// channels-last: each row is (margin + width + margin) pixels of padded_channels values, the
// margins and padding channels zero, so that out-of-image neighbours (whose weights are 0)
// read zeros. From NCHW a row is transposed; from NHWC it is copied.
template <typename T>
struct ContentRows {
  Planes<const T> src;
  int64_t cpad, reach, slots, margin, row_size;
  RingSlots slot;
  T* base;
  int64_t loaded_b = -1, loaded_hi = -1;  // rows up to loaded_hi of image loaded_b

  // Workspace elements of the rows of a source of `channels` channels.
  static int64_t elements(const Geometry& g, int64_t channels) {
    const int64_t margin = g.radius * g.dilation + g.dilation;
    return Workspace<T>::aligned((2 * g.radius * g.dilation + 1) * (2 * margin + g.width) *
                                 padded_channels<T>(channels));
  }
  ContentRows(const Geometry& g, const Planes<const T>& src_, Workspace<T>& ws)
      : src(src_),
        cpad(padded_channels<T>(src_.channels)),
        reach(g.radius * g.dilation),
        slots(2 * g.radius * g.dilation + 1),
        margin(g.radius * g.dilation + g.dilation),
        row_size((2 * margin + g.width) * cpad),
        slot(g.height, slots),
        base(ws.take(elements(g, src_.channels))) {}
  // Channel 0 of pixel x of image row r (loaded; x may lie in the margins).
  const T* at(int64_t r, int64_t x) const {
    return base + slot(r) * row_size + (margin + x) * cpad;
  }
  // Makes rows [h − reach, h + reach] ∩ image of image b available.
  void advance(int64_t b, int64_t h) {
    const int64_t lo = std::max<int64_t>(h - reach, 0), hi = std::min(h + reach, src.height - 1);
    if (b != loaded_b || lo > loaded_hi) loaded_b = b, loaded_hi = lo - 1;
    for (int64_t r = std::max(loaded_hi + 1, lo); r <= hi; ++r) {
      T* to = base + slot(r) * row_size + margin * cpad;
      const T* from = src.at(b, r, 0);
      const int64_t c = src.channels, w = src.width;
      if (!src.channels_last) {
        transpose(from, src.height * w, to, cpad, c, w);
      } else if (c == cpad) {
        std::memcpy(to, from, w * c * sizeof(T));
      } else {
        for (int64_t x = 0; x < w; ++x) std::memcpy(to + x * cpad, from + x * c, c * sizeof(T));
      }
    }
    loaded_hi = std::max(loaded_hi, hi);
  }
};

// out_t[p][c] = inv_sum[p] · Σ_o weights[o][p] · c_{p + δo}[c] for the segment's positions,
// channels-last (out_t rows of out_pitch >= rows.cpad values). Positions go in pairs
// (p, p + dilation): one window row of the pair spans 2·radius + 2 neighbours, each loaded once
// for both.
// Kept out of line: inlined into forward_kernel's loop it ran ~10 % slower (register pressure).
template <typename T>
__attribute__((noinline)) void gather_channels_last(const Segment& seg, const Geometry& g,
                                                    const ContentRows<T>& rows, const T* weights,
                                                    const T* inv_sum, T* out_t, int64_t out_pitch,
                                                    const T** row) {
  constexpr int64_t L = kLanes<T>;
  constexpr int CV = 4;  // channel vectors per pass
  const int64_t k = 2 * g.radius + 1, d = g.dilation, R = g.radius;
  const int64_t step = d * rows.cpad;  // from one window column's neighbour to the next
  int64_t a_lo, a_hi;
  valid_offsets(seg.h, g.height, g.radius, g.dilation, a_lo, a_hi);
  // row[a + radius]: pixel w0 − radius·dilation of window row a (k entries, caller's storage)
  for (int64_t a = a_lo; a <= a_hi; ++a) row[a + R] = rows.at(seg.h + a * d, seg.w0 - R * d);
  // Weights of position p and p + d (when `pair`) for channels [c0, c0 + NV·L).
  auto pass = [&](int64_t p, auto pair, int64_t c0, auto vectors) {
    constexpr int64_t NV = decltype(vectors)::value;
    constexpr bool kPair = decltype(pair)::value;
    Vec<T> r0[NV] = {}, r1[NV] = {};
    for (int64_t a = a_lo; a <= a_hi; ++a) {
      const T* w = weights + (a + R) * k * kTileWidth + p;  // w[j·kTileWidth]: offset (a, j − R)
      const T* nb = row[a + R] + p * rows.cpad + c0;
      Vec<T> cv[NV];
#pragma GCC unroll 8
      for (int64_t v = 0; v < NV; ++v) cv[v] = load(nb + v * L);
      const Vec<T> w0 = broadcast(w);
#pragma GCC unroll 8
      for (int64_t v = 0; v < NV; ++v) r0[v] += w0 * cv[v];
      for (int64_t j = 1; j <= 2 * R; ++j) {
        nb += step;
#pragma GCC unroll 8
        for (int64_t v = 0; v < NV; ++v) cv[v] = load(nb + v * L), keep_in_register<T>(cv[v]);
        const Vec<T> wa = broadcast(w + j * kTileWidth);
#pragma GCC unroll 8
        for (int64_t v = 0; v < NV; ++v) r0[v] += wa * cv[v];
        if constexpr (kPair) {
          const Vec<T> wb = broadcast(w + (j - 1) * kTileWidth + d);
#pragma GCC unroll 8
          for (int64_t v = 0; v < NV; ++v) r1[v] += wb * cv[v];
        }
      }
      if constexpr (kPair) {
        nb += step;
#pragma GCC unroll 8
        for (int64_t v = 0; v < NV; ++v) cv[v] = load(nb + v * L);
        const Vec<T> wb = broadcast(w + 2 * R * kTileWidth + d);
#pragma GCC unroll 8
        for (int64_t v = 0; v < NV; ++v) r1[v] += wb * cv[v];
      }
    }
    const Vec<T> s0 = Vec<T>{} + inv_sum[p];
#pragma GCC unroll 8
    for (int64_t v = 0; v < NV; ++v) store(out_t + p * out_pitch + c0 + v * L, r0[v] * s0);
    if constexpr (kPair) {
      const Vec<T> s1 = Vec<T>{} + inv_sum[p + d];
#pragma GCC unroll 8
      for (int64_t v = 0; v < NV; ++v) {
        store(out_t + (p + d) * out_pitch + c0 + v * L, r1[v] * s1);
      }
    }
  };
  auto positions = [&](int64_t first_vector, auto vectors) {
    const int64_t c0 = first_vector * L;
    // Blocks of 2·dilation positions: pairs (q, q + dilation) for the first dilation of them.
    int64_t p = 0;
    for (; p + 2 * d <= seg.n; p += 2 * d) {
      for (int64_t q = p; q < p + d; ++q) pass(q, std::true_type{}, c0, vectors);
    }
    for (; p < seg.n; ++p) pass(p, std::false_type{}, c0, vectors);
  };
  // Channel vectors in groups of CV: positions(first vector, group size).
  for_each_group<CV>(rows.cpad / L, positions);
}

// The forward of one call: pattern, content and out NCHW- or NHWC-contiguous, each in its own
// layout (rows.h, Planes), lse (B, H, W).
template <typename T>
void forward_kernel(const at::Tensor& pattern, const at::Tensor& content, at::Tensor& out,
                    at::Tensor& lse, int64_t kernel_size, int64_t dilation, double scale) {
  const Geometry g(content, kernel_size, dilation);
  const int64_t plane = g.height * g.width;
  const int64_t kk = kernel_size * kernel_size;
  const HalfWindow half(g.radius);
  const Planes<const T> xs_src(pattern, pattern.const_data_ptr<T>());
  const Planes<const T> cs(content, content.const_data_ptr<T>());
  const Planes<T> ys(out, out.mutable_data_ptr<T>());
  const int64_t cc = cs.channels;
  T* lse_ptr = lse.mutable_data_ptr<T>();
  const T s = static_cast<T>(scale);
  const int64_t reach = g.radius * g.dilation;
  const int64_t grain = row_grain(g, kernel_size, xs_src.channels + cc);
  const bool channels_last = use_channels_last<T>(cc);
  const int64_t cpad = padded_channels<T>(cc);
  // The channels-last gather writes an NHWC output in place when no channel is padding.
  const bool in_place = channels_last && ys.channels_last && cpad == cc;

  at::parallel_for(0, g.batch * g.height, grain, [&](int64_t first, int64_t last) {
    const int64_t n_forward = static_cast<int64_t>(half.forward.size());
    const bool planes = !channels_last && cs.channels_last;  // NHWC content, pixel-row gather
    Workspace<T> ws(
        LogitRing<T>::elements(g, n_forward) +
            ChannelRows<T>::elements(xs_src.channels, reach + 1, ring_margin(g),
                                     g.tiles * kTileWidth) +
            (channels_last ? ContentRows<T>::elements(g, cc) : 0) +
            (planes ? ChannelRows<T>::elements(cc, 2 * reach + 1, 0, g.width) : 0),
        pattern.options());
    LogitRing<T> ring(g, n_forward, ws);
    ChannelRows<T> xs(xs_src, reach + 1, ring_margin(g), g.tiles * kTileWidth, ws);
    Scratch<T> weights(kk * kTileWidth), inv_sum(kTileWidth);
    std::vector<const T*> logit(kk);
    std::vector<T*> weight_row(kk);  // where the softmax writes the weights of offset o
    std::vector<int64_t> delta;      // the pixel-row gather's neighbour distances (Source)
    delta.reserve(kk);
    // The channels-last gather reads the weights by window offset, row (a + r)·k + b + r.
    std::optional<ContentRows<T>> content_rows;
    std::optional<ChannelRows<T>> content_planes;  // NHWC content, gathered by pixel rows
    // Channels-last gather: its output rows; pixel-row gather: NHWC output's channel rows.
    std::optional<Scratch<T>> out_t;
    std::vector<const T*> window_rows(kernel_size);
    if (channels_last) {
      content_rows.emplace(g, cs, ws);
      if (!in_place) out_t.emplace(kTileWidth * cpad);
    } else {
      if (planes) content_planes.emplace(cs, 2 * reach + 1, 0, g.width, ws);
      if (ys.channels_last) out_t.emplace(kTileWidth * cc);
    }
    Segment seg;
    int64_t computed_b = -1, computed_h = -1;  // last row whose forward logits are in the ring
    for (int64_t row = first; row < last; ++row) {
      const int64_t b = row / g.height, h = row % g.height;
      if (b != computed_b) computed_h = std::max<int64_t>(h - reach, 0) - 1;  // warm up
      for (int64_t hh = computed_h + 1; hh <= h; ++hh) {
        forward_logits_row(g, xs, half, ring, s, b, hh);
      }
      computed_b = b;
      computed_h = h;
      if (content_planes) {
        content_planes->advance(b, std::max<int64_t>(h - reach, 0),
                                std::min(h + reach, g.height - 1));
      }
      for (int64_t tile = 0; tile < g.tiles; ++tile) {
        g.segment<T>((b * g.height + h) * g.tiles + tile, seg);
        // The channels-last gather reads every column of each window row in the image; when
        // some have no valid position in this segment (images narrower than the window), their
        // rows must read zero weights.
        const int64_t rows_in_image =
            (seg.offsets.back().rows - seg.offsets.front().rows) / g.dilation + 1;
        if (channels_last &&
            static_cast<int64_t>(seg.offsets.size()) < rows_in_image * kernel_size) {
          std::fill(weights.data(), weights.data() + kk * kTileWidth, T(0));
        }
        for (size_t o = 0; o < seg.offsets.size(); ++o) {
          const Offset& off = seg.offsets[o];
          const int64_t a = off.rows / g.dilation, bo = off.cols / g.dilation;
          const int64_t slot = (a + g.radius) * kernel_size + bo + g.radius;
          const int64_t f = half.index[slot];
          logit[o] = HalfWindow::is_forward(a, bo) ? ring.at(h, f, seg.w0)
                                                   : ring.at(h + off.rows, f, seg.w0 + off.cols);
          weight_row[o] = weights.data() + (channels_last ? slot : o) * kTileWidth;
        }
        constexpr int64_t V = 2, B = V * kLanes<T>;
        for (int64_t p0 = 0; p0 < seg.padded_n; p0 += B) {
          block_softmax<V>(seg, logit.data(), weight_row.data(), p0, inv_sum.data(),
                           lse_ptr + b * plane + h * g.width + seg.w0);
        }
        if (channels_last) {
          if (tile == 0) content_rows->advance(b, h);
          T* y = ys.at(b, h, seg.w0);
          gather_channels_last(seg, g, *content_rows, weights.data(), inv_sum.data(),
                               in_place ? y : out_t->data(), in_place ? cc : cpad,
                               window_rows.data());
          if (in_place) continue;
          const T* from = out_t->data();
          if (!ys.channels_last) {
            transpose(from, cpad, y, plane, seg.n, cc);
          } else {
            for (int64_t p = 0; p < seg.n; ++p) {
              std::memcpy(y + p * cc, from + p * cpad, cc * sizeof(T));
            }
          }
        } else {
          const Source<T> src =
              content_planes
                  ? Source<T>(
                        cc, content_planes->pitch, seg,
                        [&](int64_t dr) { return content_planes->row(h + dr); }, delta)
                  : Source<T>(
                        cc, plane, seg, [&](int64_t dr) { return cs.at(b, h + dr, 0); }, delta);
          gather_into(ys, seg, out_t ? out_t->data() : nullptr, [&](T* o, int64_t stride) {
            gather_rows(o, stride, const_cast<const T* const*>(weight_row.data()), src, seg,
                        static_cast<const T*>(inv_sum.data()));
          });
        }
      }
    }
  });
}

}  // namespace

void forward_rows(const at::Tensor& pattern, const at::Tensor& content, at::Tensor& out,
                  at::Tensor& lse, int64_t kernel_size, int64_t dilation, double scale) {
  AT_DISPATCH_FLOATING_TYPES(content.scalar_type(), "local_correlation_forward_cpu", [&] {
    forward_kernel<scalar_t>(pattern, content, out, lse, kernel_size, dilation, scale);
  });
}

}  // namespace lcblock::cpu
