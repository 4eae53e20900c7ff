// Grid size of a grid-stride kernel, shared by the CUDA launches and the
// emulated tests (which pass a small max_blocks so that the stride loop runs).
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>

namespace sgmcmc_fused::cuda {

// Blocks for `items` work items at one item per thread and `threads` threads
// per block, capped at max_blocks (a few waves of the device; the stride loop
// covers the rest, so a huge tensor needs no grid beyond 2^31 - 1 blocks).
inline int grid_stride_blocks(int64_t items, int threads, int64_t max_blocks) {
  TORCH_CHECK(items > 0 && threads > 0 && max_blocks > 0, "grid_stride_blocks: items ", items, ", threads ", threads,
              ", max_blocks ", max_blocks, " must be positive");
  const int64_t needed = (items + threads - 1) / threads;
  return static_cast<int>(std::min<int64_t>({needed, max_blocks, INT32_MAX}));
}

}  // namespace sgmcmc_fused::cuda
