// Branch-free fp32 log and sin/cos for the CPU noise draw.
//
// Written as straight-line scalar code on plain floats and integers so that,
// inside `#pragma omp simd` loops, the compiler turns them into SIMD code for
// whatever ISA the caller is cloned for (SSE2, AVX2, AVX-512). Scalar libm
// calls would keep the Box-Muller draw several times slower than the memory
// traffic of the update. Accuracy is about 1 ulp on the domains used here,
// which keeps the CPU noise within 1e-6 (absolute) of the other backends
// (docs/spec.md#agreement-between-backends).
//
// The polynomial coefficients are the classical minimax fits for logf and
// sinf/cosf on the reduced ranges (as in the Cephes library).
#pragma once

#include <cstdint>

namespace sgmcmc_fused::cpu {

#define SGMCMC_VEC_INLINE inline __attribute__((always_inline))

SGMCMC_VEC_INLINE int32_t float_bits(float x) { return __builtin_bit_cast(int32_t, x); }

SGMCMC_VEC_INLINE float bits_float(int32_t i) { return __builtin_bit_cast(float, i); }

// Natural log of a positive normal float (the Box-Muller u is in [2^-24, 1)).
SGMCMC_VEC_INLINE float log_positive(float x) {
  const int32_t bits = float_bits(x);
  const int32_t mantissa_bits = bits & 0x007fffff;
  // Centre the mantissa on 1 so the series argument stays in [-0.29, 0.41]:
  // mantissas above sqrt(2) (0x3504f3 is its fraction field) are halved and
  // the exponent raised by one. Integer arithmetic only, no branch or select
  // the vectoriser might refuse.
  const int32_t high = static_cast<int32_t>(mantissa_bits > 0x3504f3);
  const int32_t exponent = ((bits >> 23) & 0xff) - 127 + high;
  const float m = bits_float((mantissa_bits | 0x3f800000) - (high << 23));
  const float e = static_cast<float>(exponent);
  const float f = m - 1.0f;
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  float y = f * z * p;
  // ln 2 split in two parts so that e * ln2_hi is exact.
  y = y + e * -2.12194440e-4f;
  y = y - 0.5f * z;
  return f + y + e * 0.693359375f;
}

// sin(x) and cos(x) for x in [0, 2*pi] (the Box-Muller angle).
SGMCMC_VEC_INLINE void sincos_0_2pi(float x, float& sin_out, float& cos_out) {
  constexpr float kFourOverPi = 1.27323954473516f;
  // pi/4 in three parts (Cody-Waite) so the reduction is exact to fp32.
  constexpr float kPiOver4A = 0.78515625f;
  constexpr float kPiOver4B = 2.4187564849853515625e-4f;
  constexpr float kPiOver4C = 3.77489497744594108e-8f;
  int32_t octant = static_cast<int32_t>(x * kFourOverPi);
  octant = (octant + 1) & ~1;  // nearest even octant: r in [-pi/4, pi/4]
  const float j = static_cast<float>(octant);
  const float r = ((x - j * kPiOver4A) - j * kPiOver4B) - j * kPiOver4C;
  const int32_t quadrant = octant >> 1;
  const float z = r * r;
  float c = 2.443315711809948e-5f;
  c = c * z - 1.388731625493765e-3f;
  c = c * z + 4.166664568298827e-2f;
  c = c * z * z - 0.5f * z + 1.0f;
  float s = -1.9515295891e-4f;
  s = s * z + 8.3321608736e-3f;
  s = s * z - 1.6666654611e-1f;
  s = s * z * r + r;
  // sin(k*pi/2 + r) and cos(k*pi/2 + r) by quadrant k: odd quadrants swap the
  // two polynomials, and the signs follow bit 1 of k (sin) and of k + 1 (cos).
  // Done on the bit patterns so the loop stays branch-free.
  const int32_t swap = -(quadrant & 1);  // all ones in odd quadrants
  const int32_t s_bits = float_bits(s), c_bits = float_bits(c);
  const int32_t sin_mag = (c_bits & swap) | (s_bits & ~swap);
  const int32_t cos_mag = (s_bits & swap) | (c_bits & ~swap);
  sin_out = bits_float(sin_mag ^ ((quadrant & 2) << 30));
  cos_out = bits_float(cos_mag ^ (((quadrant + 1) & 2) << 30));
}

// Bitwise select: a where mask is all ones, b where it is zero (vectorises
// into a blend; a ternary on floats sometimes stops the vectoriser).
SGMCMC_VEC_INLINE float select_bits(bool take_a, float a, float b) {
  const int32_t mask = -static_cast<int32_t>(take_a);
  return bits_float((float_bits(a) & mask) | (float_bits(b) & ~mask));
}

// exp(x) for fp32, about 1 ulp: 2^n * exp(r), r = x - n ln 2 in [-ln2/2, ln2/2].
// Inputs are clamped to [-87.3, 88.7], where exp stays a normal float.
SGMCMC_VEC_INLINE float exp_float(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  // ln 2 in two parts (Cody-Waite) so that n * kLn2Hi is exact.
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.7f ? 88.7f : x;
  // Round x / ln 2 to the nearest integer by adding and subtracting 1.5 * 2^23
  // (floorf would stop GCC vectorising the loop unless -fno-trapping-math).
  constexpr float kRoundingShift = 12582912.0f;
  const float n = (x * kLog2e + kRoundingShift) - kRoundingShift;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * (r * r) + r + 1.0f;
  return e * bits_float((static_cast<int32_t>(n) + 127) << 23);
}

// Logistic sigmoid 1 / (1 + exp(-x)).
SGMCMC_VEC_INLINE float sigmoid_float(float x) { return 1.0f / (1.0f + exp_float(-x)); }

// tanh(x) for fp32: an odd polynomial for |x| < 0.625 (where 1 - 2 / (e^2x + 1)
// would lose relative accuracy), the exponential form above it.
SGMCMC_VEC_INLINE float tanh_float(float x) {
  const float ax = __builtin_fabsf(x);
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = x + x * z * p;
  const float large_abs = 1.0f - 2.0f / (exp_float(2.0f * ax) + 1.0f);
  const float large = bits_float(float_bits(large_abs) | (float_bits(x) & static_cast<int32_t>(0x80000000)));
  return select_bits(ax < 0.625f, small, large);
}

}  // namespace sgmcmc_fused::cpu
