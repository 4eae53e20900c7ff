// CPU kernels compiled for AVX512 (see cpu_kernels.h); empty off x86-64.
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

// Everything defined below, and only that, is compiled for AVX512. (GCC 12's
// own AVX-512 headers trip -Wmaybe-uninitialized on _mm512_undefined_*.)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
namespace sgmcmc_fused::cpu {
namespace avx512 {
#define SGMCMC_CPU_ISA_LEVEL 3
#include "cpu_kernels_impl.h"
}  // namespace avx512
}  // namespace sgmcmc_fused::cpu
#pragma GCC pop_options

namespace sgmcmc_fused::cpu {
// Outside the pragma: this runs before the CPU's support is checked.
const KernelTable* avx512_kernels() {
  static const KernelTable table{"avx512",
                                 &avx512::philox_normal,
                                 &avx512::psgld_span,
                                 &avx512::sgld_span,
                                 &avx512::dropconnect_weight,
                                 &avx512::lstm_cell_forward,
                                 &avx512::lstm_cell_backward};
  return &table;
}
}  // namespace sgmcmc_fused::cpu

#else
namespace sgmcmc_fused::cpu {
const KernelTable* avx512_kernels() { return nullptr; }
}  // namespace sgmcmc_fused::cpu
#endif
