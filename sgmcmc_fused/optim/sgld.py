"""SGLD: stochastic-gradient Langevin dynamics (Welling & Teh, ICML 2011)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._langevin import LangevinOptimizer


class SGLD(LangevinOptimizer):
    r"""Stochastic-gradient Langevin dynamics, one fused pass per step.

    For every parameter element, with ``g`` the gradient of the **minibatch mean**
    loss (docs/spec.md#langevin-step)::

        g' = g + weight_decay * theta
        theta <- theta - lr * g' + sqrt(2 * lr * temperature / num_data) * xi

    with ``xi ~ N(0, 1)`` from the counter-based Philox stream. With
    ``add_noise=False`` this is exactly ``torch.optim.SGD`` (no momentum).

    Args: as :class:`sgmcmc_fused.optim.PSGLD`, without alpha and eps.
    """

    PRECONDITIONED = False

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        num_data: int | None = None,
        weight_decay: float = 0.0,
        temperature: float = 1.0,
        add_noise: bool = True,
        seed: int | None = None,
        impl: str = "auto",
        nan_policy: str = "raise",
        prior_std: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, num_data=num_data, weight_decay=weight_decay, prior_std=prior_std, temperature=temperature,
            add_noise=add_noise, seed=seed, impl=impl,
        )  # fmt: skip
        super().__init__(params, defaults, nan_policy=nan_policy)
