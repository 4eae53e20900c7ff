// Host-side argument handling shared by the CPU and CUDA implementations of
// psgld_step_ / sgld_step_: one place that validates the tensor lists and
// turns the schema's double hyperparameters into the kernels' math type.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cmath>
#include <cstdint>

#include "sgmcmc_fused/langevin_math.h"

namespace sgmcmc_fused {

// Scalar arguments of one step, exactly as the schema receives them.
struct StepScalars {
  double lr = 0.0;
  double alpha = 0.0;  // pSGLD only
  double eps = 0.0;    // pSGLD only
  double weight_decay = 0.0;
  double temperature = 1.0;
  int64_t num_data = 1;
  bool add_noise = true;
  int64_t seed = 0;
};

// Per-tensor arguments of one call (all lists have one entry per parameter).
struct StepTensors {
  at::TensorList params;
  at::TensorList grads;
  at::TensorList square_avgs;  // empty for SGLD
  c10::IntArrayRef stream_ids;
  c10::IntArrayRef element_offsets;
  c10::IntArrayRef steps;
};

// Raises c10::Error naming the op, the offending list index and the problem.
// `device_type` is the backend being called (CPU or CUDA); every tensor of the
// call must live on one device of that type, and no tensor the step writes may
// share memory with another tensor of the call.
void check_step_inputs(const char* op, const StepTensors& t, const StepScalars& s, bool preconditioned,
                       c10::DeviceType device_type);

// Checks of philox_normal_: `out` a contiguous float32 tensor of `device_type`,
// the stream coordinates in range.
void check_noise_inputs(const char* op, const at::Tensor& out, int64_t seed, int64_t stream_id, int64_t step,
                        int64_t element_offset, c10::DeviceType device_type);

// Noise variance scale 2 * lr * T / N (in double), or 0 with the noise off.
inline double noise_var_scale(const StepScalars& s) {
  return s.add_noise ? 2.0 * s.lr * s.temperature / static_cast<double>(s.num_data) : 0.0;
}

template <typename opmath_t>
LangevinHyper<opmath_t> make_hyper(const StepScalars& s) {
  const double nvs = noise_var_scale(s);
  LangevinHyper<opmath_t> h;
  h.lr = static_cast<opmath_t>(s.lr);
  h.alpha = static_cast<opmath_t>(s.alpha);
  h.one_minus_alpha = static_cast<opmath_t>(1.0 - s.alpha);
  h.eps = static_cast<opmath_t>(s.eps);
  h.weight_decay = static_cast<opmath_t>(s.weight_decay);
  h.noise_var_scale = static_cast<opmath_t>(nvs);
  h.noise_std = static_cast<opmath_t>(std::sqrt(nvs));
  return h;
}

}  // namespace sgmcmc_fused
