// Device-independent parts of the DropConnect LSTM ops: checks, allocation,
// the device-kernel registry, and the single-step ops. The time loop is in
// lstm_layer.cpp.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <array>
#include <cmath>
#include <limits>

#include "sgmcmc_fused/lstm_kernels.h"

namespace sgmcmc_fused::lstm {

namespace {

constexpr size_t kDeviceSlots = static_cast<size_t>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES);

std::array<const DeviceKernels*, kDeviceSlots>& registry() {
  static std::array<const DeviceKernels*, kDeviceSlots> table{};
  return table;
}

bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_same(const char* op, const at::Tensor& ref, const char* ref_name, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), " but ", ref_name,
              " has dtype ", ref.scalar_type());
}

void check_shape(const char* op, const at::Tensor& t, const char* name, c10::IntArrayRef want, const char* what) {
  TORCH_CHECK(t.sizes() == want, op, ": ", name, " must be ", what, " = ", want, ", got ", t.sizes());
}

}  // namespace

void register_device_kernels(c10::DeviceType device_type, const DeviceKernels* kernels) {
  registry()[static_cast<size_t>(device_type)] = kernels;
}

const DeviceKernels& device_kernels(c10::DeviceType device_type) {
  const DeviceKernels* k = registry()[static_cast<size_t>(device_type)];
  TORCH_CHECK(k != nullptr, "sgmcmc_fused: no DropConnect LSTM kernels for ", c10::DeviceTypeName(device_type),
              " in this build");
  return *k;
}

void check_mask_args(const char* op, const MaskArgs& m) {
  TORCH_CHECK(m.p >= 0.0 && m.p < 1.0, op, ": p must be in [0, 1), got ", m.p);
  TORCH_CHECK(m.kind == 0 || m.kind == 1, op, ": kind must be 0 (Bernoulli) or 1 (Gaussian), got ", m.kind);
  TORCH_CHECK(m.seed >= 0, op, ": seed must be in [0, 2^63), got ", m.seed);
  TORCH_CHECK(m.weight_id >= 0 && m.weight_id < (int64_t{1} << 31), op, ": weight_id = ", m.weight_id,
              " is outside [0, 2^31)");
  TORCH_CHECK(m.call >= 0 && m.call <= static_cast<int64_t>(std::numeric_limits<uint32_t>::max()), op,
              ": call = ", m.call, " is outside [0, 2^32)");
}

at::Tensor dropconnect_weight(const at::Tensor& weight, int64_t seed, int64_t weight_id, int64_t call, double p,
                              int64_t kind) {
  const MaskArgs mask{seed, weight_id, call, p, kind};
  check_mask_args("dropconnect_weight", mask);
  TORCH_CHECK(is_float_dtype(weight.scalar_type()), "dropconnect_weight: weight has dtype ", weight.scalar_type(),
              "; supported are float32, float64, float16 and bfloat16");
  const at::Tensor w = weight.contiguous();
  at::Tensor out = at::empty_like(w, at::MemoryFormat::Contiguous);
  if (w.numel() > 0) device_kernels(w.device().type()).dropconnect_weight_out(w, mask, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_forward(const at::Tensor& gates, const at::Tensor& bias,
                                                                 const at::Tensor& c_prev) {
  constexpr const char* op = "lstm_cell_forward";
  TORCH_CHECK(c_prev.dim() == 2, op, ": c_prev must be [B, H], got ", c_prev.sizes());
  const int64_t batch = c_prev.size(0), hidden = c_prev.size(1);
  TORCH_CHECK(is_float_dtype(gates.scalar_type()), op, ": gates has dtype ", gates.scalar_type(),
              "; supported are float32, float64, float16 and bfloat16");
  check_shape(op, gates, "gates", {batch, 4 * hidden}, "[B, 4H]");
  check_shape(op, bias, "bias", {4 * hidden}, "[4H]");
  check_same(op, gates, "gates", bias, "bias");
  check_same(op, gates, "gates", c_prev, "c_prev");
  const at::Tensor g = gates.contiguous(), b = bias.contiguous(), cp = c_prev.contiguous();
  at::Tensor h = at::empty_like(cp), c = at::empty_like(cp), act = at::empty_like(g);
  if (batch > 0 && hidden > 0) device_kernels(g.device().type()).cell_forward_out(g, b, cp, h, c, act);
  return {h, c, act};
}

std::tuple<at::Tensor, at::Tensor> lstm_cell_backward(const at::Tensor& grad_h, const at::Tensor& grad_c,
                                                      const at::Tensor& activations, const at::Tensor& c_prev,
                                                      const at::Tensor& c) {
  constexpr const char* op = "lstm_cell_backward";
  TORCH_CHECK(c.dim() == 2, op, ": c must be [B, H], got ", c.sizes());
  const int64_t batch = c.size(0), hidden = c.size(1);
  TORCH_CHECK(is_float_dtype(c.scalar_type()), op, ": c has dtype ", c.scalar_type(),
              "; supported are float32, float64, float16 and bfloat16");
  check_shape(op, grad_h, "grad_h", {batch, hidden}, "[B, H]");
  check_shape(op, grad_c, "grad_c", {batch, hidden}, "[B, H]");
  check_shape(op, c_prev, "c_prev", {batch, hidden}, "[B, H]");
  check_shape(op, activations, "activations", {batch, 4 * hidden}, "[B, 4H]");
  for (const auto& [t, name] :
       {std::pair{grad_h, "grad_h"}, {grad_c, "grad_c"}, {activations, "activations"}, {c_prev, "c_prev"}}) {
    check_same(op, c, "c", t, name);
  }
  const at::Tensor dh = grad_h.contiguous(), dc = grad_c.contiguous(), act = activations.contiguous(),
                   cp = c_prev.contiguous(), cc = c.contiguous();
  at::Tensor grad_gates = at::empty_like(act), grad_c_prev = at::empty_like(cc);
  if (batch > 0 && hidden > 0) {
    device_kernels(cc.device().type()).cell_backward_out(dh, dc, act, cp, cc, grad_gates, grad_c_prev);
  }
  return {grad_gates, grad_c_prev};
}

}  // namespace sgmcmc_fused::lstm
