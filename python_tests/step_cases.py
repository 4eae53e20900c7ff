"""Deterministic inputs for step tests: parameters and a gradient sequence."""

from __future__ import annotations

import torch

SIZES = (1, 3, 4, 5, 1023, 278011, 0)
#: Same shapes, capped for the Triton interpreter (~64K elements in all).
SMALL_SIZES = (1, 3, 4, 5, 1023, 60013, 0)
STEPS = 7


def make_params(sizes, dtype: torch.dtype, device: str, seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=g).to(dtype=dtype, device=device)) for n in sizes]


def grad_sequence(sizes, dtype: torch.dtype, device: str, steps: int = STEPS, seed: int = 1):
    """steps lists of gradients, one tensor per size; scaled over several decades so
    the preconditioner sees small and large entries."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        grads = []
        for n in sizes:
            scale = torch.exp(torch.empty(n).uniform_(-4, 1, generator=g))
            grads.append((torch.randn(n, generator=g) * scale).to(dtype=dtype, device=device))
        out.append(grads)
    return out


def run_optimizer(opt_cls, params, grads_per_step, **kwargs):
    opt = opt_cls(params, **kwargs)
    for grads in grads_per_step:
        for p, g in zip(params, grads, strict=False):
            p.grad = g.clone()
        opt.step()
    return opt
