// Every operator schema of the sgmcmc_fused namespace, in one place. Backend
// files only add implementations (TORCH_LIBRARY_IMPL). The Triton kernels are
// registered from Python with torch.library.triton_op under their own names
// (sgmcmc_fused::triton_*), since they share the CUDA dispatch key with the
// CUDA kernels here.
#include <torch/library.h>

#include "cpu/cpu_kernels.h"

TORCH_LIBRARY(sgmcmc_fused, m) {
  // pSGLD over a list of tensors (SPEC §1). steps[i] is the noise counter t of
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
  // The noise stream alone (SPEC §2): fills the float32 tensor `out` with the
  // N(0, 1) draws of elements element_offset .. element_offset + out.numel() - 1.
  m.def("philox_normal_(Tensor(a!) out, int seed, int stream_id, int step, int element_offset) -> ()");
  // Which CPU kernel variant runs here ("baseline", "avx2", "avx512"); see
  // csrc/cpu/cpu_kernels.h. Takes no tensors, so it has one catch-all kernel.
  m.def("cpu_isa() -> str", [] { return sgmcmc_fused::cpu::cpu_isa(); });
}
