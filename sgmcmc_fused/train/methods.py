"""Training methods of the trainers: sgd, rmsprop, sgld, psgld, all run by the fused Langevin kernels.

| method    | optimizer                      | noise                    | default lr                         |
|-----------|--------------------------------|--------------------------|------------------------------------|
| `sgd`     | `SGLD(add_noise=False)`        | never                    | `sgd_lr` of the preset (LM: bptt)  |
| `rmsprop` | `PSGLD(add_noise=False)`       | never                    | 1e-3                               |
| `sgld`    | `SGLD`                         | on after burn-in         | as sgd                             |
| `psgld`   | `PSGLD`                        | on after burn-in         | 1e-3                               |

All four use the same kernels, so sgd/rmsprop are exactly `torch.optim.SGD` / `torch.optim.RMSprop` (eps
outside the root) and the samplers differ from them only by the Langevin noise: a comparison between
them measures the noise, not an implementation difference. Before burn-in the samplers are the
optimisers (the usual SG-MCMC burn-in).

Why the SGD learning rate is large: docs/spec.md#langevin-step takes `g` as the gradient of the **mean** loss per token.
Zaremba et al. (and Gan et al.'s SGLD code built on it) step with lr 1 on the loss **summed over the
bptt time steps** and averaged over the batch, i.e. on bptt × our gradient; lr 1 there is lr = bptt here
(20 for `small`, 35 for `medium`/`large`), and their gradient-norm clip c is c / bptt here. RMSprop and
pSGLD are invariant to that scale (up to eps), so their learning rate is the usual 1e-3.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ..optim import PSGLD, SGLD

METHODS = ("sgd", "rmsprop", "sgld", "psgld")
#: Methods that switch the Langevin noise on after burn-in.
SAMPLERS = frozenset({"sgld", "psgld"})
#: Methods preconditioned by the RMS of the gradients (PSGLD kernel); the others use the SGLD kernel.
PRECONDITIONED = frozenset({"rmsprop", "psgld"})
#: Default learning rate of the preconditioned methods (scale-free: the step is lr / RMS-normalised).
RMS_DEFAULT_LR = 1e-3


def default_lr(method: str, sgd_lr: float, rms_lr: float = RMS_DEFAULT_LR) -> float:
    """The default learning rate of `method`: `rms_lr` for rmsprop/psgld, `sgd_lr` (LM: bptt) for sgd/sgld."""
    check_method(method)
    return float(rms_lr) if method in PRECONDITIONED else float(sgd_lr)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def parse_lrs(specs: Iterable[str] | None, methods: Iterable[str]) -> dict[str, float]:
    """Learning rates given on the command line: ``VALUE`` (every method) or ``METHOD=VALUE``.

    Returns {method: lr} for the methods given (later entries win); raises ValueError on a bad entry
    or on one for a method that is not run.
    """
    methods = list(methods)
    out: dict[str, float] = {}
    for spec in specs or ():
        name, sep, value = spec.rpartition("=")
        targets = methods if not sep else [name]
        for m in targets:
            check_method(m)
        if sep and name not in methods:
            raise ValueError(f"--lr {spec}: {name} is not run (--method {' '.join(methods)})")
        try:
            lr = float(value)
        except ValueError:
            raise ValueError(f"--lr {spec!r}: expected VALUE or METHOD=VALUE with a number") from None
        if not lr > 0 or lr == float("inf"):
            raise ValueError(f"--lr {spec!r}: the learning rate must be a finite number > 0")
        for m in targets:
            out[m] = lr
    return out


def make_optimizer(
    method: str,
    params: Iterable[Any],
    *,
    lr: float,
    num_data: int,
    seed: int,
    temperature: float = 1.0,
    weight_decay: float = 0.0,
    alpha: float = 0.99,
    eps: float = 1e-5,
    impl: str = "auto",
) -> torch.optim.Optimizer:
    """The fused optimizer of `method`, with the noise off (samplers switch it on with `set_noise`).

    Args:
        params: parameters (or named parameters, so NaN errors name them).
        lr: learning rate of the mean loss per datum (docs/spec.md#langevin-step).
        num_data: N, the number of training data (tokens for a language model).
        seed: 63-bit seed of the noise stream (unused by sgd/rmsprop, kept for uniformity).
        temperature, weight_decay, alpha, eps, impl: as `sgmcmc_fused.optim.PSGLD`.
    """
    check_method(method)
    common = dict(
        lr=lr, num_data=num_data, weight_decay=weight_decay, temperature=temperature,
        add_noise=False, seed=seed, impl=impl,
    )  # fmt: skip
    if method in PRECONDITIONED:
        return PSGLD(params, alpha=alpha, eps=eps, **common)
    return SGLD(params, **common)


def set_noise(optimizer: torch.optim.Optimizer, on: bool) -> None:
    """Switch the Langevin noise of every parameter group on or off (burn-in ends)."""
    for group in optimizer.param_groups:
        group["add_noise"] = bool(on)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = float(lr)


def shared_lr(lrs: list[float]) -> float | None:
    """The lr a method's runs (its chains, or folds) all trained with; None when they differ, as when
    ``--resume --lr`` came after some had finished (a finished run keeps its own lr)."""
    return lrs[0] if lrs and len(set(lrs)) == 1 else None


def format_lr(lr: float | None) -> str:
    """A result row's lr; "mixed" where its chains or folds trained with different ones."""
    return "mixed" if lr is None else f"{lr:.3g}"
