"""Command-line options and checks shared by the trainers' configurations (`lm_config`, `classify_config`)."""

from __future__ import annotations

import argparse
import contextlib
import math
import re
from collections.abc import Iterator
from typing import Any

import torch

from .methods import METHODS, parse_lrs

DEFAULT_METHODS = ("rmsprop", "psgld")


class ConfigError(ValueError):
    """A bad option or combination of options (reported as a usage error, exit status 2)."""


def need(ok: bool, msg: str) -> None:
    """Raise ConfigError(`msg`) unless `ok`."""
    if not ok:
        raise ConfigError(msg)


# ---------------------------------------------------------------------------------------------------
# options


def add_dropconnect_arguments(group: argparse._ArgumentGroup, masked_help: str) -> None:
    """--dropconnect, --mask and --masked (the DropConnect LSTM)."""
    group.add_argument(
        "--dropconnect",
        type=float,
        default=0.0,
        help="DropConnect probability (bernoulli) / noise level (gaussian) of the LSTM weights",
    )
    group.add_argument("--mask", choices=["bernoulli", "gaussian"], default="bernoulli")
    group.add_argument("--masked", choices=["hh", "ih", "both"], default="hh", help=masked_help)


def add_rms_arguments(group: argparse._ArgumentGroup) -> None:
    """--alpha and --eps of rmsprop/psgld."""
    group.add_argument("--alpha", type=float, default=0.99, help="RMS decay of rmsprop/psgld")
    group.add_argument("--eps", type=float, default=1e-5, help="rmsprop/psgld eps, outside the square root")


def add_nan_policy_argument(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--nan-policy",
        choices=["raise", "skip"],
        default="raise",
        help="a NaN/inf gradient: stop with the parameter's name, or skip the step",
    )


def add_backend_arguments(group: argparse._ArgumentGroup) -> None:
    """--device, --threads, --step-impl and --lstm-impl."""
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda if available)")
    group.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: torch's); results are bitwise reproducible for a given count",
    )
    group.add_argument(
        "--step-impl", default="auto", help="backend of the optimizer step (see sgmcmc_fused.availability())"
    )
    group.add_argument("--lstm-impl", default="auto", help="backend of the DropConnect LSTM")


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Run the body with torch's intra-op thread count set to `threads` (None: leave it), and give the
    caller's count back afterwards: a trainer called in-process must not change its caller's threads.

    Raises:
        ConfigError: `threads` < 1.
    """
    if threads is None:
        yield
        return
    need(threads >= 1, f"--threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def add_output_arguments(group: argparse._ArgumentGroup) -> None:
    """--progress / --no-progress and --quiet."""
    prog = group.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None, help="progress bars")
    prog.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bars (default: bars when stderr is a terminal)",
    )
    group.add_argument("--quiet", action="store_true", help="print the final table only")


# ---------------------------------------------------------------------------------------------------
# resolution and checks


def parse_methods(specs: list[str] | None) -> list[str]:
    methods = [m for spec in (specs or DEFAULT_METHODS) for m in spec.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"unknown method {bad[0]!r}; choose from {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"--method lists a method twice: {' '.join(methods)}")
    if not methods:
        raise ConfigError("--method: no method given")
    return methods


def preset_config(
    args: argparse.Namespace,
    data: dict[str, Any],
    presets: dict[str, dict[str, Any]],
    default_preset: dict[str, str],
    preset_fields: list[tuple[str, type, str]],
) -> tuple[dict[str, Any], dict[str, float]]:
    """The start of a new run's configuration: the preset (--preset, else the default for the data kind)
    with the preset fields given as options overriding it, and the methods.

    Returns the configuration (preset, data, the preset fields, methods) and the learning rates given
    with --lr, by method.

    Raises:
        ConfigError: a malformed --method or --lr.
    """
    preset = args.preset or default_preset[data["kind"]]
    cfg: dict[str, Any] = {"preset": preset, "data": data}
    for dest, _, _ in preset_fields:
        value = getattr(args, dest)
        cfg[dest] = presets[preset][dest] if value is None else value
    methods = parse_methods(args.methods)
    try:
        given = parse_lrs(args.lr, methods)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    cfg["methods"] = methods
    return cfg, given


def check_optimizer_config(cfg: dict[str, Any]) -> None:
    """Range checks of --weight-decay, --alpha, --eps, --burn-in and --thin."""
    need(
        math.isfinite(cfg["weight_decay"]) and cfg["weight_decay"] >= 0,
        f"--weight-decay must be >= 0, got {cfg['weight_decay']}",
    )
    need(0 <= cfg["alpha"] < 1, f"--alpha must be in [0, 1), got {cfg['alpha']}")
    need(cfg["eps"] > 0, f"--eps must be > 0, got {cfg['eps']}")
    # The step specs are checked against an epoch length here; the real one is known once data is loaded.
    parse_steps(cfg["burn_in"], 1, "--burn-in", minimum=0)
    parse_steps(cfg["thin"], 1, "--thin", minimum=1)


def parse_steps(spec: str | int, steps_per_epoch: int, option: str, minimum: int = 0) -> int:
    """A step count: ``"500"`` (steps) or ``"2ep"`` / ``"0.25ep"`` (epochs, rounded to whole steps).

    Raises:
        ConfigError: malformed, or below `minimum` after rounding (fractions of an epoch round up to 1
            step when minimum is 1).
    """
    text = str(spec).strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(ep|epochs?)", text)
    if match:
        value = float(match.group(1))
        steps = round(value * steps_per_epoch)
        if value > 0:
            steps = max(steps, 1)
    elif text.isdigit():
        steps = int(text)
    else:
        raise ConfigError(f"{option} {spec!r}: expected a number of steps (500) or of epochs (2ep, 0.25ep)")
    if steps < minimum:
        raise ConfigError(f"{option} {spec!r}: must be at least {minimum} step{'s' if minimum != 1 else ''}")
    return steps


def temperature(spec: str | float, num_data: int) -> float:
    """The temperature of a --temperature spec: a number, or "K/N" = K / num_data.

    Raises:
        ConfigError: malformed, negative or not finite.
    """
    text = str(spec).strip()
    try:
        if text.upper().endswith("/N"):
            value = float(text[:-2]) / num_data
        else:
            value = float(text)
    except ValueError:
        raise ConfigError(f"--temperature {spec!r}: expected a number (1, 0.01) or K/N (1/N, 10/N)") from None
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"--temperature {spec!r}: must be a finite number >= 0")
    return value
