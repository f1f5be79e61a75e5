// Input rows quantized to 8 bits for the int8 kernels (linear.cc, packed.cc): each row of x on
// its own, scale max|row| / 127, rounded to nearest even, so that a row's result never depends on
// the rows it is batched with. The AVX-512, AVX2 and scalar code give the same bytes (the same
// float operations, the same rounding), so every ISA multiplies the same rows.
#ifndef KOGPT2_KERNELS_INT8_ROWS_H_
#define KOGPT2_KERNELS_INT8_ROWS_H_

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "isa.h"

namespace kogpt2 {

struct QuantizedRows {
  std::vector<int8_t> values;  // (N, K): q in [-127, 127]
  std::vector<float> scales;   // (N): max|row| / 127 (0 for a row of zeros)
  std::vector<int32_t> sums;   // (N): sum of the row's q
};

__attribute__((target("avx512f,avx512bw"))) inline void quantize_row(const float* x, int64_t K, int8_t* q, float* scale,
                                                              int32_t* sum) {
  const int64_t body = K - K % 16;
  __m512 amax = _mm512_setzero_ps();
  for (int64_t k = 0; k < body; k += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
  float m = _mm512_reduce_max_ps(amax);
  for (int64_t k = body; k < K; ++k) m = std::max(m, std::fabs(x[k]));
  *scale = m / 127.f;
  const float inv = m > 0.f ? 127.f / m : 0.f;
  const __m512 vinv = _mm512_set1_ps(inv), lo = _mm512_set1_ps(-127.f), hi = _mm512_set1_ps(127.f);
  __m512i total = _mm512_setzero_si512();
  for (int64_t k = 0; k < body; k += 16) {
    __m512 v = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_mul_ps(_mm512_loadu_ps(x + k), vinv)));
    __m512i i = _mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    total = _mm512_add_epi32(total, i);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + k), _mm512_cvtepi32_epi8(i));
  }
  int32_t s = _mm512_reduce_add_epi32(total);
  for (int64_t k = body; k < K; ++k) {
    float v = std::min(127.f, std::max(-127.f, x[k] * inv));
    q[k] = static_cast<int8_t>(std::nearbyint(v));
    s += q[k];
  }
  *sum = s;
}

// The sum of 8 int32 lanes (also linear.cc's AVX2 products).
__attribute__((target("avx2"))) inline int32_t sum8(__m256i a) {
  const __m128i h = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
  const __m128i h2 = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
  return _mm_cvtsi128_si32(_mm_add_epi32(h2, _mm_shuffle_epi32(h2, 0xb1)));
}

// The same float operations on 8 floats at a time (cvtps rounds to nearest even, as nearbyint
// does in the default rounding mode), for AVX2 CPUs: the portable loop's nearbyint calls cost an
// AVX2 int8 step at 8 rows ~3% of its time.
__attribute__((target("avx2,fma"))) inline void quantize_row_avx2(const float* x, int64_t K, int8_t* q, float* scale,
                                                                  int32_t* sum) {
  const int64_t body = K - K % 8;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 amax = _mm256_setzero_ps();
  for (int64_t k = 0; k < body; k += 8) amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + k)));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  float m = std::max(_mm_cvtss_f32(h), _mm_cvtss_f32(_mm_movehdup_ps(h)));
  for (int64_t k = body; k < K; ++k) m = std::max(m, std::fabs(x[k]));
  *scale = m / 127.f;
  const float inv = m > 0.f ? 127.f / m : 0.f;
  const __m256 vinv = _mm256_set1_ps(inv), lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
  __m256i total = _mm256_setzero_si256();
  for (int64_t k = 0; k < body; k += 8) {
    const __m256 v = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(x + k), vinv)));
    const __m256i i = _mm256_cvtps_epi32(v);  // (8) int32 in [-127, 127]
    total = _mm256_add_epi32(total, i);
    const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));  // (8) int16
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), _mm_packs_epi16(w16, w16));  // (8) int8
  }
  int32_t s = sum8(total);
  for (int64_t k = body; k < K; ++k) {
    q[k] = static_cast<int8_t>(std::nearbyint(std::min(127.f, std::max(-127.f, x[k] * inv))));
    s += q[k];
  }
  *sum = s;
}

inline void quantize_row_portable(const float* x, int64_t K, int8_t* q, float* scale, int32_t* sum) {
  float m = 0.f;
  for (int64_t k = 0; k < K; ++k) m = std::max(m, std::fabs(x[k]));
  *scale = m / 127.f;
  const float inv = m > 0.f ? 127.f / m : 0.f;
  int32_t s = 0;
  for (int64_t k = 0; k < K; ++k) {
    q[k] = static_cast<int8_t>(std::nearbyint(std::min(127.f, std::max(-127.f, x[k] * inv))));
    s += q[k];
  }
  *sum = s;
}

inline QuantizedRows quantize_rows(const float* x, int64_t N, int64_t K) {
  QuantizedRows rows{std::vector<int8_t>(N * K), std::vector<float>(N), std::vector<int32_t>(N)};
  const int chosen = isa();
#pragma omp parallel for schedule(static) if (N * K > 65536)
  for (int64_t n = 0; n < N; ++n) {
    int8_t* q = rows.values.data() + n * K;
    if (chosen >= kAvx512)
      quantize_row(x + n * K, K, q, rows.scales.data() + n, rows.sums.data() + n);
    else if (chosen == kAvx2)
      quantize_row_avx2(x + n * K, K, q, rows.scales.data() + n, rows.sums.data() + n);
    else
      quantize_row_portable(x + n * K, K, q, rows.scales.data() + n, rows.sums.data() + n);
  }
  return rows;
}

}  // namespace kogpt2

#endif  // KOGPT2_KERNELS_INT8_ROWS_H_
