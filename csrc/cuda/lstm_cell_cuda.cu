// CUDA entry of the DropConnect LSTM kernels (docs/spec.md#dropconnect-masks, docs/spec.md#cell-and-gradients): the
// host side only. The kernels are in lstm_cell_kernels.cuh. They are the CUDA
// entry of the DeviceKernels registry (sgmcmc_fused/lstm_kernels.h): the
// device-independent op bodies in csrc/lstm/ check the arguments, allocate, run
// the layer's time loop and call them. This file registers those ops for the
// CUDA key.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <utility>

#include "grid_stride.h"
#include "lstm_cell_kernels.cuh"
#include "sgmcmc_fused/lstm_kernels.h"

namespace sgmcmc_fused::cuda {
namespace {

// Waves of blocks a grid-stride launch may put on each SM; the stride loop
// covers the rest.
constexpr int64_t kBlocksPerSm = 8;

// ---- the CUDA entry of the DeviceKernels registry (sgmcmc_fused/lstm_kernels.h) ----
//
// The ops themselves (argument checks against the schema, allocation, the
// layer's time loop) are device independent, in csrc/lstm/; they call these
// three functions with checked, preallocated tensors. What is checked here is
// only what the kernels assume beyond that contract (device, dtype, shape,
// contiguity), so a caller bug raises instead of reading out of bounds; the
// op-level checks are not repeated, so CPU and CUDA raise the same messages.

void check_on_device(const char* fn, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK(t.is_cuda() && t.device() == ref.device(), fn, ": ", name, " must be on ", ref.device(), ", got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), fn, ": ", name, " must have dtype ", ref.scalar_type(), ", got ",
              t.scalar_type());
}

void check_contiguous_shape(const char* fn, const char* name, const at::Tensor& t, c10::IntArrayRef want) {
  TORCH_CHECK(t.sizes() == want, fn, ": ", name, " must be ", want, ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), fn, ": ", name, " must be contiguous");
}

void dropconnect_weight_out(const at::Tensor& weight, const lstm::MaskArgs& mask, const at::Tensor& out) {
  constexpr const char* fn = "dropconnect_weight (CUDA)";
  TORCH_CHECK(weight.is_cuda(), fn, ": weight must be a CUDA tensor, got one on ", weight.device());
  check_on_device(fn, "out", out, weight);
  TORCH_CHECK(weight.is_contiguous(), fn, ": weight must be contiguous");
  check_contiguous_shape(fn, "out", out, weight.sizes());
  TORCH_CHECK(mask.kind == kBernoulli || mask.kind == kGaussian, fn, ": unknown mask kind ", mask.kind);
  const int64_t numel = weight.numel();
  if (numel == 0) return;

  const MaskStream s = make_mask_stream(mask.seed, mask.weight_id, mask.call, mask.p, mask.kind);

  const c10::cuda::CUDAGuard guard(weight.device());
  const int64_t max_blocks = at::cuda::getCurrentDeviceProperties()->multiProcessorCount * kBlocksPerSm;
  const int blocks = grid_stride_blocks((numel + 3) / 4, kLstmThreads, max_blocks);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "dropconnect_weight_cuda", [&] {
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    if (mask.kind == kBernoulli) {
      dropconnect_weight_kernel<scalar_t, kBernoulli><<<blocks, kLstmThreads, 0, stream>>>(w, o, numel, s);
    } else {
      dropconnect_weight_kernel<scalar_t, kGaussian><<<blocks, kLstmThreads, 0, stream>>>(w, o, numel, s);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void cell_forward_out(const at::Tensor& gates, const at::Tensor& bias, const at::Tensor& c_prev, const at::Tensor& h,
                      const at::Tensor& c, const at::Tensor& activations) {
  constexpr const char* fn = "lstm_cell_forward (CUDA)";
  TORCH_CHECK(c_prev.is_cuda() && c_prev.dim() == 2, fn, ": c_prev must be a 2-D CUDA tensor, got ", c_prev.sizes(),
              " on ", c_prev.device());
  const int64_t batch = c_prev.size(0), hidden = c_prev.size(1);
  for (const auto& [t, name] :
       {std::pair{&gates, "gates"}, {&bias, "bias"}, {&h, "h"}, {&c, "c"}, {&activations, "activations"}}) {
    check_on_device(fn, name, *t, c_prev);
  }
  check_contiguous_shape(fn, "c_prev", c_prev, {batch, hidden});
  check_contiguous_shape(fn, "gates", gates, {batch, 4 * hidden});
  check_contiguous_shape(fn, "bias", bias, {4 * hidden});
  check_contiguous_shape(fn, "c", c, {batch, hidden});
  check_contiguous_shape(fn, "activations", activations, {batch, 4 * hidden});
  // h may be a strided view (a step of the layer output); any strides work.
  TORCH_CHECK(h.sizes() == c_prev.sizes(), fn, ": h must be ", c_prev.sizes(), ", got ", h.sizes());
  if (batch == 0 || hidden == 0) return;

  const c10::cuda::CUDAGuard guard(c_prev.device());
  const CellLaunch launch = cell_launch(batch, hidden);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c_prev.scalar_type(), "lstm_cell_forward_cuda", [&] {
    // gates and activations may be one buffer (see "Aliasing" above).
    lstm_cell_forward_kernel<scalar_t><<<launch.grid, launch.block, 0, stream>>>(
        gates.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(), c_prev.const_data_ptr<scalar_t>(),
        h.mutable_data_ptr<scalar_t>(), h.stride(0), h.stride(1), c.mutable_data_ptr<scalar_t>(),
        activations.mutable_data_ptr<scalar_t>(), batch, hidden);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void cell_backward_out(const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& activations,
                       const at::Tensor& c_prev, const at::Tensor& c, const at::Tensor& grad_gates,
                       const at::Tensor& grad_c_prev) {
  constexpr const char* fn = "lstm_cell_backward (CUDA)";
  TORCH_CHECK(c.is_cuda() && c.dim() == 2, fn, ": c must be a 2-D CUDA tensor, got ", c.sizes(), " on ", c.device());
  const int64_t batch = c.size(0), hidden = c.size(1);
  for (const auto& [t, name] : {std::pair{&grad_h, "grad_h"},
                                {&grad_c, "grad_c"},
                                {&activations, "activations"},
                                {&c_prev, "c_prev"},
                                {&grad_gates, "grad_gates"},
                                {&grad_c_prev, "grad_c_prev"}}) {
    check_on_device(fn, name, *t, c);
  }
  for (const auto& [t, name] : {std::pair{&grad_h, "grad_h"},
                                {&grad_c, "grad_c"},
                                {&c_prev, "c_prev"},
                                {&c, "c"},
                                {&grad_c_prev, "grad_c_prev"}}) {
    check_contiguous_shape(fn, name, *t, {batch, hidden});
  }
  check_contiguous_shape(fn, "activations", activations, {batch, 4 * hidden});
  check_contiguous_shape(fn, "grad_gates", grad_gates, {batch, 4 * hidden});
  if (batch == 0 || hidden == 0) return;

  const c10::cuda::CUDAGuard guard(c.device());
  const CellLaunch launch = cell_launch(batch, hidden);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "lstm_cell_backward_cuda", [&] {
    lstm_cell_backward_kernel<scalar_t><<<launch.grid, launch.block, 0, stream>>>(
        grad_h.const_data_ptr<scalar_t>(), grad_c.const_data_ptr<scalar_t>(), activations.const_data_ptr<scalar_t>(),
        c_prev.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(), grad_gates.mutable_data_ptr<scalar_t>(),
        grad_c_prev.mutable_data_ptr<scalar_t>(), batch, hidden);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

const lstm::DeviceKernels kCudaLstmKernels{&dropconnect_weight_out, &cell_forward_out, &cell_backward_out};

// Makes the kernels above the CUDA entry of the registry at library load.
[[maybe_unused]] const bool kRegistered = [] {
  lstm::register_device_kernels(c10::DeviceType::CUDA, &kCudaLstmKernels);
  return true;
}();

}  // namespace

// dropconnect_weight, lstm_cell_forward, lstm_cell_backward and the two layer
// ops, whose time loop runs its GEMMs on cuBLAS through ATen and the cell
// through the kernels above.
TORCH_LIBRARY_IMPL(sgmcmc_fused, CUDA, m) { SGMCMC_REGISTER_LSTM_OPS(m); }

}  // namespace sgmcmc_fused::cuda
