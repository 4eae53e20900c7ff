// Python entry point of the extension (built by setup.py only; the CMake
// library for libtorch users leaves it out). The module is imported
// (`from sgmcmc_fused import _C`) just to load the shared library, which runs
// the operator registrations; it defines no Python functions of its own.
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
