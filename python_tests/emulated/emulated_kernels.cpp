// Test-only operators that run the CUDA kernels of csrc/cuda/ on the host under
// host_emulation.h, for the emulated tests (python_tests/test_emulated_*.py).
// build.py compiles this file with AddressSanitizer and UBSan, once with the
// product's work-split constants and once with them shrunk, each into its own
// op namespace (SGMCMC_EMULATED_NS). Every op takes CPU tensors and a thread
// order (0 forward, 1 reverse; see emulation::ThreadOrder).
//
// The step ops go through the product's own host packing (for_each_step_table,
// multi_tensor_apply) and input checks; the LSTM and noise ops through its
// launch shapes (cell_launch, grid_stride_blocks, make_mask_stream). What is
// not shared with the .cu files is only the launch statement itself.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

// After every torch header (it defines the CUDA qualifiers as macros).
#include "host_emulation.h"

#include "grid_stride.h"
#include "langevin_step_kernels.cuh"
#include "langevin_step_launch.h"
#include "lstm_cell_kernels.cuh"
#include "sgmcmc_fused/step_inputs.h"

#ifndef SGMCMC_EMULATED_NS
#error "build with -DSGMCMC_EMULATED_NS=<op namespace>"
#endif

namespace sgmcmc_fused::emulated {
namespace {

using cuda::kBlockThreads;
using cuda::kLstmThreads;
using emulation::ThreadOrder;

ThreadOrder thread_order(int64_t order) {
  TORCH_CHECK(order == 0 || order == 1, "thread order must be 0 (forward) or 1 (reverse), got ", order);
  return static_cast<ThreadOrder>(order);
}

// ---- the Langevin step and the noise --------------------------------------------

template <bool kPreconditioned>
void langevin_step(const char* op, const StepTensors& t, const StepScalars& s, ThreadOrder order) {
  check_step_inputs(op, t, s, kPreconditioned, c10::DeviceType::CPU);
  cuda::for_each_step_table<kPreconditioned>(
      op, t, s, [&](const auto& table, int num_blocks, const auto& h, uint64_t seed) {
        using scalar_t = typename std::decay_t<decltype(table)>::scalar_type;
        emulation::launch<kBlockThreads>("langevin_step_kernel", &cuda::langevin_step_kernel<scalar_t, kPreconditioned>,
                                         dim3(num_blocks), dim3(kBlockThreads), order, table, h, seed);
      });
}

void psgld_step(at::TensorList params, at::TensorList grads, at::TensorList square_avgs, c10::IntArrayRef stream_ids,
                c10::IntArrayRef element_offsets, c10::IntArrayRef steps, double lr, double alpha, double eps,
                double weight_decay, double temperature, int64_t num_data, bool add_noise, int64_t seed,
                int64_t order) {
  const StepTensors t{params, grads, square_avgs, stream_ids, element_offsets, steps};
  const StepScalars s{lr, alpha, eps, weight_decay, temperature, num_data, add_noise, seed};
  langevin_step<true>("psgld_step_", t, s, thread_order(order));
}

void sgld_step(at::TensorList params, at::TensorList grads, c10::IntArrayRef stream_ids,
               c10::IntArrayRef element_offsets, c10::IntArrayRef steps, double lr, double weight_decay,
               double temperature, int64_t num_data, bool add_noise, int64_t seed, int64_t order) {
  const StepTensors t{params, grads, {}, stream_ids, element_offsets, steps};
  const StepScalars s{lr, 0.0, 0.0, weight_decay, temperature, num_data, add_noise, seed};
  langevin_step<false>("sgld_step_", t, s, thread_order(order));
}

// max_blocks stands in for the device's SM count times the blocks per SM.
void philox_normal(const at::Tensor& out, int64_t seed, int64_t stream_id, int64_t step, int64_t element_offset,
                   int64_t max_blocks, int64_t order) {
  check_noise_inputs("philox_normal_", out, seed, stream_id, step, element_offset, c10::DeviceType::CPU);
  const int64_t numel = out.numel();
  if (numel == 0) return;
  cuda::check_index_range("philox_normal_", "element_offset", 0, numel, element_offset);
  const int blocks = cuda::grid_stride_blocks(cuda::num_quads(numel, element_offset), kBlockThreads, max_blocks);
  emulation::launch<kBlockThreads>("philox_normal_kernel", &cuda::philox_normal_kernel, dim3(blocks),
                                   dim3(kBlockThreads), thread_order(order), out.data_ptr<float>(), numel,
                                   element_offset, static_cast<uint32_t>(stream_id), static_cast<uint32_t>(step),
                                   static_cast<uint64_t>(seed));
}

// ---- the DropConnect LSTM ------------------------------------------------------------

void check_contiguous_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref,
                           c10::IntArrayRef sizes) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == ref.scalar_type(), op, ": ", name, " must be a CPU ",
              ref.scalar_type(), " tensor");
  TORCH_CHECK(t.sizes() == sizes && t.is_contiguous(), op, ": ", name, " must be contiguous of shape ", sizes);
}

void dropconnect_weight(const at::Tensor& weight, const at::Tensor& out, int64_t seed, int64_t weight_id, int64_t call,
                        double p, int64_t kind, int64_t max_blocks, int64_t order) {
  constexpr const char* op = "dropconnect_weight";
  check_contiguous_like(op, "weight", weight, weight, weight.sizes());
  check_contiguous_like(op, "out", out, weight, weight.sizes());
  TORCH_CHECK(kind == cuda::kBernoulli || kind == cuda::kGaussian, op, ": unknown mask kind ", kind);
  TORCH_CHECK(p >= 0.0 && p < 1.0, op, ": p must be in [0, 1)");
  const int64_t numel = weight.numel();
  if (numel == 0) return;
  const cuda::MaskStream s = cuda::make_mask_stream(seed, weight_id, call, p, kind);
  const int blocks = cuda::grid_stride_blocks((numel + 3) / 4, kLstmThreads, max_blocks);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), op, [&] {
    const auto kernel = kind == cuda::kBernoulli ? &cuda::dropconnect_weight_kernel<scalar_t, cuda::kBernoulli>
                                                 : &cuda::dropconnect_weight_kernel<scalar_t, cuda::kGaussian>;
    emulation::launch<kLstmThreads>(op, kernel, dim3(blocks), dim3(kLstmThreads), thread_order(order),
                                    weight.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), numel, s);
  });
}

// h may be any strided [B, H] view; activations may be gates itself (the
// layer's aliasing).
void lstm_cell_forward(const at::Tensor& gates, const at::Tensor& bias, const at::Tensor& c_prev, const at::Tensor& h,
                       const at::Tensor& c, const at::Tensor& activations, int64_t order) {
  constexpr const char* op = "lstm_cell_forward";
  TORCH_CHECK(c_prev.dim() == 2, op, ": c_prev must be [B, H]");
  const int64_t batch = c_prev.size(0), hidden = c_prev.size(1);
  check_contiguous_like(op, "c_prev", c_prev, c_prev, {batch, hidden});
  check_contiguous_like(op, "gates", gates, c_prev, {batch, 4 * hidden});
  check_contiguous_like(op, "bias", bias, c_prev, {4 * hidden});
  check_contiguous_like(op, "c", c, c_prev, {batch, hidden});
  check_contiguous_like(op, "activations", activations, c_prev, {batch, 4 * hidden});
  TORCH_CHECK(h.sizes() == c_prev.sizes() && h.scalar_type() == c_prev.scalar_type(), op, ": h must be like c_prev");
  if (batch == 0 || hidden == 0) return;
  const cuda::CellLaunch shape = cuda::cell_launch(batch, hidden);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c_prev.scalar_type(), op, [&] {
    emulation::launch<kLstmThreads>(
        "lstm_cell_forward_kernel", &cuda::lstm_cell_forward_kernel<scalar_t>, shape.grid, shape.block,
        thread_order(order), gates.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(),
        c_prev.const_data_ptr<scalar_t>(), h.mutable_data_ptr<scalar_t>(), h.stride(0), h.stride(1),
        c.mutable_data_ptr<scalar_t>(), activations.mutable_data_ptr<scalar_t>(), batch, hidden);
  });
}

void lstm_cell_backward(const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& activations,
                        const at::Tensor& c_prev, const at::Tensor& c, const at::Tensor& grad_gates,
                        const at::Tensor& grad_c_prev, int64_t order) {
  constexpr const char* op = "lstm_cell_backward";
  TORCH_CHECK(c.dim() == 2, op, ": c must be [B, H]");
  const int64_t batch = c.size(0), hidden = c.size(1);
  for (const auto& [t, name] : {std::pair{&grad_h, "grad_h"},
                                {&grad_c, "grad_c"},
                                {&c_prev, "c_prev"},
                                {&c, "c"},
                                {&grad_c_prev, "grad_c_prev"}}) {
    check_contiguous_like(op, name, *t, c, {batch, hidden});
  }
  check_contiguous_like(op, "activations", activations, c, {batch, 4 * hidden});
  check_contiguous_like(op, "grad_gates", grad_gates, c, {batch, 4 * hidden});
  if (batch == 0 || hidden == 0) return;
  const cuda::CellLaunch shape = cuda::cell_launch(batch, hidden);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), op, [&] {
    emulation::launch<kLstmThreads>(
        "lstm_cell_backward_kernel", &cuda::lstm_cell_backward_kernel<scalar_t>, shape.grid, shape.block,
        thread_order(order), grad_h.const_data_ptr<scalar_t>(), grad_c.const_data_ptr<scalar_t>(),
        activations.const_data_ptr<scalar_t>(), c_prev.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(),
        grad_gates.mutable_data_ptr<scalar_t>(), grad_c_prev.mutable_data_ptr<scalar_t>(), batch, hidden);
  });
}

// ---- probes of the emulator itself -----------------------------------------------------

constexpr unsigned int kTraceBound = 512;

// Writes, for every thread, the position at which the emulator ran it. The
// shared counter is a test device for the emulator only: a real kernel with
// such a race is what rule 2 of host_emulation.h forbids.
__global__ void __launch_bounds__(kTraceBound) trace_kernel(int64_t* visit, int64_t* counter) {
  const int64_t block = (static_cast<int64_t>(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int64_t thread = (static_cast<int64_t>(threadIdx.z) * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  const int64_t threads_per_block = static_cast<int64_t>(blockDim.x) * blockDim.y * blockDim.z;
  visit[block * threads_per_block + thread] = (*counter)++;
}

dim3 to_dim3(const char* what, c10::IntArrayRef v) {
  TORCH_CHECK(v.size() == 3, what, " must have 3 entries");
  for (const int64_t d : v) TORCH_CHECK(d >= 0 && d <= UINT32_MAX, what, " entries must fit in 32 bits");
  return dim3(static_cast<unsigned>(v[0]), static_cast<unsigned>(v[1]), static_cast<unsigned>(v[2]));
}

// visit: int64, one entry per thread of the grid.
void launch_trace(const at::Tensor& visit, c10::IntArrayRef grid, c10::IntArrayRef block, int64_t order) {
  TORCH_CHECK(visit.scalar_type() == at::kLong && visit.is_contiguous(), "visit must be contiguous int64");
  int64_t counter = 0;
  emulation::launch<kTraceBound>("trace_kernel", &trace_kernel, to_dim3("grid", grid), to_dim3("block", block),
                                 thread_order(order), visit.data_ptr<int64_t>(), &counter);
}

template <std::size_t kBytes>
struct Blob {
  unsigned char bytes[kBytes];
};

// The largest parameter list CUDA 11.8 accepts (an 8-byte pointer and 4088
// bytes), and one byte more.
__global__ void __launch_bounds__(1) largest_params_kernel(int64_t* out, Blob<4088> blob) { *out = blob.bytes[4087]; }
__global__ void __launch_bounds__(1) oversized_params_kernel(int64_t* out, Blob<4089> blob) { *out = blob.bytes[4088]; }

// Launches one of the two kernels above with one thread; returns what it wrote.
int64_t launch_param_probe(bool oversized) {
  int64_t out = -1;
  if (oversized) {
    Blob<4089> blob{};
    blob.bytes[4088] = 7;
    emulation::launch<1>("oversized_params_kernel", &oversized_params_kernel, dim3(1), dim3(1), ThreadOrder::kForward,
                         &out, blob);
  } else {
    Blob<4088> blob{};
    blob.bytes[4087] = 5;
    emulation::launch<1>("largest_params_kernel", &largest_params_kernel, dim3(1), dim3(1), ThreadOrder::kForward, &out,
                         blob);
  }
  return out;
}

// Reads a 16-byte quad one float past `t`'s data pointer: UBSan must stop the
// worker with a misaligned-load report (proves the sanitizer is on).
int64_t misaligned_load_probe(const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.numel() >= 8, "probe needs >= 8 floats");
  const float* base = t.const_data_ptr<float>();
  const float* p = cuda::is_quad_aligned(base) ? base + 1 : base;
  const cuda::Quad<float> q = *reinterpret_cast<const cuda::Quad<float>*>(p);
  return static_cast<int64_t>(q.v[0]);
}

}  // namespace
}  // namespace sgmcmc_fused::emulated

TORCH_LIBRARY(SGMCMC_EMULATED_NS, m) {
  using namespace sgmcmc_fused::emulated;
  m.def(
      "psgld_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] square_avgs, int[] stream_ids, "
      "int[] element_offsets, int[] steps, *, float lr, float alpha, float eps, float weight_decay, "
      "float temperature, int num_data, bool add_noise, int seed, int order) -> ()",
      &psgld_step);
  m.def(
      "sgld_step_(Tensor(a!)[] params, Tensor[] grads, int[] stream_ids, int[] element_offsets, int[] steps, *, "
      "float lr, float weight_decay, float temperature, int num_data, bool add_noise, int seed, int order) -> ()",
      &sgld_step);
  m.def(
      "philox_normal_(Tensor(a!) out, int seed, int stream_id, int step, int element_offset, *, int max_blocks, "
      "int order) -> ()",
      &philox_normal);
  m.def(
      "dropconnect_weight_out(Tensor weight, Tensor(a!) out, int seed, int weight_id, int call, float p, int kind, "
      "*, int max_blocks, int order) -> ()",
      &dropconnect_weight);
  m.def(
      "lstm_cell_forward_out(Tensor gates, Tensor bias, Tensor c_prev, Tensor(a!) h, Tensor(b!) c, "
      "Tensor(c!) activations, *, int order) -> ()",
      &lstm_cell_forward);
  m.def(
      "lstm_cell_backward_out(Tensor grad_h, Tensor grad_c, Tensor activations, Tensor c_prev, Tensor c, "
      "Tensor(a!) grad_gates, Tensor(b!) grad_c_prev, *, int order) -> ()",
      &lstm_cell_backward);
  m.def("launch_trace(Tensor(a!) visit, int[] grid, int[] block, *, int order) -> ()", &launch_trace);
  m.def("launch_param_probe(bool oversized) -> int", &launch_param_probe);
  m.def("misaligned_load_probe(Tensor t) -> int", &misaligned_load_probe);
  m.def("work_split() -> int[]", [] {
    return std::vector<int64_t>{sgmcmc_fused::cuda::kBlockThreads, sgmcmc_fused::cuda::kChunkQuads,
                                sgmcmc_fused::cuda::kMaxRows,      sgmcmc_fused::cuda::kMaxBlocks,
                                sgmcmc_fused::cuda::kLstmThreads,  sgmcmc_fused::cuda::kMaxGridRows};
  });
}
