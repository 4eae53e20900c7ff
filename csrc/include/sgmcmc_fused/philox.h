// Counter-based noise stream shared by every backend (docs/spec.md#noise-stream).
//
// Philox4x32-10 (Salmon et al., SC'11) with
//   key     = (seed & 0xFFFFFFFF, seed >> 32)
//   counter = (q & 0xFFFFFFFF, q >> 32, stream, step),   q = element // 4
// and the element takes lane element % 4 of the four Box-Muller normals drawn
// from that counter. This is the layout of at::Philox4_32_10(seed,
// subsequence = (step << 32) | stream, offset = q) and of Triton's
// tl.philox(seed, q_lo, q_hi, stream, step), so all backends agree bit for bit
// on the uint32 words.
//
// Everything here is plain scalar code marked host+device: the CUDA kernels use
// it directly, and the CPU kernel runs it over small arrays in loops the
// compiler vectorises (csrc/cpu/vec_math.h supplies the matching SIMD-friendly
// log/sin/cos).
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SGMCMC_HD __host__ __device__ __forceinline__
#else
#define SGMCMC_HD inline __attribute__((always_inline))
#endif

namespace sgmcmc_fused {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // sqrt(3) - 1
constexpr int kPhiloxRounds = 10;

// Bit 31 of the stream word is reserved for DropConnect masks (docs/spec.md#stream-words), so
// optimizer stream ids must stay below it.
constexpr uint32_t kMaskStreamBit = 0x80000000u;

// One Philox4x32-10 block: four counter words and two key words in, four
// output words out (in place).
SGMCMC_HD void philox4x32_10(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0, uint32_t k1) {
  // No unroll pragma in the host pass of a .cu file: the CUDA front end
  // rejects `#pragma GCC unroll` and the host compiler `#pragma unroll`, and
  // .cu files call this function from device code only.
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
#pragma unroll
#elif !defined(__CUDACC__) && !defined(__HIPCC__)
#pragma GCC unroll 10
#endif
  for (int round = 0; round < kPhiloxRounds; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
}

// uint32 -> uniform in the open interval (0, 1), exact in fp32:
// ((x >> 9) + 0.5) * 2^-23. Never 0, so log() in Box-Muller is finite.
SGMCMC_HD float uint32_to_open_uniform(uint32_t x) {
  return (static_cast<float>(x >> 9) + 0.5f) * 1.1920928955078125e-07f;
}

// 2*pi rounded to fp32; every backend multiplies by this exact constant.
constexpr float kTwoPiF = 6.28318530717958647692f;

// Philox key words of a 64-bit seed.
SGMCMC_HD uint32_t seed_lo(uint64_t seed) { return static_cast<uint32_t>(seed); }
SGMCMC_HD uint32_t seed_hi(uint64_t seed) { return static_cast<uint32_t>(seed >> 32); }

}  // namespace sgmcmc_fused
