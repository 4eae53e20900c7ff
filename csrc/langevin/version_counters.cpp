// Autograd-level kernels of the mutating ops (psgld_step_, sgld_step_,
// philox_normal_), which have no derivative:
//
//   Autograd:        refuses a call that writes a tensor requiring grad while
//                    grad mode is on (the optimizers call the ops under
//                    no_grad), then dispatches below autograd.
//   ADInplaceOrView: after the backend kernel, bumps the version counter of
//                    every tensor the schema marks as written (Tensor(a!) and
//                    Tensor(a!)[] arguments), as aten's in-place ops do, so that
//                    autograd refuses a backward through a value the op has
//                    since changed.
//
// torch's boxed fallbacks for custom ops do not do the second for written
// arguments that are not returned (these ops return nothing).
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <string>
#include <vector>

namespace sgmcmc_fused {

namespace {

// A tensor the op writes: argument `argument` of the schema, element `element` of it when it is a
// list (-1 for a single tensor). Its name is formatted only for an error: these kernels run at every
// step, on every tensor of a model.
struct Written {
  at::Tensor tensor;
  size_t argument;
  int64_t element;
};

std::vector<Written> written_arguments(const c10::FunctionSchema& schema, const torch::jit::Stack& stack) {
  const size_t num_arguments = schema.arguments().size();
  const auto arguments = torch::jit::last(stack, num_arguments);
  std::vector<Written> written;
  for (size_t i = 0; i < num_arguments; ++i) {
    if (!schema.is_mutable({c10::SchemaArgType::input, i})) continue;
    const c10::IValue& value = arguments[i];
    if (value.isTensor()) {
      written.push_back({value.toTensor(), i, -1});
    } else if (value.isTensorList()) {
      const auto list = value.toTensorList();
      for (size_t k = 0; k < list.size(); ++k) written.push_back({list[k], i, static_cast<int64_t>(k)});
    }
  }
  return written;
}

void refuse_tensors_that_require_grad(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                                      torch::jit::Stack* stack) {
  if (c10::GradMode::is_enabled()) {
    const c10::FunctionSchema& schema = op.schema();
    for (const Written& w : written_arguments(schema, *stack)) {
      if (!w.tensor.requires_grad()) continue;
      const std::string name = schema.arguments()[w.argument].name() +
                               (w.element < 0 ? std::string() : "[" + std::to_string(w.element) + "]");
      TORCH_CHECK(false, schema.name(), ": ", name,
                  " requires grad; the op writes it in place and has no derivative, so call it under "
                  "torch.no_grad() (as the optimizers do)");
    }
  }
  at::AutoDispatchBelowAutograd guard;
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
}

void bump_versions_of_written_arguments(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                                        torch::jit::Stack* stack) {
  // Held here: the redispatch pops the arguments off the stack.
  const std::vector<Written> written = written_arguments(op.schema(), *stack);
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  for (const Written& w : written) torch::autograd::impl::bump_version(w.tensor);
}

constexpr const char* kMutatingOps[] = {"psgld_step_", "sgld_step_", "philox_normal_"};

}  // namespace

TORCH_LIBRARY_IMPL(sgmcmc_fused, Autograd, m) {
  for (const char* op : kMutatingOps) {
    m.impl(op, torch::CppFunction::makeFromBoxedFunction<&refuse_tensors_that_require_grad>());
  }
}

TORCH_LIBRARY_IMPL(sgmcmc_fused, ADInplaceOrView, m) {
  for (const char* op : kMutatingOps) {
    m.impl(op, torch::CppFunction::makeFromBoxedFunction<&bump_versions_of_written_arguments>());
  }
}

}  // namespace sgmcmc_fused
