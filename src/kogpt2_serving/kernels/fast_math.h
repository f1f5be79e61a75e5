// Vectorizable float math the kernels share: attention.cc's softmax, the products' GELU.
#ifndef KOGPT2_KERNELS_FAST_MATH_H_
#define KOGPT2_KERNELS_FAST_MATH_H_

#include <cstdint>

namespace kogpt2 {

// e^x for x <= 0 (the softmax's shifted scores, GELU's -z^2): 2^n * p(r) with n = round(x / ln 2)
// (adding and taking away 1.5 * 2^23 rounds a float to an integer; GCC does not vectorize floorf
// in these loops), r = x - n ln 2 (ln 2 in two parts, exact for |n| < 2^10) and p Cephes' expf polynomial.
// 0 below -87 (no subnormal results). Plain arithmetic, bit casts and a bit mask, no selects,
// comparisons or std::max (each kept GCC 12 from vectorizing the loops for AVX2), so that the
// loops that call it vectorize at each ISA.
inline __attribute__((always_inline)) float fast_exp(float x) {
  const float kRound = 12582912.0f;
  // All bits, or none below -87, where the rest may overflow: their result is masked to 0.
  const int32_t kept = ~(__builtin_bit_cast(int32_t, x + 87.0f) >> 31);
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float two_n = __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);
  return __builtin_bit_cast(float, __builtin_bit_cast(int32_t, p * two_n) & kept);
}

// GELU, erf form (MXNet's LeakyReLU gelu, KoGPT2's): 0.5 x (1 + erf(x / sqrt 2)), in place over n
// values. 1 + erf(z) = 2 - erfc(|z|) for z >= 0, erfc(|z|) for z < 0, with erfc(a) = t p(t)
// e^(-a^2), t = 1 / (1 + 0.3275911 a) (Abramowitz and Stegun 7.1.26: within 1.5e-7 of erf), no
// branches or selects so that the loop vectorizes. Plain IEEE products, sums and a division, never
// fused into FMAs (the wider ISAs' copies in linear.cc are compiled without FMA), so that every
// kernel ISA gives the same bytes.
inline __attribute__((always_inline)) void gelu_in_place(float* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float x = v[i], z = x * 0.70710678118654752f;
    const int32_t bits = __builtin_bit_cast(int32_t, z);
    const float a = __builtin_bit_cast(float, bits & 0x7fffffff);  // |z|
    const float t = 1.0f / (1.0f + 0.3275911f * a);
    float p = 1.061405429f;
    p = p * t - 1.453152027f;
    p = p * t + 1.421413741f;
    p = p * t - 0.284496736f;
    p = p * t + 0.254829592f;
    const float erfc = p * t * fast_exp(-(a * a));
    const float negative = static_cast<float>((bits >> 31) & 1);  // 1 where z < 0
    v[i] = 0.5f * x * ((2.0f - erfc) + negative * (2.0f * erfc - 2.0f));
  }
}

// gelu_in_place over v[0, n) with the process's ISA and threads (linear.cc).
void gelu(float* v, int64_t n);

}  // namespace kogpt2

#endif  // KOGPT2_KERNELS_FAST_MATH_H_
