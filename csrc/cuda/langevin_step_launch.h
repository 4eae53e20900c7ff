// Host side of the psgld_step_ / sgld_step_ launches that does not touch the
// CUDA runtime: the int64 range check, the grouping of a call's tensors by
// dtype, their rows and the packing into multi-tensor-apply tables. Shared by
// langevin_step_cuda.cu, which launches each table with <<<>>> on the current
// stream, and the emulated tests, which launch the same tables on the host.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "multi_tensor_apply.cuh"
#include "sgmcmc_fused/langevin_math.h"
#include "sgmcmc_fused/step_inputs.h"

namespace sgmcmc_fused::cuda {

// The kernels index elements as element_offset + local index and quads as
// their quotient by 4, in int64: rule out overflow once, on the host.
inline void check_index_range(const char* op, const char* what, size_t i, int64_t numel, int64_t element_offset) {
  TORCH_CHECK(numel <= std::numeric_limits<int64_t>::max() - element_offset, op, ": ", what, "[", i,
              "] = ", element_offset, " plus ", numel, " elements overflows int64");
}

// For the inputs of one step call (already checked by check_step_inputs),
// calls launch(table, num_blocks, hyper, seed) once per table:
//   table       const TensorTable<scalar_t>&, one dtype's rows and blocks
//   num_blocks  int, the blocks of the table (grid.x)
//   hyper       const LangevinHyper<opmath_t>&
//   seed        uint64_t
// A table holds typed pointers, so each dtype gets its own series of tables,
// in the order fp32, bf16, fp16, fp64; tensors keep their relative order
// within a dtype, and empty tensors are left out.
template <bool kPreconditioned, typename LaunchTable>
void for_each_step_table(const char* op, const StepTensors& t, const StepScalars& s, const LaunchTable& launch) {
  for (size_t i = 0; i < t.params.size(); ++i) {
    check_index_range(op, "element_offsets", i, t.params[i].numel(), t.element_offsets[i]);
  }
  const uint64_t seed = static_cast<uint64_t>(s.seed);
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble}) {
    std::vector<size_t> members;
    for (size_t i = 0; i < t.params.size(); ++i) {
      if (t.params[i].scalar_type() == dtype && t.params[i].numel() > 0) members.push_back(i);
    }
    if (members.empty()) continue;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "langevin_step_tables", [&] {
      using opmath_t = at::opmath_type<scalar_t>;
      std::vector<TensorRow<scalar_t>> rows;
      rows.reserve(members.size());
      for (const size_t i : members) {
        rows.push_back({t.params[i].data_ptr<scalar_t>(), t.grads[i].const_data_ptr<scalar_t>(),
                        kPreconditioned ? t.square_avgs[i].data_ptr<opmath_t>() : nullptr, t.params[i].numel(),
                        t.element_offsets[i], static_cast<uint32_t>(t.stream_ids[i]),
                        static_cast<uint32_t>(t.steps[i])});
      }
      const LangevinHyper<opmath_t> hyper = make_hyper<opmath_t>(s);
      multi_tensor_apply<scalar_t>(
          rows, [&](const TensorTable<scalar_t>& table, int num_blocks) { launch(table, num_blocks, hyper, seed); });
    });
  }
}

}  // namespace sgmcmc_fused::cuda
