#include "recurrent_gemm.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <cstdlib>
#include <optional>
#include <string>

namespace sgmcmc_fused::lstm {

namespace {

constexpr int64_t kPackedMinBytes = int64_t{1} << 20;

struct OneDnnOps {
  c10::OperatorHandle reorder;
  c10::OperatorHandle linear;
  c10::OperatorHandle linear_binary;
};

// The oneDNN linear ops of this torch build, if it has them.
const std::optional<OneDnnOps>& onednn_ops() {
  static const std::optional<OneDnnOps> ops = []() -> std::optional<OneDnnOps> {
    auto& dispatcher = c10::Dispatcher::singleton();
    auto reorder = dispatcher.findSchema({"mkldnn::_reorder_linear_weight", ""});
    auto linear = dispatcher.findSchema({"mkldnn::_linear_pointwise", ""});
    auto binary = dispatcher.findSchema({"mkldnn::_linear_pointwise", "binary"});
    if (!reorder || !linear || !binary) return std::nullopt;
    return OneDnnOps{*reorder, *linear, *binary};
  }();
  return ops;
}

bool use_packed(const at::Tensor& weight) {
  const char* env = std::getenv("SGMCMC_FUSED_ONEDNN_GEMM");
  const std::string mode = env ? env : "auto";
  if (mode == "never" || !onednn_ops() || !at::globalContext().userEnabledMkldnn()) return false;
  if (weight.device().type() != c10::DeviceType::CPU || weight.scalar_type() != at::kFloat) return false;
  return mode == "always" || weight.numel() * weight.element_size() >= kPackedMinBytes;
}

at::Tensor call(const c10::OperatorHandle& op, torch::jit::Stack stack) {
  op.callBoxed(&stack);
  return stack.front().toTensor();
}

}  // namespace

RecurrentGemm::RecurrentGemm(const at::Tensor& weight, int64_t batch) : weight_t_(weight.t()) {
  if (use_packed(weight)) {
    packed_ = call(onednn_ops()->reorder, {weight.contiguous(), c10::IValue(batch)});
  }
}

void RecurrentGemm::accumulate(const at::Tensor& x, const at::Tensor& out) const {
  if (!packed()) {
    out.addmm_(x, weight_t_);
    return;
  }
  // linear(x) + out, then back into out (the caller's buffer is the saved state).
  out.copy_(call(onednn_ops()->linear_binary, {x, out, packed_, c10::IValue(), c10::IValue(std::string("add"))}));
}

void RecurrentGemm::assign(const at::Tensor& x, at::Tensor& out) const {
  if (!packed()) {
    at::mm_out(out, x, weight_t_);
    return;
  }
  out.copy_(call(onednn_ops()->linear, {x, packed_, c10::IValue(), c10::IValue(std::string("none")),
                                        c10::IValue(c10::List<std::optional<at::Scalar>>()), c10::IValue()}));
}

}  // namespace sgmcmc_fused::lstm
