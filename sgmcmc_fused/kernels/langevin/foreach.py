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

from .reference import noise_var_scale


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
    """pSGLD over fp32/fp64 tensor lists with foreach ops (arguments as reference.psgld_step_;
    stream_ids, element_offsets, steps and seed are ignored)."""
    del stream_ids, element_offsets, steps, seed
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
    nvs = noise_var_scale(lr, temperature, num_data, add_noise)
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
    del stream_ids, element_offsets, steps, seed
    if not params:
        return
    params = [p.detach() for p in params]
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_add_(params, grads, alpha=-lr)
    nvs = noise_var_scale(lr, temperature, num_data, add_noise)
    if nvs != 0:
        noise = [torch.randn_like(p) for p in params]
        torch._foreach_add_(params, noise, alpha=nvs**0.5)
