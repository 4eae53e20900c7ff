// Every operator schema of the sgmcmc_fused namespace, in one place. Backend
// files only add implementations (TORCH_LIBRARY_IMPL). The Triton kernels are
// registered from Python with torch.library.triton_op under their own names
// (sgmcmc_fused::triton_*), since they share the CUDA dispatch key with the
// CUDA kernels here.
#include <torch/library.h>

#include "cpu/cpu_kernels.h"

TORCH_LIBRARY(sgmcmc_fused, m) {
  // pSGLD over a list of tensors (docs/spec.md#langevin-step). steps[i] is the noise counter t of
  // params[i]; element_offsets[i] is where params[i] starts in the whole
  // (unsharded) parameter, so a shard draws the noise of its slice.
  m.def(
      "psgld_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] square_avgs, int[] stream_ids, "
      "int[] element_offsets, int[] steps, *, float lr, float alpha, float eps, float weight_decay, "
      "float temperature, int num_data, bool add_noise, int seed) -> ()");
  // SGLD: the same without the RMS preconditioner.
  m.def(
      "sgld_step_(Tensor(a!)[] params, Tensor[] grads, int[] stream_ids, int[] element_offsets, "
      "int[] steps, *, float lr, float weight_decay, float temperature, int num_data, bool add_noise, "
      "int seed) -> ()");
  // The noise stream alone (docs/spec.md#noise-stream): fills the float32 tensor `out` with the
  // N(0, 1) draws of elements element_offset .. element_offset + out.numel() - 1.
  m.def("philox_normal_(Tensor(a!) out, int seed, int stream_id, int step, int element_offset) -> ()");

  // ---- DropConnect LSTM (docs/spec.md#dropconnect-lstm; symbols T, B, I, H as in lstm_reference.py) ----
  // weight * M, M the mask of (seed, weight_id, call): kind 0 Bernoulli
  // 1[u >= p] / (1 - p), kind 1 Gaussian 1 + sqrt(p / (1 - p)) * n. Generated in
  // the same pass as the product; no mask tensor is made. The backward applies
  // it to the gradient of the masked weight.
  m.def("dropconnect_weight(Tensor weight, int seed, int weight_id, int call, float p, int kind) -> Tensor");
  // One step's pointwise part: gates [B, 4H] pre-activations without bias, bias
  // [4H] (b_ih + b_hh), c_prev [B, H] -> h, c [B, H] and the gate activations
  // [B, 4H] the backward needs.
  m.def("lstm_cell_forward(Tensor gates, Tensor bias, Tensor c_prev) -> (Tensor h, Tensor c, Tensor activations)");
  m.def(
      "lstm_cell_backward(Tensor grad_h, Tensor grad_c, Tensor activations, Tensor c_prev, Tensor c) -> "
      "(Tensor grad_gates, Tensor grad_c_prev)");
  // One direction of one layer, the whole time loop: one input-projection GEMM,
  // then per step one recurrent GEMM and the fused cell. input [T, B, I], h0/c0
  // [B, H], w_ih [4H, I], w_hh [4H, H], bias [4H] or None, lengths [B] int64 or
  // None. Returns output [T, B, H] (frozen state where t >= lengths[b]), h_n,
  // c_n, and what the backward needs: activations [T, B, 4H], cells [T, B, H].
  // The masks are regenerated from (seed, weight ids, call) in the backward.
  m.def(
      "dropconnect_lstm_layer(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? bias, "
      "Tensor? lengths, bool reverse, int seed, int ih_weight_id, int hh_weight_id, int call, float p, int kind, "
      "bool mask_ih, bool mask_hh) -> (Tensor output, Tensor h_n, Tensor c_n, Tensor activations, Tensor cells)");
  m.def(
      "dropconnect_lstm_layer_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, "
      "Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor output, Tensor activations, Tensor cells, "
      "Tensor? lengths, bool reverse, int seed, int ih_weight_id, int hh_weight_id, int call, float p, int kind, "
      "bool mask_ih, bool mask_hh) -> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, "
      "Tensor grad_w_hh, Tensor grad_bias)");

  // Which CPU kernel variant runs here ("baseline", "avx2", "avx512"); see
  // csrc/cpu/cpu_kernels.h. Takes no tensors, so it has one catch-all kernel.
  m.def("cpu_isa() -> str", [] { return sgmcmc_fused::cpu::cpu_isa(); });
}
