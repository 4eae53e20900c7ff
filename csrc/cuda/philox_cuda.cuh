// Device helpers shared by the CUDA kernels: the draws (docs/spec.md#noise-stream) of one quad
// (4 consecutive elements, one Philox call) and quad-sized vector access.
#pragma once

#include <cstdint>

#include "sgmcmc_fused/philox.h"

namespace sgmcmc_fused::cuda {

// The four storage values of a quad, aligned to their size so that a quad
// moves as one vector access: 16 bytes for fp32, 8 for fp16/bf16, two 16-byte
// accesses for fp64 on sm_90.
template <typename T>
struct alignas(4 * sizeof(T)) Quad {
  T v[4];
};

template <typename T>
__device__ __forceinline__ bool is_quad_aligned(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % alignof(Quad<T>) == 0;
}

// Philox4x32-10 words of quad q of stream (seed, stream, step).
__device__ __forceinline__ void philox_quad_words(uint64_t seed, uint32_t stream, uint32_t step, uint64_t q,
                                                  uint32_t (&x)[4]) {
  x[0] = static_cast<uint32_t>(q);
  x[1] = static_cast<uint32_t>(q >> 32);
  x[2] = stream;
  x[3] = step;
  philox4x32_10(x[0], x[1], x[2], x[3], seed_lo(seed), seed_hi(seed));
}

// Box-Muller of the four words in fp32 with precise logf / sqrtf / sincosf, so
// the normals match the eager reference to the last bit or two.
__device__ __forceinline__ void box_muller_quad(const uint32_t (&x)[4], float (&n)[4]) {
  const float u0 = uint32_to_open_uniform(x[0]), u1 = uint32_to_open_uniform(x[1]);
  const float u2 = uint32_to_open_uniform(x[2]), u3 = uint32_to_open_uniform(x[3]);
  const float r01 = sqrtf(-2.0f * logf(u0));
  const float r23 = sqrtf(-2.0f * logf(u2));
  float sin1, cos1, sin3, cos3;
  sincosf(kTwoPiF * u1, &sin1, &cos1);
  sincosf(kTwoPiF * u3, &sin3, &cos3);
  n[0] = r01 * cos1;
  n[1] = r01 * sin1;
  n[2] = r23 * cos3;
  n[3] = r23 * sin3;
}

// The N(0, 1) draws of quad q of stream (seed, stream, step), docs/spec.md#noise-stream.
__device__ __forceinline__ void philox_normal_quad(uint64_t seed, uint32_t stream, uint32_t step, uint64_t q,
                                                   float (&n)[4]) {
  uint32_t x[4];
  philox_quad_words(seed, stream, step, q, x);
  box_muller_quad(x, n);
}

}  // namespace sgmcmc_fused::cuda
