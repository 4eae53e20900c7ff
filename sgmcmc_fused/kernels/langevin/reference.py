"""Eager PyTorch reference of every kernel: the oracle the fused backends are
tested against (docs/spec.md#langevin-step, docs/spec.md#noise-stream).

Plain tensor code, one parameter at a time. The Philox4x32-10 stream is drawn
with int64 tensor ops (32x32-bit products split into 16-bit halves so nothing
overflows), so it runs on any device torch supports and gives the same uint32
words as the fused kernels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .contract import StepHyper, StepLists, psgld_step_entry, sgld_step_entry

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
MASK32 = 0xFFFFFFFF
#: 2*pi rounded to fp32: the constant every backend multiplies by.
TWO_PI_F32 = float(torch.tensor(2.0 * math.pi, dtype=torch.float32))


def _mulhilo32(multiplier: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of multiplier * x, x an int64 tensor of uint32 values."""
    x_lo = x & 0xFFFF
    x_hi = x >> 16
    p_lo = x_lo * multiplier  # < 2^48
    p_hi = x_hi * multiplier  # < 2^48
    t = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2^49
    return (p_hi >> 16) + (t >> 32), t & MASK32


def philox4x32_10(
    counter: Sequence[torch.Tensor], seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 on int64 tensors holding uint32 values.

    Args:
        counter: four broadcastable int64 tensors (c0, c1, c2, c3), each in [0, 2^32).
        seed: 64-bit key, split as (seed & 0xFFFFFFFF, seed >> 32).
    Returns:
        the four output words as int64 tensors in [0, 2^32).
    """
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) for c in counter)
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    for round_ in range(PHILOX_ROUNDS):
        if round_ > 0:
            k0 = (k0 + PHILOX_W0) & MASK32
            k1 = (k1 + PHILOX_W1) & MASK32
        hi0, lo0 = _mulhilo32(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def uint32_to_open_uniform(x: torch.Tensor) -> torch.Tensor:
    """uint32 words (int64 tensor) -> fp32 uniforms in (0, 1): ((x >> 9) + 0.5) * 2^-23."""
    return ((x >> 9).to(torch.float32) + 0.5) * 2.0**-23


def philox_normal(
    numel: int,
    seed: int,
    stream_id: int,
    step: int,
    element_offset: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """N(0, 1) draws (fp32, shape [numel]) of elements element_offset .. +numel-1 of
    the stream (seed, stream_id, step), docs/spec.md#noise-stream."""
    if numel == 0:
        return torch.empty(0, dtype=torch.float32, device=device)
    first_quad = element_offset // 4
    last_quad = (element_offset + numel - 1) // 4
    q = torch.arange(first_quad, last_quad + 1, dtype=torch.int64, device=device)
    x0, x1, x2, x3 = philox4x32_10((q & MASK32, q >> 32, stream_id, step), seed)
    u0, u1, u2, u3 = (uint32_to_open_uniform(x) for x in (x0, x1, x2, x3))
    r01 = torch.sqrt(-2.0 * torch.log(u0))
    r23 = torch.sqrt(-2.0 * torch.log(u2))
    theta1 = u1 * TWO_PI_F32
    theta3 = u3 * TWO_PI_F32
    quads = torch.stack(
        (r01 * torch.cos(theta1), r01 * torch.sin(theta1), r23 * torch.cos(theta3), r23 * torch.sin(theta3)),
        dim=1,
    ).reshape(-1)
    start = element_offset - 4 * first_quad
    return quads[start : start + numel]


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The math (and state) dtype of a parameter dtype: fp64 for fp64, fp32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _math_inputs(
    p: torch.Tensor, g: torch.Tensor, weight_decay: float
) -> tuple[torch.dtype, torch.Tensor, torch.Tensor]:
    """The math dtype, theta and the gradient with the prior's term, as the kernels load them."""
    opmath = opmath_dtype(p.dtype)
    theta = p.detach().to(opmath)
    grad = g.to(opmath)
    if weight_decay != 0:
        grad = grad + weight_decay * theta
    return opmath, theta, grad


def _psgld_step(lists: StepLists, hyper: StepHyper) -> None:
    """Eager pSGLD step, in place on params and square_avgs (arguments as
    torch.ops.sgmcmc_fused.psgld_step_; see contract.psgld_step_entry). Mirrors
    csrc/include/sgmcmc_fused/langevin_math.h."""
    lr, alpha, eps, weight_decay, seed = hyper.lr, hyper.alpha, hyper.eps, hyper.weight_decay, hyper.seed
    nvs = hyper.noise_var_scale
    for p, g, v, sid, off, t in zip(*lists, strict=True):
        if p.numel() == 0:
            continue
        opmath, theta, grad = _math_inputs(p, g, weight_decay)
        v.mul_(alpha).add_((1.0 - alpha) * (grad * grad))
        precond = 1.0 / (eps + torch.sqrt(v))
        theta = theta - (lr * precond) * grad
        if nvs != 0:
            xi = philox_normal(p.numel(), seed, sid, t, off, p.device).view(p.shape).to(opmath)
            theta = theta + torch.sqrt(nvs * precond) * xi
        p.detach().copy_(theta)


def _sgld_step(lists: StepLists, hyper: StepHyper) -> None:
    """Eager SGLD step, in place on params (arguments as torch.ops.sgmcmc_fused.sgld_step_)."""
    lr, weight_decay, seed = hyper.lr, hyper.weight_decay, hyper.seed
    params, grads, _, stream_ids, element_offsets, steps = lists
    nvs = hyper.noise_var_scale
    noise_std = math.sqrt(nvs)
    for p, g, sid, off, t in zip(params, grads, stream_ids, element_offsets, steps, strict=True):
        if p.numel() == 0:
            continue
        opmath, theta, grad = _math_inputs(p, g, weight_decay)
        theta = theta - lr * grad
        if nvs != 0:
            xi = philox_normal(p.numel(), seed, sid, t, off, p.device).view(p.shape).to(opmath)
            theta = theta + noise_std * xi
        p.detach().copy_(theta)


psgld_step_ = psgld_step_entry(_psgld_step)
sgld_step_ = sgld_step_entry(_sgld_step)
