// CPU kernels of the DropConnect LSTM ops: the mask-and-multiply and the fused
// cell, parallel over rows (or weight chunks) with the per-ISA kernels of
// cpu_kernels.h, and the registration of the five LSTM ops for the CPU key.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cmath>

#include "cpu_kernels.h"
#include "sgmcmc_fused/lstm_kernels.h"

namespace sgmcmc_fused::cpu {
namespace {

// Elements per task below which another thread costs more than it saves. The
// mask is a cheap streaming pass; a cell unit costs five transcendentals, so
// even a PTB-small step (B = 20, H = 200: 4000 units, ~30 us) is worth two
// threads.
constexpr int64_t kGrainElements = 1 << 14;
constexpr int64_t kCellGrainUnits = 1 << 10;

MaskParams mask_params(const lstm::MaskArgs& m) {
  return MaskParams{static_cast<uint64_t>(m.seed),
                    kMaskStreamBit | static_cast<uint32_t>(m.weight_id),
                    static_cast<uint32_t>(m.call),
                    m.kind,
                    static_cast<float>(m.p),
                    static_cast<float>(1.0 / (1.0 - m.p)),
                    static_cast<float>(std::sqrt(m.p / (1.0 - m.p)))};
}

void dropconnect_weight_out(const at::Tensor& weight, const lstm::MaskArgs& mask, const at::Tensor& out) {
  const MaskParams params = mask_params(mask);
  const KernelTable& k = kernels();
  const int64_t item = weight.element_size();
  const auto* w = static_cast<const char*>(weight.const_data_ptr());
  auto* o = static_cast<char*>(out.data_ptr());
  at::parallel_for(0, weight.numel(), kGrainElements, [&](int64_t begin, int64_t end) {
    k.dropconnect_weight(weight.scalar_type(), w + begin * item, o + begin * item, static_cast<uint64_t>(begin),
                         end - begin, params);
  });
}

void cell_forward_out(const at::Tensor& gates, const at::Tensor& bias, const at::Tensor& c_prev, const at::Tensor& h,
                      const at::Tensor& c, const at::Tensor& activations) {
  const int64_t hidden = c_prev.size(1);
  const CellForwardArgs args{gates.const_data_ptr(),
                             bias.const_data_ptr(),
                             c_prev.const_data_ptr(),
                             h.data_ptr(),
                             c.data_ptr(),
                             activations.data_ptr(),
                             hidden,
                             h.stride(0)};
  const KernelTable& k = kernels();
  const int64_t grain_rows = std::max<int64_t>(1, kCellGrainUnits / std::max<int64_t>(1, hidden));
  at::parallel_for(0, c_prev.size(0), grain_rows,
                   [&](int64_t begin, int64_t end) { k.lstm_cell_forward(gates.scalar_type(), args, begin, end); });
}

void cell_backward_out(const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& activations,
                       const at::Tensor& c_prev, const at::Tensor& c, const at::Tensor& grad_gates,
                       const at::Tensor& grad_c_prev) {
  const int64_t hidden = c.size(1);
  const CellBackwardArgs args{
      grad_h.const_data_ptr(), grad_c.const_data_ptr(), activations.const_data_ptr(), c_prev.const_data_ptr(),
      c.const_data_ptr(),      grad_gates.data_ptr(),   grad_c_prev.data_ptr(),       hidden};
  const KernelTable& k = kernels();
  const int64_t grain_rows = std::max<int64_t>(1, kCellGrainUnits / std::max<int64_t>(1, hidden));
  at::parallel_for(0, c.size(0), grain_rows,
                   [&](int64_t begin, int64_t end) { k.lstm_cell_backward(c.scalar_type(), args, begin, end); });
}

const lstm::DeviceKernels kCpuLstmKernels{&dropconnect_weight_out, &cell_forward_out, &cell_backward_out};

// Makes the kernels above the CPU entry of the registry at library load.
const bool kRegistered = [] {
  lstm::register_device_kernels(c10::DeviceType::CPU, &kCpuLstmKernels);
  return true;
}();

}  // namespace

TORCH_LIBRARY_IMPL(sgmcmc_fused, CPU, m) { SGMCMC_REGISTER_LSTM_OPS(m); }

}  // namespace sgmcmc_fused::cpu
