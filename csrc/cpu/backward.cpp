// CPU backward of the local correlation op (docs/DESIGN.md, 'CPU kernels'): every gradient is a
// gather over the window of the pixel it belongs to. Work items are independent row segments;
// per window offset three dot products (the logit, <dy_i, c_j> and <dy_j, c_i>), then two
// gathers (dx and dc). Operands are read from (B, H, C, W) copies made from NCHW or NHWC
// inputs; the gradients are written in their own layout (rows.h, gather_into).
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

// Window offsets whose dot products share one pass over the pixel's own features.
constexpr int kGroup = 4;

// The backward reads its operands from copies laid out (B, H, C, W) (the forward copies only
// the rows it needs, see PatternRows and ContentRows): the C channel rows of an image row are
// contiguous. In NCHW the rows a dot product walks lie H·W elements apart, which for 128×128
// float maps is 64 KiB, so they all fall into the same L1/L2 cache set and the prefetcher sees
// C separate streams; here they are one contiguous block. Zeroed guards before and after the
// data let whole register blocks read past a segment's valid span (at most
// radius·dilation + kTileWidth elements): those lanes are computed and then masked, which keeps
// every loop free of scalar tails.
struct RowMajor {
  at::Tensor buffer;
  int64_t guard, channels, height, width;
  int64_t pitch;  // elements from one channel row to the next (>= width, see row_pitch_for)

  int64_t row_pitch() const { return channels * pitch; }
  // Linear distance to the neighbour at `off`, in this tensor's layout.
  int64_t delta(const Offset& off) const { return off.rows * row_pitch() + off.cols; }
  // Channel 0 of pixel (b, h, w).
  template <typename T>
  const T* at(int64_t b, int64_t h, int64_t w) const {
    return buffer.const_data_ptr<T>() + guard + (b * height + h) * row_pitch() + w;
  }
  template <typename T>
  T* mutable_at(int64_t b, int64_t h, int64_t w) {
    return buffer.mutable_data_ptr<T>() + guard + (b * height + h) * row_pitch() + w;
  }
};

// An uninitialised (B, H, C, W) buffer with zeroed guards; the padding after each channel row
// is zeroed by whoever fills the rows.
RowMajor row_major_empty(at::IntArrayRef bchw, const at::TensorOptions& options, int64_t guard) {
  const int64_t pitch = row_pitch_for(bchw[3], options.dtype().itemsize());
  const int64_t body = bchw[0] * bchw[1] * bchw[2] * pitch;
  RowMajor r{at::empty({2 * guard + body}, options), guard, bchw[1], bchw[2], bchw[3], pitch};
  r.buffer.narrow(0, 0, guard).zero_();
  r.buffer.narrow(0, guard + body, guard).zero_();
  return r;
}

// A copy of `t` (NCHW or NHWC, see dense) laid out (B, H, C, W): per image row, C row copies
// from NCHW or one transpose from NHWC.
template <typename T>
RowMajor row_major_copy(const at::Tensor& t, int64_t guard) {
  const at::Tensor src = dense(t);
  const Planes<const T> from(src, src.const_data_ptr<T>());
  RowMajor r = row_major_empty(t.sizes(), t.options(), guard);
  T* to = r.buffer.mutable_data_ptr<T>() + guard;
  const int64_t height = from.height, width = from.width, pitch = r.pitch;
  at::parallel_for(0, t.size(0) * height, 16, [&](int64_t first, int64_t last) {
    for (int64_t bh = first; bh < last; ++bh) {
      T* rows = to + bh * from.channels * pitch;
      from.copy_row_to(bh / height, bh % height, rows, pitch);
      for (int64_t c = 0; c < from.channels; ++c) {
        std::fill(rows + c * pitch + width, rows + (c + 1) * pitch, T(0));
      }
    }
  });
  return r;
}

// A multiple of 64 elements, so that segment starts keep the buffer's cache-line alignment.
inline int64_t guard_for(const Geometry& g) {
  return (g.radius * g.dilation + kTileWidth + 64 + 63) / 64 * 64;
}

template <typename T>
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& pattern,
                     const at::Tensor& content, const at::Tensor& out, const at::Tensor& lse,
                     at::Tensor& grad_pattern, at::Tensor& grad_content, int64_t kernel_size,
                     int64_t dilation, double scale) {
  constexpr int64_t L = kLanes<T>;
  const Geometry g(content, kernel_size, dilation);
  const int64_t cp = pattern.size(1), cc = content.size(1);
  const int64_t kk = kernel_size * kernel_size;
  const int64_t guard = guard_for(g);
  const RowMajor xs = row_major_copy<T>(pattern, guard), cs = row_major_copy<T>(content, guard);
  const RowMajor dys = row_major_copy<T>(grad_out, guard), ys = row_major_copy<T>(out, guard);
  // D_i = <dy_i, y_i> and L_i, needed at i and at every neighbour of i; (B, H, 1, W) layout.
  const RowMajor ls = row_major_copy<T>(lse.unsqueeze(1), guard);
  RowMajor ds = row_major_empty({g.batch, 1, g.height, g.width}, lse.options(), guard);
  at::parallel_for(0, g.batch * g.height, 1, [&](int64_t first, int64_t last) {
    std::vector<T> d((g.width + kBlock<T> - 1) / kBlock<T> * kBlock<T>);
    for (int64_t row = first; row < last; ++row) {
      const int64_t b = row / g.height, h = row % g.height;
      dot_rows(d.data(), dys.at<T>(b, h, 0), ys.at<T>(b, h, 0), cc, dys.pitch,
               static_cast<int64_t>(d.size()));
      T* d_row = ds.mutable_at<T>(b, h, 0);
      std::copy(d.begin(), d.begin() + g.width, d_row);
      std::fill(d_row + g.width, d_row + ds.pitch, T(0));
    }
  });
  const Planes<T> dx(grad_pattern, grad_pattern.mutable_data_ptr<T>());
  const Planes<T> dc(grad_content, grad_content.mutable_data_ptr<T>());
  const T s = static_cast<T>(scale);

  at::parallel_for(0, g.items(), 1, [&](int64_t first, int64_t last) {
    // Per offset o and segment position p, with j = i + delta_o:
    //   w_ji[o][p] = exp(logit_ij − L_j)   (the neighbour's softmax weight of i)
    //   coef[o][p] = s·(w_ij(<dy_i, c_j> − D_i) + w_ji(<dy_j, c_i> − D_j))
    Scratch<T> w_ji(kk * kTileWidth), coef(kk * kTileWidth);
    Scratch<T> logit(kGroup * kTileWidth), dy_i_c_j(kGroup * kTileWidth);
    Scratch<T> dy_j_c_i(kGroup * kTileWidth);
    // Channel rows of the segment's gradients, transposed into NHWC gradients.
    Scratch<T> nhwc_rows(std::max(dx.channels_last ? cp : 0, dc.channels_last ? cc : 0) *
                         kTileWidth);
    Segment seg;
    for (int64_t item = first; item < last; ++item) {
      g.segment<T>(item, seg);
      const T* xi = xs.at<T>(seg.b, seg.h, seg.w0);
      const T* ci = cs.at<T>(seg.b, seg.h, seg.w0);
      const T* dyi = dys.at<T>(seg.b, seg.h, seg.w0);
      const T* lse_i = ls.at<T>(seg.b, seg.h, seg.w0);
      const T* d_i = ds.at<T>(seg.b, seg.h, seg.w0);
      // The three dot products of up to kGroup offsets at once (each shares its `a` row).
      auto dots = [&](int64_t o, auto group) {
        constexpr int G = decltype(group)::value;
        T* lg[G];
        T* qj[G];
        T* qi[G];
        const T* xj[G];
        const T* cj[G];
        const T* dyj[G];
        for (int k = 0; k < G; ++k) {
          lg[k] = logit.data() + k * kTileWidth;
          qj[k] = dy_i_c_j.data() + k * kTileWidth;
          qi[k] = dy_j_c_i.data() + k * kTileWidth;
          xj[k] = xi + xs.delta(seg.offsets[o + k]);
          cj[k] = ci + cs.delta(seg.offsets[o + k]);
          dyj[k] = dyi + dys.delta(seg.offsets[o + k]);
        }
        dot_rows<G>(lg, xi, xj, cp, xs.pitch, seg.padded_n);
        dot_rows<G>(qj, dyi, cj, cc, dys.pitch, seg.padded_n);
        dot_rows<G>(qi, ci, dyj, cc, cs.pitch, seg.padded_n);
      };
      // Per group of up to kGroup offsets: the dot products, then per offset the weights and
      // coefficients.
      for_each_group<kGroup>(static_cast<int64_t>(seg.offsets.size()), [&](int64_t o0, auto group) {
        dots(o0, group);
        for (int k = 0; k < decltype(group)::value; ++k) {
          const int64_t o = o0 + k;
          const int64_t d1 = ls.delta(seg.offsets[o]);
          const T* lg = logit.data() + k * kTileWidth;
          const T* qj = dy_i_c_j.data() + k * kTileWidth;
          const T* qi = dy_j_c_i.data() + k * kTileWidth;
          T* wji = w_ji.data() + o * kTileWidth;
          T* coef_o = coef.data() + o * kTileWidth;
          for (int64_t p = 0; p < seg.padded_n; p += L) {  // lanes off the span: masked later
            const Vec<T> l = s * load(lg + p);
            const Vec<T> wij = exp_vec(l - load(lse_i + p));
            const Vec<T> wj = exp_vec(l - load(lse_i + d1 + p));
            store(wji + p, wj);
            store(coef_o + p, s * (wij * (load(qj + p) - load(d_i + p)) +
                                   wj * (load(qi + p) - load(d_i + d1 + p))));
          }
        }
      });
      // dx_i = Σ_o coef_o · x_{i+δo};   dc_i = Σ_o w_ji,o · dy_{i+δo}   (outputs NCHW or NHWC)
      auto rows_of = [&](const RowMajor& m) {
        return Source<T>(m.channels, m.pitch, seg,
                         [&](int64_t dr) { return m.at<T>(seg.b, seg.h + dr, 0); });
      };
      const Source<T> x_src = rows_of(xs), dy_src = rows_of(dys);
      gather_into(dx, seg, nhwc_rows.data(), [&](T* out, int64_t stride) {
        gather_rows(out, stride, static_cast<const T*>(coef.data()), x_src, seg);
      });
      gather_into(dc, seg, nhwc_rows.data(), [&](T* out, int64_t stride) {
        gather_rows(out, stride, static_cast<const T*>(w_ji.data()), dy_src, seg);
      });
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
