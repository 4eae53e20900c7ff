// CPU kernels of psgld_step_, sgld_step_ and philox_normal_.
//
// Like the CUDA multi-tensor apply, every call is cut into chunks of at most
// kChunkElements elements over all tensors, and the chunks are spread over the
// intra-op thread pool, so a thousand small tensors cost one parallel region,
// not a thousand. Each chunk makes one pass over memory: the noise of up to
// kElementsPerBlock elements is drawn into an L1-resident buffer, then one loop
// reads theta, g, V and writes theta, V (20 bytes per fp32 element). The
// kernels themselves (cpu_kernels.h) are compiled per instruction set.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu_kernels.h"
#include "sgmcmc_fused/langevin_math.h"
#include "sgmcmc_fused/step_inputs.h"

namespace sgmcmc_fused::cpu {
namespace {

// Large enough to amortise scheduling, small enough to balance two threads on
// the 20M-element benchmark (~1200 chunks).
constexpr int64_t kChunkElements = 1 << 14;

struct Chunk {
  int64_t tensor;
  int64_t begin;  // local element range [begin, end) of that tensor
  int64_t end;
};

std::vector<Chunk> make_chunks(at::TensorList params) {
  std::vector<Chunk> chunks;
  for (int64_t t = 0; t < static_cast<int64_t>(params.size()); ++t) {
    const int64_t n = params[t].numel();
    for (int64_t b = 0; b < n; b += kChunkElements) chunks.push_back({t, b, std::min(n, b + kChunkElements)});
  }
  return chunks;
}

template <bool kPreconditioned>
void langevin_step_cpu(const char* op, const StepTensors& t, const StepScalars& s) {
  check_step_inputs(op, t, s, kPreconditioned, c10::DeviceType::CPU);
  const std::vector<Chunk> chunks = make_chunks(t.params);
  if (chunks.empty()) return;
  const KernelTable& k = kernels();
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      const Chunk& chunk = chunks[c];
      const at::Tensor& p = t.params[chunk.tensor];
      const int64_t item = p.element_size();
      const int64_t state_item = kPreconditioned ? t.square_avgs[chunk.tensor].element_size() : 0;
      const StepSpan span{
          static_cast<char*>(p.data_ptr()) + chunk.begin * item,
          static_cast<const char*>(t.grads[chunk.tensor].const_data_ptr()) + chunk.begin * item,
          kPreconditioned ? static_cast<char*>(t.square_avgs[chunk.tensor].data_ptr()) + chunk.begin * state_item
                          : nullptr,
          chunk.end - chunk.begin,
          // In uint64: an offset below 2^63 plus a chunk's start may pass 2^63 (the quad index stays exact).
          static_cast<uint64_t>(t.element_offsets[chunk.tensor]) + static_cast<uint64_t>(chunk.begin),
          static_cast<uint32_t>(t.stream_ids[chunk.tensor]),
          static_cast<uint32_t>(t.steps[chunk.tensor]),
      };
      (kPreconditioned ? k.psgld_span : k.sgld_span)(p.scalar_type(), span, s);
    }
  });
}

void psgld_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                    c10::IntArrayRef stream_ids, c10::IntArrayRef element_offsets, c10::IntArrayRef steps, double lr,
                    double alpha, double eps, double weight_decay, double temperature, int64_t num_data, bool add_noise,
                    int64_t seed) {
  const StepTensors t{params, grads, square_avgs, stream_ids, element_offsets, steps};
  const StepScalars s{lr, alpha, eps, weight_decay, temperature, num_data, add_noise, seed};
  langevin_step_cpu<true>("psgld_step_", t, s);
}

void sgld_step_cpu(at::TensorList params, at::TensorList grads, c10::IntArrayRef stream_ids,
                   c10::IntArrayRef element_offsets, c10::IntArrayRef steps, double lr, double weight_decay,
                   double temperature, int64_t num_data, bool add_noise, int64_t seed) {
  const StepTensors t{params, grads, {}, stream_ids, element_offsets, steps};
  const StepScalars s{lr, 0.0, 0.0, weight_decay, temperature, num_data, add_noise, seed};
  langevin_step_cpu<false>("sgld_step_", t, s);
}

void philox_normal_cpu(const at::Tensor& out, int64_t seed, int64_t stream_id, int64_t step, int64_t element_offset) {
  check_noise_inputs("philox_normal_", out, seed, stream_id, step, element_offset, c10::DeviceType::CPU);
  float* data = out.data_ptr<float>();
  const int64_t n = out.numel();
  const KernelTable& k = kernels();
  at::parallel_for(0, n, kChunkElements, [&](int64_t begin, int64_t end) {
    k.philox_normal(static_cast<uint64_t>(seed), static_cast<uint32_t>(stream_id), static_cast<uint32_t>(step),
                    static_cast<uint64_t>(element_offset) + static_cast<uint64_t>(begin), end - begin, data + begin);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(sgmcmc_fused, CPU, m) {
  m.impl("psgld_step_", &psgld_step_cpu);
  m.impl("sgld_step_", &sgld_step_cpu);
  m.impl("philox_normal_", &philox_normal_cpu);
}

}  // namespace sgmcmc_fused::cpu
