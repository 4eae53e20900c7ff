"""pSGLD: Langevin dynamics preconditioned by RMSprop (Li et al., AAAI 2016)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._langevin import LangevinOptimizer


class PSGLD(LangevinOptimizer):
    r"""Preconditioned stochastic-gradient Langevin dynamics, one fused pass per step.

    For every parameter element, with ``g`` the gradient of the **minibatch mean**
    loss (docs/spec.md#langevin-step)::

        g' = g + weight_decay * theta
        V  = alpha * V + (1 - alpha) * g'^2
        G  = 1 / (eps + sqrt(V))
        theta <- theta - lr * G * g' + sqrt(2 * lr * G * temperature / num_data) * xi

    with ``xi ~ N(0, 1)`` from the counter-based Philox stream (seed, parameter
    index, step), identical on every backend. With ``add_noise=False`` this is
    exactly ``torch.optim.RMSprop`` (eps outside the root, non-centred), the
    usual burn-in.

    Args:
        params: parameters or parameter groups, as for any torch optimizer.
        lr: step size (the mean-loss learning rate, as for RMSprop).
        num_data: N, the number of training data (tokens for a language model,
            sentences for a classifier); the noise variance scales as 1/N.
        alpha: RMS decay (default 0.99).
        eps: added **outside** the square root (the pSGLD paper's lambda; default 1e-5).
        weight_decay: Gaussian prior precision divided by N (mean-loss units).
        prior_std: or the prior as a standard deviation σ (N(0, σ²) on each element):
            weight_decay = 1 / (num_data · σ²) (`prior_weight_decay`). Usually given per
            parameter group, e.g. ``[{"params": emb, "prior_std": 0.1}, {"params": rest,
            "prior_std": 0.05}]``; a group with both prior_std and weight_decay is an error. A
            group's weight_decay follows its prior_std and num_data: a change of either takes
            effect at the next step.
        temperature: 1 samples the posterior; < 1 a cold posterior; 0 no noise.
        add_noise: False turns the step into RMSprop (burn-in / optimisation).
        seed: 63-bit seed of the noise; default a draw from torch's default
            generator (so torch.manual_seed makes runs reproducible).
        impl: "auto" (CUDA kernel for CUDA tensors, C++ kernel for CPU tensors),
            or "cuda", "cpu", "triton", "eager", "foreach"; see sgmcmc_fused.kernels.registry.
        nan_policy: what a NaN or inf gradient does: "raise" (default; names the
            parameter, updates nothing), "skip" (the whole step is skipped and
            counted in ``skipped_steps``), or "propagate" (no check, one pass less).

    Other conventions map onto these arguments (see README, "Noise conventions"):
    the pSGLD reference code's noise is ``temperature = 1 / num_data``;
    TensorFlow Probability puts eps inside the root and starts V at 1.
    """

    PRECONDITIONED = True
    TORCH_COUNTERPART = ("RMSprop", frozenset({"alpha", "eps", "centered", "momentum"}))

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        num_data: int | None = None,
        alpha: float = 0.99,
        eps: float = 1e-5,
        weight_decay: float = 0.0,
        temperature: float = 1.0,
        add_noise: bool = True,
        seed: int | None = None,
        impl: str = "auto",
        nan_policy: str = "raise",
        prior_std: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, num_data=num_data, alpha=alpha, eps=eps, weight_decay=weight_decay, prior_std=prior_std,
            temperature=temperature, add_noise=add_noise, seed=seed, impl=impl,
        )  # fmt: skip
        super().__init__(params, defaults, nan_policy=nan_policy)
