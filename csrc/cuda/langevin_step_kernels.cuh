// Device code of psgld_step_, sgld_step_ and philox_normal_ (docs/spec.md#langevin-step, docs/spec.md#noise-stream):
// the kernel bodies alone. The launches, checks and op registration are in langevin_step_cuda.cu; the host-side packing
// they share with the emulated tests is in langevin_step_launch.h.
//
// This header is compiled twice: by nvcc for the GPU, and as host C++ under
// host_emulation.h for the emulated tests (python_tests/emulated/), which run
// every block and thread in turn under AddressSanitizer and UBSan. So it
// includes nothing of the CUDA runtime, and a kernel here may not use
// __shared__, barriers, warp intrinsics or atomics (see host_emulation.h).
//
// The step kernels update the tensors of one dtype with multi-tensor apply
// (multi_tensor_apply.cuh defines quads, chunks and the table): one launch per
// table, one block per chunk, one thread per quad, i.e. one Philox call per
// thread and iteration. A quad is 4 consecutive *global* elements, so the noise
// an element gets does not depend on how the tensor is chunked or sharded. When
// the tensor's element_offset is a multiple of 4 and its pointers are aligned,
// a full quad is one vector load/store per tensor (16 bytes for fp32 and fp32
// state); partial quads (tails, and both ends of a tensor whose offset is not a
// multiple of 4) and misaligned tensors take a per-element guarded path.
//
// The per-element math is psgld_element / sgld_element (langevin_math.h), in
// at::opmath_type<scalar_t>, shared with the CPU kernel; it spells every
// multiply and add with the _rn operations of rounding.h, which nvcc never
// contracts into an FMA, so the GPU rounds as the CPU build (-ffp-contract=off)
// and the eager reference do. The noise draw differs only by the ulps of
// logf/sincosf.
#pragma once

#if !defined(__CUDACC__) && !defined(SGMCMC_FUSED_HOST_EMULATION)
#error "langevin_step_kernels.cuh is device code: compile it with nvcc, or include host_emulation.h first"
#endif

#include <ATen/OpMathType.h>

#include <cstdint>

#include "multi_tensor_apply.cuh"
#include "philox_cuda.cuh"
#include "sgmcmc_fused/langevin_math.h"
#include "sgmcmc_fused/philox.h"

namespace sgmcmc_fused::cuda {

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

// One block per chunk of the table (see multi_tensor_apply.cuh), kBlockThreads
// threads per block.
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

// philox_normal_: grid-stride loop over the quads of one float32 tensor,
// kBlockThreads threads per block, any number of blocks.
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

}  // namespace sgmcmc_fused::cuda
