// The DropConnect LSTM ops (docs/spec.md#dropconnect-lstm), written once over ATen for every device.
//
// Symbols: T time steps, B batch, I input size, H hidden size; gate blocks
// i, f, g, o of H columns each (torch.nn.LSTM's layout).
//
// The device-independent parts (argument checks, output allocation, the time
// loop with its GEMMs) live in csrc/lstm/; each device supplies three fused
// pointwise kernels through a DeviceKernels table (csrc/cpu/lstm_cell_cpu.cpp,
// csrc/cuda/lstm_cell_cuda.cu) and registers the ops for its dispatch key with
// the functions declared here.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace sgmcmc_fused::lstm {

// One mask stream: stream word 0x80000000 | weight_id, Philox step `call`.
struct MaskArgs {
  int64_t seed = 0;
  int64_t weight_id = 0;
  int64_t call = 0;
  double p = 0.0;
  int64_t kind = 0;  // 0 Bernoulli 1[u >= p] / (1 - p), 1 Gaussian 1 + sqrt(p / (1 - p)) * n
};

// Raises naming `op` if p, kind, ids or counters are out of range.
void check_mask_args(const char* op, const MaskArgs& mask);

// Fused pointwise kernels of one device. Tensors are contiguous unless noted;
// outputs are preallocated with the inputs' dtype and device.
struct DeviceKernels {
  // out = weight * M; weight and out have the same shape (flattened order).
  void (*dropconnect_weight_out)(const at::Tensor& weight, const MaskArgs& mask, const at::Tensor& out);
  // gates [B, 4H], bias [4H], c_prev [B, H] -> h [B, H] (rows may be strided:
  // h is a step of the layer output), c [B, H], activations [B, 4H].
  void (*cell_forward_out)(const at::Tensor& gates, const at::Tensor& bias, const at::Tensor& c_prev,
                           const at::Tensor& h, const at::Tensor& c, const at::Tensor& activations);
  // -> grad_gates [B, 4H], grad_c_prev [B, H].
  void (*cell_backward_out)(const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& activations,
                            const at::Tensor& c_prev, const at::Tensor& c, const at::Tensor& grad_gates,
                            const at::Tensor& grad_c_prev);
};

// Called once per device type at library load (static registrar).
void register_device_kernels(c10::DeviceType device_type, const DeviceKernels* kernels);
const DeviceKernels& device_kernels(c10::DeviceType device_type);

// ---- op implementations (argument order = the schemas in csrc/ops.cpp) ----------

at::Tensor dropconnect_weight(const at::Tensor& weight, int64_t seed, int64_t weight_id, int64_t call, double p,
                              int64_t kind);

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_forward(const at::Tensor& gates, const at::Tensor& bias,
                                                                 const at::Tensor& c_prev);

std::tuple<at::Tensor, at::Tensor> lstm_cell_backward(const at::Tensor& grad_h, const at::Tensor& grad_c,
                                                      const at::Tensor& activations, const at::Tensor& c_prev,
                                                      const at::Tensor& c);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dropconnect_lstm_layer(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& lengths, bool reverse, int64_t seed,
    int64_t ih_weight_id, int64_t hh_weight_id, int64_t call, double p, int64_t kind, bool mask_ih, bool mask_hh);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dropconnect_lstm_layer_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n, const at::Tensor& input,
    const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& output, const at::Tensor& activations, const at::Tensor& cells,
    const std::optional<at::Tensor>& lengths, bool reverse, int64_t seed, int64_t ih_weight_id, int64_t hh_weight_id,
    int64_t call, double p, int64_t kind, bool mask_ih, bool mask_hh);

}  // namespace sgmcmc_fused::lstm

// Registers the five DropConnect LSTM ops for one dispatch key; use inside
// TORCH_LIBRARY_IMPL(sgmcmc_fused, <Key>, m).
#define SGMCMC_REGISTER_LSTM_OPS(m)                                                                      \
  do {                                                                                                   \
    (m).impl("dropconnect_weight", &::sgmcmc_fused::lstm::dropconnect_weight);                           \
    (m).impl("lstm_cell_forward", &::sgmcmc_fused::lstm::lstm_cell_forward);                             \
    (m).impl("lstm_cell_backward", &::sgmcmc_fused::lstm::lstm_cell_backward);                           \
    (m).impl("dropconnect_lstm_layer", &::sgmcmc_fused::lstm::dropconnect_lstm_layer);                   \
    (m).impl("dropconnect_lstm_layer_backward", &::sgmcmc_fused::lstm::dropconnect_lstm_layer_backward); \
  } while (false)
