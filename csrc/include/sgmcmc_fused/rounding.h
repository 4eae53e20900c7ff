// Arithmetic rounded once per operation, as docs/spec.md requires of every backend: a * b + c is
// two roundings, the product's and the sum's, as in the eager reference (one kernel per operation),
// never one fused multiply-add. Host code is compiled with -ffp-contract=off, so there the plain
// operators do it. nvcc contracts a * b + c into an FMA by default (--fmad=true); in device code
// each operation is therefore spelled with an _rn intrinsic, which is never contracted. (One FMA
// can move a result far: g + wd * theta that cancels to 0 when rounded twice leaves a residue, which
// pSGLD's first step multiplies by lr / eps.)
#pragma once

#include "sgmcmc_fused/philox.h"  // SGMCMC_HD

namespace sgmcmc_fused {

#if defined(__CUDA_ARCH__)
SGMCMC_HD float mul_rn(float a, float b) { return __fmul_rn(a, b); }
SGMCMC_HD double mul_rn(double a, double b) { return __dmul_rn(a, b); }
SGMCMC_HD float add_rn(float a, float b) { return __fadd_rn(a, b); }
SGMCMC_HD double add_rn(double a, double b) { return __dadd_rn(a, b); }
SGMCMC_HD float sub_rn(float a, float b) { return __fsub_rn(a, b); }
SGMCMC_HD double sub_rn(double a, double b) { return __dsub_rn(a, b); }
#else
SGMCMC_HD float mul_rn(float a, float b) { return a * b; }
SGMCMC_HD double mul_rn(double a, double b) { return a * b; }
SGMCMC_HD float add_rn(float a, float b) { return a + b; }
SGMCMC_HD double add_rn(double a, double b) { return a + b; }
SGMCMC_HD float sub_rn(float a, float b) { return a - b; }
SGMCMC_HD double sub_rn(double a, double b) { return a - b; }
#endif

}  // namespace sgmcmc_fused
