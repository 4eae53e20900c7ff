// Multi-tensor apply for the Langevin steps: one kernel launch updates many
// tensors of one dtype.
//
// Symbols used here and in langevin_step_cuda.cu:
//   element  flat index e of a parameter element in the whole (unsharded)
//            parameter; the local index into the tensor is e - element_offset.
//   quad     the 4 elements 4q .. 4q+3 that share one Philox call (docs/spec.md#noise-stream).
//            Quads are counted globally, so a tensor starts with a partial
//            quad when element_offset % 4 != 0 and ends with one when
//            (element_offset + numel) % 4 != 0.
//   chunk    kChunkQuads consecutive quads of one tensor, the work of one
//            block: chunk c covers quads element_offset / 4 + c * kChunkQuads
//            onwards, up to the tensor's last quad.
//   row      one tensor's entry in a table.
//   table    what one launch sees, passed by value as a kernel argument:
//
//     per row r < kMaxRows (structure of arrays, so no padding):
//       param[r]          scalar_t*          updated in place
//       grad[r]           const scalar_t*
//       square_avg[r]     opmath_t*          pSGLD state V; unused by SGLD
//       numel[r]          int64_t            elements of the tensor (> 0)
//       element_offset[r] int64_t            global index of local element 0
//       stream_id[r]      uint32_t           Philox counter word 2
//       step[r]           uint32_t           Philox counter word 3
//     per block b < kMaxBlocks:
//       block_chunk[b]    int32_t            chunk index within its tensor
//       block_row[b]      uint8_t            row of the tensor
//
// A tensor with more chunks than fit in the current table continues in the
// next one: its row is repeated there and chunk numbering carries on.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <vector>

namespace sgmcmc_fused::cuda {

// The work split. Each can be overridden with -D (the emulated tests shrink
// them so that table overflow and tensors continued across tables happen on
// small inputs); the defaults are what the product is built with.
#ifndef SGMCMC_FUSED_STEP_BLOCK_THREADS
#define SGMCMC_FUSED_STEP_BLOCK_THREADS 256
#endif
#ifndef SGMCMC_FUSED_CHUNK_QUADS
#define SGMCMC_FUSED_CHUNK_QUADS 16384
#endif
#ifndef SGMCMC_FUSED_MAX_ROWS
#define SGMCMC_FUSED_MAX_ROWS 36
#endif
#ifndef SGMCMC_FUSED_MAX_BLOCKS
#define SGMCMC_FUSED_MAX_BLOCKS 384
#endif

constexpr int kBlockThreads = SGMCMC_FUSED_STEP_BLOCK_THREADS;  // threads per block, and the kernels' launch bound
constexpr int64_t kChunkQuads = SGMCMC_FUSED_CHUNK_QUADS;       // 64K elements per block
constexpr int kMaxRows = SGMCMC_FUSED_MAX_ROWS;
constexpr int kMaxBlocks = SGMCMC_FUSED_MAX_BLOCKS;
static_assert(kBlockThreads > 0 && kBlockThreads <= 1024 && kChunkQuads > 0 && kMaxRows > 0 && kMaxBlocks > 0,
              "multi_tensor_apply: bad work-split constants");

// NOTE (not yet timed; to be tuned with bench/ on a GPU): 384 blocks of 256
// threads are ~3 blocks per SM on a 132-SM H100/H200, all resident in a single
// wave as long as a thread needs <= 64 registers (ptxas for sm_90: 30-46 for
// the fp32/fp16/bf16 kernels, 60 for fp64 pSGLD), so a launch has no tail of
// late blocks. 64K-element chunks keep the host-side packing and the number of
// launches small (25M elements per launch) while a block still loops 64 times,
// which amortises its table look-up. 36 rows x 48 B + 384 blocks x 5 B =
// 3648 B keeps the table under the 4 KiB kernel-argument limit of older
// drivers and toolkits.

// Host-side description of one tensor of a call; one row of a table.
template <typename scalar_t>
struct TensorRow {
  using opmath_t = at::opmath_type<scalar_t>;
  scalar_t* param;
  const scalar_t* grad;
  opmath_t* square_avg;  // nullptr for SGLD
  int64_t numel;
  int64_t element_offset;
  uint32_t stream_id;
  uint32_t step;
};

template <typename scalar_t>
struct TensorTable {
  using scalar_type = scalar_t;
  using opmath_t = at::opmath_type<scalar_t>;
  scalar_t* param[kMaxRows];
  const scalar_t* grad[kMaxRows];
  opmath_t* square_avg[kMaxRows];
  int64_t numel[kMaxRows];
  int64_t element_offset[kMaxRows];
  uint32_t stream_id[kMaxRows];
  uint32_t step[kMaxRows];
  int32_t block_chunk[kMaxBlocks];
  uint8_t block_row[kMaxBlocks];

  void set_row(int r, const TensorRow<scalar_t>& t) {
    param[r] = t.param;
    grad[r] = t.grad;
    square_avg[r] = t.square_avg;
    numel[r] = t.numel;
    element_offset[r] = t.element_offset;
    stream_id[r] = t.stream_id;
    step[r] = t.step;
  }
};

// The kernel receives the table plus at most a LangevinHyper<double> (56 B)
// and the seed; all of it must fit in the 4 KiB that CUDA before 12.1 allows
// (the emulated launcher checks the exact parameter layout).
static_assert(sizeof(TensorTable<double>) + 128 <= 4096, "table too large for a kernel argument");
static_assert(kMaxRows <= std::numeric_limits<uint8_t>::max() + 1, "block_row is a uint8_t");

// Quads touched by elements [element_offset, element_offset + numel).
inline int64_t num_quads(int64_t numel, int64_t element_offset) {
  return numel == 0 ? 0 : (element_offset + numel - 1) / 4 - element_offset / 4 + 1;
}

// Packs `rows` (all numel > 0) into tables and calls launch(table, num_blocks)
// each time a table is full and once at the end, in row order.
template <typename scalar_t, typename Launch>
void multi_tensor_apply(const std::vector<TensorRow<scalar_t>>& rows, const Launch& launch) {
  // Value-initialised so that the unused tail of a partly filled table is
  // deterministic bytes rather than stack garbage copied to the device.
  TensorTable<scalar_t> table{};
  int used_rows = 0;
  int used_blocks = 0;
  const auto flush = [&] {
    if (used_blocks > 0) launch(table, used_blocks);
    used_rows = 0;
    used_blocks = 0;
  };
  for (const TensorRow<scalar_t>& t : rows) {
    const int64_t chunks = (num_quads(t.numel, t.element_offset) + kChunkQuads - 1) / kChunkQuads;
    TORCH_INTERNAL_ASSERT(chunks > 0, "multi_tensor_apply: empty tensors must be skipped by the caller");
    TORCH_CHECK(chunks <= std::numeric_limits<int32_t>::max(), "multi_tensor_apply: tensor of ", t.numel,
                " elements has too many chunks");
    int row = used_rows++;
    table.set_row(row, t);
    for (int64_t c = 0; c < chunks; ++c) {
      table.block_row[used_blocks] = static_cast<uint8_t>(row);
      table.block_chunk[used_blocks] = static_cast<int32_t>(c);
      if (++used_blocks == kMaxBlocks) {
        flush();
        if (c + 1 < chunks) {  // the tensor continues in the next table
          row = used_rows++;
          table.set_row(row, t);
        }
      }
    }
    if (used_rows == kMaxRows) flush();
  }
  flush();
}

// The quad range of the calling block, and its row.
struct BlockWork {
  int row;
  int64_t first_quad;  // global quad indices [first_quad, end_quad)
  int64_t end_quad;
};

template <typename scalar_t>
__device__ __forceinline__ BlockWork block_work(const TensorTable<scalar_t>& table) {
  const int row = table.block_row[blockIdx.x];
  const int64_t offset = table.element_offset[row];
  const int64_t tensor_first_quad = offset / 4;
  const int64_t tensor_end_quad = (offset + table.numel[row] - 1) / 4 + 1;
  const int64_t first = tensor_first_quad + static_cast<int64_t>(table.block_chunk[blockIdx.x]) * kChunkQuads;
  const int64_t end = first + kChunkQuads < tensor_end_quad ? first + kChunkQuads : tensor_end_quad;
  return {row, first, end};
}

}  // namespace sgmcmc_fused::cuda
