"""The CUDA kernels of csrc/cuda/ run on the host under host_emulation.h, with
sanitizers, for the tests marked ``emulated`` (build.py compiles them, client.py
calls them in a sanitised worker process)."""
