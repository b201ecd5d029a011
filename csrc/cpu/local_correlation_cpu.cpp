// CPU kernels of the local correlation op.
//
// Two paths:
//  * the default, row-vectorised kernels below, working on segments of one image row (up to
//    kTileWidth pixels) whose k² × kTileWidth weights stay in L1/L2; nothing k²-sized is ever
//    stored for the whole map.
//    - Forward (see "forward" below): each thread walks a range of image rows; logits are
//      computed once per pixel pair (the symmetric half window, a ring of row logits), then a
//      softmax and a gather, channels-last when the channels fill the vectors.
//    - Backward: work items are independent segments; three dot products per window offset,
//      then two gathers (every gradient is a gather, DESIGN.md §1).
//    No atomics and no thread-dependent reduction order: results are bitwise the same for any
//    thread count or schedule.
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
#include <optional>
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
// Forward: window offsets per pass of the logits and channels per pass of the gather. Times
// the two vectors of a block, twelve accumulator chains: enough to keep both FMA pipes busy.
constexpr int kLogitOffsets = 6;
constexpr int kGatherChannels = 6;

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

// A scalar in every lane, loaded straight into the vector (one load, no shuffle).
inline Vec<float> broadcast(const float* p) {
#if defined(__AVX2__)
  return reinterpret_cast<Vec<float>>(_mm256_broadcast_ss(p));
#else
  return Vec<float>{} + *p;
#endif
}
inline Vec<double> broadcast(const double* p) {
#if defined(__AVX2__)
  return reinterpret_cast<Vec<double>>(_mm256_broadcast_sd(p));
#else
  return Vec<double>{} + *p;
#endif
}

// Keeps a loaded vector in a register: without it the compiler folds the load into every
// multiply-add that uses the vector, loading it once per use.
template <typename T>
inline void keep_in_register(Vec<T>& v) {
#if defined(__AVX__)
  __asm__("" : "+x"(v));
#else
  (void)v;
#endif
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

// exp without a libm call, on whole vectors, for x already in [kExpMin, kExpMax]. Range
// reduction x = n·ln2 + r, |r| <= ln2/2 (n rounded to nearest by the 1.5·2^23 trick), then
// Cephes' degree-6 polynomial: ~2 ulp.
constexpr float kExpMin = -87.3f, kExpMax = 88.3f;  // ≈ logs of the smallest / largest normal
inline Vec<float> exp_in_range(Vec<float> x) {
  constexpr float kRound = 12582912.0f, kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  typedef int32_t IVec __attribute__((vector_size(32)));
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
  return p * two_n;
}

// exp for any x. x < kExpMin gives exactly 0, so masked logits (−inf) get exactly zero weight.
inline Vec<float> exp_vec(Vec<float> x) {
  typedef int32_t IVec __attribute__((vector_size(32)));
  const IVec underflow = x < kExpMin;
  x = x < kExpMin ? kExpMin : x;
  x = x > kExpMax ? kExpMax : x;
  const Vec<float> zero = {};
  return underflow ? zero : exp_in_range(x);
}
inline Vec<double> exp_vec(Vec<double> x) {  // float64 is for checking, not speed
  for (int64_t t = 0; t < kLanes<double>; ++t) x[t] = std::exp(x[t]);
  return x;
}

// exp for x <= 0, as in a softmax after subtracting the max: no upper clamp, and x < kExpMin
// gives exp(kExpMin) ≈ 1.2e-38 instead of 0, a weight no float sum can see; callers zero
// masked lanes themselves.
inline Vec<float> exp_nonpositive(Vec<float> x) {
#if defined(__AVX2__)
  x = reinterpret_cast<Vec<float>>(_mm256_max_ps(reinterpret_cast<__m256>(x),
                                                 _mm256_set1_ps(kExpMin)));
#else
  x = x < kExpMin ? kExpMin : x;
#endif
  return exp_in_range(x);
}
inline Vec<double> exp_nonpositive(Vec<double> x) { return exp_vec(x); }

// log on whole vectors, for x >= 1 (a softmax denominator; other lanes give garbage).
// x = 2^e·m with m in [√½, √2), then Cephes' logf polynomial in m − 1: ~1 ulp.
inline Vec<float> log_vec(Vec<float> x) {
  typedef int32_t IVec __attribute__((vector_size(32)));
  IVec bits;
  std::memcpy(&bits, &x, sizeof(bits));
  IVec e = ((bits >> 23) & 0xff) - 127;
  const IVec mbits = (bits & 0x7fffff) | 0x3f800000;  // mantissa in [1, 2)
  Vec<float> m;
  std::memcpy(&m, &mbits, sizeof(m));
  const auto big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1 : e;
  const Vec<float> ef = __builtin_convertvector(e, Vec<float>);
  const Vec<float> f = m - 1.0f, z = f * f;
  Vec<float> y = f * 7.0376836292e-2f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y += ef * -2.12194440e-4f - 0.5f * z;
  return f + y + ef * 0.693359375f;
}
inline Vec<double> log_vec(Vec<double> x) {
  for (int64_t t = 0; t < kLanes<double>; ++t) x[t] = std::log(x[t]);
  return x;
}

// Calls fn(first, std::integral_constant<int, N>{}) for consecutive groups covering [0, n):
// groups of kMax, then one group of the n % kMax left (each N a compile-time constant, so the
// callee's register blocks unroll).
template <int N, typename Fn>
inline void last_group(int64_t first, int64_t count, Fn& fn) {
  if constexpr (N > 0) {
    if (count == N) {
      fn(first, std::integral_constant<int, N>{});
    } else {
      last_group<N - 1>(first, count, fn);
    }
  }
}
template <int kMax, typename Fn>
inline void for_each_group(int64_t n, Fn&& fn) {
  int64_t first = 0;
  for (; first + kMax <= n; first += kMax) fn(first, std::integral_constant<int, kMax>{});
  last_group<kMax - 1>(first, n - first, fn);
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
  // Positions [inner_begin, inner_end) where every offset is valid: blocks inside take the
  // gathers' fast path, without a per-offset test.
  int64_t inner_begin = 0, inner_end = 0;
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
    s.inner_begin = 0;
    s.inner_end = s.n;
    for (const Offset& off : s.offsets) {
      s.inner_begin = std::max(s.inner_begin, off.begin);
      s.inner_end = std::min(s.inner_end, off.end);
    }
  }
};

// ---- operand copies ---------------------------------------------------------------------

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

// Channel rows are padded to an odd number of cache lines. With a power-of-two pitch (a
// 128-float row is 512 bytes) the 32 channel rows a dot product walks fall into 8 of the 64
// L1 sets and evict each other; an odd pitch spreads them over all sets.
int64_t row_pitch_for(int64_t width, size_t element_size) {
  const int64_t line = 64 / static_cast<int64_t>(element_size);
  int64_t lines = (width + line - 1) / line;
  if (lines % 2 == 0) ++lines;
  return lines * line;
}

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

RowMajor row_major_copy(const at::Tensor& t, int64_t guard) {
  const int64_t batch = t.size(0), channels = t.size(1), height = t.size(2), width = t.size(3);
  RowMajor r = row_major_empty(t.sizes(), t.options(), guard);
  // A row copy per (b, c, h): simpler and faster than a generic permuted copy.
  const at::Tensor src = t.contiguous();
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "local_correlation_row_major_copy", [&] {
    const scalar_t* from = src.const_data_ptr<scalar_t>();
    scalar_t* to = r.buffer.mutable_data_ptr<scalar_t>() + guard;
    const int64_t pitch = r.pitch;
    at::parallel_for(0, batch * height, 16, [&](int64_t first, int64_t last) {
      for (int64_t bh = first; bh < last; ++bh) {
        const int64_t b = bh / height, h = bh % height;
        for (int64_t c = 0; c < channels; ++c) {
          scalar_t* row = to + (bh * channels + c) * pitch;
          std::memcpy(row, from + ((b * channels + c) * height + h) * width,
                      width * sizeof(scalar_t));
          std::fill(row + width, row + pitch, scalar_t(0));
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
template <int N, int64_t V, typename T>
void gather_channels(T* const (&out)[N], const T* coef, const T* const (&src)[N],
                     const int64_t* delta, const Segment& s, const T* row_scale) {
  constexpr int64_t L = kLanes<T>;
  const int64_t n_off = static_cast<int64_t>(s.offsets.size());
  for (int64_t p0 = 0; p0 < s.padded_n; p0 += V * L) {
    Vec<T> r[N][V] = {};
    if (s.inner_begin <= p0 && p0 + V * L <= s.inner_end) {  // every offset valid: no tests
      const T* w = coef + p0;
      const T* const s0 = src[0] + p0;
      for (int64_t o = 0; o < n_off; ++o, w += kTileWidth) {
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
      const T* w = coef + o * kTileWidth + p0;
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
// the distance to each window offset's neighbour.
struct Source {
  const void* row;
  int64_t channels;
  int64_t channel_stride;
  std::vector<int64_t> delta;

  // An operand copy (B, H, C, W).
  template <typename T>
  Source(const RowMajor& m, const Segment& s, const T*)
      : row(m.at<T>(s.b, s.h, s.w0)), channels(m.channels), channel_stride(m.pitch) {
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

// gather_channels over every channel of src, four at a time; outputs multiplied by
// row_scale[p] when it is given.
template <typename T>
void gather_rows(T* out, int64_t out_stride, const T* coef, const Source& src, const Segment& s,
                 const T* row_scale = nullptr) {
  constexpr int64_t V = 2;
  const T* row = static_cast<const T*>(src.row);
  const int64_t* delta = src.delta.data();
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

// ---- forward ------------------------------------------------------------------------------
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

// Columns kept on each side of a ring row: the window's reach, rounded up to 64 bytes of float
// so that row starts stay aligned.
inline int64_t ring_margin(const Geometry& g) { return (g.radius * g.dilation + 15) / 16 * 16; }

// Per-thread ring of forward logits: ring_rows rows of (forward offsets) × (margin + padded
// width + margin). Margins let a backward offset read its mirror at x + b·dilation without a
// test (those lanes are masked when out of the image).
template <typename T>
struct LogitRing {
  at::Tensor storage;  // a torch allocation, so the benchmark's memory accounting sees it
  T* base;
  int64_t rows, offsets, margin, stride;

  LogitRing(const Geometry& g, int64_t n_forward, const at::TensorOptions& options)
      : rows(g.radius * g.dilation + 1),
        offsets(n_forward),
        margin(ring_margin(g)),
        stride(2 * margin + g.tiles * kTileWidth) {
    storage = at::empty({rows * offsets * stride}, options);
    base = storage.mutable_data_ptr<T>();
  }
  // Logit of forward offset f at column x of image row h (x may be off the row by a margin).
  T* at(int64_t h, int64_t f, int64_t x) {
    return base + ((h % rows) * offsets + f) * stride + margin + x;
  }
};

// Per-thread copies of the pattern rows a thread's forward logits read: the rows h to
// h + radius·dilation of one image, each laid out (C, pitch) with zeroed margins, in a ring.
// Copying a row just before it is used keeps it in L1/L2 for the dot products, and the ring is
// all the extra memory the forward needs for its operand.
template <typename T>
struct PatternRows {
  at::Tensor storage;
  T* base;
  const T* pattern;  // contiguous NCHW
  int64_t channels, height, width, slots, margin, pitch, slot_size;
  int64_t loaded_b = -1, loaded_until = -1;  // rows [loaded_until − slots + 1, loaded_until]

  PatternRows(const Geometry& g, const at::Tensor& contiguous_pattern)
      : pattern(contiguous_pattern.const_data_ptr<T>()),
        channels(contiguous_pattern.size(1)),
        height(g.height),
        width(g.width),
        slots(g.radius * g.dilation + 1),
        margin(ring_margin(g)) {
    // Reads reach from x = −radius·dilation to the padded width + radius·dilation.
    const int64_t padded_w = g.tiles * kTileWidth;
    pitch = row_pitch_for(2 * margin + padded_w, sizeof(T));
    slot_size = channels * pitch;
    storage = at::zeros({slots * slot_size + pitch + margin}, contiguous_pattern.options());
    base = storage.mutable_data_ptr<T>();
  }
  // Channel 0 of image row h (which must be loaded).
  const T* row(int64_t h) const { return base + (h % slots) * slot_size + margin; }
  // Makes rows up to min(h + slots − 1, height − 1) of image b available.
  void advance(int64_t b, int64_t h) {
    if (b != loaded_b) loaded_b = b, loaded_until = h - 1;
    const int64_t until = std::min(h + slots - 1, height - 1);
    for (int64_t r = std::max(loaded_until + 1, h); r <= until; ++r) {
      T* to = base + (r % slots) * slot_size + margin;
      const T* from = pattern + (b * channels * height + r) * width;
      for (int64_t c = 0; c < channels; ++c) {
        std::memcpy(to + c * pitch, from + c * height * width, width * sizeof(T));
      }
    }
    loaded_until = std::max(loaded_until, until);
  }
};

// Forward logits of image row h of image b for every column (in blocks of two vectors,
// kLogitOffsets offsets per pass over the pixel's features), scaled, into the ring. Offsets
// whose neighbour row is outside the image are skipped: no pixel ever reads them.
template <typename T>
void forward_logits_row(const Geometry& g, PatternRows<T>& xs, const HalfWindow& half,
                        LogitRing<T>& ring, T scale, int64_t b, int64_t h) {
  constexpr int64_t V = 2, B = V * kLanes<T>;
  xs.advance(b, h);
  const T* xi = xs.row(h);
  int64_t n_valid = 0;
  while (n_valid < static_cast<int64_t>(half.forward.size()) &&
         h + half.forward[n_valid].a * g.dilation < g.height) {
    ++n_valid;  // `forward` is ordered by a
  }
  const int64_t padded_w = (g.width + kBlock<T> - 1) / kBlock<T> * kBlock<T>;
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
      dot_rows<N, V>(l, xi, nb, xs.channels, xs.pitch, p0 + B, p0, scale);
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
// content rows channels-last (a per-thread ring, filled by 8×8 transposes) and the output
// transposed back; it pays when channels fill the vectors, see use_channels_last.

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

// Transposes a rows × cols block (at most kLanes × kLanes) of `from` (row stride from_stride)
// into `to` (row stride to_stride): to[j][i] = from[i][j].
template <typename T>
inline void transpose_block(const T* from, int64_t from_stride, T* to, int64_t to_stride,
                            int64_t rows, int64_t cols) {
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    if (rows == 8 && cols == 8) {
      __m256 r[8], t[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(from + i * from_stride);
      for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
      }
      // r[0..3]: columns 0,1,2,3 of rows 0-3 (low lane) and columns 4..7 (high lane).
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(to + i * to_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_storeu_ps(to + (i + 4) * to_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
      }
      return;
    }
  }
#endif
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) to[j * to_stride + i] = from[i * from_stride + j];
  }
}

// Transposes a rows × cols matrix blockwise.
template <typename T>
void transpose(const T* from, int64_t from_stride, T* to, int64_t to_stride, int64_t rows,
               int64_t cols) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t i = 0; i < rows; i += L) {
    for (int64_t j = 0; j < cols; j += L) {
      transpose_block(from + i * from_stride + j, from_stride, to + j * to_stride + i, to_stride,
                      std::min(L, rows - i), std::min(L, cols - j));
    }
  }
}

// Per-thread ring of content rows h − radius·dilation to h + radius·dilation of one image,
// channels-last: each row is (margin + width + margin) pixels of padded_channels values, the
// margins and padding channels zero, so that out-of-image neighbours (whose weights are 0)
// read zeros.
template <typename T>
struct ContentRows {
  at::Tensor storage;
  T* base;
  const T* content;  // contiguous NCHW
  int64_t channels, cpad, height, width, reach, slots, margin, row_size;
  int64_t loaded_b = -1, loaded_hi = -1;  // rows up to loaded_hi of image loaded_b

  ContentRows(const Geometry& g, const at::Tensor& contiguous_content)
      : content(contiguous_content.const_data_ptr<T>()),
        channels(contiguous_content.size(1)),
        cpad(padded_channels<T>(contiguous_content.size(1))),
        height(g.height),
        width(g.width),
        reach(g.radius * g.dilation),
        slots(2 * g.radius * g.dilation + 1),
        margin(g.radius * g.dilation + g.dilation),
        row_size((2 * margin + g.width) * cpad) {
    storage = at::zeros({slots * row_size}, contiguous_content.options());
    base = storage.mutable_data_ptr<T>();
  }
  // Channel 0 of pixel x of image row r (loaded; x may lie in the margins).
  const T* at(int64_t r, int64_t x) const { return base + (r % slots) * row_size + (margin + x) * cpad; }
  // Makes rows [h − reach, h + reach] ∩ image of image b available.
  void advance(int64_t b, int64_t h) {
    const int64_t lo = std::max<int64_t>(h - reach, 0), hi = std::min(h + reach, height - 1);
    if (b != loaded_b || lo > loaded_hi) loaded_b = b, loaded_hi = lo - 1;
    for (int64_t r = std::max(loaded_hi + 1, lo); r <= hi; ++r) {
      T* to = base + (r % slots) * row_size + margin * cpad;
      transpose(content + (b * channels * height + r) * width, height * width, to, cpad,
                channels, width);
    }
    loaded_hi = std::max(loaded_hi, hi);
  }
};

// out_t[p][c] = inv_sum[p] · Σ_o weights[o][p] · c_{p + δo}[c] for the segment's positions,
// channels-last (out_t rows of rows.cpad values). Positions go in pairs (p, p + dilation):
// one window row of the pair spans 2·radius + 2 neighbours, each loaded once for both.
template <typename T>
void gather_channels_last(const Segment& seg, const Geometry& g, const ContentRows<T>& rows,
                          const T* weights, const T* inv_sum, T* out_t, const T** row) {
  constexpr int64_t L = kLanes<T>, CV = 4;  // channel vectors per pass
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
    for (int64_t v = 0; v < NV; ++v) store(out_t + p * rows.cpad + c0 + v * L, r0[v] * s0);
    if constexpr (kPair) {
      const Vec<T> s1 = Vec<T>{} + inv_sum[p + d];
#pragma GCC unroll 8
      for (int64_t v = 0; v < NV; ++v) {
        store(out_t + (p + d) * rows.cpad + c0 + v * L, r1[v] * s1);
      }
    }
  };
  auto positions = [&](int64_t c0, auto vectors) {
    // Blocks of 2·dilation positions: pairs (q, q + dilation) for the first dilation of them.
    int64_t p = 0;
    for (; p + 2 * d <= seg.n; p += 2 * d) {
      for (int64_t q = p; q < p + d; ++q) pass(q, std::true_type{}, c0, vectors);
    }
    for (; p < seg.n; ++p) pass(p, std::false_type{}, c0, vectors);
  };
  int64_t c0 = 0;
  for (; c0 + CV * L <= rows.cpad; c0 += CV * L) {
    positions(c0, std::integral_constant<int64_t, CV>{});
  }
  switch ((rows.cpad - c0) / L) {
    case 3: positions(c0, std::integral_constant<int64_t, 3>{}); break;
    case 2: positions(c0, std::integral_constant<int64_t, 2>{}); break;
    case 1: positions(c0, std::integral_constant<int64_t, 1>{}); break;
    default: break;
  }
}

template <typename T>
void forward_kernel(const at::Tensor& pattern, const at::Tensor& content, at::Tensor& out,
                    at::Tensor& lse, int64_t kernel_size, int64_t dilation, double scale) {
  const Geometry g(content, kernel_size, dilation);
  const int64_t plane = g.height * g.width;
  const int64_t kk = kernel_size * kernel_size;
  const HalfWindow half(g.radius);
  const at::Tensor ps = pattern.contiguous();
  const at::Tensor cs = content.contiguous();  // the gather reads one channel at a time
  const int64_t cc = cs.size(1);
  T* y = out.mutable_data_ptr<T>();
  T* lse_ptr = lse.mutable_data_ptr<T>();
  const T s = static_cast<T>(scale);
  const int64_t reach = g.radius * g.dilation;
  // Ranges of at least a few ring lengths, so that warm-up rows stay a small part.
  const int64_t grain = std::max<int64_t>(1, 4 * reach);

  at::parallel_for(0, g.batch * g.height, grain, [&](int64_t first, int64_t last) {
    LogitRing<T> ring(g, static_cast<int64_t>(half.forward.size()), pattern.options());
    PatternRows<T> xs(g, ps);
    Scratch<T> weights(kk * kTileWidth), inv_sum(kTileWidth);
    std::vector<const T*> logit(kk);
    std::vector<T*> weight_row(kk);  // where the softmax writes the weights of offset o
    // The channels-last gather reads the weights by window offset, row (a + r)·k + b + r.
    const bool channels_last = use_channels_last<T>(cc);
    std::optional<ContentRows<T>> content_rows;
    std::optional<Scratch<T>> out_t;
    std::vector<const T*> window_rows(kernel_size);
    if (channels_last) {
      content_rows.emplace(g, cs);
      out_t.emplace(kTileWidth * content_rows->cpad);
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
        const int64_t hw = h * g.width + seg.w0;  // NCHW index of the segment start
        constexpr int64_t V = 2, B = V * kLanes<T>;
        for (int64_t p0 = 0; p0 < seg.padded_n; p0 += B) {
          block_softmax<V>(seg, logit.data(), weight_row.data(), p0, inv_sum.data(),
                           lse_ptr + b * plane + hw);
        }
        if (channels_last) {
          if (tile == 0) content_rows->advance(b, h);
          gather_channels_last(seg, g, *content_rows, weights.data(), inv_sum.data(),
                               out_t->data(), window_rows.data());
          transpose(out_t->data(), content_rows->cpad, y + b * cc * plane + hw, plane, seg.n, cc);
        } else {
          gather_rows(y + b * cc * plane + hw, plane, weights.data(),
                      Source(cs.const_data_ptr<T>(), cc, g.height, g.width, seg), seg,
                      static_cast<const T*>(inv_sum.data()));
        }
      }
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
      dot_rows(d.data(), dys.at<T>(b, h, 0), ys.at<T>(b, h, 0), cc, dys.pitch,
               static_cast<int64_t>(d.size()));
      T* d_row = ds.mutable_at<T>(b, h, 0);
      std::copy(d.begin(), d.begin() + g.width, d_row);
      std::fill(d_row + g.width, d_row + ds.pitch, T(0));
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
        dot_rows<G>(lg, xi, xj, cp, xs.pitch, seg.padded_n);
        dot_rows<G>(qj, dyi, cj, cc, dys.pitch, seg.padded_n);
        dot_rows<G>(qi, ci, dyj, cc, cs.pitch, seg.padded_n);
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
