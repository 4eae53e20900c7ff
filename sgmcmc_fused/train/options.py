"""Command-line options every training task shares, one function per option group, and the pieces that
turn them into a configuration (`sgmcmc_fused.train.config.RunConfig`)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..kernels.lstm.reference import MASK_KINDS
from ..nn.dropconnect_lstm import MASKED_MATRICES
from .methods import METHODS, default_lr, parse_lrs
from .schedule import SCHEDULES

DEFAULT_METHODS = ("rmsprop", "psgld")
#: --precision: the dtype of the forward passes (autocast), by name.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: --nan-policy: what a NaN or inf loss or gradient does to the run.
NAN_POLICIES = ("raise", "skip")
#: DropConnect mask kinds and the matrices masked (`sgmcmc_fused.nn.DropConnectLSTM`'s mask, masked).
MASK_CHOICES = tuple(MASK_KINDS)
MASKED_CHOICES = tuple(MASKED_MATRICES)

#: Options that only steer how a run executes, not what it computes: --resume accepts them.
RUN_CONTROL = frozenset({
    "out", "resume", "device", "threads", "checkpoint_every", "stop_after_steps", "progress", "quiet",
    "func", "parser", "command", "given",
})  # fmt: skip


class ConfigError(ValueError):
    """A bad option or combination of options (reported as a usage error, exit status 2)."""


def need(ok: bool, msg: str) -> None:
    """Raise ConfigError(`msg`) unless `ok`."""
    if not ok:
        raise ConfigError(msg)


# ---------------------------------------------------------------------------------------------------
# presets


@dataclass(frozen=True)
class PresetField:
    """A configuration field whose default comes from the preset, with its option ``--dest-name``."""

    dest: str
    type: type
    help: str


#: The preset fields of the sampling schedule, the same in every task.
#: The defaults of the cyclical schedule's options (Zhang et al. 2020 used 4 cycles; β = 0.8 their
#: CIFAR setting).
CYCLICAL_DEFAULTS = {"cycles": 4, "explore_fraction": 0.8}

SCHEDULE_FIELDS = (
    PresetField("burn_in", str, "steps (N) or epochs (Nep) before the samplers' noise and the sample collection start"),
    PresetField("thin", str, "steps (N) or epochs (Nep, may be fractional) between collected samples"),
)


def add_preset_arguments(
    group: argparse._ArgumentGroup, fields: Sequence[PresetField], presets: Mapping[str, Mapping[str, Any]]
) -> None:
    """One option per preset field (default None: the preset's value), the presets' values in its help."""
    for f in fields:
        values = ", ".join(
            f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"
            for name, preset in presets.items()
            if (value := preset.get(f.dest)) is not None
        )
        group.add_argument(
            "--" + f.dest.replace("_", "-"), dest=f.dest, type=f.type, default=None,
            help=f"{f.help}. Presets: {values}",
        )  # fmt: skip


def preset_values(args: argparse.Namespace, preset: Mapping[str, Any], fields: Sequence[PresetField]) -> dict[str, Any]:
    """The preset fields: each option given, else the preset's value."""
    return {f.dest: preset[f.dest] if getattr(args, f.dest) is None else getattr(args, f.dest) for f in fields}


# ---------------------------------------------------------------------------------------------------
# option groups


def add_dropconnect_arguments(group: argparse._ArgumentGroup, masked_help: str) -> None:
    """--dropconnect, --mask and --masked (the DropConnect LSTM)."""
    group.add_argument(
        "--dropconnect",
        type=float,
        default=0.0,
        help="DropConnect probability (bernoulli) / noise level (gaussian) of the LSTM weights",
    )
    group.add_argument("--mask", choices=MASK_CHOICES, default="bernoulli")
    group.add_argument("--masked", choices=MASKED_CHOICES, default="hh", help=masked_help)


def add_method_arguments(group: argparse._ArgumentGroup, *, datum: str, lr_defaults: str, temperature: str) -> None:
    """The methods and their optimizer and sampler options.

    Args:
        datum: what one training datum is ("token", "sentence"): the unit of N.
        lr_defaults: the default learning rates, for the help text.
        temperature: the default --temperature.
    """
    group.add_argument(
        "--method",
        dest="methods",
        nargs="+",
        action="extend",
        metavar="METHOD",
        help=f"one or more of {', '.join(METHODS)} (also comma-separated), run one after another "
        f"from the same initialisation and data order (default: {' '.join(DEFAULT_METHODS)})",
    )
    group.add_argument(
        "--lr",
        action="append",
        metavar="[METHOD=]LR",
        help=f"learning rate, for every method or for one (repeatable). Defaults: {lr_defaults}",
    )
    group.add_argument(
        "--temperature",
        default=temperature,
        metavar="T",
        help=f"posterior temperature of the samplers: a number (1 = the Bayes posterior) or K/N, K over the "
        f"number of training {datum}s (default %(default)s, the noise scale of Gan et al.'s reference code; "
        "docs/results.md says why not 1)",
    )
    group.add_argument(
        "--weight-decay",
        type=float,
        default=0.0,
        help="Gaussian prior precision / num_data (mean-loss units), all methods",
    )
    group.add_argument(
        "--prior-std",
        metavar="STD|PART=STD,...",
        help="Gaussian prior N(0, STD^2) on the weights, for every part or per part (embedding, lstm, output; "
        "e.g. embedding=0.1,lstm=0.05,output=0.1; a part left out has none): weight decay 1/(N STD^2) for every "
        "method, so the optimisers find the MAP of the same posterior (instead of --weight-decay)",
    )
    group.add_argument(
        "--schedule",
        choices=list(SCHEDULES),
        default="decay",
        help="decay: the preset's learning rate by epoch, the noise after --burn-in (default); cyclical: "
        "--cycles cosine cycles from the lr towards 0 (Zhang et al. 2020), the first --explore-fraction of each "
        "without noise and the rest sampling, a sample every --thin steps back from each cycle's end",
    )
    group.add_argument(
        "--cycles", type=int, metavar="M", help=f"cycles of --schedule cyclical (default {CYCLICAL_DEFAULTS['cycles']})"
    )
    group.add_argument(
        "--explore-fraction",
        type=float,
        metavar="BETA",
        help=f"noise-free share of each cycle of --schedule cyclical (default {CYCLICAL_DEFAULTS['explore_fraction']})",
    )
    group.add_argument("--alpha", type=float, default=0.99, help="RMS decay of rmsprop/psgld")
    group.add_argument("--eps", type=float, default=1e-5, help="rmsprop/psgld eps, outside the square root")
    group.add_argument(
        "--average-optimizers",
        action="store_true",
        help="also collect and average snapshots of sgd/rmsprop after burn-in (off: the optimisers "
        "predict with their final weights)",
    )
    group.add_argument(
        "--nan-policy",
        choices=list(NAN_POLICIES),
        default="raise",
        help="a NaN/inf gradient: stop with the parameter's name, or skip the step",
    )
    group.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the initialisation, dropout, data order, DropConnect masks and noise",
    )
    group.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="fp32",
        help="forward passes in fp32, or under autocast in bf16 or fp16 (fp16 with a GradScaler); master "
        "weights, optimizer state and predictive averages stay fp32 (default fp32)",
    )


def add_run_arguments(parser: argparse.ArgumentParser, *, default_out: str) -> argparse._ArgumentGroup:
    """The options in `RUN_CONTROL` (where and how the run executes); returns their group for more."""
    group = parser.add_argument_group("run")
    group.add_argument("--out", metavar="DIR", help=f"output folder (default {default_out})")
    group.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR exactly from its checkpoints (only --epochs, --lr, --nan-policy and the options "
        "that steer how it runs, such as --device and --threads, may change; a refusal lists them)",
    )
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
    group.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="STEPS",
        help="also checkpoint every STEPS steps within an epoch (default: at epoch ends only)",
    )
    group.add_argument(
        "--stop-after-steps",
        type=int,
        metavar="STEPS",
        help="checkpoint and stop once the current method has taken STEPS steps (resume later)",
    )
    prog = group.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None, help="progress bars")
    prog.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bars (default: bars when stderr is a terminal)",
    )
    group.add_argument("--quiet", action="store_true", help="print the final table only")
    return group


# ---------------------------------------------------------------------------------------------------
# resolution


def parse_methods(specs: list[str] | None) -> tuple[str, ...]:
    """The --method list (default DEFAULT_METHODS).

    Raises:
        ConfigError: an unknown or repeated method, or none.
    """
    methods = [m for spec in (specs or DEFAULT_METHODS) for m in spec.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"unknown method {bad[0]!r}; choose from {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"--method lists a method twice: {' '.join(methods)}")
    if not methods:
        raise ConfigError("--method: no method given")
    return tuple(methods)


def given_learning_rates(specs: list[str] | None, methods: Sequence[str]) -> dict[str, float]:
    """The learning rates given with --lr (``LR`` for every method, ``METHOD=LR`` for one).

    Raises:
        ConfigError: a malformed --lr, or one for a method that is not run.
    """
    try:
        return parse_lrs(specs, methods)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def learning_rates(
    specs: list[str] | None, methods: Sequence[str], *, sgd_lr: float, rms_lr: float
) -> dict[str, float]:
    """The learning rate of every method: --lr where given, else its default (`default_lr`).

    Raises:
        ConfigError: a malformed --lr, or one for a method that is not run.
    """
    given = given_learning_rates(specs, methods)
    return {m: given.get(m, default_lr(m, sgd_lr=sgd_lr, rms_lr=rms_lr)) for m in methods}


def shared_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `RunConfig` fields that every task takes from the same options.

    Raises:
        ConfigError: options that do not go together.
    """
    if args.schedule == "cyclical" and getattr(args, "burn_in", None) is not None:
        raise ConfigError(
            "--burn-in does not apply to --schedule cyclical: the first --explore-fraction of each cycle runs "
            "without noise instead"
        )
    cyclical = {name: getattr(args, name) for name in CYCLICAL_DEFAULTS}
    if args.schedule != "cyclical" and any(v is not None for v in cyclical.values()):
        given = " and ".join("--" + k.replace("_", "-") for k, v in cyclical.items() if v is not None)
        raise ConfigError(f"{given} shape(s) the cycles of --schedule cyclical: add --schedule cyclical")
    return {
        **{name: getattr(args, name) for name in (
            "dropconnect", "mask", "masked", "temperature", "weight_decay", "alpha", "eps", "average_optimizers",
            "nan_policy", "seed", "step_impl", "lstm_impl", "precision", "prior_std", "schedule",
        )},
        **{name: CYCLICAL_DEFAULTS[name] if v is None else v for name, v in cyclical.items()},
    }  # fmt: skip


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
