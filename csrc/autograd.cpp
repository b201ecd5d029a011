// Autograd of the two public ops, in C++ (docs/DESIGN.md, "Autograd in C++").
//
// The formula is the one the Python registration had: the forward saves pattern, content, its
// output and the log-sum-exp (no k²-sized buffer), and the backward op computes both gradients.
// In C++ a call pays no Python frames: with torch.library.register_autograd a forward + backward
// on a 1×1 map took 112 µs instead of 86, and a forward without gradients 10 µs instead of 6
// (docs/DESIGN.md).
//
// The backward op gets a node of its own whose backward raises: double backward is not
// implemented, and saying so beats returning zeros. Such a node exists only under
// create_graph=True, so first-order gradients with create_graph=True (a gradient penalty on
// other parameters) still work.
//
// Both functions call the ops below the autograd keys, so the backend kernels (or, under
// torch.compile and opcheck, the fake kernels of lcblock_cuda/ops.py) run next.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

namespace lcblock {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Pair = std::tuple<at::Tensor, at::Tensor>;

Pair call_forward(const at::Tensor& pattern, const at::Tensor& content, int64_t kernel_size,
                  int64_t dilation, double scale) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lcblock_cuda::local_correlation_forward", "")
                             .typed<Pair(const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                                         double)>();
  return op.call(pattern, content, kernel_size, dilation, scale);
}

Pair call_backward(const at::Tensor& grad_out, const at::Tensor& pattern,
                   const at::Tensor& content, const at::Tensor& out, const at::Tensor& lse,
                   int64_t kernel_size, int64_t dilation, double scale) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("lcblock_cuda::local_correlation_backward", "")
          .typed<Pair(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                      const at::Tensor&, int64_t, int64_t, double)>();
  return op.call(grad_out, pattern, content, out, lse, kernel_size, dilation, scale);
}

// The backward op as a differentiable function whose own backward raises.
class BackwardFunction : public torch::autograd::Function<BackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_out,
                               const at::Tensor& pattern, const at::Tensor& content,
                               const at::Tensor& out, const at::Tensor& lse, int64_t kernel_size,
                               int64_t dilation, double scale) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [grad_pattern, grad_content] =
        call_backward(grad_out, pattern, content, out, lse, kernel_size, dilation, scale);
    return {grad_pattern, grad_content};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(false,
                "local_correlation: double backward (the gradient of a gradient, e.g. after "
                "torch.autograd.grad(..., create_graph=True)) is not implemented by the fused "
                "op. Use lcblock_cuda.reference.local_correlation where second derivatives are "
                "needed.");
    return {};
  }
};

class ForwardFunction : public torch::autograd::Function<ForwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& pattern,
                               const at::Tensor& content, int64_t kernel_size, int64_t dilation,
                               double scale) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, lse] = call_forward(pattern, content, kernel_size, dilation, scale);
    ctx->save_for_backward({pattern, content, out, lse});
    ctx->mark_non_differentiable({lse});
    ctx->saved_data["kernel_size"] = kernel_size;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["scale"] = scale;
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const int64_t kernel_size = ctx->saved_data["kernel_size"].toInt();
    const int64_t dilation = ctx->saved_data["dilation"].toInt();
    const double scale = ctx->saved_data["scale"].toDouble();
    // grads[1] (of the non-differentiable lse) is undefined. An undefined grads[0] cannot reach
    // here: autograd skips a node none of whose differentiable outputs has a gradient.
    if (!at::GradMode::is_enabled()) {
      // No graph of the backward is recorded (create_graph=False, the usual case): the backward
      // op itself, without BackwardFunction's node bookkeeping.
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      auto [gp, gc] = call_backward(grads[0], saved[0], saved[1], saved[2], saved[3],
                                    kernel_size, dilation, scale);
      return {gp, gc, at::Tensor(), at::Tensor(), at::Tensor()};
    }
    const variable_list grad = BackwardFunction::apply(grads[0], saved[0], saved[1], saved[2],
                                                       saved[3], kernel_size, dilation, scale);
    return {grad[0], grad[1], at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

Pair forward_autograd(const at::Tensor& pattern, const at::Tensor& content, int64_t kernel_size,
                      int64_t dilation, double scale) {
  const variable_list result =
      ForwardFunction::apply(pattern, content, kernel_size, dilation, scale);
  return {result[0], result[1]};
}

Pair backward_autograd(const at::Tensor& grad_out, const at::Tensor& pattern,
                       const at::Tensor& content, const at::Tensor& out, const at::Tensor& lse,
                       int64_t kernel_size, int64_t dilation, double scale) {
  const variable_list result = BackwardFunction::apply(grad_out, pattern, content, out, lse,
                                                       kernel_size, dilation, scale);
  return {result[0], result[1]};
}

}  // namespace
}  // namespace lcblock

TORCH_LIBRARY_IMPL(lcblock_cuda, Autograd, m) {
  m.impl("local_correlation_forward", &lcblock::forward_autograd);
  m.impl("local_correlation_backward", &lcblock::backward_autograd);
}
