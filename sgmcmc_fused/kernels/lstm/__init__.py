"""The DropConnect LSTM kernels (docs/spec.md#dropconnect-lstm): `reference` (the eager
oracle), `compiled` (autograd and fake kernels of the C++/CUDA ops), `triton`, and `autograd` (what
the two kernel backends' autograd rules share)."""
