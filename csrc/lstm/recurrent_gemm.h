// The per-step GEMMs of the LSTM time loop, y = x W^T with one weight reused
// at every step.
//
// NOTE: on CPU, for weights larger than the L2 cache, oneDNN's linear with the
// weight reordered once into its blocked layout is much faster than re-reading
// a plain row-major weight each step (MKL sgemm). Measured on 2 Zen 4 cores,
// B = 20: H = 650 (W 2600x650, 6.8 MB) 116 -> 204 GFLOP/s forward and
// 120 -> 185 backward; H = 200 (W 800x200, 0.6 MB) 113 -> 120, not worth the
// extra copy. So the packed path is taken for fp32 CPU weights above 1 MiB,
// when this torch has the oneDNN ops (mkldnn::_reorder_linear_weight and
// mkldnn::_linear_pointwise, found through the dispatcher at run time); every
// other case uses ATen's addmm / mm. SGMCMC_FUSED_ONEDNN_GEMM=always|never
// overrides the choice (tests use it to cover both paths).
#pragma once

#include <ATen/core/Tensor.h>

namespace sgmcmc_fused::lstm {

class RecurrentGemm {
 public:
  // weight: [N, K]; batch: rows of every x this GEMM will see.
  RecurrentGemm(const at::Tensor& weight, int64_t batch);

  // out += x weight^T; x [B, K], out [B, N] contiguous.
  void accumulate(const at::Tensor& x, const at::Tensor& out) const;

  // out = x weight^T; x [B, K], out [B, N] contiguous.
  void assign(const at::Tensor& x, at::Tensor& out) const;

  bool packed() const { return packed_.defined(); }

 private:
  at::Tensor weight_t_;  // [K, N] view, for ATen's GEMMs
  at::Tensor packed_;    // oneDNN's blocked weight, or undefined
};

}  // namespace sgmcmc_fused::lstm
