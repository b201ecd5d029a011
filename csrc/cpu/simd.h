// SIMD helpers of the CPU kernels: GCC/Clang vector extensions (AVX2 with -march=native, SSE
// otherwise), a vectorised exp and log, masked loads, blocked transposes, and the compile-time
// group-size dispatch. Nothing here knows about the op.
#pragma once

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace lcblock::cpu {

// For the small hot helpers the compiler would otherwise call out of line from several sites
// (an 8×8 transpose called per block costs a tenth of the forward).
#define LC_ALWAYS_INLINE inline __attribute__((always_inline))

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
// Pixels per step of the row kernels (logits, pair products, softmax, gathers): two vectors.
// Rows are padded to whole steps only, so that narrow maps (LCNet's 12- and 24-pixel rows) do not
// compute a whole block of padding.
template <typename T>
constexpr int64_t kStep = 2 * kLanes<T>;

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
  x = reinterpret_cast<Vec<float>>(
      _mm256_max_ps(reinterpret_cast<__m256>(x), _mm256_set1_ps(kExpMin)));
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

// ---- compile-time group sizes ---------------------------------------------------------------
//
// The one home of the group-size dispatch: register blocks whose width (window offsets per pass
// of the dot products, channels per pass of a gather, channel vectors of the channels-last
// gather) must be a compile-time constant so that their accumulators stay in registers.
// Calls fn(first, std::integral_constant<int, N>{}) for consecutive groups covering [0, n):
// groups of kMax, then one group of the n % kMax left.
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

// ---- transposes ----------------------------------------------------------------------------

// Transposes a rows × cols block (at most kLanes × kLanes) of `from` (row stride from_stride)
// into `to` (row stride to_stride): to[j][i] = from[i][j].
template <typename T>
LC_ALWAYS_INLINE void transpose_block(const T* from, int64_t from_stride, T* to, int64_t to_stride,
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

}  // namespace lcblock::cpu
