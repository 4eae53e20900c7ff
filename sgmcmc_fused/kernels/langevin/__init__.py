"""The pSGLD / SGLD step and the noise draw (docs/spec.md#langevin-step,
docs/spec.md#noise-stream): `reference` (the eager oracle), `compiled` (the C++/CUDA
ops), `foreach` (the torch._foreach baseline) and `triton`."""
