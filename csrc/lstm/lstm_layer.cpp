// One direction of one DropConnect LSTM layer with the whole time loop in C++
// (no Python per step), for any device with registered kernels:
//
//   forward:  W' = W * M (masked matrices only, regenerated from the seed)
//             gates[t] = x[t] W_ih'^T            one GEMM for all T
//             gates[t] += h W_hh'^T              one GEMM per step, in place
//             h, c, activations[t] = cell(gates[t] + bias, c)   one fused kernel
//   backward: per step (reverse order) the fused cell backward and one GEMM for
//             dh; then one GEMM each for dW_ih', dW_hh', dx over all steps, and
//             dW = dW' * M.
//
// The gate buffer of the forward becomes the saved activations (the cell writes
// them in place of the pre-activations), so the layer saves activations
// [T, B, 4H], cells [T, B, H] and its output [T, B, H]; no mask is stored.
//
// Variable lengths: a row b is active at t iff t < lengths[b]; inactive rows
// keep h and c, so output[t] holds the frozen state there, and the state before
// step t is always output/cells at the previous processed step (or h0/c0).
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <array>
#include <utility>
#include <vector>

#include "recurrent_gemm.h"
#include "sgmcmc_fused/lstm_kernels.h"

namespace sgmcmc_fused::lstm {

namespace {

struct LayerShape {
  int64_t steps, batch, input_size, hidden;
};

LayerShape check_layer(const char* op, const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0,
                       const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& lengths) {
  TORCH_CHECK(input.dim() == 3, op, ": input must be [T, B, I], got ", input.sizes());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * w_hh.size(1), op, ": w_hh must be [4H, H], got ", w_hh.sizes());
  const LayerShape s{input.size(0), input.size(1), input.size(2), w_hh.size(1)};
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble ||
                  input.scalar_type() == at::kHalf || input.scalar_type() == at::kBFloat16,
              op, ": input has dtype ", input.scalar_type(), "; supported are float32, float64, float16 and bfloat16");
  TORCH_CHECK(w_ih.sizes() == c10::IntArrayRef({4 * s.hidden, s.input_size}), op, ": w_ih must be [4H, I] = [",
              4 * s.hidden, ", ", s.input_size, "], got ", w_ih.sizes());
  TORCH_CHECK(h0.sizes() == c10::IntArrayRef({s.batch, s.hidden}), op, ": h0 must be [B, H] = [", s.batch, ", ",
              s.hidden, "], got ", h0.sizes());
  TORCH_CHECK(c0.sizes() == c10::IntArrayRef({s.batch, s.hidden}), op, ": c0 must be [B, H] = [", s.batch, ", ",
              s.hidden, "], got ", c0.sizes());
  std::vector<std::pair<const at::Tensor*, const char*>> same = {
      {&h0, "h0"}, {&c0, "c0"}, {&w_ih, "w_ih"}, {&w_hh, "w_hh"}};
  if (bias) {
    TORCH_CHECK(bias->sizes() == c10::IntArrayRef({4 * s.hidden}), op, ": bias must be [4H] = [", 4 * s.hidden,
                "], got ", bias->sizes());
    same.emplace_back(&*bias, "bias");
  }
  for (const auto& [t, name] : same) {
    TORCH_CHECK(t->device() == input.device(), op, ": ", name, " is on ", t->device(), " but input is on ",
                input.device());
    TORCH_CHECK(t->scalar_type() == input.scalar_type(), op, ": ", name, " has dtype ", t->scalar_type(),
                " but input has dtype ", input.scalar_type());
  }
  if (lengths) {
    TORCH_CHECK(lengths->dim() == 1 && lengths->size(0) == s.batch, op, ": lengths must be [B] = [", s.batch, "], got ",
                lengths->sizes());
    TORCH_CHECK(lengths->scalar_type() == at::kLong, op, ": lengths must be int64, got ", lengths->scalar_type());
    TORCH_CHECK(lengths->device() == input.device(), op, ": lengths is on ", lengths->device(), " but input is on ",
                input.device());
    if (s.batch > 0) {
      const auto [lo, hi] = at::aminmax(*lengths);
      TORCH_CHECK(lo.item<int64_t>() >= 0 && hi.item<int64_t>() <= s.steps, op,
                  ": lengths must lie in [0, T = ", s.steps, "], got values in [", lo.item<int64_t>(), ", ",
                  hi.item<int64_t>(), "]");
    }
  }
  return s;
}

// W * M for a masked matrix, W itself otherwise.
at::Tensor effective_weight(const at::Tensor& w, bool masked, int64_t seed, int64_t weight_id, int64_t call, double p,
                            int64_t kind) {
  if (!masked || p == 0.0) return w;
  return dropconnect_weight(w, seed, weight_id, call, p, kind);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dropconnect_lstm_layer(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& lengths, bool reverse, int64_t seed,
    int64_t ih_weight_id, int64_t hh_weight_id, int64_t call, double p, int64_t kind, bool mask_ih, bool mask_hh) {
  constexpr const char* op = "dropconnect_lstm_layer";
  const LayerShape s = check_layer(op, input, h0, c0, w_ih, w_hh, bias, lengths);
  check_mask_args(op, {seed, ih_weight_id, call, p, kind});
  check_mask_args(op, {seed, hh_weight_id, call, p, kind});
  const DeviceKernels& k = device_kernels(input.device().type());

  const at::Tensor w_ih_eff = effective_weight(w_ih, mask_ih, seed, ih_weight_id, call, p, kind);
  const RecurrentGemm recurrent(effective_weight(w_hh, mask_hh, seed, hh_weight_id, call, p, kind), s.batch);
  const at::Tensor bias_eff = bias ? bias->contiguous() : at::zeros({4 * s.hidden}, input.options());

  // The input projection of every step at once; becomes the activations.
  at::Tensor gates = at::matmul(input, w_ih_eff.t()).contiguous();  // [T, B, 4H]
  at::Tensor output = at::empty({s.steps, s.batch, s.hidden}, input.options());
  at::Tensor cells = at::empty({s.steps, s.batch, s.hidden}, input.options());
  at::Tensor h = h0.contiguous(), c = c0.contiguous();
  for (int64_t i = 0; i < s.steps; ++i) {
    const int64_t t = reverse ? s.steps - 1 - i : i;
    at::Tensor gates_t = gates[t];
    recurrent.accumulate(h, gates_t);
    at::Tensor h_t = output[t], c_t = cells[t];
    k.cell_forward_out(gates_t, bias_eff, c, h_t, c_t, gates_t);  // activations overwrite the pre-activations
    if (lengths) {
      const at::Tensor active = lengths->gt(t).unsqueeze(1);
      h_t.copy_(at::where(active, h_t, h));
      c_t.copy_(at::where(active, c_t, c));
    }
    h = h_t;
    c = c_t;
  }
  return {output, h.clone(), c.clone(), gates, cells};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dropconnect_lstm_layer_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n, const at::Tensor& input,
    const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& output, const at::Tensor& activations, const at::Tensor& cells,
    const std::optional<at::Tensor>& lengths, bool reverse, int64_t seed, int64_t ih_weight_id, int64_t hh_weight_id,
    int64_t call, double p, int64_t kind, bool mask_ih, bool mask_hh) {
  constexpr const char* op = "dropconnect_lstm_layer_backward";
  const LayerShape s = check_layer(op, input, h0, c0, w_ih, w_hh, std::nullopt, lengths);
  check_mask_args(op, {seed, ih_weight_id, call, p, kind});
  check_mask_args(op, {seed, hh_weight_id, call, p, kind});
  const std::array<int64_t, 3> state_shape{s.steps, s.batch, s.hidden};
  for (const auto& [t, name] : {std::pair{grad_output, "grad_output"}, {output, "output"}, {cells, "cells"}}) {
    TORCH_CHECK(t.sizes() == c10::IntArrayRef(state_shape), op, ": ", name,
                " must be [T, B, H] = ", c10::IntArrayRef(state_shape), ", got ", t.sizes());
  }
  TORCH_CHECK(activations.sizes() == c10::IntArrayRef({s.steps, s.batch, 4 * s.hidden}), op,
              ": activations must be [T, B, 4H], got ", activations.sizes());
  for (const auto& [t, name] : {std::pair{grad_h_n, "grad_h_n"}, {grad_c_n, "grad_c_n"}}) {
    TORCH_CHECK(t.sizes() == c10::IntArrayRef({s.batch, s.hidden}), op, ": ", name, " must be [B, H] = [", s.batch,
                ", ", s.hidden, "], got ", t.sizes());
  }
  // The cell kernel takes its element type from these tensors and writes into buffers made like
  // `input`: a mismatch would be read and written through pointers of the wrong type.
  for (const auto& [t, name] : {std::pair{grad_output, "grad_output"},
                                {grad_h_n, "grad_h_n"},
                                {grad_c_n, "grad_c_n"},
                                {output, "output"},
                                {activations, "activations"},
                                {cells, "cells"}}) {
    TORCH_CHECK(t.device() == input.device(), op, ": ", name, " is on ", t.device(), " but input is on ",
                input.device());
    TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
                " but input has dtype ", input.scalar_type());
  }
  const DeviceKernels& k = device_kernels(input.device().type());
  // The cell kernel reads raw rows: the saved tensors must be dense.
  const at::Tensor acts = activations.contiguous(), cells_dense = cells.contiguous();

  // The masked weights again, from the seed.
  const at::Tensor w_ih_eff = effective_weight(w_ih, mask_ih, seed, ih_weight_id, call, p, kind);
  // dh_prev = dgates W_hh': a GEMM with weight W_hh'^T [H, 4H].
  const RecurrentGemm recurrent_t(effective_weight(w_hh, mask_hh, seed, hh_weight_id, call, p, kind).t(), s.batch);

  const at::Tensor grad_out = grad_output.contiguous();
  at::Tensor grad_gates = at::empty({s.steps, s.batch, 4 * s.hidden}, input.options());
  // Per-step buffers, reused: at PTB-small sizes an allocation per op costs
  // as much as the op.
  at::Tensor dh = grad_h_n.contiguous().clone(), dc = grad_c_n.contiguous().clone();
  at::Tensor dh_total = at::empty_like(dh), dc_prev = at::empty_like(dc);
  for (int64_t i = s.steps - 1; i >= 0; --i) {
    const int64_t t = reverse ? s.steps - 1 - i : i;
    const bool first = i == 0;  // the first processed step starts from h0, c0
    const int64_t prev = reverse ? t + 1 : t - 1;
    const at::Tensor c_prev = first ? c0.contiguous() : cells_dense[prev];
    // output[t] is the state after step t, also where a row is inactive (the
    // frozen state), so its gradient always joins dh.
    at::add_out(dh_total, dh, grad_out[t]);
    at::Tensor grad_gates_t = grad_gates[t];
    k.cell_backward_out(dh_total, dc, acts[t], c_prev, cells_dense[t], grad_gates_t, dc_prev);
    if (lengths) {
      // Inactive rows: no gate gradient; dh and dc pass through unchanged.
      const at::Tensor active = lengths->gt(t).unsqueeze(1);
      grad_gates_t.masked_fill_(active.logical_not(), 0);
      dc_prev.copy_(at::where(active, dc_prev, dc));
      recurrent_t.assign(grad_gates_t, dh);
      dh.add_(at::where(active, at::zeros_like(dh_total), dh_total));
    } else {
      recurrent_t.assign(grad_gates_t, dh);
    }
    std::swap(dc, dc_prev);
  }

  // h_{prev}[t]: the state each step started from.
  at::Tensor h_prev;
  if (s.steps == 0) {
    h_prev = at::empty_like(output);
  } else if (reverse) {
    h_prev = at::cat({output.slice(0, 1), h0.unsqueeze(0)}, 0);
  } else {
    h_prev = at::cat({h0.unsqueeze(0), output.slice(0, 0, s.steps - 1)}, 0);
  }
  const at::Tensor gates_2d = grad_gates.view({s.steps * s.batch, 4 * s.hidden});
  at::Tensor grad_w_hh = at::mm(gates_2d.t(), h_prev.reshape({s.steps * s.batch, s.hidden}));
  at::Tensor grad_w_ih = at::mm(gates_2d.t(), input.reshape({s.steps * s.batch, s.input_size}));
  at::Tensor grad_input = at::mm(gates_2d, w_ih_eff).view({s.steps, s.batch, s.input_size});
  at::Tensor grad_bias = grad_gates.sum(at::IntArrayRef{0, 1});
  // dL/dW = dL/dW' * M, the mask regenerated once more.
  grad_w_ih = effective_weight(grad_w_ih, mask_ih, seed, ih_weight_id, call, p, kind);
  grad_w_hh = effective_weight(grad_w_hh, mask_hh, seed, hh_weight_id, call, p, kind);
  return {grad_input, dh, dc, grad_w_ih, grad_w_hh, grad_bias};
}

}  // namespace sgmcmc_fused::lstm
