"""The fastest plain-PyTorch pSGLD/SGLD step a user would write today:
`torch._foreach_*` over the whole list plus `torch.randn` noise.

It is the benchmark baseline. It does NOT draw the counter-based (docs/spec.md#noise-stream)
stream (its noise comes from torch's global generator), so it agrees with the
other backends in distribution, not number for number; with the noise off it
agrees with them to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .contract import StepHyper, check_step_inputs


def psgld_step_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    square_avgs: Sequence[torch.Tensor],
    stream_ids: Sequence[int],
    element_offsets: Sequence[int],
    steps: Sequence[int],
    *,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    temperature: float,
    num_data: int,
    add_noise: bool,
    seed: int,
) -> None:
    """pSGLD over fp32/fp64 tensor lists with foreach ops (arguments as reference.psgld_step_, checked the
    same way; stream_ids, element_offsets, steps and seed are not used)."""
    hyper = StepHyper(lr, weight_decay, temperature, num_data, add_noise, seed, alpha, eps)
    params, grads, square_avgs, *_ = check_step_inputs(
        "psgld_step_", params, grads, square_avgs, stream_ids, element_offsets, steps, hyper
    )
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


def sgld_step_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    stream_ids: Sequence[int],
    element_offsets: Sequence[int],
    steps: Sequence[int],
    *,
    lr: float,
    weight_decay: float,
    temperature: float,
    num_data: int,
    add_noise: bool,
    seed: int,
) -> None:
    """SGLD with foreach ops (arguments as reference.sgld_step_; the stream arguments are ignored)."""
    hyper = StepHyper(lr, weight_decay, temperature, num_data, add_noise, seed)
    params, grads, *_ = check_step_inputs("sgld_step_", params, grads, None, stream_ids, element_offsets, steps, hyper)
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
