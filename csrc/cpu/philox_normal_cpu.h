// Vectorised draw of the SPEC §2 normal stream on the CPU.
#pragma once

#include <cstdint>

namespace sgmcmc_fused::cpu {

// Quads (groups of 4 elements sharing one Philox call) drawn per block; the
// block's noise (4 KiB) stays in L1 between the draw and the update loop.
constexpr int64_t kQuadsPerBlock = 256;
constexpr int64_t kElementsPerBlock = 4 * kQuadsPerBlock;

// Writes the N(0, 1) draws of elements [4*first_quad, 4*(first_quad + num_quads))
// of stream (seed, stream_id, step) to out[0 .. 4*num_quads), in element order.
// num_quads <= kQuadsPerBlock.
void philox_normal_quads(uint64_t seed, uint32_t stream_id, uint32_t step, uint64_t first_quad,
                         int64_t num_quads, float* out);

// Writes the draws of elements [first_element, first_element + count) to out,
// for any alignment and length.
void philox_normal_range(uint64_t seed, uint32_t stream_id, uint32_t step, uint64_t first_element,
                         int64_t count, float* out);

}  // namespace sgmcmc_fused::cpu
