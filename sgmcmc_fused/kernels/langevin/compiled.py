"""Typed Python entry points of the compiled ops (torch.ops.sgmcmc_fused.*) and
their fake (meta) kernels, so torch.compile and opcheck can trace them.

The argument conventions are those of reference.psgld_step_ / sgld_step_ /
philox_normal; the schemas live in csrc/ops.cpp.
"""

from __future__ import annotations

import torch

from .. import _library
from .contract import StepHyper, StepLists, psgld_step_entry, sgld_step_entry


def _psgld_step(lists: StepLists, hyper: StepHyper) -> None:
    """Fused pSGLD step (C++ on CPU tensors, CUDA on CUDA tensors); see reference.psgld_step_."""
    if any(lists):  # as in the other backends, empty lists are nothing to do (the dispatcher needs a tensor)
        torch.ops.sgmcmc_fused.psgld_step_(*lists.op_args(), **hyper.op_kwargs())


def _sgld_step(lists: StepLists, hyper: StepHyper) -> None:
    """Fused SGLD step; see reference.sgld_step_."""
    if any(lists):
        torch.ops.sgmcmc_fused.sgld_step_(*lists.op_args(), **hyper.op_kwargs())


# The ops check their inputs themselves (csrc/langevin/step_inputs.cpp).
psgld_step_ = psgld_step_entry(_psgld_step, check=False)
sgld_step_ = sgld_step_entry(_sgld_step, check=False)


def philox_normal(
    numel: int, seed: int, stream_id: int, step: int, element_offset: int = 0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The normal draws (docs/spec.md#noise-stream) of elements element_offset .. +numel-1, shape [numel], fp32."""
    out = torch.empty(numel, dtype=torch.float32, device=device)
    torch.ops.sgmcmc_fused.philox_normal_(out, seed, stream_id, step, element_offset)
    return out


def _check_one_device(op: str, **lists: list[torch.Tensor]) -> None:
    """Raise if a tensor of the call is on another device than params[0]. The fake kernels check it:
    they also serve real calls whose lists mix meta tensors with others (the Meta key wins the
    dispatch), which would otherwise return having updated nothing."""
    params = lists["params"]
    if not params:
        return
    device = params[0].device
    for name, tensors in lists.items():
        for i, t in enumerate(tensors):
            if t.device != device:
                raise ValueError(f"{op}: {name}[{i}] is on {t.device} but params[0] is on {device}")


if _library.LOADED:
    # The ops only mutate their inputs, so the fake kernels have nothing to
    # compute; they exist so that tracing (torch.compile, opcheck) never runs
    # the real kernel on fake tensors.
    @torch.library.register_fake("sgmcmc_fused::psgld_step_")
    def _psgld_step_fake(params, grads, square_avgs, stream_ids, element_offsets, steps, **_scalars) -> None:
        _check_one_device("psgld_step_", params=params, grads=grads, square_avgs=square_avgs)

    @torch.library.register_fake("sgmcmc_fused::sgld_step_")
    def _sgld_step_fake(params, grads, stream_ids, element_offsets, steps, **_scalars) -> None:
        _check_one_device("sgld_step_", params=params, grads=grads)

    @torch.library.register_fake("sgmcmc_fused::philox_normal_")
    def _philox_normal_fake(out, seed, stream_id, step, element_offset) -> None:
        return None
