// CPU kernels compiled for AVX2 (see cpu_kernels.h); empty off x86-64.
#include "cpu_kernels.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "sgmcmc_fused/langevin_math.h"
#include "sgmcmc_fused/philox.h"
#include "vec_math.h"

// Everything defined below, and only that, is compiled for AVX2.
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace sgmcmc_fused::cpu {
namespace avx2 {
#define SGMCMC_CPU_ISA_LEVEL 2
#include "cpu_kernels_impl.h"
}  // namespace avx2
}  // namespace sgmcmc_fused::cpu
#pragma GCC pop_options

namespace sgmcmc_fused::cpu {
// Outside the pragma: this runs before the CPU's support is checked.
const KernelTable* avx2_kernels() {
  static const KernelTable table{"avx2",
                                 &avx2::philox_normal,
                                 &avx2::psgld_span,
                                 &avx2::sgld_span,
                                 &avx2::dropconnect_weight,
                                 &avx2::lstm_cell_forward,
                                 &avx2::lstm_cell_backward};
  return &table;
}
}  // namespace sgmcmc_fused::cpu

#else
namespace sgmcmc_fused::cpu {
const KernelTable* avx2_kernels() { return nullptr; }
}  // namespace sgmcmc_fused::cpu
#endif
