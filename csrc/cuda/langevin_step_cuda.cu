// CUDA entry of psgld_step_, sgld_step_ and philox_normal_ (docs/spec.md#langevin-step, docs/spec.md#noise-stream): the
// host side only. It checks the inputs, packs the tables (langevin_step_launch.h)
// and launches the kernels of langevin_step_kernels.cuh on the current stream.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <type_traits>

#include "grid_stride.h"
#include "langevin_step_kernels.cuh"
#include "langevin_step_launch.h"
#include "sgmcmc_fused/step_inputs.h"

namespace sgmcmc_fused::cuda {
namespace {

// Waves of blocks a grid-stride launch may put on each SM; the stride loop
// covers the rest.
constexpr int64_t kBlocksPerSm = 8;

template <bool kPreconditioned>
void langevin_step_cuda(const char* op, const StepTensors& t, const StepScalars& s) {
  check_step_inputs(op, t, s, kPreconditioned, c10::DeviceType::CUDA);
  if (t.params.empty()) return;
  const c10::cuda::CUDAGuard guard(t.params[0].device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for_each_step_table<kPreconditioned>(op, t, s, [&](const auto& table, int num_blocks, const auto& h, uint64_t seed) {
    using scalar_t = typename std::decay_t<decltype(table)>::scalar_type;
    langevin_step_kernel<scalar_t, kPreconditioned><<<num_blocks, kBlockThreads, 0, stream>>>(table, h, seed);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void psgld_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                     c10::IntArrayRef stream_ids, c10::IntArrayRef element_offsets, c10::IntArrayRef steps, double lr,
                     double alpha, double eps, double weight_decay, double temperature, int64_t num_data,
                     bool add_noise, int64_t seed) {
  const StepTensors t{params, grads, square_avgs, stream_ids, element_offsets, steps};
  const StepScalars s{lr, alpha, eps, weight_decay, temperature, num_data, add_noise, seed};
  langevin_step_cuda<true>("psgld_step_", t, s);
}

void sgld_step_cuda(at::TensorList params, at::TensorList grads, c10::IntArrayRef stream_ids,
                    c10::IntArrayRef element_offsets, c10::IntArrayRef steps, double lr, double weight_decay,
                    double temperature, int64_t num_data, bool add_noise, int64_t seed) {
  const StepTensors t{params, grads, {}, stream_ids, element_offsets, steps};
  const StepScalars s{lr, 0.0, 0.0, weight_decay, temperature, num_data, add_noise, seed};
  langevin_step_cuda<false>("sgld_step_", t, s);
}

void philox_normal_cuda(const at::Tensor& out, int64_t seed, int64_t stream_id, int64_t step, int64_t element_offset) {
  check_noise_inputs("philox_normal_", out, seed, stream_id, step, element_offset, c10::DeviceType::CUDA);
  const int64_t numel = out.numel();
  if (numel == 0) return;
  check_index_range("philox_normal_", "element_offset", 0, numel, element_offset);
  const c10::cuda::CUDAGuard guard(out.device());
  const int64_t max_blocks = at::cuda::getCurrentDeviceProperties()->multiProcessorCount * kBlocksPerSm;
  const int blocks = grid_stride_blocks(num_quads(numel, element_offset), kBlockThreads, max_blocks);
  philox_normal_kernel<<<blocks, kBlockThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      out.data_ptr<float>(), numel, element_offset, static_cast<uint32_t>(stream_id), static_cast<uint32_t>(step),
      static_cast<uint64_t>(seed));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(sgmcmc_fused, CUDA, m) {
  m.impl("psgld_step_", &psgld_step_cuda);
  m.impl("sgld_step_", &sgld_step_cuda);
  m.impl("philox_normal_", &philox_normal_cuda);
}

}  // namespace sgmcmc_fused::cuda
