// Per-element pSGLD / SGLD update (docs/spec.md#langevin-step), shared by the CPU and CUDA kernels
// so both evaluate the same expression in the same order. The eager reference
// (sgmcmc_fused/kernels/langevin/reference.py) mirrors it line by line.
//
//   g' = g + wd * theta
//   V  = alpha * V + (1 - alpha) * (g' * g')
//   G  = 1 / (eps + sqrt(V))
//   theta = theta - (lr * G) * g' + sqrt(noise_var_scale * G) * xi
//
// with noise_var_scale = 2 * lr * temperature / num_data (0 when noise is off), each operation
// rounded on its own (rounding.h: no FMA, on the GPU either).
// opmath_t is float for fp16/bf16/fp32 storage and double for fp64.
#pragma once

#include <cmath>

#include "sgmcmc_fused/philox.h"
#include "sgmcmc_fused/rounding.h"

namespace sgmcmc_fused {

// Hyperparameters of one step, already converted to the math type.
template <typename opmath_t>
struct LangevinHyper {
  opmath_t lr;
  opmath_t alpha;            // pSGLD only
  opmath_t one_minus_alpha;  // pSGLD only
  opmath_t eps;              // pSGLD only
  opmath_t weight_decay;
  opmath_t noise_var_scale;  // 2 * lr * T / N, or 0 with the noise off
  opmath_t noise_std;        // sqrt(noise_var_scale) rounded from double (SGLD)
};

// pSGLD: updates theta and v in place. xi is the N(0, 1) draw. The flags
// remove the weight-decay and noise terms at compile time (a CPU loop stays
// branch-free and vectorises); with kNoise == false xi is ignored.
template <typename opmath_t, bool kWeightDecay, bool kNoise>
SGMCMC_HD void psgld_update(opmath_t& theta, opmath_t g, opmath_t& v, opmath_t xi, const LangevinHyper<opmath_t>& h) {
  using std::sqrt;
  if constexpr (kWeightDecay) g = add_rn(g, mul_rn(h.weight_decay, theta));
  v = add_rn(mul_rn(h.alpha, v), mul_rn(h.one_minus_alpha, mul_rn(g, g)));
  const opmath_t precond = opmath_t(1) / (h.eps + sqrt(v));
  theta = sub_rn(theta, mul_rn(mul_rn(h.lr, precond), g));
  if constexpr (kNoise) theta = add_rn(theta, mul_rn(sqrt(mul_rn(h.noise_var_scale, precond)), xi));
}

// SGLD: pSGLD with G = 1 and no second-moment state.
template <typename opmath_t, bool kWeightDecay, bool kNoise>
SGMCMC_HD void sgld_update(opmath_t& theta, opmath_t g, opmath_t xi, const LangevinHyper<opmath_t>& h) {
  if constexpr (kWeightDecay) g = add_rn(g, mul_rn(h.weight_decay, theta));
  theta = sub_rn(theta, mul_rn(h.lr, g));
  if constexpr (kNoise) theta = add_rn(theta, mul_rn(h.noise_std, xi));
}

// The same with the flags read from h at run time (weight_decay != 0,
// noise_var_scale != 0), for kernels where a uniform branch costs nothing.
template <typename opmath_t>
SGMCMC_HD void psgld_element(opmath_t& theta, opmath_t g, opmath_t& v, opmath_t xi, const LangevinHyper<opmath_t>& h) {
  const bool decay = h.weight_decay != opmath_t(0), noise = h.noise_var_scale != opmath_t(0);
  if (decay && noise)
    psgld_update<opmath_t, true, true>(theta, g, v, xi, h);
  else if (decay)
    psgld_update<opmath_t, true, false>(theta, g, v, xi, h);
  else if (noise)
    psgld_update<opmath_t, false, true>(theta, g, v, xi, h);
  else
    psgld_update<opmath_t, false, false>(theta, g, v, xi, h);
}

template <typename opmath_t>
SGMCMC_HD void sgld_element(opmath_t& theta, opmath_t g, opmath_t xi, const LangevinHyper<opmath_t>& h) {
  const bool decay = h.weight_decay != opmath_t(0), noise = h.noise_var_scale != opmath_t(0);
  if (decay && noise)
    sgld_update<opmath_t, true, true>(theta, g, xi, h);
  else if (decay)
    sgld_update<opmath_t, true, false>(theta, g, xi, h);
  else if (noise)
    sgld_update<opmath_t, false, true>(theta, g, xi, h);
  else
    sgld_update<opmath_t, false, false>(theta, g, xi, h);
}

}  // namespace sgmcmc_fused
