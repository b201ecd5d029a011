// CPU backward of the local correlation op (docs/cpu_kernels.md): every gradient is a gather over
// the window of the pixel it belongs to, and every product of a pixel pair is computed once.
//
// For a pair (i, j = i + δ) the backward needs three dot products: the logit s·<x_i, x_j>,
// A = <dy_i, c_j> and B = <dy_j, c_i>. Seen from j (offset −δ) the same pair has the same logit,
// and A and B swap roles. So does its coefficient in dx:
//   coef_ij = s·(w_ij(A − D_i) + w_ji(B − D_j)) = coef_ji,
// with w_ij = exp(logit − L_i) (i's softmax weight of j), w_ji = exp(logit − L_j) and
// D_i = <dy_i, y_i>. As in the forward (rows.h, HalfWindow), a thread walks a range of rows of
// one image top to bottom and computes, for each row, the pairs of the forward half of the
// window only: coef, w_ij and w_ji per pixel and forward offset, kept in rings of the last
// radius·dilation + 1 rows. Then two gathers per row segment, over the whole window:
//   dx_i = Σ_{j∈Ω_i} coef_ij · x_j;   dc_i = Σ_{j∈Ω_i} w_ji · dy_j,
// reading a forward offset's values at i and a backward offset's at its mirror j = i − δ.
// Gathers only, no atomics: every output element is summed in one fixed order whatever the
// thread count, and the operands are read through the same (C, pitch) row copies whatever
// their layout, so the result is bitwise the same for any thread count and either layout.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels.h"
#include "rows.h"

namespace lcblock::cpu {
namespace {

// Forward window offsets per pass of the three dot products (each shares the pixel's own rows).
constexpr int kPairOffsets = 4;

// Per-thread state of the backward: row copies of the operands and the rings of pair values.
template <typename T>
struct PairRows {
  const Geometry& g;
  const HalfWindow& half;
  int64_t reach, padded_w;
  ChannelRows<T> xs, dys, cs, ys;
  LogitRing<T> coef, w_ij, w_ji;  // per forward offset; w_ij doubles as the logit's scratch
  LogitRing<T> ds, ls;            // D and L of rows h .. h + reach (one "offset")
  const T* lse;
  T scale;
  int64_t dl_b = -1, dl_hi = -1;  // D, L rows up to dl_hi of image dl_b are in ds, ls

  // Workspace elements of the rings.
  static int64_t elements(const Geometry& g, const HalfWindow& half, int64_t cp, int64_t cc) {
    const int64_t reach = g.radius * g.dilation, m = ring_margin(g), w = g.tiles * kTileWidth;
    const int64_t n_forward = static_cast<int64_t>(half.forward.size());
    return ChannelRows<T>::elements(cp, 2 * reach + 1, m, w) +
           ChannelRows<T>::elements(cc, 2 * reach + 1, m, w) +
           ChannelRows<T>::elements(cc, reach + 1, m, w) + ChannelRows<T>::elements(cc, 1, m, w) +
           3 * LogitRing<T>::elements(g, n_forward) + 2 * LogitRing<T>::elements(g, 1);
  }
  // The rings come zeroed from ws: D and L are read at neighbours up to a margin off the row,
  // finite values there (their lanes are masked in the gathers).
  PairRows(const Geometry& g_, const HalfWindow& half_, const Planes<const T>& x,
           const Planes<const T>& dy, const Planes<const T>& c, const Planes<const T>& y,
           const T* lse_, T scale_, Workspace<T>& ws)
      : g(g_),
        half(half_),
        reach(g_.radius * g_.dilation),
        padded_w(padded_to_steps<T>(g_.width)),
        xs(x, 2 * reach + 1, ring_margin(g_), g_.tiles * kTileWidth, ws),
        dys(dy, 2 * reach + 1, ring_margin(g_), g_.tiles * kTileWidth, ws),
        cs(c, reach + 1, ring_margin(g_), g_.tiles * kTileWidth, ws),
        ys(y, 1, ring_margin(g_), g_.tiles * kTileWidth, ws),
        coef(g_, static_cast<int64_t>(half_.forward.size()), ws),
        w_ij(g_, static_cast<int64_t>(half_.forward.size()), ws),
        w_ji(g_, static_cast<int64_t>(half_.forward.size()), ws),
        ds(g_, 1, ws),
        ls(g_, 1, ws),
        lse(lse_),
        scale(scale_) {}

  // D and L of rows [lo, hi] of image b.
  void advance_dl(int64_t b, int64_t lo, int64_t hi) {
    if (b != dl_b || lo > dl_hi) dl_b = b, dl_hi = lo - 1;
    for (int64_t r = std::max(dl_hi + 1, lo); r <= hi; ++r) {
      ys.advance(b, r, r);
      dot_rows(ds.at(r, 0, 0), dys.row(r), ys.row(r), ys.src.channels, ys.pitch, padded_w);
      std::memcpy(ls.at(r, 0, 0), lse + (b * g.height + r) * g.width, g.width * sizeof(T));
    }
    dl_hi = std::max(dl_hi, hi);
  }

  // The pair values of image row h for every column and every forward offset whose neighbour
  // row is inside the image: coef, w_ij and w_ji into the rings.
  void pairs_row(int64_t b, int64_t h) {
    constexpr int64_t L = kLanes<T>, V = 2, B = V * L;
    const int64_t hi = std::min(h + reach, g.height - 1);
    xs.advance(b, h, hi);
    dys.advance(b, h, hi);
    cs.advance(b, h, hi);
    advance_dl(b, h, hi);
    const T* xi = xs.row(h);
    const T* dyi = dys.row(h);
    const T* ci = cs.row(h);
    const T* li = ls.at(h, 0, 0);
    const T* di = ds.at(h, 0, 0);
    const int64_t cp = xs.src.channels, cc = cs.src.channels, pitch = xs.pitch;
    int64_t n_valid = 0;
    while (n_valid < static_cast<int64_t>(half.forward.size()) &&
           h + half.forward[n_valid].a * g.dilation < g.height) {
      ++n_valid;  // `forward` is ordered by a
    }
    const T s = scale;
    auto group = [&](int64_t f, auto size) {
      constexpr int N = decltype(size)::value;
      T* lg[N];
      T* qa[N];
      T* qb[N];
      const T* xj[N];
      const T* cj[N];
      const T* dyj[N];
      const T* lj[N];
      const T* dj[N];
      int64_t lo[N], hi[N];  // pixels i of the row whose neighbour i + δ is in the image
      for (int k = 0; k < N; ++k) {
        const HalfWindow::Forward& off = half.forward[f + k];
        const int64_t row = h + off.a * g.dilation, col = off.b * g.dilation;
        lg[k] = w_ij.at(h, f + k, 0);
        qa[k] = coef.at(h, f + k, 0);
        qb[k] = w_ji.at(h, f + k, 0);
        xj[k] = xs.row(row) + col;
        cj[k] = cs.row(row) + col;
        dyj[k] = dys.row(row) + col;
        lj[k] = ls.at(row, 0, col);
        dj[k] = ds.at(row, 0, col);
        lo[k] = std::max<int64_t>(0, -col);
        hi[k] = std::min(g.width, g.width - col);
      }
      for (int64_t p0 = 0; p0 < padded_w; p0 += B) {
        dot_rows<N, V>(lg, xi, xj, cp, pitch, p0 + B, p0, s);  // the logit, scaled
        dot_rows<N, V>(qa, dyi, cj, cc, pitch, p0 + B, p0);    // A = <dy_i, c_j>
        dot_rows<N, V>(qb, ci, dyj, cc, pitch, p0 + B, p0);    // B = <dy_j, c_i>
        for (int k = 0; k < N; ++k) {
#pragma GCC unroll 2
          for (int64_t p = p0; p < p0 + B; p += L) {
            const Vec<T> l = load(lg[k] + p);
            const Vec<T> wi = exp_vec(l - load(li + p));
            const Vec<T> wj = exp_vec(l - load(lj[k] + p));
            Vec<T> c =
                s * (wi * (load(qa[k] + p) - load(di + p)) + wj * (load(qb[k] + p) - load(dj[k] + p)));
            if (p < lo[k] || p + L > hi[k]) {  // zero where i or i + δ is outside the image
              const auto inside = lane_mask<T>(lo[k] - p, hi[k] - p);
              const Vec<T> zero = {};
              store(lg[k] + p, inside ? wi : zero);
              store(qa[k] + p, inside ? c : zero);
              store(qb[k] + p, inside ? wj : zero);
              continue;
            }
            store(lg[k] + p, wi);
            store(qa[k] + p, c);
            store(qb[k] + p, wj);
          }
        }
      }
    };
    for_each_group<kPairOffsets>(n_valid, group);
  }
};

template <typename T>
void backward_kernel(const at::Tensor& grad_out_, const at::Tensor& pattern,
                     const at::Tensor& content, const at::Tensor& out_, const at::Tensor& lse,
                     at::Tensor& grad_pattern, at::Tensor& grad_content, int64_t kernel_size,
                     int64_t dilation, double scale) {
  const Geometry g(content, kernel_size, dilation);
  const HalfWindow half(g.radius);
  const at::Tensor grad_out = dense(grad_out_), out = dense(out_);
  const Planes<const T> x(pattern, pattern.const_data_ptr<T>());
  const Planes<const T> c(content, content.const_data_ptr<T>());
  const Planes<const T> dy(grad_out, grad_out.const_data_ptr<T>());
  const Planes<const T> y(out, out.const_data_ptr<T>());
  const Planes<T> dx(grad_pattern, grad_pattern.mutable_data_ptr<T>());
  const Planes<T> dc(grad_content, grad_content.mutable_data_ptr<T>());
  const T* lse_ptr = lse.const_data_ptr<T>();
  const int64_t cp = x.channels, cc = c.channels, kk = kernel_size * kernel_size;
  const int64_t reach = g.radius * g.dilation;
  const T s = static_cast<T>(scale);
  const int64_t grain = row_grain(g, kernel_size, cp + cc);

  at::parallel_for(0, g.batch * g.height, grain, [&](int64_t first, int64_t last) {
    Workspace<T> ws(PairRows<T>::elements(g, half, cp, cc), pattern.options());
    PairRows<T> pr(g, half, x, dy, c, y, lse_ptr, s, ws);
    // Channel rows of the segment's gradients, transposed into NHWC gradients.
    Scratch<T> nhwc_rows(std::max(dx.channels_last ? cp : 0, dc.channels_last ? cc : 0) *
                         kTileWidth);
    std::vector<const T*> coef_rows(kk), w_rows(kk);
    std::vector<int64_t> x_delta, dy_delta;  // Source's neighbour distances, per segment
    x_delta.reserve(kk);
    dy_delta.reserve(kk);
    Segment seg;
    int64_t computed_b = -1, computed_h = -1;  // last row whose pairs are in the rings
    for (int64_t row = first; row < last; ++row) {
      const int64_t b = row / g.height, h = row % g.height;
      if (b != computed_b) computed_h = std::max<int64_t>(h - reach, 0) - 1;  // warm up
      for (int64_t hh = computed_h + 1; hh <= h; ++hh) pr.pairs_row(b, hh);
      computed_b = b;
      computed_h = h;
      for (int64_t tile = 0; tile < g.tiles; ++tile) {
        g.segment<T>((b * g.height + h) * g.tiles + tile, seg);
        // Every block takes the gathers' unmasked path: the pair values are zero wherever a
        // pixel or its neighbour is outside the image (pairs_row; the rings' margins are zero),
        // and the operands are read from row copies whose margins are zero, so what the masks
        // would drop adds exact zeros (measured against the masked path: the gradients differ by
        // float32 rounding only, docs/cpu_kernels.md).
        seg.inner_begin = 0;
        seg.inner_end = seg.padded_n;
        for (size_t o = 0; o < seg.offsets.size(); ++o) {
          const Offset& off = seg.offsets[o];
          const int64_t a = off.rows / g.dilation, bo = off.cols / g.dilation;
          const int64_t f = half.index[(a + g.radius) * kernel_size + bo + g.radius];
          if (HalfWindow::is_forward(a, bo)) {  // the pair (i, i + δ), kept at i
            coef_rows[o] = pr.coef.at(h, f, seg.w0);
            w_rows[o] = pr.w_ji.at(h, f, seg.w0);
          } else {  // the pair (j, j − δ) with j = i + δ, kept at j: j's weight of i is w_ij
            coef_rows[o] = pr.coef.at(h + off.rows, f, seg.w0 + off.cols);
            w_rows[o] = pr.w_ij.at(h + off.rows, f, seg.w0 + off.cols);
          }
        }
        const Source<T> x_src(
            cp, pr.xs.pitch, seg, [&](int64_t dr) { return pr.xs.row(h + dr); }, x_delta);
        const Source<T> dy_src(
            cc, pr.dys.pitch, seg, [&](int64_t dr) { return pr.dys.row(h + dr); }, dy_delta);
        gather_into(dx, seg, nhwc_rows.data(), [&](T* o, int64_t stride) {
          gather_rows(o, stride, static_cast<const T* const*>(coef_rows.data()), x_src, seg);
        });
        gather_into(dc, seg, nhwc_rows.data(), [&](T* o, int64_t stride) {
          gather_rows(o, stride, static_cast<const T* const*>(w_rows.data()), dy_src, seg);
        });
      }
    }
  });
}

}  // namespace

void backward_rows(const at::Tensor& grad_out, const at::Tensor& pattern, const at::Tensor& content,
                   const at::Tensor& out, const at::Tensor& lse, at::Tensor& grad_pattern,
                   at::Tensor& grad_content, int64_t kernel_size, int64_t dilation, double scale) {
  AT_DISPATCH_FLOATING_TYPES(content.scalar_type(), "local_correlation_backward_cpu", [&] {
    backward_kernel<scalar_t>(grad_out, pattern, content, out, lse, grad_pattern, grad_content,
                              kernel_size, dilation, scale);
  });
}

}  // namespace lcblock::cpu
