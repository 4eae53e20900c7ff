// Autocast kernels of the DropConnect LSTM ops, registered as torch registers its own
// (aten/src/ATen/autocast_mode.cpp): under torch.autocast, the layer and the cell run in the
// autocast dtype of their device, like at::lstm ("lower precision" on CPU and CUDA). Every
// floating input is cast with at::autocast::cached_cast (so a weight is cast once per autocast
// region, and the cast is differentiable: gradients reach the fp32 master weights), then the op
// is called again with the Autocast key excluded. The kernels keep their pointwise math in fp32;
// the DropConnect masks are drawn from the same stream whatever the dtype, so only the masked
// products are rounded. Ops without a kernel here (dropconnect_weight: elementwise, in the
// weight's dtype) fall through.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace sgmcmc_fused::lstm {
namespace {

using at::Tensor;
using LayerOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

template <c10::DeviceType kDevice>
LayerOutputs layer_autocast(const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                            const Tensor& w_hh, const std::optional<Tensor>& bias, const std::optional<Tensor>& lengths,
                            bool reverse, int64_t seed, int64_t ih_weight_id, int64_t hh_weight_id, int64_t call,
                            double p, int64_t kind, bool mask_ih, bool mask_hh) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
  const auto dtype = at::autocast::get_lower_precision_fp_from_device_type(kDevice);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sgmcmc_fused::dropconnect_lstm_layer", "")
                       .typed<LayerOutputs(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                           const std::optional<Tensor>&, const std::optional<Tensor>&, bool, int64_t,
                                           int64_t, int64_t, int64_t, double, int64_t, bool, bool)>();
  using at::autocast::cached_cast;
  // lengths is an integer tensor: cached_cast leaves non-floating tensors alone.
  return op.call(cached_cast(dtype, input, kDevice), cached_cast(dtype, h0, kDevice), cached_cast(dtype, c0, kDevice),
                 cached_cast(dtype, w_ih, kDevice), cached_cast(dtype, w_hh, kDevice),
                 cached_cast(dtype, bias, kDevice), lengths, reverse, seed, ih_weight_id, hh_weight_id, call, p, kind,
                 mask_ih, mask_hh);
}

template <c10::DeviceType kDevice>
std::tuple<Tensor, Tensor, Tensor> cell_forward_autocast(const Tensor& gates, const Tensor& bias,
                                                         const Tensor& c_prev) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
  const auto dtype = at::autocast::get_lower_precision_fp_from_device_type(kDevice);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sgmcmc_fused::lstm_cell_forward", "")
                       .typed<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&)>();
  using at::autocast::cached_cast;
  return op.call(cached_cast(dtype, gates, kDevice), cached_cast(dtype, bias, kDevice),
                 cached_cast(dtype, c_prev, kDevice));
}

}  // namespace

TORCH_LIBRARY_IMPL(sgmcmc_fused, AutocastCPU, m) {
  m.impl("dropconnect_lstm_layer", &layer_autocast<c10::DeviceType::CPU>);
  m.impl("lstm_cell_forward", &cell_forward_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(sgmcmc_fused, AutocastCUDA, m) {
  m.impl("dropconnect_lstm_layer", &layer_autocast<c10::DeviceType::CUDA>);
  m.impl("lstm_cell_forward", &cell_forward_autocast<c10::DeviceType::CUDA>);
}

}  // namespace sgmcmc_fused::lstm
