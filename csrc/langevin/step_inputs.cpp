#include "sgmcmc_fused/step_inputs.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

namespace sgmcmc_fused {

namespace {

// The bytes a contiguous tensor of the call occupies, and whether the step writes them.
struct MemoryRange {
  uintptr_t begin, end;
  int list_rank;  // 0 params, 1 grads, 2 square_avgs: ties sort in this order, then by index
  const char* list;
  size_t index;
  bool written;
};

// Raises if a tensor the step writes (a param, a square_avg) shares memory with any other tensor of
// the call: the kernels read and write through restrict pointers in parallel chunks, so such a call
// would give results that depend on the thread count. Sorted sweep, O(n log n).
void check_no_overlap(const char* op, const StepTensors& t, bool preconditioned) {
  std::vector<MemoryRange> ranges;
  const auto add = [&](at::TensorList list, int rank, const char* name, bool written) {
    for (size_t i = 0; i < list.size(); ++i) {
      const at::Tensor& x = list[i];
      if (x.numel() == 0) continue;
      const auto begin = reinterpret_cast<uintptr_t>(x.data_ptr());
      ranges.push_back({begin, begin + static_cast<uintptr_t>(x.numel() * x.element_size()), rank, name, i, written});
    }
  };
  add(t.params, 0, "params", true);
  add(t.grads, 1, "grads", false);
  if (preconditioned) add(t.square_avgs, 2, "square_avgs", true);
  std::sort(ranges.begin(), ranges.end(), [](const MemoryRange& a, const MemoryRange& b) {
    return std::tie(a.begin, a.list_rank, a.index) < std::tie(b.begin, b.list_rank, b.index);
  });
  const MemoryRange* reaches_furthest = nullptr;          // of every range so far
  const MemoryRange* written_reaches_furthest = nullptr;  // of the written ranges so far
  for (const MemoryRange& r : ranges) {
    const MemoryRange* other = nullptr;
    if (written_reaches_furthest && r.begin < written_reaches_furthest->end) {
      other = written_reaches_furthest;
    } else if (r.written && reaches_furthest && r.begin < reaches_furthest->end) {
      other = reaches_furthest;
    }
    TORCH_CHECK(other == nullptr, op, ": ", other ? other->list : "", "[", other ? other->index : 0, "] and ", r.list,
                "[", r.index, "] share memory; every tensor the step updates must have memory of its own");
    if (!reaches_furthest || r.end > reaches_furthest->end) reaches_furthest = &r;
    if (r.written && (!written_reaches_furthest || r.end > written_reaches_furthest->end))
      written_reaches_furthest = &r;
  }
}

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// fp32 state for fp16/bf16/fp32 parameters, fp64 for fp64 (the math type).
at::ScalarType state_dtype_for(at::ScalarType param_dtype) {
  return param_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

void check_step_inputs(const char* op, const StepTensors& t, const StepScalars& s, bool preconditioned,
                       c10::DeviceType device_type) {
  const size_t n = t.params.size();
  TORCH_CHECK(t.grads.size() == n, op, ": got ", n, " params but ", t.grads.size(), " grads");
  if (preconditioned) {
    TORCH_CHECK(t.square_avgs.size() == n, op, ": got ", n, " params but ", t.square_avgs.size(), " square_avgs");
  }
  TORCH_CHECK(t.stream_ids.size() == n, op, ": got ", n, " params but ", t.stream_ids.size(), " stream_ids");
  TORCH_CHECK(t.element_offsets.size() == n, op, ": got ", n, " params but ", t.element_offsets.size(),
              " element_offsets");
  TORCH_CHECK(t.steps.size() == n, op, ": got ", n, " params but ", t.steps.size(), " steps");

  TORCH_CHECK(std::isfinite(s.lr) && s.lr >= 0.0, op, ": lr must be a finite number >= 0, got ", s.lr);
  TORCH_CHECK(std::isfinite(s.weight_decay) && s.weight_decay >= 0.0, op,
              ": weight_decay must be a finite number >= 0, got ", s.weight_decay);
  TORCH_CHECK(std::isfinite(s.temperature) && s.temperature >= 0.0, op,
              ": temperature must be a finite number >= 0, got ", s.temperature);
  TORCH_CHECK(s.num_data >= 1, op, ": num_data must be >= 1, got ", s.num_data);
  TORCH_CHECK(s.seed >= 0, op, ": seed must be in [0, 2^63), got ", s.seed);
  if (preconditioned) {
    TORCH_CHECK(s.alpha >= 0.0 && s.alpha < 1.0, op, ": alpha must be in [0, 1), got ", s.alpha);
    TORCH_CHECK(std::isfinite(s.eps) && s.eps > 0.0, op, ": eps must be a finite number > 0, got ", s.eps);
  }

  c10::optional<c10::Device> device;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = t.params[i];
    const at::Tensor& g = t.grads[i];
    TORCH_CHECK(p.device().type() == device_type, op, ": params[", i, "] is on ", p.device(), ", expected a ",
                c10::DeviceTypeName(device_type), " tensor");
    if (!device) device = p.device();
    TORCH_CHECK(p.device() == *device, op, ": params[", i, "] is on ", p.device(), " but params[0] is on ", *device,
                "; one call updates tensors of one device");
    TORCH_CHECK(is_supported_dtype(p.scalar_type()), op, ": params[", i, "] has dtype ", p.scalar_type(),
                "; supported are float32, float64, float16 and bfloat16");
    TORCH_CHECK(!p.is_sparse() && !g.is_sparse(), op, ": params[", i,
                "] or its grad is sparse; "
                "sparse gradients are not supported");
    TORCH_CHECK(g.device() == p.device(), op, ": grads[", i, "] is on ", g.device(), " but params[", i, "] is on ",
                p.device());
    TORCH_CHECK(g.scalar_type() == p.scalar_type(), op, ": grads[", i, "] has dtype ", g.scalar_type(), " but params[",
                i, "] has dtype ", p.scalar_type());
    TORCH_CHECK(g.sizes() == p.sizes(), op, ": grads[", i, "] has shape ", g.sizes(), " but params[", i, "] has shape ",
                p.sizes());
    TORCH_CHECK(p.is_contiguous(), op, ": params[", i,
                "] is not contiguous; pass a contiguous tensor "
                "(the optimizer copies non-contiguous parameters for you)");
    TORCH_CHECK(g.is_contiguous(), op, ": grads[", i, "] is not contiguous");
    if (preconditioned) {
      const at::Tensor& v = t.square_avgs[i];
      const auto want = state_dtype_for(p.scalar_type());
      TORCH_CHECK(v.device() == p.device(), op, ": square_avgs[", i, "] is on ", v.device(), " but params[", i,
                  "] is on ", p.device());
      TORCH_CHECK(v.scalar_type() == want, op, ": square_avgs[", i, "] has dtype ", v.scalar_type(), ", expected ",
                  want, " for ", p.scalar_type(), " params");
      TORCH_CHECK(v.sizes() == p.sizes(), op, ": square_avgs[", i, "] has shape ", v.sizes(), " but params[", i,
                  "] has shape ", p.sizes());
      TORCH_CHECK(v.is_contiguous(), op, ": square_avgs[", i, "] is not contiguous");
    }
    TORCH_CHECK(t.stream_ids[i] >= 0 && t.stream_ids[i] < static_cast<int64_t>(kMaskStreamBit), op, ": stream_ids[", i,
                "] = ", t.stream_ids[i],
                " is outside [0, 2^31) (the upper half of the "
                "stream space belongs to DropConnect masks)");
    TORCH_CHECK(t.element_offsets[i] >= 0, op, ": element_offsets[", i, "] = ", t.element_offsets[i], " is negative");
    TORCH_CHECK(t.steps[i] >= 0 && t.steps[i] <= static_cast<int64_t>(std::numeric_limits<uint32_t>::max()), op,
                ": steps[", i, "] = ", t.steps[i], " is outside [0, 2^32)");
  }
  check_no_overlap(op, t, preconditioned);
}

void check_noise_inputs(const char* op, const at::Tensor& out, int64_t seed, int64_t stream_id, int64_t step,
                        int64_t element_offset, c10::DeviceType device_type) {
  TORCH_CHECK(out.device().type() == device_type, op, ": out is on ", out.device(), ", expected a ",
              c10::DeviceTypeName(device_type), " tensor");
  TORCH_CHECK(out.scalar_type() == at::kFloat, op, ": out must be float32, got ", out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), op, ": out must be contiguous");
  TORCH_CHECK(seed >= 0, op, ": seed must be in [0, 2^63), got ", seed);
  TORCH_CHECK(stream_id >= 0 && stream_id <= static_cast<int64_t>(std::numeric_limits<uint32_t>::max()), op,
              ": stream_id = ", stream_id, " is outside [0, 2^32)");
  TORCH_CHECK(step >= 0 && step <= static_cast<int64_t>(std::numeric_limits<uint32_t>::max()), op, ": step = ", step,
              " is outside [0, 2^32)");
  TORCH_CHECK(element_offset >= 0, op, ": element_offset = ", element_offset, " is negative");
}

}  // namespace sgmcmc_fused
