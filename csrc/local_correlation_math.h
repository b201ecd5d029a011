// Per-pixel math of the local correlation op: the CPU "pixelwise" kernels run it whole, and the
// tiled CUDA kernels (csrc/tiled/tiled_kernels.h) take its window bounds, exp/log and
// online-softmax step from here.
//
// Layout: every pointer addresses ONE image of a contiguous NCHW tensor, i.e. channel c of
// pixel p = h * W + w lives at ptr[c * H * W + p]. Sizes and linear indices are int64_t.
//
// Notation (docs/DESIGN.md, "Operator semantics"): Ω_i is the k×k window of spacing d around
// pixel i clipped to the image; logit_ij = s·<x_i, x_j>; L_i = log Σ_{j∈Ω_i} exp(logit_ij);
// w_ij = exp(logit_ij − L_i). The window is symmetric, so j ∈ Ω_i ⇔ i ∈ Ω_j: every backward sum
// is a gather over Ω_i.
//
// Where the weight formula and the border rule are implemented. A change to either (e.g. the
// border rule "out-of-image neighbours are left out of the softmax, not zero-padded", or the
// softmax of s·<x_i, x_j>) must be made in every place below; the tests compare all of them with
// the reference (tests/test_local_correlation.py).
//  1. This header: valid_offsets/valid_span (the border rule as index ranges), the streaming
//     log-sum-exp (pixel_logsumexp) and w_ij = exp(logit − L_i) at every use. Specialised for
//     one thread per pixel with nothing but registers (CUDA; the CPU pixelwise runner).
//  2. csrc/cpu/forward.cpp, block_softmax: a two-pass softmax (max, then exp and Σ) over a row
//     segment, vectorised over pixels, out-of-image neighbours masked to −inf by lane masks
//     built from Segment offsets (csrc/cpu/rows.h, Geometry::segment, which applies
//     valid_offsets/valid_span per segment). Specialised because the CPU computes each logit
//     once per pixel pair (the symmetric half window) and reads them back from a ring.
//  3. The sites that apply 1/Σ: the CPU forward leaves its weights unnormalised and multiplies
//     the gathered output by 1/Σ, in gather_channels_last (forward.cpp) and through row_scale
//     in gather_rows (csrc/cpu/rows.h). Specialised to save one multiply per weight.
//  4. csrc/cpu/backward.cpp: each pixel pair's logit, <dy_i, c_j> and <dy_j, c_i> computed once
//     over the forward half of the window; w_ij = exp(logit − L_i), w_ji = exp(logit − L_j) and
//     the shared dx coefficient kept in row rings, then gathered over the whole window
//     (docs/cpu_kernels.md). Out-of-image lanes masked in the gathers (gather_channels).
//  5. csrc/tiled/tiled_kernels.h: the CUDA block code. Window bounds from valid_offsets, the
//     online-softmax step from softmax_rescale; out-of-image neighbours are zeros in the staged
//     regions and are skipped by the same bounds. Specialised for shared-memory tiles.
//  6. lcblock_cuda/reference.py: F.unfold with an in-image mask and masked_fill(−inf) before
//     torch.logsumexp. The test oracle: written for reading, not speed.
// The window itself is clamped to the image before any of these run (csrc/checks.h,
// effective_kernel_size; lcblock_cuda/_checks.py for Python): this changes no result.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LC_HD __host__ __device__ __forceinline__
#else
#define LC_HD inline
#endif

namespace lcblock {

// Output channels accumulated in registers per pass over the window; the window's dot
// products are recomputed once per chunk (LCNet's squeezed widths 9, 18, 36 need 1-2 passes).
constexpr int kChannelChunk = 32;

// Valid window offsets along one axis: the a ∈ [-radius, radius] with
// 0 <= pos + a·dilation < size, returned as the inclusive range [lo, hi].
// pos + a·d >= 0  ⇔  a >= -floor(pos / d);   pos + a·d <= size − 1  ⇔  a <= floor((size−1−pos) /
// d). One body for 64-bit (per-pixel kernels) and 32-bit indices (tiled CUDA kernels, where 64-bit
// division costs registers).
template <typename I>
LC_HD void valid_offsets_of(I pos, I size, I radius, I dilation, I& lo, I& hi) {
  const I below = pos / dilation;
  const I above = (size - 1 - pos) / dilation;
  lo = below < radius ? -below : -radius;
  hi = above < radius ? above : radius;
}
LC_HD void valid_offsets(int64_t pos, int64_t size, int64_t radius, int64_t dilation, int64_t& lo,
                         int64_t& hi) {
  valid_offsets_of<int64_t>(pos, size, radius, dilation, lo, hi);
}
LC_HD void valid_offsets(int pos, int size, int radius, int dilation, int& lo, int& hi) {
  valid_offsets_of<int>(pos, size, radius, dilation, lo, hi);
}

// Positions p ∈ [0, size) whose neighbour p + shift is inside [0, size): [begin, end).
LC_HD void valid_span(int64_t shift, int64_t size, int64_t& begin, int64_t& end) {
  begin = shift < 0 ? -shift : 0;
  end = shift > 0 ? size - shift : size;
  if (end < begin) end = begin;
}

LC_HD float lc_exp(float v) { return ::expf(v); }
LC_HD double lc_exp(double v) { return ::exp(v); }
LC_HD float lc_log(float v) { return ::logf(v); }
LC_HD double lc_log(double v) { return ::log(v); }

// Online softmax step: moves the running maximum of (max_logit, sum = Σ exp(logit − max_logit))
// up to new_max when that is larger, rescaling sum, and returns the factor by which every
// accumulator of exp(logit − max_logit)-weighted terms must be multiplied (1 when unchanged;
// 0 when the running maximum was −∞, i.e. nothing was accumulated yet).
template <typename acc_t>
LC_HD acc_t softmax_rescale(acc_t& max_logit, acc_t& sum, acc_t new_max) {
  if (!(new_max > max_logit)) return acc_t(1);
  const acc_t factor = lc_exp(max_logit - new_max);
  sum = sum * factor;
  max_logit = new_max;
  return factor;
}

// One image of the problem. scalar_t is the storage type, acc_t the accumulation type
// (at::opmath_type<scalar_t>: float for half/bfloat16/float, double for double).
template <typename scalar_t, typename acc_t>
struct Image {
  const scalar_t* pattern;  // (Cp, H, W)
  const scalar_t* content;  // (Cc, H, W)
  int64_t pattern_channels;
  int64_t content_channels;
  int64_t height;
  int64_t width;
  int64_t radius;
  int64_t dilation;
  acc_t scale;

  LC_HD int64_t plane() const { return height * width; }
};

// A whole batch: the same fields, with pointers to image 0 and the batch size.
template <typename scalar_t, typename acc_t>
struct Problem {
  Image<scalar_t, acc_t> first;
  int64_t batch;

  LC_HD Image<scalar_t, acc_t> image(int64_t b) const {
    Image<scalar_t, acc_t> im = first;
    im.pattern += b * first.pattern_channels * first.plane();
    im.content += b * first.content_channels * first.plane();
    return im;
  }
};

// <a_p, b_q> over `channels` channels of two (C, H, W) images (possibly the same one).
template <typename scalar_t, typename acc_t>
LC_HD acc_t channel_dot(const scalar_t* a, int64_t p, const scalar_t* b, int64_t q,
                        int64_t channels, int64_t plane) {
  acc_t sum = acc_t(0);
  for (int64_t c = 0; c < channels; ++c) {
    sum += static_cast<acc_t>(a[c * plane + p]) * static_cast<acc_t>(b[c * plane + q]);
  }
  return sum;
}

// Calls f(j) for every neighbour j (linear pixel index) in Ω_i of pixel (h, w).
template <typename scalar_t, typename acc_t, typename F>
LC_HD void for_each_neighbour(const Image<scalar_t, acc_t>& im, int64_t h, int64_t w, F&& f) {
  int64_t a_lo, a_hi, b_lo, b_hi;
  valid_offsets(h, im.height, im.radius, im.dilation, a_lo, a_hi);
  valid_offsets(w, im.width, im.radius, im.dilation, b_lo, b_hi);
  for (int64_t a = a_lo; a <= a_hi; ++a) {
    const int64_t row = (h + a * im.dilation) * im.width;
    for (int64_t b = b_lo; b <= b_hi; ++b) {
      f(row + w + b * im.dilation);
    }
  }
}

// L_i by an online (streaming) log-sum-exp: one pass over the window, no k²-sized buffer.
// Ω_i always contains i itself, so the running maximum starts finite.
template <typename scalar_t, typename acc_t>
LC_HD acc_t pixel_logsumexp(const Image<scalar_t, acc_t>& im, int64_t h, int64_t w) {
  const int64_t i = h * im.width + w;
  const int64_t plane = im.plane();
  acc_t max_logit = im.scale * channel_dot<scalar_t, acc_t>(im.pattern, i, im.pattern, i,
                                                            im.pattern_channels, plane);
  acc_t sum = acc_t(0);
  for_each_neighbour(im, h, w, [&](int64_t j) {
    const acc_t logit = im.scale * channel_dot<scalar_t, acc_t>(im.pattern, i, im.pattern, j,
                                                                im.pattern_channels, plane);
    softmax_rescale(max_logit, sum, logit);
    sum += lc_exp(logit - max_logit);
  });
  return max_logit + lc_log(sum);
}

// out[c0 .. c0+CHUNK) of pixel i: Σ_j w_ij c_j, accumulated in registers.
template <int CHUNK, typename scalar_t, typename acc_t>
LC_HD void pixel_output_chunk(const Image<scalar_t, acc_t>& im, int64_t h, int64_t w, acc_t lse,
                              int64_t c0, scalar_t* out) {
  const int64_t i = h * im.width + w;
  const int64_t plane = im.plane();
  const int64_t n = im.content_channels - c0 < CHUNK ? im.content_channels - c0 : CHUNK;
  acc_t acc[CHUNK];
  for (int t = 0; t < CHUNK; ++t) acc[t] = acc_t(0);
  for_each_neighbour(im, h, w, [&](int64_t j) {
    const acc_t weight =
        lc_exp(im.scale * channel_dot<scalar_t, acc_t>(im.pattern, i, im.pattern, j,
                                                       im.pattern_channels, plane) -
               lse);
    const scalar_t* cj = im.content + c0 * plane + j;
    for (int t = 0; t < CHUNK; ++t) {
      if (t < n) acc[t] += weight * static_cast<acc_t>(cj[t * plane]);
    }
  });
  for (int t = 0; t < CHUNK; ++t) {
    if (t < n) out[(c0 + t) * plane + i] = static_cast<scalar_t>(acc[t]);
  }
}

// Forward for pixel `pixel` (= h * W + w) of one image: writes lse[pixel] and all channels of
// out at that pixel. Dot products are recomputed once per CHUNK output channels.
template <int CHUNK, typename scalar_t, typename acc_t, typename lse_t>
LC_HD void forward_pixel(const Image<scalar_t, acc_t>& im, int64_t pixel, scalar_t* out,
                         lse_t* lse) {
  const int64_t h = pixel / im.width;
  const int64_t w = pixel % im.width;
  const acc_t lse_i = pixel_logsumexp(im, h, w);
  lse[pixel] = static_cast<lse_t>(lse_i);
  for (int64_t c0 = 0; c0 < im.content_channels; c0 += CHUNK) {
    pixel_output_chunk<CHUNK>(im, h, w, lse_i, c0, out);
  }
}

// Backward inputs for one image, beside the forward's Image.
template <typename scalar_t, typename acc_t, typename lse_t>
struct Grads {
  const scalar_t* grad_out;  // dy, (Cc, H, W)
  const lse_t* lse;          // L, (H, W)
  const acc_t* delta;        // D_i = <dy_i, y_i>, (H, W)
  scalar_t* grad_pattern;    // (Cp, H, W)
  scalar_t* grad_content;    // (Cc, H, W)
};

// D_i = <dy_i, y_i> for one pixel.
template <typename scalar_t, typename acc_t>
LC_HD acc_t pixel_delta(const scalar_t* grad_out, const scalar_t* out, int64_t pixel,
                        int64_t channels, int64_t plane) {
  return channel_dot<scalar_t, acc_t>(grad_out, pixel, out, pixel, channels, plane);
}

// dx_i[c0 .. c0+CHUNK):
//   s·Σ_{j∈Ω_i} [w_ij(<dy_i, c_j> − D_i) + w_ji(<dy_j, c_i> − D_j)] · x_j
// The first term is i's own softmax, the second the softmaxes of the neighbours that see i.
template <int CHUNK, typename scalar_t, typename acc_t, typename lse_t>
LC_HD void pixel_grad_pattern_chunk(const Image<scalar_t, acc_t>& im,
                                    const Grads<scalar_t, acc_t, lse_t>& g, int64_t h, int64_t w,
                                    int64_t c0) {
  const int64_t i = h * im.width + w;
  const int64_t plane = im.plane();
  const int64_t n = im.pattern_channels - c0 < CHUNK ? im.pattern_channels - c0 : CHUNK;
  const acc_t lse_i = static_cast<acc_t>(g.lse[i]);
  const acc_t delta_i = g.delta[i];
  acc_t acc[CHUNK];
  for (int t = 0; t < CHUNK; ++t) acc[t] = acc_t(0);
  for_each_neighbour(im, h, w, [&](int64_t j) {
    const acc_t logit = im.scale * channel_dot<scalar_t, acc_t>(im.pattern, i, im.pattern, j,
                                                                im.pattern_channels, plane);
    const acc_t w_ij = lc_exp(logit - lse_i);
    const acc_t w_ji = lc_exp(logit - static_cast<acc_t>(g.lse[j]));
    const acc_t dy_i_c_j =
        channel_dot<scalar_t, acc_t>(g.grad_out, i, im.content, j, im.content_channels, plane);
    const acc_t dy_j_c_i =
        channel_dot<scalar_t, acc_t>(g.grad_out, j, im.content, i, im.content_channels, plane);
    const acc_t coef = im.scale * (w_ij * (dy_i_c_j - delta_i) + w_ji * (dy_j_c_i - g.delta[j]));
    const scalar_t* xj = im.pattern + c0 * plane + j;
    for (int t = 0; t < CHUNK; ++t) {
      if (t < n) acc[t] += coef * static_cast<acc_t>(xj[t * plane]);
    }
  });
  for (int t = 0; t < CHUNK; ++t) {
    if (t < n) g.grad_pattern[(c0 + t) * plane + i] = static_cast<scalar_t>(acc[t]);
  }
}

// dc_i[c0 .. c0+CHUNK) = Σ_{j∈Ω_i} w_ji · dy_j   (the neighbours j whose windows hold i).
template <int CHUNK, typename scalar_t, typename acc_t, typename lse_t>
LC_HD void pixel_grad_content_chunk(const Image<scalar_t, acc_t>& im,
                                    const Grads<scalar_t, acc_t, lse_t>& g, int64_t h, int64_t w,
                                    int64_t c0) {
  const int64_t i = h * im.width + w;
  const int64_t plane = im.plane();
  const int64_t n = im.content_channels - c0 < CHUNK ? im.content_channels - c0 : CHUNK;
  acc_t acc[CHUNK];
  for (int t = 0; t < CHUNK; ++t) acc[t] = acc_t(0);
  for_each_neighbour(im, h, w, [&](int64_t j) {
    const acc_t logit = im.scale * channel_dot<scalar_t, acc_t>(im.pattern, i, im.pattern, j,
                                                                im.pattern_channels, plane);
    const acc_t w_ji = lc_exp(logit - static_cast<acc_t>(g.lse[j]));
    const scalar_t* dyj = g.grad_out + c0 * plane + j;
    for (int t = 0; t < CHUNK; ++t) {
      if (t < n) acc[t] += w_ji * static_cast<acc_t>(dyj[t * plane]);
    }
  });
  for (int t = 0; t < CHUNK; ++t) {
    if (t < n) g.grad_content[(c0 + t) * plane + i] = static_cast<scalar_t>(acc[t]);
  }
}

// Backward for pixel `pixel` of one image: all channels of grad_pattern and grad_content there.
template <int CHUNK, typename scalar_t, typename acc_t, typename lse_t>
LC_HD void backward_pixel(const Image<scalar_t, acc_t>& im, const Grads<scalar_t, acc_t, lse_t>& g,
                          int64_t pixel) {
  const int64_t h = pixel / im.width;
  const int64_t w = pixel % im.width;
  for (int64_t c0 = 0; c0 < im.pattern_channels; c0 += CHUNK) {
    pixel_grad_pattern_chunk<CHUNK>(im, g, h, w, c0);
  }
  for (int64_t c0 = 0; c0 < im.content_channels; c0 += CHUNK) {
    pixel_grad_content_chunk<CHUNK>(im, g, h, w, c0);
  }
}

}  // namespace lcblock
