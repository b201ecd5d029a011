// CPU kernels of the local correlation op.
//
// Two paths:
//  * the default, row-vectorised kernels below. A work item is a segment of one image row
//    (up to kTileWidth pixels). For each in-image window offset, the segment's logits are
//    computed channel by channel, a vector of pixels at a time, with accumulators held in
//    registers; the segment's k² × kTileWidth weights stay in L1/L2 and nothing k²-sized is
//    ever stored. Work items are independent and every gradient is a gather (DESIGN.md §1),
//    so results do not depend on the thread count or schedule: bitwise reproducible.
//  * the "_pixelwise" ops: the per-pixel functions of local_correlation_math.h, i.e. exactly
//    the code the CUDA kernels run, looped over pixels. They are slow and exist for tests.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../problem.h"

namespace lcblock {
namespace {

// Pixels of a row segment: small enough that the rows one window row touches stay in L1.
constexpr int64_t kTileWidth = 64;

// ---- SIMD helpers (GCC/Clang vector extensions: AVX2 with -march=native, SSE otherwise) ----

template <typename T>
struct Simd {
  static constexpr int64_t kLanes = 32 / sizeof(T);
  typedef T Vec __attribute__((vector_size(32)));
};
template <typename T>
using Vec = typename Simd<T>::Vec;
template <typename T>
constexpr int64_t kLanes = Simd<T>::kLanes;
// Pixels per register block: eight vectors of accumulators, i.e. eight independent
// multiply-add chains, enough to cover the FMA latency. One block is a whole float segment.
constexpr int64_t kVectorsPerBlock = 8;
template <typename T>
constexpr int64_t kBlock = kVectorsPerBlock * kLanes<T>;
// Window offsets whose dot products share one pass over the pixel's own features.
constexpr size_t kGroup = 4;

template <typename T>
inline Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void store(T* p, Vec<T> v) {
  std::memcpy(p, &v, sizeof(v));
}

// Lanes [lo, hi) of a vector, as a select mask.
template <typename T>
struct MaskOf {
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> Lane;
  typedef Lane Type __attribute__((vector_size(32)));
};
template <typename T>
using Mask = typename MaskOf<T>::Type;
template <typename T>
inline Mask<T> lane_mask(int64_t lo, int64_t hi) {
  Mask<T> idx;
  for (int64_t t = 0; t < kLanes<T>; ++t) idx[t] = static_cast<typename MaskOf<T>::Lane>(t);
  return (idx >= static_cast<typename MaskOf<T>::Lane>(lo)) &
         (idx < static_cast<typename MaskOf<T>::Lane>(hi));
}

// Loads the lanes of `inside` only; the others read as 0 and their memory is never touched
// (it may lie outside the tensor).
inline Vec<float> masked_load(const float* p, Mask<float> inside) {
#if defined(__AVX2__)
  return reinterpret_cast<Vec<float>>(_mm256_maskload_ps(p, (__m256i)inside));
#else
  Vec<float> v = {};
  for (int64_t t = 0; t < kLanes<float>; ++t) v[t] = inside[t] ? p[t] : 0.0f;
  return v;
#endif
}
inline Vec<double> masked_load(const double* p, Mask<double> inside) {
#if defined(__AVX2__)
  return reinterpret_cast<Vec<double>>(_mm256_maskload_pd(p, (__m256i)inside));
#else
  Vec<double> v = {};
  for (int64_t t = 0; t < kLanes<double>; ++t) v[t] = inside[t] ? p[t] : 0.0;
  return v;
#endif
}

// exp without a libm call, on whole vectors. Range reduction x = n·ln2 + r, |r| <= ln2/2
// (n rounded to nearest by the 1.5·2^23 trick), then Cephes' degree-6 polynomial: ~2 ulp.
// x < kExpMin (≈ log of the smallest normal float) gives exactly 0, so masked logits (−inf)
// get exactly zero weight.
inline Vec<float> exp_vec(Vec<float> x) {
  constexpr float kExpMin = -87.3f, kExpMax = 88.3f, kRound = 12582912.0f;
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  typedef int32_t IVec __attribute__((vector_size(32)));
  const IVec underflow = x < kExpMin;
  x = x < kExpMin ? kExpMin : x;
  x = x > kExpMax ? kExpMax : x;
  const Vec<float> n = (x * kLog2e + kRound) - kRound;
  const Vec<float> r = (x - n * kLn2Hi) - n * kLn2Lo;
  Vec<float> p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const IVec bits = (__builtin_convertvector(n, IVec) + 127) << 23;
  Vec<float> two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  const Vec<float> zero = {};
  return underflow ? zero : p * two_n;
}
inline Vec<double> exp_vec(Vec<double> x) {  // float64 is for checking, not speed
  for (int64_t t = 0; t < kLanes<double>; ++t) x[t] = std::exp(x[t]);
  return x;
}

// ---- geometry ---------------------------------------------------------------------------

// One window offset that is at least partly inside the image for the current row segment.
struct Offset {
  int64_t rows;   // a·dilation: rows from the pixel to the neighbour
  int64_t cols;   // b·dilation: columns from the pixel to the neighbour
  int64_t begin;  // valid segment positions [begin, end), relative to the segment start
  int64_t end;
  bool partial;   // not valid on the whole segment
};

// A row segment [w0, w0 + n) of row h of image b, and its in-image window offsets.
struct Segment {
  int64_t b = 0, h = 0, w0 = 0, n = 0;
  int64_t padded_n = 0;  // n rounded up to whole register blocks
  std::vector<Offset> offsets;
};

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
    s.padded_n = (s.n + kBlock<T> - 1) / kBlock<T> * kBlock<T>;
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
  }
};

// ---- operand copies ---------------------------------------------------------------------

// Operands are read from copies laid out (B, H, C, W): the C channel rows of an image row are
// contiguous. In NCHW the rows a dot product walks lie H·W elements apart, which for 128×128
// float maps is 64 KiB, so they all fall into the same L1/L2 cache set and the prefetcher sees
// C separate streams; here they are one contiguous block. Zeroed guards before and after the
// data let whole register blocks read past a segment's valid span (at most
// radius·dilation + kTileWidth elements): those lanes are computed and then masked, which keeps
// every loop free of scalar tails.
struct RowMajor {
  at::Tensor buffer;
  int64_t guard, channels, height, width;

  int64_t row_pitch() const { return channels * width; }
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

// An uninitialised (B, H, C, W) buffer with zeroed guards.
RowMajor row_major_empty(at::IntArrayRef bchw, const at::TensorOptions& options, int64_t guard) {
  const int64_t body = bchw[0] * bchw[1] * bchw[2] * bchw[3];
  RowMajor r{at::empty({2 * guard + body}, options), guard, bchw[1], bchw[2], bchw[3]};
  r.buffer.narrow(0, 0, guard).zero_();
  r.buffer.narrow(0, guard + body, guard).zero_();
  return r;
}

RowMajor row_major_copy(const at::Tensor& t, int64_t guard) {
  const int64_t batch = t.size(0), channels = t.size(1), height = t.size(2), width = t.size(3);
  RowMajor r = row_major_empty(t.sizes(), t.options(), guard);
  // A row copy per (b, c, h): simpler and faster than a generic permuted copy.
  const at::Tensor src = t.contiguous();
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "local_correlation_row_major_copy", [&] {
    const scalar_t* from = src.const_data_ptr<scalar_t>();
    scalar_t* to = r.buffer.mutable_data_ptr<scalar_t>() + guard;
    at::parallel_for(0, batch * height, 16, [&](int64_t first, int64_t last) {
      for (int64_t bh = first; bh < last; ++bh) {
        const int64_t b = bh / height, h = bh % height;
        for (int64_t c = 0; c < channels; ++c) {
          std::memcpy(to + (bh * channels + c) * width,
                      from + ((b * channels + c) * height + h) * width, width * sizeof(scalar_t));
        }
      }
    });
  });
  return r;
}

// A multiple of 64 elements, so that segment starts keep the buffer's cache-line alignment.
int64_t guard_for(const Geometry& g) {
  return (g.radius * g.dilation + kTileWidth + 64 + 63) / 64 * 64;
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

// ---- row kernels ------------------------------------------------------------------------

// acc[k][p] = Σ_c a[c·stride + p] · b[k][c·stride + p] for k < N, p in [0, padded_n): N dot
// products that share the pixel's own row `a` (N window offsets at once, so each load of `a`
// serves N multiply-adds). Eight accumulator vectors stay in registers across the channel loop.
template <int N, typename T>
inline void dot_rows(T* const (&acc)[N], const T* a, const T* const (&b)[N], int64_t channels,
                     int64_t stride, int64_t padded_n) {
  constexpr int64_t L = kLanes<T>, V = kVectorsPerBlock / N;
  for (int64_t p0 = 0; p0 < padded_n; p0 += V * L) {
    Vec<T> r[N][V] = {};
    for (int64_t c = 0, i = p0; c < channels; ++c, i += stride) {
#pragma GCC unroll 8
      for (int64_t v = 0; v < V; ++v) {
        const Vec<T> av = load(a + i + v * L);
#pragma GCC unroll 4
        for (int k = 0; k < N; ++k) r[k][v] += av * load(b[k] + i + v * L);
      }
    }
    for (int k = 0; k < N; ++k) {
#pragma GCC unroll 8
      for (int64_t v = 0; v < V; ++v) store(acc[k] + p0 + v * L, r[k][v]);
    }
  }
}

template <typename T>
inline void dot_rows(T* acc, const T* a, const T* b, int64_t channels, int64_t stride,
                     int64_t padded_n) {
  T* const accs[1] = {acc};
  const T* const bs[1] = {b};
  dot_rows<1>(accs, a, bs, channels, stride, padded_n);
}

// For N channels ch of src: out[ch][p] = Σ_o coef[o][p] · src[ch][p + delta_o] over the offsets
// valid at p, p in [0, n): the gather that forms y, dx and dc (N channels at once, so each load
// of a weight serves N multiply-adds). `coef` holds one row of kTileWidth per offset. Vectors
// that straddle the edge of an offset's valid span (or the segment's end) take the valid lanes
// one by one, so `src` is never read outside the image: it may be the caller's NCHW tensor.
template <int N, typename T>
void gather_channels(T* const (&out)[N], const T* coef, const T* const (&src)[N],
                     const int64_t* delta, const Segment& s) {
  constexpr int64_t L = kLanes<T>, V = kVectorsPerBlock / N;
  for (int64_t p0 = 0; p0 < s.padded_n; p0 += V * L) {
    Vec<T> r[N][V] = {};
    for (size_t o = 0; o < s.offsets.size(); ++o) {
      const Offset& off = s.offsets[o];
      const T* w = coef + o * kTileWidth + p0;
      const int64_t i = delta[o] + p0;
      if (off.begin <= p0 && p0 + V * L <= off.end) {  // the whole block is valid
#pragma GCC unroll 8
        for (int64_t v = 0; v < V; ++v) {
          const Vec<T> wv = load(w + v * L);
#pragma GCC unroll 4
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
#pragma GCC unroll 4
          for (int k = 0; k < N; ++k) r[k][v] += wv * load(src[k] + i + v * L);
        } else {
          const auto inside = lane_mask<T>(lo, hi);
          const Vec<T> zero = {};
#pragma GCC unroll 4
          for (int k = 0; k < N; ++k) {
            r[k][v] += inside ? wv * masked_load(src[k] + i + v * L, inside) : zero;
          }
        }
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
// the distance to each window offset's neighbour.
struct Source {
  const void* row;
  int64_t channels;
  int64_t channel_stride;
  std::vector<int64_t> delta;

  // An operand copy (B, H, C, W).
  template <typename T>
  Source(const RowMajor& m, const Segment& s, const T*)
      : row(m.at<T>(s.b, s.h, s.w0)), channels(m.channels), channel_stride(m.width) {
    for (const Offset& off : s.offsets) delta.push_back(m.delta(off));
  }
  // The caller's contiguous NCHW tensor.
  template <typename T>
  Source(const T* nchw, int64_t channels_, int64_t height, int64_t width, const Segment& s)
      : row(nchw + (s.b * channels_ * height + s.h) * width + s.w0),
        channels(channels_),
        channel_stride(height * width) {
    for (const Offset& off : s.offsets) delta.push_back(off.rows * width + off.cols);
  }
};

// gather_channels over every channel of src, two at a time.
template <typename T>
void gather_rows(T* out, int64_t out_stride, const T* coef, const Source& src, const Segment& s) {
  const T* row = static_cast<const T*>(src.row);
  int64_t ch = 0;
  for (; ch + 4 <= src.channels; ch += 4) {
    T* const outs[4] = {out + ch * out_stride, out + (ch + 1) * out_stride,
                        out + (ch + 2) * out_stride, out + (ch + 3) * out_stride};
    const T* const rows[4] = {row + ch * src.channel_stride, row + (ch + 1) * src.channel_stride,
                              row + (ch + 2) * src.channel_stride,
                              row + (ch + 3) * src.channel_stride};
    gather_channels<4>(outs, coef, rows, src.delta.data(), s);
  }
  for (; ch + 2 <= src.channels; ch += 2) {
    T* const outs[2] = {out + ch * out_stride, out + (ch + 1) * out_stride};
    const T* const rows[2] = {row + ch * src.channel_stride, row + (ch + 1) * src.channel_stride};
    gather_channels<2>(outs, coef, rows, src.delta.data(), s);
  }
  if (ch < src.channels) {
    T* const outs[1] = {out + ch * out_stride};
    const T* const rows[1] = {row + ch * src.channel_stride};
    gather_channels<1>(outs, coef, rows, src.delta.data(), s);
  }
}

// Softmax over the offsets at every segment position, in place on `weights` (one row of
// kTileWidth per offset, logits on entry); writes the log-sum-exp for the n valid positions.
template <typename T>
void softmax_segment(const Segment& s, T* weights, T* row_max, T* row_sum, T* lse) {
  constexpr int64_t L = kLanes<T>;
  constexpr T kMinusInf = -std::numeric_limits<T>::infinity();
  for (size_t o = 0; o < s.offsets.size(); ++o) {  // out-of-image neighbours: no weight
    const Offset& off = s.offsets[o];
    if (!off.partial) continue;
    T* l = weights + o * kTileWidth;
    std::fill(l, l + off.begin, kMinusInf);
    std::fill(l + off.end, l + s.padded_n, kMinusInf);
  }
  std::fill(row_max, row_max + s.padded_n, kMinusInf);
  std::fill(row_sum, row_sum + s.padded_n, T(0));
  for (size_t o = 0; o < s.offsets.size(); ++o) {
    const T* l = weights + o * kTileWidth;
    for (int64_t p = 0; p < s.padded_n; p += L) {
      const Vec<T> v = load(l + p), m = load(row_max + p);
      store(row_max + p, v > m ? v : m);
    }
  }
  for (size_t o = 0; o < s.offsets.size(); ++o) {
    T* l = weights + o * kTileWidth;
    for (int64_t p = 0; p < s.padded_n; p += L) {
      const Vec<T> e = exp_vec(load(l + p) - load(row_max + p));
      store(l + p, e);
      store(row_sum + p, load(row_sum + p) + e);
    }
  }
  for (int64_t p = 0; p < s.n; ++p) lse[p] = row_max[p] + std::log(row_sum[p]);
  for (int64_t p = 0; p < s.padded_n; ++p) row_sum[p] = T(1) / row_sum[p];
  for (size_t o = 0; o < s.offsets.size(); ++o) {
    T* l = weights + o * kTileWidth;
    for (int64_t p = 0; p < s.padded_n; p += L) store(l + p, load(l + p) * load(row_sum + p));
  }
}

template <typename T>
void forward_kernel(const at::Tensor& pattern, const at::Tensor& content, at::Tensor& out,
                    at::Tensor& lse, int64_t kernel_size, int64_t dilation, double scale) {
  const Geometry g(content, kernel_size, dilation);
  const int64_t plane = g.height * g.width;
  const int64_t kk = kernel_size * kernel_size;
  const RowMajor xs = row_major_copy(pattern, guard_for(g));
  const at::Tensor cs = content.contiguous();  // the gather reads one channel at a time
  const int64_t cc = cs.size(1);
  T* y = out.mutable_data_ptr<T>();
  T* lse_ptr = lse.mutable_data_ptr<T>();
  const T s = static_cast<T>(scale);

  at::parallel_for(0, g.items(), 1, [&](int64_t first, int64_t last) {
    Scratch<T> weights(kk * kTileWidth), row_max(kTileWidth), row_sum(kTileWidth);
    Segment seg;
    for (int64_t item = first; item < last; ++item) {
      g.segment<T>(item, seg);
      const int64_t hw = seg.h * g.width + seg.w0;  // NCHW index of the segment start
      const T* xi = xs.at<T>(seg.b, seg.h, seg.w0);
      const size_t n_off = seg.offsets.size();
      size_t o = 0;
      for (; o + 4 <= n_off; o += 4) {  // four offsets per pass over the pixel's features
        T* const l[4] = {weights.data() + o * kTileWidth, weights.data() + (o + 1) * kTileWidth,
                         weights.data() + (o + 2) * kTileWidth,
                         weights.data() + (o + 3) * kTileWidth};
        const T* const nb[4] = {
            xi + xs.delta(seg.offsets[o]), xi + xs.delta(seg.offsets[o + 1]),
            xi + xs.delta(seg.offsets[o + 2]), xi + xs.delta(seg.offsets[o + 3])};
        dot_rows<4>(l, xi, nb, xs.channels, g.width, seg.padded_n);
      }
      for (; o + 2 <= n_off; o += 2) {  // two offsets per pass over the pixel's features
        T* const l[2] = {weights.data() + o * kTileWidth, weights.data() + (o + 1) * kTileWidth};
        const T* const nb[2] = {xi + xs.delta(seg.offsets[o]), xi + xs.delta(seg.offsets[o + 1])};
        dot_rows<2>(l, xi, nb, xs.channels, g.width, seg.padded_n);
      }
      if (o < n_off) {
        dot_rows(weights.data() + o * kTileWidth, xi, xi + xs.delta(seg.offsets[o]), xs.channels,
                 g.width, seg.padded_n);
      }
      for (o = 0; o < n_off; ++o) {
        T* l = weights.data() + o * kTileWidth;
        for (int64_t p = 0; p < seg.padded_n; p += kLanes<T>) store(l + p, load(l + p) * s);
      }
      softmax_segment(seg, weights.data(), row_max.data(), row_sum.data(),
                      lse_ptr + seg.b * plane + hw);
      gather_rows(y + seg.b * cc * plane + hw, plane, weights.data(),
                  Source(cs.const_data_ptr<T>(), cc, g.height, g.width, seg), seg);
    }
  });
}

template <typename T>
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& pattern,
                     const at::Tensor& content, const at::Tensor& out, const at::Tensor& lse,
                     at::Tensor& grad_pattern, at::Tensor& grad_content, int64_t kernel_size,
                     int64_t dilation, double scale) {
  constexpr int64_t L = kLanes<T>;
  const Geometry g(content, kernel_size, dilation);
  const int64_t cp = pattern.size(1), cc = content.size(1);
  const int64_t plane = g.height * g.width;
  const int64_t kk = kernel_size * kernel_size;
  const int64_t guard = guard_for(g);
  const RowMajor xs = row_major_copy(pattern, guard), cs = row_major_copy(content, guard);
  const RowMajor dys = row_major_copy(grad_out, guard), ys = row_major_copy(out, guard);
  // D_i = <dy_i, y_i> and L_i, needed at i and at every neighbour of i; (B, H, 1, W) layout.
  const RowMajor ls = row_major_copy(lse.unsqueeze(1), guard);
  RowMajor ds = row_major_empty({g.batch, 1, g.height, g.width}, lse.options(), guard);
  at::parallel_for(0, g.batch * g.height, 1, [&](int64_t first, int64_t last) {
    std::vector<T> d((g.width + kBlock<T> - 1) / kBlock<T> * kBlock<T>);
    for (int64_t row = first; row < last; ++row) {
      const int64_t b = row / g.height, h = row % g.height;
      dot_rows(d.data(), dys.at<T>(b, h, 0), ys.at<T>(b, h, 0), cc, g.width,
               static_cast<int64_t>(d.size()));
      std::copy(d.begin(), d.begin() + g.width, ds.mutable_at<T>(b, h, 0));
    }
  });
  T* dx = grad_pattern.mutable_data_ptr<T>();
  T* dc = grad_content.mutable_data_ptr<T>();
  const T s = static_cast<T>(scale);

  at::parallel_for(0, g.items(), 1, [&](int64_t first, int64_t last) {
    // Per offset o and segment position p, with j = i + delta_o:
    //   w_ji[o][p] = exp(logit_ij − L_j)   (the neighbour's softmax weight of i)
    //   coef[o][p] = s·(w_ij(<dy_i, c_j> − D_i) + w_ji(<dy_j, c_i> − D_j))
    Scratch<T> w_ji(kk * kTileWidth), coef(kk * kTileWidth);
    Scratch<T> logit(kGroup * kTileWidth), dy_i_c_j(kGroup * kTileWidth);
    Scratch<T> dy_j_c_i(kGroup * kTileWidth);
    Segment seg;
    for (int64_t item = first; item < last; ++item) {
      g.segment<T>(item, seg);
      const T* xi = xs.at<T>(seg.b, seg.h, seg.w0);
      const T* ci = cs.at<T>(seg.b, seg.h, seg.w0);
      const T* dyi = dys.at<T>(seg.b, seg.h, seg.w0);
      const T* lse_i = ls.at<T>(seg.b, seg.h, seg.w0);
      const T* d_i = ds.at<T>(seg.b, seg.h, seg.w0);
      // The three dot products of up to kGroup offsets at once (each shares its `a` row).
      auto dots = [&](size_t o, auto group) {
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
        dot_rows<G>(lg, xi, xj, cp, g.width, seg.padded_n);
        dot_rows<G>(qj, dyi, cj, cc, g.width, seg.padded_n);
        dot_rows<G>(qi, ci, dyj, cc, g.width, seg.padded_n);
      };
      const size_t n_off = seg.offsets.size();
      for (size_t o = 0; o < n_off; ++o) {
        const size_t k = o % kGroup;
        if (k == 0) {
          switch (std::min<size_t>(kGroup, n_off - o)) {
            case 4: dots(o, std::integral_constant<int, 4>{}); break;
            case 3: dots(o, std::integral_constant<int, 3>{}); break;
            case 2: dots(o, std::integral_constant<int, 2>{}); break;
            default: dots(o, std::integral_constant<int, 1>{});
          }
        }
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
      // dx_i = Σ_o coef_o · x_{i+δo};   dc_i = Σ_o w_ji,o · dy_{i+δo}   (outputs NCHW)
      const int64_t hw = seg.h * g.width + seg.w0;
      gather_rows(dx + seg.b * cp * plane + hw, plane, coef.data(), Source(xs, seg, xi), seg);
      gather_rows(dc + seg.b * cc * plane + hw, plane, w_ji.data(), Source(dys, seg, xi), seg);
    }
  });
}

// float16 / bfloat16 on the CPU: computed in float32, results cast back.
bool is_reduced(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& pattern, const at::Tensor& content,
                                               int64_t kernel_size, int64_t dilation,
                                               double scale) {
  check_pair(pattern, content, kernel_size, dilation, scale);
  if (is_reduced(content)) {
    auto [out, lse] = forward_cpu(pattern.to(at::kFloat), content.to(at::kFloat), kernel_size,
                                  dilation, scale);
    return {out.to(content.scalar_type()), lse};
  }
  auto [out, lse] = empty_forward_outputs(content);
  if (lse.numel() == 0) return {out, lse};
  AT_DISPATCH_FLOATING_TYPES(content.scalar_type(), "local_correlation_forward_cpu", [&] {
    forward_kernel<scalar_t>(pattern, content, out, lse, kernel_size, dilation, scale);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_out,
                                                const at::Tensor& pattern,
                                                const at::Tensor& content, const at::Tensor& out,
                                                const at::Tensor& lse, int64_t kernel_size,
                                                int64_t dilation, double scale) {
  check_backward(grad_out, pattern, content, out, lse, kernel_size, dilation, scale);
  if (is_reduced(content)) {
    auto f = [](const at::Tensor& t) { return t.to(at::kFloat); };
    auto [gp, gc] = backward_cpu(f(grad_out), f(pattern), f(content), f(out), lse, kernel_size,
                                 dilation, scale);
    return {gp.to(pattern.scalar_type()), gc.to(content.scalar_type())};
  }
  at::Tensor grad_pattern = at::zeros(pattern.sizes(), pattern.options());
  at::Tensor grad_content = at::zeros(content.sizes(), content.options());
  if (lse.numel() == 0) return {grad_pattern, grad_content};  // no pixels
  AT_DISPATCH_FLOATING_TYPES(content.scalar_type(), "local_correlation_backward_cpu", [&] {
    backward_kernel<scalar_t>(grad_out, pattern, content, out, lse.contiguous(), grad_pattern,
                              grad_content, kernel_size, dilation, scale);
  });
  return {grad_pattern, grad_content};
}

// ---- the CUDA kernels' per-pixel path, run on the CPU (tests only) -----------------------

std::tuple<at::Tensor, at::Tensor> pixelwise_forward_cpu(const at::Tensor& pattern,
                                                         const at::Tensor& content,
                                                         int64_t kernel_size, int64_t dilation,
                                                         double scale) {
  check_pair(pattern, content, kernel_size, dilation, scale);
  const Inputs in(pattern, content);
  auto [out, lse] = empty_forward_outputs(content);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, content.scalar_type(),
                                  "local_correlation_pixelwise_forward", [&] {
    using lse_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const auto prob = make_problem<scalar_t>(in, kernel_size, dilation, scale);
    const int64_t plane = prob.first.plane();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    lse_t* l = lse.mutable_data_ptr<lse_t>();
    at::parallel_for(0, prob.batch * plane, 256, [&](int64_t first, int64_t last) {
      for (int64_t idx = first; idx < last; ++idx) {
        const int64_t b = idx / plane;
        forward_pixel<kChannelChunk>(prob.image(b), idx % plane,
                                     y + b * prob.first.content_channels * plane, l + b * plane);
      }
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> pixelwise_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& pattern, const at::Tensor& content,
    const at::Tensor& out, const at::Tensor& lse, int64_t kernel_size, int64_t dilation,
    double scale) {
  check_backward(grad_out, pattern, content, out, lse, kernel_size, dilation, scale);
  const Inputs in(pattern, content);
  at::Tensor grad_pattern = at::empty(in.pattern.sizes(), in.pattern.options());
  at::Tensor grad_content = at::empty(in.content.sizes(), in.content.options());
  const at::Tensor dy = grad_out.contiguous(), y = out.contiguous(), l = lse.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, content.scalar_type(),
                                  "local_correlation_pixelwise_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using lse_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const auto prob = make_problem<scalar_t>(in, kernel_size, dilation, scale);
    const int64_t plane = prob.first.plane();
    const int64_t cp = prob.first.pattern_channels, cc = prob.first.content_channels;
    std::vector<acc_t> delta(prob.batch * plane);
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    at::parallel_for(0, prob.batch * plane, 256, [&](int64_t first, int64_t last) {
      for (int64_t idx = first; idx < last; ++idx) {
        const int64_t b = idx / plane;
        delta[idx] = pixel_delta<scalar_t, acc_t>(dyp + b * cc * plane, yp + b * cc * plane,
                                                  idx % plane, cc, plane);
      }
    });
    at::parallel_for(0, prob.batch * plane, 256, [&](int64_t first, int64_t last) {
      for (int64_t idx = first; idx < last; ++idx) {
        const int64_t b = idx / plane;
        const Grads<scalar_t, acc_t, lse_t> g{
            dyp + b * cc * plane, l.const_data_ptr<lse_t>() + b * plane,
            delta.data() + b * plane, grad_pattern.mutable_data_ptr<scalar_t>() + b * cp * plane,
            grad_content.mutable_data_ptr<scalar_t>() + b * cc * plane};
        backward_pixel<kChannelChunk>(prob.image(b), g, idx % plane);
      }
    });
  });
  return {grad_pattern, grad_content};
}

}  // namespace

TORCH_LIBRARY_IMPL(lcblock_cuda, CPU, m) {
  m.impl("local_correlation_forward", &forward_cpu);
  m.impl("local_correlation_backward", &backward_cpu);
  m.impl("_pixelwise_forward", &pixelwise_forward_cpu);
  m.impl("_pixelwise_backward", &pixelwise_backward_cpu);
}

}  // namespace lcblock
