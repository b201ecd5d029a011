// Operator schemas (written once) and the Python module stub. Kernels are registered per
// backend in cpu/ and cuda/.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import lcblock_cuda._C` loads this shared library, which runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace lcblock {

bool cuda_compiled() {
#ifdef LCBLOCK_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace lcblock

TORCH_LIBRARY(lcblock_cuda, m) {
  m.def(
      "local_correlation_forward(Tensor pattern, Tensor content, int kernel_size, int dilation, "
      "float scale) -> (Tensor, Tensor)");
  m.def(
      "local_correlation_backward(Tensor grad_out, Tensor pattern, Tensor content, Tensor out, "
      "Tensor lse, int kernel_size, int dilation, float scale) -> (Tensor, Tensor)");
  // The per-pixel code path of the CUDA kernels (local_correlation_math.h) run on the CPU, so
  // that tests exercise it where no GPU is present. Not a public API.
  m.def(
      "_pixelwise_forward(Tensor pattern, Tensor content, int kernel_size, int dilation, "
      "float scale) -> (Tensor, Tensor)");
  m.def(
      "_pixelwise_backward(Tensor grad_out, Tensor pattern, Tensor content, Tensor out, "
      "Tensor lse, int kernel_size, int dilation, float scale) -> (Tensor, Tensor)");
  // The block code of the tiled CUDA kernels (csrc/tiled/tiled_kernels.h) run on the CPU block
  // by block, thread by thread between the barriers, with the CUDA launch configuration
  // (csrc/cpu/tiled_emulation.cpp). Same contract as the public ops. Not a public API.
  m.def(
      "_tiled_forward(Tensor pattern, Tensor content, int kernel_size, int dilation, "
      "float scale) -> (Tensor, Tensor)");
  m.def(
      "_tiled_backward(Tensor grad_out, Tensor pattern, Tensor content, Tensor out, "
      "Tensor lse, int kernel_size, int dilation, float scale) -> (Tensor, Tensor)");
  m.def("cuda_compiled() -> bool", &lcblock::cuda_compiled);
}
