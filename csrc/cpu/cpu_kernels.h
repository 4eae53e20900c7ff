// The CPU kernels, compiled once per instruction set and chosen at run time.
//
// cpu_kernels_impl.h is compiled by cpu_kernels_{baseline,avx2,avx512}.cpp,
// each under its own `#pragma GCC target` and namespace (as ATen does with
// CPU_CAPABILITY), so one build runs at full speed on any x86-64 CPU and the
// tests can force every variant on one machine (SGMCMC_FUSED_CPU_ISA).
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

#include "sgmcmc_fused/step_inputs.h"

namespace sgmcmc_fused::cpu {

// A contiguous run of one tensor's elements: pointers already advanced to the
// run's first element, `first_element` its index in the whole (unsharded)
// parameter, which is what the noise stream is keyed on.
struct StepSpan {
  void* param;        // [numel], the parameter dtype
  const void* grad;   // [numel], the parameter dtype
  void* square_avg;   // [numel], fp32 (fp64 for fp64 params); null for SGLD
  int64_t numel;
  uint64_t first_element;
  uint32_t stream_id;
  uint32_t step;
};

struct KernelTable {
  const char* isa;  // "baseline", "avx2" or "avx512"
  // N(0, 1) draws of elements [first_element, first_element + count) of the
  // stream (seed, stream_id, step) into out[0 .. count), float32.
  void (*philox_normal)(uint64_t seed, uint32_t stream_id, uint32_t step, uint64_t first_element, int64_t count,
                        float* out);
  void (*psgld_span)(c10::ScalarType dtype, const StepSpan& span, const StepScalars& scalars);
  void (*sgld_span)(c10::ScalarType dtype, const StepSpan& span, const StepScalars& scalars);
};

// Per-ISA tables; nullptr where the variant is not built for this platform.
const KernelTable* baseline_kernels();
const KernelTable* avx2_kernels();
const KernelTable* avx512_kernels();

// The table in use: the best this CPU supports, unless the environment
// variable SGMCMC_FUSED_CPU_ISA ("baseline", "avx2", "avx512") asks for one.
// Chosen once, at first use.
const KernelTable& kernels();

// Name of the instruction set of kernels(), for reports and tests.
std::string cpu_isa();

}  // namespace sgmcmc_fused::cpu
