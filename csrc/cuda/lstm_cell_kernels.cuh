// Device code of the DropConnect LSTM (docs/spec.md#dropconnect-masks, docs/spec.md#cell-and-gradients): the
// mask-and-multiply of dropconnect_weight and the fused pointwise LSTM cell,
// forward and backward, plus the launch shapes their host code computes. The
// checks, launches and op registration are in lstm_cell_cuda.cu. The eager
// oracle is sgmcmc_fused/kernels/lstm/reference.py; the math below follows it
// operation by operation.
//
// This header is compiled twice: by nvcc for the GPU, and as host C++ under
// host_emulation.h for the emulated tests (python_tests/emulated/), which run
// every block and thread in turn under AddressSanitizer and UBSan. So it
// includes nothing of the CUDA runtime, and a kernel here may not use
// __shared__, barriers, warp intrinsics or atomics (see host_emulation.h).
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
//            Gaussian 1 + sqrt(p / (1 - p)) * n (u, n as in docs/spec.md#noise-stream).
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
#pragma once

#if !defined(__CUDACC__) && !defined(SGMCMC_FUSED_HOST_EMULATION)
#error "lstm_cell_kernels.cuh is device code: compile it with nvcc, or include host_emulation.h first"
#endif

#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "philox_cuda.cuh"
#include "sgmcmc_fused/philox.h"
#include "sgmcmc_fused/rounding.h"  // mul_rn, add_rn, sub_rn (see "Rounding" above)

namespace sgmcmc_fused::cuda {

// Threads per block of every kernel here, and their launch bound; the cell
// kernels' grid.y is capped at kMaxGridRows (the hardware's 65535), beyond
// which the row loop takes over. Both can be overridden with -D so that the
// emulated tests reach the row loop and partial blocks with small shapes.
#ifndef SGMCMC_FUSED_LSTM_BLOCK_THREADS
#define SGMCMC_FUSED_LSTM_BLOCK_THREADS 256
#endif
#ifndef SGMCMC_FUSED_LSTM_MAX_GRID_ROWS
#define SGMCMC_FUSED_LSTM_MAX_GRID_ROWS 65535
#endif
constexpr int kLstmThreads = SGMCMC_FUSED_LSTM_BLOCK_THREADS;
constexpr int64_t kMaxGridRows = SGMCMC_FUSED_LSTM_MAX_GRID_ROWS;
static_assert(kLstmThreads > 0 && kLstmThreads <= 1024 && (kLstmThreads & (kLstmThreads - 1)) == 0,
              "the LSTM block size must be a power of two <= 1024");
static_assert(kMaxGridRows > 0 && kMaxGridRows <= 65535, "grid.y is at most 65535");

// Mask kinds, as the ops' `kind` argument (lstm_reference.BERNOULLI / GAUSSIAN).
constexpr int64_t kBernoulli = 0;
constexpr int64_t kGaussian = 1;

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

// The stream of mask (seed, weight_id, call, p, kind), arguments already
// checked (check_mask_args). Scale and sigma in double, then rounded to fp32, as
// the reference's Python-float scalars are when they meet its fp32 tensors;
// likewise the Bernoulli test compares u with p rounded to fp32.
inline MaskStream make_mask_stream(int64_t seed, int64_t weight_id, int64_t call, double p, int64_t kind) {
  MaskStream s{};
  s.seed = static_cast<uint64_t>(seed);
  s.stream = kMaskStreamBit | static_cast<uint32_t>(weight_id);
  s.call = static_cast<uint32_t>(call);
  s.threshold = static_cast<float>(p);
  s.value = static_cast<float>(kind == kBernoulli ? 1.0 / (1.0 - p) : std::sqrt(p / (1.0 - p)));
  return s;
}

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
__global__ void __launch_bounds__(kLstmThreads)
    dropconnect_weight_kernel(const scalar_t* weight, scalar_t* out, const int64_t numel, const MaskStream s) {
  const int64_t num_quads = (numel + 3) / 4;
  // A contiguous weight may still be a view at an odd storage offset.
  const bool vectorised = is_quad_aligned(weight) && is_quad_aligned(out);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kLstmThreads;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * kLstmThreads + threadIdx.x; q < num_quads; q += stride) {
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
__global__ void __launch_bounds__(kLstmThreads)
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
__global__ void __launch_bounds__(kLstmThreads)
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
// kLstmThreads, so small H does not leave most of a block idle), y packs rows.
struct CellLaunch {
  dim3 grid;
  dim3 block;
};

inline CellLaunch cell_launch(int64_t batch, int64_t hidden) {
  int threads_x = 1;
  while (threads_x < kLstmThreads && threads_x < hidden) threads_x *= 2;
  const int threads_y = kLstmThreads / threads_x;
  const int64_t blocks_x = (hidden + threads_x - 1) / threads_x;
  const int64_t blocks_y = std::min<int64_t>((batch + threads_y - 1) / threads_y, kMaxGridRows);
  TORCH_CHECK(blocks_x <= std::numeric_limits<int32_t>::max(), "LSTM cell: hidden size ", hidden, " is too large");
  return {dim3(static_cast<unsigned>(blocks_x), static_cast<unsigned>(blocks_y)),
          dim3(static_cast<unsigned>(threads_x), static_cast<unsigned>(threads_y))};
}

}  // namespace sgmcmc_fused::cuda
