"""The fastest plain-PyTorch pSGLD/SGLD step a user would write today:
`torch._foreach_*` over the whole list plus `torch.randn` noise.

It is the benchmark baseline. It does NOT draw the counter-based (docs/spec.md#noise-stream)
stream (its noise comes from torch's global generator), so it agrees with the
other backends in distribution, not number for number; with the noise off it
agrees with them to rounding.
"""

from __future__ import annotations

import torch

from .contract import StepHyper, StepLists, psgld_step_entry, sgld_step_entry


def _psgld_step(lists: StepLists, hyper: StepHyper) -> None:
    """pSGLD over fp32/fp64 tensor lists with foreach ops (arguments as reference.psgld_step_, checked
    the same way; stream_ids, element_offsets, steps and seed are not used)."""
    params, grads, square_avgs = lists.params, lists.grads, lists.square_avgs
    lr, alpha, eps, weight_decay = hyper.lr, hyper.alpha, hyper.eps, hyper.weight_decay
    if not params:
        return
    params = [p.detach() for p in params]
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_mul_(square_avgs, alpha)
    torch._foreach_addcmul_(square_avgs, grads, grads, value=1.0 - alpha)
    precond = torch._foreach_sqrt(square_avgs)
    torch._foreach_add_(precond, eps)
    torch._foreach_reciprocal_(precond)
    update = torch._foreach_mul(precond, grads)
    torch._foreach_mul_(update, -lr)
    nvs = hyper.noise_var_scale
    if nvs != 0:
        torch._foreach_mul_(precond, nvs)
        torch._foreach_sqrt_(precond)
        noise = [torch.randn_like(p) for p in params]
        torch._foreach_addcmul_(update, precond, noise)
    torch._foreach_add_(params, update)


def _sgld_step(lists: StepLists, hyper: StepHyper) -> None:
    """SGLD with foreach ops (arguments as reference.sgld_step_; the stream arguments are ignored)."""
    params, grads, lr, weight_decay = lists.params, lists.grads, hyper.lr, hyper.weight_decay
    if not params:
        return
    params = [p.detach() for p in params]
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_add_(params, grads, alpha=-lr)
    nvs = hyper.noise_var_scale
    if nvs != 0:
        noise = [torch.randn_like(p) for p in params]
        torch._foreach_add_(params, noise, alpha=nvs**0.5)


psgld_step_ = psgld_step_entry(_psgld_step)
sgld_step_ = sgld_step_entry(_sgld_step)
#: The same step without the package's input checks (its per-tensor checks cost about 10 ms a call for
#: 1000 tensors on one CPU core): what a user's own foreach loop costs, for the benchmarks.
psgld_step_unchecked = psgld_step_entry(_psgld_step, check=False)
