"""Compiles the CUDA and Triton kernels for real GPU targets without a GPU and reads
their resources from the binaries; used by bench/device_code_report.py."""
