"""Gaussian priors on the weights (``--prior-std``): one standard deviation for every weight, or one
per part of the model, turned into the optimizer's per-group prior (`sgmcmc_fused.optim.PSGLD`'s
``prior_std``: weight decay 1/(N σ²) in mean-loss units, docs/spec.md#langevin-step).

The parts are the same in every task: ``embedding`` (the input side: word embeddings, and the image
projection of the caption model), ``lstm`` (every LSTM weight and bias) and ``output`` (the softmax
layer). A model names its modules of each part in ``PRIOR_GROUPS``. The optimisers (sgd, rmsprop) get
the same prior as MAP weight decay, so a comparison with the samplers stays matched.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from .options import ConfigError

#: The parts of a model that --prior-std names, in the order of their parameters in every model.
PRIOR_GROUPS = ("embedding", "lstm", "output")


def parse_prior_std(spec: str | None) -> dict[str, float] | None:
    """``--prior-std`` as {part: σ}: ``0.1`` (every part) or ``embedding=0.1,lstm=0.05,output=0.1``
    (a part left out has no prior). None stays None (no prior).

    Raises:
        ConfigError: a malformed entry, an unknown part, a part given twice, or σ not a finite number > 0.
    """
    if spec is None:
        return None
    entries = [e.strip() for e in spec.split(",")]
    if len(entries) == 1 and "=" not in entries[0]:
        try:
            float(entries[0])
        except ValueError:
            raise ConfigError(
                f"--prior-std {spec!r}: expected one STD for every part, or PART=STD,... with parts "
                f"{', '.join(PRIOR_GROUPS)}"
            ) from None
        return dict.fromkeys(PRIOR_GROUPS, _std(entries[0], spec))
    out: dict[str, float] = {}
    for entry in entries:
        part, sep, value = entry.partition("=")
        part = part.strip()
        if not sep:
            raise ConfigError(f"--prior-std {spec!r}: {entry!r} is not PART=STD (or give one STD for every part)")
        if part not in PRIOR_GROUPS:
            raise ConfigError(f"--prior-std {spec!r}: unknown part {part!r}; the parts are {', '.join(PRIOR_GROUPS)}")
        if part in out:
            raise ConfigError(f"--prior-std {spec!r}: {part} is given twice")
        out[part] = _std(value, spec)
    return out


def _std(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--prior-std {spec!r}: {text.strip()!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"--prior-std {spec!r}: a standard deviation must be a finite number > 0, got {text.strip()}")
    return value


def check_prior_std(prior_std: Any) -> None:
    """A saved or built `prior_std` is None or {part: finite σ > 0} over known parts.

    Raises:
        ConfigError: naming the problem.
    """
    if prior_std is None:
        return
    unknown = sorted(set(prior_std) - set(PRIOR_GROUPS))
    if unknown:
        raise ConfigError(f"prior_std has unknown parts {unknown}; the parts are {', '.join(PRIOR_GROUPS)}")
    for part, std in prior_std.items():
        if not (math.isfinite(std) and std > 0):
            raise ConfigError(f"--prior-std {part}={std}: a standard deviation must be a finite number > 0")


def prior_param_groups(model: nn.Module, prior_std: dict[str, float]) -> list[dict[str, Any]]:
    """The trainable named parameters of `model` as optimizer parameter groups, one per part of
    ``model.PRIOR_GROUPS`` ({part: module names}), each with its ``prior_std`` if `prior_std` has one.

    The groups list the parameters in the model's own order, so each keeps the noise stream it has
    without groups (the stream id is a parameter's position in the optimizer).

    Raises:
        ValueError: a parameter in no part, or parts that are not contiguous in the model's order.
    """
    modules: dict[str, tuple[str, ...]] = model.PRIOR_GROUPS
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = []
    for part in PRIOR_GROUPS:
        params = [(n, p) for n, p in named if n.split(".")[0] in modules.get(part, ())]
        if not params:
            continue
        group: dict[str, Any] = {"params": params}
        if part in prior_std:
            group["prior_std"] = prior_std[part]
        groups.append(group)
    ordered = [n for g in groups for n, _ in g["params"]]
    if ordered != [n for n, _ in named]:
        missing = sorted({n for n, _ in named} - set(ordered))
        raise ValueError(
            f"{type(model).__name__}.PRIOR_GROUPS: " + (f"no part holds {missing}" if missing else
                                                        "its parts are not contiguous in the model's parameter order")
        )  # fmt: skip
    return groups
