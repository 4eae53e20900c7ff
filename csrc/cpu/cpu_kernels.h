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
  void* param;       // [numel], the parameter dtype
  const void* grad;  // [numel], the parameter dtype
  void* square_avg;  // [numel], fp32 (fp64 for fp64 params); null for SGLD
  int64_t numel;
  uint64_t first_element;
  uint32_t stream_id;
  uint32_t step;
};

// A DropConnect mask stream (docs/spec.md#stream-words): stream = 0x80000000 | weight_id,
// step = the forward-call counter; scale = 1 / (1 - p) and sigma =
// sqrt(p / (1 - p)) rounded from double.
struct MaskParams {
  uint64_t seed;
  uint32_t stream;
  uint32_t call;
  int64_t kind;  // 0 Bernoulli, 1 Gaussian
  float p;
  float scale;
  float sigma;
};

// Row-major LSTM cell tensors of one step; rows are batch entries. Dtype of
// every tensor: the op's dtype.
struct CellForwardArgs {
  const void* gates;   // [B, 4H] pre-activations without bias
  const void* bias;    // [4H]
  const void* c_prev;  // [B, H]
  void* h;             // [B, H], row stride h_row_stride (a slice of the layer output)
  void* c;             // [B, H]
  void* activations;   // [B, 4H]: sigmoid i, sigmoid f, tanh g, sigmoid o
  int64_t hidden;
  int64_t h_row_stride;
};

struct CellBackwardArgs {
  const void* grad_h;       // [B, H]
  const void* grad_c;       // [B, H]
  const void* activations;  // [B, 4H]
  const void* c_prev;       // [B, H]
  const void* c;            // [B, H]
  void* grad_gates;         // [B, 4H]
  void* grad_c_prev;        // [B, H]
  int64_t hidden;
};

struct KernelTable {
  const char* isa;  // "baseline", "avx2" or "avx512"
  // N(0, 1) draws of elements [first_element, first_element + count) of the
  // stream (seed, stream_id, step) into out[0 .. count), float32.
  void (*philox_normal)(uint64_t seed, uint32_t stream_id, uint32_t step, uint64_t first_element, int64_t count,
                        float* out);
  void (*psgld_span)(c10::ScalarType dtype, const StepSpan& span, const StepScalars& scalars);
  void (*sgld_span)(c10::ScalarType dtype, const StepSpan& span, const StepScalars& scalars);
  // out[i] = weight[i] * M(first_element + i) for i < count (pointers at the run's start).
  void (*dropconnect_weight)(c10::ScalarType dtype, const void* weight, void* out, uint64_t first_element,
                             int64_t count, const MaskParams& mask);
  // The cell on rows [row_begin, row_end).
  void (*lstm_cell_forward)(c10::ScalarType dtype, const CellForwardArgs& args, int64_t row_begin, int64_t row_end);
  void (*lstm_cell_backward)(c10::ScalarType dtype, const CellBackwardArgs& args, int64_t row_begin, int64_t row_end);
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
