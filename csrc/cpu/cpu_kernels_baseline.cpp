// CPU kernels for the baseline instruction set of the target (SSE2 on x86-64).
#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <type_traits>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu_kernels.h"
#include "sgmcmc_fused/langevin_math.h"
#include "sgmcmc_fused/philox.h"
#include "vec_math.h"

namespace sgmcmc_fused::cpu {
namespace baseline {
#define SGMCMC_CPU_ISA_LEVEL 0
#include "cpu_kernels_impl.h"
}  // namespace baseline

const KernelTable* baseline_kernels() {
  static const KernelTable table{"baseline",
                                 &baseline::philox_normal,
                                 &baseline::psgld_span,
                                 &baseline::sgld_span,
                                 &baseline::dropconnect_weight,
                                 &baseline::lstm_cell_forward,
                                 &baseline::lstm_cell_backward};
  return &table;
}

}  // namespace sgmcmc_fused::cpu
