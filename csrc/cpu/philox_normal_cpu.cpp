#include "philox_normal_cpu.h"

#include <algorithm>
#include <cmath>

#include "sgmcmc_fused/philox.h"
#include "vec_math.h"

// The draw is compute-bound (10 Philox rounds, one log, one sqrt and a sincos
// per pair of elements), so it is compiled for several ISAs and the best one is
// picked when the library loads. The update loops are memory-bound and are not.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SGMCMC_CPU_CLONES __attribute__((target_clones("default", "avx2", "arch=x86-64-v4")))
#else
#define SGMCMC_CPU_CLONES
#endif

namespace sgmcmc_fused::cpu {

SGMCMC_CPU_CLONES
void philox_normal_quads(uint64_t seed, uint32_t stream_id, uint32_t step, uint64_t first_quad,
                         int64_t num_quads, float* out) {
  alignas(64) float n0[kQuadsPerBlock], n1[kQuadsPerBlock], n2[kQuadsPerBlock], n3[kQuadsPerBlock];
  const uint32_t k0 = seed_lo(seed), k1 = seed_hi(seed);
#pragma omp simd
  for (int64_t i = 0; i < num_quads; ++i) {
    const uint64_t q = first_quad + static_cast<uint64_t>(i);
    uint32_t c0 = static_cast<uint32_t>(q), c1 = static_cast<uint32_t>(q >> 32), c2 = stream_id, c3 = step;
    philox4x32_10(c0, c1, c2, c3, k0, k1);
    const float u0 = uint32_to_open_uniform(c0), u1 = uint32_to_open_uniform(c1);
    const float u2 = uint32_to_open_uniform(c2), u3 = uint32_to_open_uniform(c3);
    const float r01 = std::sqrt(-2.0f * log_positive(u0));
    const float r23 = std::sqrt(-2.0f * log_positive(u2));
    float s1, c1f, s3, c3f;
    sincos_0_2pi(kTwoPiF * u1, s1, c1f);
    sincos_0_2pi(kTwoPiF * u3, s3, c3f);
    n0[i] = r01 * c1f;
    n1[i] = r01 * s1;
    n2[i] = r23 * c3f;
    n3[i] = r23 * s3;
  }
  for (int64_t i = 0; i < num_quads; ++i) {
    out[4 * i + 0] = n0[i];
    out[4 * i + 1] = n1[i];
    out[4 * i + 2] = n2[i];
    out[4 * i + 3] = n3[i];
  }
}

void philox_normal_range(uint64_t seed, uint32_t stream_id, uint32_t step, uint64_t first_element,
                         int64_t count, float* out) {
  alignas(64) float block[kElementsPerBlock];
  uint64_t element = first_element;
  int64_t done = 0;
  while (done < count) {
    const uint64_t quad = element / 4;
    const int64_t lead = static_cast<int64_t>(element % 4);  // elements of the first quad before ours
    const int64_t take = std::min<int64_t>(count - done, kElementsPerBlock - lead);
    const int64_t quads = (lead + take + 3) / 4;
    philox_normal_quads(seed, stream_id, step, quad, quads, block);
    std::copy(block + lead, block + lead + take, out + done);
    done += take;
    element += static_cast<uint64_t>(take);
  }
}

}  // namespace sgmcmc_fused::cpu
