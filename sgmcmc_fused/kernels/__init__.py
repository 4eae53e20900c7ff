"""Everything below the user-facing API: the step and DropConnect LSTM kernels, one
folder per op family, each with its eager reference (the oracle), its compiled-op
wrappers and its Triton kernels; the noise-stream helpers they share; the loader of
the compiled extension; and the step-backend registry.

    langevin/   the pSGLD / SGLD step and the noise draw: reference, compiled, foreach, triton
    lstm/       DropConnect masks, the fused cell and the layer: reference, compiled, triton
    registry    the step backends and `availability()`
    stream      seeds and stream words of the noise stream
"""

from .registry import availability

__all__ = ["availability"]
