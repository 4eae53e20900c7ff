// CUDA kernels of the DropConnect LSTM (SPEC §2 mask stream, §3): the
// mask-and-multiply of dropconnect_weight and the fused pointwise LSTM cell,
// forward and backward. They are the CUDA entry of the DeviceKernels registry
// (sgmcmc_fused/lstm_kernels.h): the device-independent op bodies in
// csrc/lstm/ check the arguments, allocate, run the layer's time loop and call
// them. This file registers those ops for the CUDA key. The eager oracle is
// sgmcmc_fused/lstm_reference.py; the math below follows it operation by
// operation.
//
// Symbols:
//   B        batch size (rows of gates, c_prev, h, c, ...).
//   H        hidden size; gates and activations have 4H columns, in the gate
//            blocks of torch.nn.LSTM: [0, H) input gate i, [H, 2H) forget gate
//            f, [2H, 3H) cell candidate g, [3H, 4H) output gate o.
//   j        a hidden unit, 0 <= j < H; its four gates are columns j, H + j,
//            2H + j, 3H + j of a row.
//   e        flat (row-major) index of a weight element; quad q = e / 4, lane
//            e % 4: one Philox call (counter (q lo, q hi, 0x80000000 |
//            weight_id, call), key from seed) gives the four words of a quad.
//   M        the DropConnect mask, fp32: Bernoulli 1[u >= p] / (1 - p),
//            Gaussian 1 + sqrt(p / (1 - p)) * n (u, n as in SPEC §2).
//   opmath_t at::opmath_type<scalar_t>: fp32 for fp32/fp16/bf16, fp64 for fp64.
//            Inputs are widened to it, outputs rounded from it.
//
// Rounding. nvcc contracts a * b + c into one FMA by default (--fmad=true),
// while the eager reference rounds the product and the sum separately (one
// kernel per operation). Every a * b + c of the reference is therefore written
// with the _rn intrinsics, which are never contracted, so the kernels round
// like the reference and differ from it only by the ulps of expf / tanhf /
// logf / sincosf. The remaining expressions have no multiply feeding an add.
//
// Thread mapping. dropconnect_weight: one thread per quad (one Philox call per
// thread and iteration), grid-stride. The cell kernels: one thread per (b, j),
// computing all four gates of unit j in row b; a 2-D grid, x over units and y
// over rows, so no index is divided, and consecutive threads touch consecutive
// columns of every gate block (coalesced).
//
// Aliasing. The layer writes the activations over the gate pre-activations
// (one buffer), so no pointer is __restrict__: a thread reads everything of its
// (b, j) before it writes, and no other thread touches those elements, which
// makes an output that aliases an input element for element safe.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>

#include "philox_cuda.cuh"
#include "sgmcmc_fused/lstm_kernels.h"
#include "sgmcmc_fused/philox.h"

namespace sgmcmc_fused::cuda {
namespace {

constexpr int kThreads = 256;
// Mask kinds, as the ops' `kind` argument (lstm_reference.BERNOULLI / GAUSSIAN).
constexpr int64_t kBernoulli = 0;
constexpr int64_t kGaussian = 1;

// ---- rounding-exact arithmetic (see "Rounding" above) -----------------------

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }

// Precise exp/tanh of the math type (the build has no fast-math, so these are
// the accurate library versions, as in torch's own CUDA sigmoid and tanh).
__device__ __forceinline__ float exp_op(float x) { return expf(x); }
__device__ __forceinline__ double exp_op(double x) { return exp(x); }
__device__ __forceinline__ float tanh_op(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_op(double x) { return tanh(x); }

// torch.sigmoid's formula: 1 / (1 + exp(-x)).
template <typename T>
__device__ __forceinline__ T sigmoid_op(T x) {
  return T(1) / (T(1) + exp_op(-x));
}

// ---- dropconnect_weight ------------------------------------------------------

// Everything a thread needs to regenerate the mask, prepared on the host.
struct MaskStream {
  uint64_t seed;
  uint32_t stream;  // kMaskStreamBit | weight_id
  uint32_t call;
  float threshold;  // Bernoulli: (float)p, the keep test is u >= threshold
  float value;      // Bernoulli: (float)(1 / (1 - p)); Gaussian: (float)sqrt(p / (1 - p))
};

// M of the four lanes of quad q. The normals are those the noise op draws for
// this counter (philox_cuda.cuh).
template <int64_t kKind>
__device__ __forceinline__ void mask_quad(const MaskStream& s, uint64_t q, float (&m)[4]) {
  uint32_t x[4];
  philox_quad_words(s.seed, s.stream, s.call, q, x);
  if constexpr (kKind == kBernoulli) {
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      m[lane] = uint32_to_open_uniform(x[lane]) >= s.threshold ? s.value : 0.0f;
    }
  } else {
    float n[4];
    box_muller_quad(x, n);
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) m[lane] = add_rn(1.0f, mul_rn(s.value, n[lane]));
  }
}

// The reference's apply_mask: the product in opmath_t, rounded to the storage type.
template <typename scalar_t>
__device__ __forceinline__ scalar_t masked(scalar_t w, float m) {
  using opmath_t = at::opmath_type<scalar_t>;
  return static_cast<scalar_t>(static_cast<opmath_t>(w) * static_cast<opmath_t>(m));
}

// out = weight * M over `numel` contiguous elements; grid-stride over quads.
template <typename scalar_t, int64_t kKind>
__global__ void __launch_bounds__(kThreads)
    dropconnect_weight_kernel(const scalar_t* weight, scalar_t* out, const int64_t numel, const MaskStream s) {
  const int64_t num_quads = (numel + 3) / 4;
  // A contiguous weight may still be a view at an odd storage offset.
  const bool vectorised = is_quad_aligned(weight) && is_quad_aligned(out);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; q < num_quads; q += stride) {
    const int64_t base = 4 * q;
    if (vectorised && base + 4 <= numel) {
      // Load first: the load does not depend on the draw, so its latency
      // hides behind the Philox rounds.
      const Quad<scalar_t> w = *reinterpret_cast<const Quad<scalar_t>*>(weight + base);
      float m[4];
      mask_quad<kKind>(s, static_cast<uint64_t>(q), m);
      Quad<scalar_t> r;
#pragma unroll
      for (int lane = 0; lane < 4; ++lane) r.v[lane] = masked(w.v[lane], m[lane]);
      *reinterpret_cast<Quad<scalar_t>*>(out + base) = r;
    } else {
      float m[4];
      mask_quad<kKind>(s, static_cast<uint64_t>(q), m);
#pragma unroll
      for (int lane = 0; lane < 4; ++lane) {
        if (base + lane < numel) out[base + lane] = masked(weight[base + lane], m[lane]);
      }
    }
  }
}

// ---- lstm_cell_forward / lstm_cell_backward ----------------------------------

// Thread (x, y) of block (bx, by) handles unit j = bx * blockDim.x + x and
// rows by * blockDim.y + y + k * gridDim.y * blockDim.y. The row loop lets
// the grid stay within the 65535 limit of gridDim.y for any B.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    lstm_cell_forward_kernel(const scalar_t* gates, const scalar_t* bias, const scalar_t* c_prev, scalar_t* h_out,
                             const int64_t h_stride_b, const int64_t h_stride_j, scalar_t* c_out, scalar_t* act_out,
                             const int64_t batch, const int64_t hidden) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= hidden) return;
  // A unit's biases are the same in every row: load them once per thread.
  const opmath_t bias_i = static_cast<opmath_t>(bias[j]);
  const opmath_t bias_f = static_cast<opmath_t>(bias[hidden + j]);
  const opmath_t bias_g = static_cast<opmath_t>(bias[2 * hidden + j]);
  const opmath_t bias_o = static_cast<opmath_t>(bias[3 * hidden + j]);
  const int64_t row_stride = static_cast<int64_t>(gridDim.y) * blockDim.y;
  for (int64_t b = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; b < batch; b += row_stride) {
    const int64_t gate_at = b * 4 * hidden + j;  // column j of row b in a [B, 4H] tensor
    const int64_t cell_at = b * hidden + j;      // column j of row b in a [B, H] tensor
    const opmath_t i = sigmoid_op(static_cast<opmath_t>(gates[gate_at]) + bias_i);
    const opmath_t f = sigmoid_op(static_cast<opmath_t>(gates[gate_at + hidden]) + bias_f);
    const opmath_t g = tanh_op(static_cast<opmath_t>(gates[gate_at + 2 * hidden]) + bias_g);
    const opmath_t o = sigmoid_op(static_cast<opmath_t>(gates[gate_at + 3 * hidden]) + bias_o);
    // c = f * c_prev + i * g, h = o * tanh(c): h uses c before it is rounded
    // to the storage type, as in the reference.
    const opmath_t c = add_rn(mul_rn(f, static_cast<opmath_t>(c_prev[cell_at])), mul_rn(i, g));
    h_out[b * h_stride_b + j * h_stride_j] = static_cast<scalar_t>(o * tanh_op(c));
    c_out[cell_at] = static_cast<scalar_t>(c);
    act_out[gate_at] = static_cast<scalar_t>(i);
    act_out[gate_at + hidden] = static_cast<scalar_t>(f);
    act_out[gate_at + 2 * hidden] = static_cast<scalar_t>(g);
    act_out[gate_at + 3 * hidden] = static_cast<scalar_t>(o);
  }
}

// lstm_reference.lstm_cell_backward, same order of operations:
//   dc_total = dc + (dh * o) * (1 - tanh_c * tanh_c)
//   di = ((dc_total * g) * i) * (1 - i)      df = ((dc_total * c_prev) * f) * (1 - f)
//   dg = (dc_total * i) * (1 - g * g)        do = ((dh * tanh_c) * o) * (1 - o)
//   grad_c_prev = dc_total * f
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    lstm_cell_backward_kernel(const scalar_t* grad_h, const scalar_t* grad_c, const scalar_t* act,
                              const scalar_t* c_prev, const scalar_t* c, scalar_t* grad_gates, scalar_t* grad_c_prev,
                              const int64_t batch, const int64_t hidden) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= hidden) return;
  const opmath_t one(1);
  const int64_t row_stride = static_cast<int64_t>(gridDim.y) * blockDim.y;
  for (int64_t b = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; b < batch; b += row_stride) {
    const int64_t gate_at = b * 4 * hidden + j;
    const int64_t cell_at = b * hidden + j;
    const opmath_t i = static_cast<opmath_t>(act[gate_at]);
    const opmath_t f = static_cast<opmath_t>(act[gate_at + hidden]);
    const opmath_t g = static_cast<opmath_t>(act[gate_at + 2 * hidden]);
    const opmath_t o = static_cast<opmath_t>(act[gate_at + 3 * hidden]);
    const opmath_t dh = static_cast<opmath_t>(grad_h[cell_at]);
    const opmath_t dc = static_cast<opmath_t>(grad_c[cell_at]);
    const opmath_t cp = static_cast<opmath_t>(c_prev[cell_at]);
    const opmath_t tanh_c = tanh_op(static_cast<opmath_t>(c[cell_at]));
    const opmath_t dc_total = add_rn(dc, mul_rn(mul_rn(dh, o), sub_rn(one, mul_rn(tanh_c, tanh_c))));
    grad_gates[gate_at] = static_cast<scalar_t>(dc_total * g * i * (one - i));
    grad_gates[gate_at + hidden] = static_cast<scalar_t>(dc_total * cp * f * (one - f));
    grad_gates[gate_at + 2 * hidden] = static_cast<scalar_t>(mul_rn(mul_rn(dc_total, i), sub_rn(one, mul_rn(g, g))));
    grad_gates[gate_at + 3 * hidden] = static_cast<scalar_t>(dh * tanh_c * o * (one - o));
    grad_c_prev[cell_at] = static_cast<scalar_t>(dc_total * f);
  }
}

// Block shape for H units per row: x spans the units (a power of two up to
// kThreads, so small H does not leave most of a block idle), y packs rows.
struct CellLaunch {
  dim3 grid;
  dim3 block;
};

CellLaunch cell_launch(int64_t batch, int64_t hidden) {
  int threads_x = 1;
  while (threads_x < kThreads && threads_x < hidden) threads_x *= 2;
  const int threads_y = kThreads / threads_x;
  const int64_t blocks_x = (hidden + threads_x - 1) / threads_x;
  const int64_t blocks_y = std::min<int64_t>((batch + threads_y - 1) / threads_y, 65535);
  TORCH_CHECK(blocks_x <= std::numeric_limits<int32_t>::max(), "LSTM cell: hidden size ", hidden, " is too large");
  return {dim3(static_cast<unsigned>(blocks_x), static_cast<unsigned>(blocks_y)),
          dim3(static_cast<unsigned>(threads_x), static_cast<unsigned>(threads_y))};
}

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

  // Scale and sigma in double, then rounded to fp32, as the reference's
  // Python-float scalars are when they meet its fp32 tensors; likewise the
  // Bernoulli test compares u with p rounded to fp32.
  MaskStream s{};
  s.seed = static_cast<uint64_t>(mask.seed);
  s.stream = kMaskStreamBit | static_cast<uint32_t>(mask.weight_id);
  s.call = static_cast<uint32_t>(mask.call);
  s.threshold = static_cast<float>(mask.p);
  s.value = static_cast<float>(mask.kind == kBernoulli ? 1.0 / (1.0 - mask.p) : std::sqrt(mask.p / (1.0 - mask.p)));

  const c10::cuda::CUDAGuard guard(weight.device());
  // Enough blocks to fill the device a few times over; the grid-stride loop
  // covers the rest, so no grid exceeds 2^31 blocks.
  const int64_t num_quads = (numel + 3) / 4;
  const int64_t max_blocks = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  const int blocks = static_cast<int>(std::min((num_quads + kThreads - 1) / kThreads, max_blocks));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "dropconnect_weight_cuda", [&] {
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    if (mask.kind == kBernoulli) {
      dropconnect_weight_kernel<scalar_t, kBernoulli><<<blocks, kThreads, 0, stream>>>(w, o, numel, s);
    } else {
      dropconnect_weight_kernel<scalar_t, kGaussian><<<blocks, kThreads, 0, stream>>>(w, o, numel, s);
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
