// Issue 18's question, measured: do 512-bit vectors, or AVX-512 BF16 dot products, pay for the
// CPU kernels' inner loop on this machine? (docs/cpu_kernels.md, "Vector width and bf16").
//
// The loop is the shape of dot_rows<4, 2> in csrc/cpu/simd.h, the pair products of the backward
// and the forward's logits: for 4 window offsets k and a row of W pixels p,
//   acc[k][p] = Σ_c a[c][p] · b_k[c][p]
// over C channels of planar rows (pitch floats apart), two vectors of pixels per register block.
// Three variants compute it:
//   f32x8   256-bit float vectors (what the kernels use),
//   f32x16  512-bit float vectors (same code, twice the lanes),
//   bf16    _mm512_dpbf16_ps: bfloat16 operands with channel pairs interleaved
//           ([C/2][W][2]), each instruction 32 products summed pairwise into 16 float lanes.
// Every variant runs on the same data (values exact in bfloat16) and prints its largest
// difference from the sums computed in double, so a wrong variant shows.
// Usage: simd_width CHANNELS WIDTH SECONDS; prints one JSON line per variant.
#include <immintrin.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

constexpr int kOffsets = 4;

// GCC drops vector_size on an alias template whose size depends on its parameter (the
// "vector" becomes one float), so each width is a typedef of its own.
typedef float F32x8 __attribute__((vector_size(32)));
typedef float F32x16 __attribute__((vector_size(64)));
template <int L>
struct VecOf;
template <>
struct VecOf<8> {
  using type = F32x8;
};
template <>
struct VecOf<16> {
  using type = F32x16;
};
template <int L>
using VecF = typename VecOf<L>::type;
static_assert(sizeof(VecF<8>) == 32 && sizeof(VecF<16>) == 64);

template <int L>
inline VecF<L> load(const float* p) {
  VecF<L> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <int L>
inline void store(float* p, VecF<L> v) {
  std::memcpy(p, &v, sizeof(v));
}

// acc[k] = Σ_c a[c] · b[k][c], W pixels, planar rows `pitch` floats apart; blocks of 2 vectors.
template <int L>
__attribute__((noinline)) void dot_f32(float* const* acc, const float* a, const float* const* b,
                                       int64_t channels, int64_t pitch, int64_t width) {
  constexpr int V = 2;
  for (int64_t p0 = 0; p0 < width; p0 += V * L) {
    VecF<L> r[kOffsets][V] = {};
    for (int64_t c = 0, i = p0; c < channels; ++c, i += pitch) {
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) {
        const VecF<L> av = load<L>(a + i + v * L);
#pragma GCC unroll 4
        for (int k = 0; k < kOffsets; ++k) r[k][v] += av * load<L>(b[k] + i + v * L);
      }
    }
    for (int k = 0; k < kOffsets; ++k) {
      for (int v = 0; v < V; ++v) store<L>(acc[k] + p0 + v * L, r[k][v]);
    }
  }
}

#if defined(__AVX512BF16__)
// The same sums from bfloat16 rows laid out [C/2][pitch][2]: element (c, p) at
// (c / 2) * 2 * pitch + 2 * p + c % 2, an odd C padded with a zero channel. One dpbf16 takes
// 16 pixels × 2 channels.
__attribute__((noinline)) void dot_bf16(float* const* acc, const uint16_t* a,
                                        const uint16_t* const* b, int64_t channels, int64_t pitch,
                                        int64_t width) {
  constexpr int L = 16, V = 2;
  for (int64_t p0 = 0; p0 < width; p0 += V * L) {
    __m512 r[kOffsets][V];
    for (auto& rk : r) {
      for (auto& v : rk) v = _mm512_setzero_ps();
    }
    for (int64_t c2 = 0; c2 < (channels + 1) / 2; ++c2) {  // an odd C's last pair has a zero
      const int64_t i = c2 * 2 * pitch + 2 * p0;
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) {
        const __m512bh av = (__m512bh)_mm512_loadu_si512(a + i + 2 * v * L);
#pragma GCC unroll 4
        for (int k = 0; k < kOffsets; ++k) {
          const __m512bh bv = (__m512bh)_mm512_loadu_si512(b[k] + i + 2 * v * L);
          r[k][v] = _mm512_dpbf16_ps(r[k][v], av, bv);
        }
      }
    }
    for (int k = 0; k < kOffsets; ++k) {
      for (int v = 0; v < V; ++v) _mm512_storeu_ps(acc[k] + p0 + v * L, r[k][v]);
    }
  }
}
#endif

uint16_t to_bf16(float f) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFF + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

float from_bf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <typename F>
double best_seconds_per_call(F&& call, double seconds) {
  for (int i = 0; i < 100; ++i) call();  // warm the caches
  double best = 1e30;
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 200; ++i) call();
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double>(t1 - t0).count() / 200);
    if (std::chrono::duration<double>(t1 - start).count() > seconds) return best;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s CHANNELS WIDTH SECONDS\n", argv[0]);
    return 2;
  }
  const int64_t channels = std::atoll(argv[1]), width = std::atoll(argv[2]);
  const double seconds = std::atof(argv[3]);
  if (channels < 1 || width < 32 || width % 32) {
    std::fprintf(stderr, "CHANNELS must be >= 1, WIDTH a multiple of 32 (got %lld %lld)\n",
                 static_cast<long long>(channels), static_cast<long long>(width));
    return 2;
  }
  const int64_t pitch = width + 16;  // the kernels' rows carry margins
  // Values exactly representable in bfloat16, so every variant sums the same products.
  std::vector<float> a(channels * pitch), bs(kOffsets * channels * pitch);
  uint32_t seed = 12345;
  auto next = [&] {
    seed = seed * 1664525u + 1013904223u;
    return from_bf16(to_bf16(static_cast<float>(seed >> 8) / 16777216.0f - 0.5f));
  };
  for (auto& v : a) v = next();
  for (auto& v : bs) v = next();
  const float* b[kOffsets];
  for (int k = 0; k < kOffsets; ++k) b[k] = bs.data() + k * channels * pitch;
  std::vector<float> out(kOffsets * width);
  float* acc[kOffsets];
  for (int k = 0; k < kOffsets; ++k) acc[k] = out.data() + k * width;
  const double flops = 2.0 * kOffsets * channels * width;
  // The sums in double, to check every variant against.
  std::vector<double> want(kOffsets * width, 0.0);
  for (int k = 0; k < kOffsets; ++k) {
    for (int64_t c = 0; c < channels; ++c) {
      for (int64_t p = 0; p < width; ++p) {
        want[k * width + p] += static_cast<double>(a[c * pitch + p]) * b[k][c * pitch + p];
      }
    }
  }
  auto report = [&](const char* name, double s) {
    double err = 0;
    for (size_t i = 0; i < out.size(); ++i) err = std::max(err, std::fabs(out[i] - want[i]));
    std::printf("{\"variant\": \"%s\", \"channels\": %lld, \"width\": %lld, \"ns\": %.1f, "
                "\"gflops\": %.2f, \"max_abs_error\": %.3g}\n",
                name, static_cast<long long>(channels), static_cast<long long>(width), s * 1e9,
                flops / s * 1e-9, err);
  };
  report("f32x8", best_seconds_per_call(
                      [&] { dot_f32<8>(acc, a.data(), b, channels, pitch, width); }, seconds));
  report("f32x16", best_seconds_per_call(
                       [&] { dot_f32<16>(acc, a.data(), b, channels, pitch, width); }, seconds));
#if defined(__AVX512BF16__)
  // [C/2][pitch][2] copies in bfloat16.
  auto interleave = [&](const float* src) {
    std::vector<uint16_t> dst((channels + 1) / 2 * 2 * pitch, 0);  // zero: the pad channel
    for (int64_t c = 0; c < channels; ++c) {
      for (int64_t p = 0; p < width; ++p) {
        dst[(c / 2) * 2 * pitch + 2 * p + c % 2] = to_bf16(src[c * pitch + p]);
      }
    }
    return dst;
  };
  const std::vector<uint16_t> a16 = interleave(a.data());
  std::vector<std::vector<uint16_t>> b16;
  const uint16_t* bp[kOffsets];
  for (int k = 0; k < kOffsets; ++k) b16.push_back(interleave(b[k]));
  for (int k = 0; k < kOffsets; ++k) bp[k] = b16[k].data();
  report("bf16", best_seconds_per_call(
                     [&] { dot_bf16(acc, a16.data(), bp, channels, pitch, width); }, seconds));
#else
  std::printf("{\"variant\": \"bf16\", \"unsupported\": true}\n");
#endif
  return 0;
}
