// CUDA kernels of psgld_step_, sgld_step_ and philox_normal_ (SPEC §1, §2).
//
// The step ops group the tensors of a call by dtype and update each group with
// multi-tensor apply (multi_tensor_apply.cuh defines quads, chunks and the
// table): one launch per table, one block per chunk, one thread per quad, i.e.
// one Philox call per thread and iteration. A quad is 4 consecutive *global*
// elements, so the noise an element gets does not depend on how the tensor is
// chunked or sharded. When the tensor's element_offset is a multiple of 4 and
// its pointers are aligned, a full quad is one vector load/store per tensor
// (16 bytes for fp32 and fp32 state); partial quads (tails, and both ends of a
// tensor whose offset is not a multiple of 4) and misaligned tensors take a
// per-element guarded path.
//
// The per-element math is psgld_element / sgld_element (langevin_math.h), in
// at::opmath_type<scalar_t>, shared with the CPU kernel. nvcc contracts a*b + c
// into an FMA there (its default --fmad=true) where the CPU build rounds both
// operations (-ffp-contract=off), so the two may differ in the last bit; the
// noise draw has no such pattern and differs only by the ulps of logf/sincosf.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "multi_tensor_apply.cuh"
#include "philox_cuda.cuh"
#include "sgmcmc_fused/langevin_math.h"
#include "sgmcmc_fused/philox.h"
#include "sgmcmc_fused/step_inputs.h"

namespace sgmcmc_fused::cuda {
namespace {

template <typename scalar_t, bool kPreconditioned>
__device__ __forceinline__ void update_element(scalar_t& p, scalar_t g, at::opmath_type<scalar_t>* v, float xi,
                                               const LangevinHyper<at::opmath_type<scalar_t>>& h) {
  using opmath_t = at::opmath_type<scalar_t>;
  opmath_t theta = static_cast<opmath_t>(p);
  if constexpr (kPreconditioned) {
    psgld_element<opmath_t>(theta, static_cast<opmath_t>(g), *v, static_cast<opmath_t>(xi), h);
  } else {
    sgld_element<opmath_t>(theta, static_cast<opmath_t>(g), static_cast<opmath_t>(xi), h);
  }
  p = static_cast<scalar_t>(theta);
}

// One block per chunk of the table (see multi_tensor_apply.cuh).
// __grid_constant__: the table is read in place from the parameter bank even
// though block_work() takes it by reference, instead of being copied to local
// memory.
template <typename scalar_t, bool kPreconditioned>
__global__ void __launch_bounds__(kBlockThreads)
    langevin_step_kernel(const __grid_constant__ TensorTable<scalar_t> table,
                         const LangevinHyper<at::opmath_type<scalar_t>> h, const uint64_t seed) {
  using opmath_t = at::opmath_type<scalar_t>;
  const BlockWork work = block_work(table);
  scalar_t* __restrict__ param = table.param[work.row];
  const scalar_t* __restrict__ grad = table.grad[work.row];
  opmath_t* __restrict__ square_avg = table.square_avg[work.row];
  const int64_t numel = table.numel[work.row];
  const int64_t offset = table.element_offset[work.row];
  const uint32_t stream_id = table.stream_id[work.row];
  const uint32_t step = table.step[work.row];
  // With the noise off the step is plain RMSprop / SGD: skip the draw.
  const bool noisy = h.noise_var_scale != opmath_t(0);
  // Local element 4q - offset starts a quad, so with offset % 4 == 0 every
  // full quad of the tensor is one aligned Quad in each array.
  const bool vectorised = offset % 4 == 0 && is_quad_aligned(param) && is_quad_aligned(grad) &&
                          (!kPreconditioned || is_quad_aligned(square_avg));

  for (int64_t q = work.first_quad + threadIdx.x; q < work.end_quad; q += kBlockThreads) {
    const int64_t base = 4 * q - offset;  // local index of the quad's lane 0; < 0 in a leading partial quad
    float xi[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (vectorised && base + 4 <= numel) {
      // Loads first: they do not depend on the draw, so their latency hides
      // behind the Philox rounds.
      Quad<scalar_t> p4 = *reinterpret_cast<const Quad<scalar_t>*>(param + base);
      const Quad<scalar_t> g4 = *reinterpret_cast<const Quad<scalar_t>*>(grad + base);
      Quad<opmath_t> v4{};
      if constexpr (kPreconditioned) v4 = *reinterpret_cast<const Quad<opmath_t>*>(square_avg + base);
      if (noisy) philox_normal_quad(seed, stream_id, step, static_cast<uint64_t>(q), xi);
#pragma unroll
      for (int lane = 0; lane < 4; ++lane) {
        update_element<scalar_t, kPreconditioned>(p4.v[lane], g4.v[lane], &v4.v[lane], xi[lane], h);
      }
      *reinterpret_cast<Quad<scalar_t>*>(param + base) = p4;
      if constexpr (kPreconditioned) *reinterpret_cast<Quad<opmath_t>*>(square_avg + base) = v4;
    } else {
      if (noisy) philox_normal_quad(seed, stream_id, step, static_cast<uint64_t>(q), xi);
#pragma unroll
      for (int lane = 0; lane < 4; ++lane) {
        const int64_t i = base + lane;
        if (i < 0 || i >= numel) continue;
        opmath_t* v = kPreconditioned ? square_avg + i : nullptr;
        update_element<scalar_t, kPreconditioned>(param[i], grad[i], v, xi[lane], h);
      }
    }
  }
}

// philox_normal_: grid-stride loop over the quads of one float32 tensor.
__global__ void __launch_bounds__(kBlockThreads)
    philox_normal_kernel(float* __restrict__ out, const int64_t numel, const int64_t offset, const uint32_t stream_id,
                         const uint32_t step, const uint64_t seed) {
  const int64_t first_quad = offset / 4;
  const int64_t end_quad = (offset + numel - 1) / 4 + 1;
  const bool vectorised = offset % 4 == 0 && is_quad_aligned(out);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kBlockThreads;
  for (int64_t q = first_quad + static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x; q < end_quad;
       q += stride) {
    const int64_t base = 4 * q - offset;
    Quad<float> n;
    philox_normal_quad(seed, stream_id, step, static_cast<uint64_t>(q), n.v);
    if (vectorised && base + 4 <= numel) {
      *reinterpret_cast<Quad<float>*>(out + base) = n;
    } else {
#pragma unroll
      for (int lane = 0; lane < 4; ++lane) {
        const int64_t i = base + lane;
        if (i >= 0 && i < numel) out[i] = n.v[lane];
      }
    }
  }
}

// The kernels index elements as element_offset + local index and quads as
// their quotient by 4, in int64: rule out overflow once, on the host.
void check_index_range(const char* op, const char* what, size_t i, int64_t numel, int64_t element_offset) {
  TORCH_CHECK(numel <= std::numeric_limits<int64_t>::max() - element_offset, op, ": ", what, "[", i,
              "] = ", element_offset, " plus ", numel, " elements overflows int64");
}

template <typename scalar_t, bool kPreconditioned>
void launch_langevin_step(const StepTensors& t, const StepScalars& s, const std::vector<size_t>& members,
                          cudaStream_t stream) {
  using opmath_t = at::opmath_type<scalar_t>;
  std::vector<TensorRow<scalar_t>> rows;
  rows.reserve(members.size());
  for (const size_t i : members) {
    rows.push_back({t.params[i].data_ptr<scalar_t>(), t.grads[i].const_data_ptr<scalar_t>(),
                    kPreconditioned ? t.square_avgs[i].data_ptr<opmath_t>() : nullptr, t.params[i].numel(),
                    t.element_offsets[i], static_cast<uint32_t>(t.stream_ids[i]), static_cast<uint32_t>(t.steps[i])});
  }
  const LangevinHyper<opmath_t> h = make_hyper<opmath_t>(s);
  const uint64_t seed = static_cast<uint64_t>(s.seed);
  multi_tensor_apply<scalar_t>(rows, [&](const TensorTable<scalar_t>& table, int num_blocks) {
    langevin_step_kernel<scalar_t, kPreconditioned><<<num_blocks, kBlockThreads, 0, stream>>>(table, h, seed);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <bool kPreconditioned>
void langevin_step_cuda(const char* op, const StepTensors& t, const StepScalars& s) {
  check_step_inputs(op, t, s, kPreconditioned, c10::DeviceType::CUDA);
  if (t.params.empty()) return;
  for (size_t i = 0; i < t.params.size(); ++i) {
    check_index_range(op, "element_offsets", i, t.params[i].numel(), t.element_offsets[i]);
  }
  const c10::cuda::CUDAGuard guard(t.params[0].device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  // A table holds typed pointers, so each dtype gets its own series of
  // launches; tensors keep their relative order within a dtype.
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble}) {
    std::vector<size_t> members;
    for (size_t i = 0; i < t.params.size(); ++i) {
      if (t.params[i].scalar_type() == dtype && t.params[i].numel() > 0) members.push_back(i);
    }
    if (members.empty()) continue;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "langevin_step_cuda",
                                    [&] { launch_langevin_step<scalar_t, kPreconditioned>(t, s, members, stream); });
  }
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
  // Enough blocks to fill the device a few times over; the grid-stride loop
  // covers the rest, so huge tensors need no grid beyond 2^31 blocks.
  const int64_t blocks_needed = (num_quads(numel, element_offset) + kBlockThreads - 1) / kBlockThreads;
  const int64_t max_blocks = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  const int blocks = static_cast<int>(std::min(blocks_needed, max_blocks));
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
