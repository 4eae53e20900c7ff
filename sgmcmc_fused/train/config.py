"""The configuration every training task shares: a frozen dataclass, saved as ``config.json`` and in
every checkpoint, with the schedule specs parsed once.

A task's configuration (`sgmcmc_fused.train.lm.config.LMConfig`, ...) subclasses `RunConfig` with its
own fields. JSON holds plain values: the step counts and the temperature as the text the user gave
("4ep", "1/N"), so that a saved run reads back equal to itself. `RunConfig.from_json` accepts the
configurations of runs saved by earlier versions: a field added since then takes its default, which is
the value those runs computed with.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from ..kernels.registry import BACKENDS, LSTM_BACKENDS
from .methods import METHODS
from .options import CYCLICAL_DEFAULTS, MASK_CHOICES, MASKED_CHOICES, NAN_POLICIES, PRECISIONS, ConfigError, need
from .priors import check_prior_std, parse_prior_std
from .schedule import SCHEDULES

C = TypeVar("C", bound="RunConfig")


@dataclass(frozen=True)
class StepCount:
    """A number of steps as given on the command line: steps (``"500"``) or epochs (``"2ep"``,
    ``"0.25ep"``, converted once the epoch length is known).

    Attributes:
        spec: the text given, kept for the JSON round trip.
        value: the number (steps, or epochs when `in_epochs`).
        in_epochs: whether `value` counts epochs.
        option: the option it came from, for error messages.
        minimum: the fewest steps it may resolve to (1 for --thin).
    """

    spec: str
    value: float
    in_epochs: bool
    option: str = field(compare=False)
    minimum: int = field(compare=False)

    @classmethod
    def parse(cls, spec: str | int, option: str, minimum: int = 0) -> StepCount:
        """Raises ConfigError: not a step count, or fewer steps than `minimum` in any epoch length."""
        text = str(spec).strip().lower()
        match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(ep|epochs?)", text)
        if match:
            count = cls(str(spec), float(match.group(1)), True, option, minimum)
        elif text.isdigit():
            count = cls(str(spec), float(int(text)), False, option, minimum)
        else:
            raise ConfigError(f"{option} {spec!r}: expected a number of steps (500) or of epochs (2ep, 0.25ep)")
        count.steps(1)  # the range check against the shortest epoch; the real length comes with the data
        return count

    def steps(self, steps_per_epoch: int) -> int:
        """The count in steps; epochs round to whole steps, a positive fraction to at least one.

        Raises:
            ConfigError: fewer than `minimum` steps.
        """
        if self.in_epochs:
            steps = round(self.value * steps_per_epoch)
            if self.value > 0:
                steps = max(steps, 1)
        else:
            steps = int(self.value)
        if steps < self.minimum:
            plural = "s" if self.minimum != 1 else ""
            raise ConfigError(f"{self.option} {self.spec!r}: must be at least {self.minimum} step{plural}")
        return steps

    def __str__(self) -> str:
        return self.spec


@dataclass(frozen=True)
class Temperature:
    """The posterior temperature of the samplers as given: a number, or ``"K/N"``, K over the number
    of training data N (tokens or sentences), resolved by `at` once N is known."""

    spec: str
    value: float
    per_datum: bool

    @classmethod
    def parse(cls, spec: str | float) -> Temperature:
        """Raises ConfigError: malformed, negative or not finite."""
        text = str(spec).strip()
        per_datum = text.upper().endswith("/N")
        try:
            value = float(text[:-2] if per_datum else text)
        except ValueError:
            raise ConfigError(f"--temperature {spec!r}: expected a number (1, 0.01) or K/N (1/N, 10/N)") from None
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"--temperature {spec!r}: must be a finite number >= 0")
        return cls(str(spec), value, per_datum)

    def at(self, num_data: int) -> float:
        """The temperature for `num_data` training data."""
        return self.value / num_data if self.per_datum else self.value

    def __str__(self) -> str:
        return self.spec


#: Value types that JSON holds as the text they were parsed from.
_CODECS = {StepCount, Temperature}


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """What every task's run is configured by (the option of a field is ``--field-name``).

    Units: `lr` is the step size of the gradient of the mean loss per datum (docs/spec.md#langevin-step);
    `clip` the largest L2 norm of that gradient over all parameters (0: off); `weight_decay` the
    Gaussian prior precision / num_data.
    """

    preset: str
    #: The data part: paths (absolute) and options of the task's loader, as a JSON object.
    data: dict[str, Any]
    methods: tuple[str, ...]
    #: Learning rate by method.
    lr: dict[str, float]
    epochs: int
    batch_size: int
    eval_batch_size: int
    hidden: int
    layers: int
    dropout: float
    clip: float
    dropconnect: float
    mask: str
    masked: str
    burn_in: StepCount
    thin: StepCount
    temperature: Temperature
    weight_decay: float
    alpha: float
    eps: float
    average_optimizers: bool
    nan_policy: str
    seed: int
    step_impl: str
    lstm_impl: str
    #: "fp32", or autocast in "bf16" / "fp16" (with a GradScaler) for the forward passes; the master
    #: weights, the optimizer state and the predictive averages stay fp32 (added later: runs saved
    #: before it computed in fp32).
    precision: str = "fp32"
    #: Gaussian prior N(0, σ²) by part of the model ({"embedding", "lstm", "output"} -> σ; `priors`), or
    #: None: no prior beyond weight_decay (added later: runs saved before it had none).
    prior_std: dict[str, float] | None = None
    #: "decay" (the task's own learning rate by epoch, burn-in then samples every `thin` steps) or
    #: "cyclical" (`sgmcmc_fused.train.schedule`: `cycles` cosine cycles, the first `explore_fraction`
    #: of each without noise). Added later: runs saved before them used "decay".
    schedule: str = "decay"
    cycles: int = CYCLICAL_DEFAULTS["cycles"]
    explore_fraction: float = CYCLICAL_DEFAULTS["explore_fraction"]

    #: Fields that --resume may change: they do not alter the steps already taken (a run that
    #: diverged continues with a smaller lr, or skipping the bad steps).
    RESUMABLE: ClassVar[frozenset[str]] = frozenset({"epochs", "lr", "nan_policy"})

    def resumable_fields(self) -> frozenset[str]:
        """RESUMABLE, less `epochs` under the cyclical schedule: its cycles span the run's epochs, so
        other epochs would move the cycle boundaries of the steps already taken."""
        return self.RESUMABLE - {"epochs"} if self.schedule == "cyclical" else self.RESUMABLE

    #: Fields that must be positive integers.
    POSITIVE_INTS: ClassVar[tuple[str, ...]] = ("epochs", "batch_size", "eval_batch_size", "hidden", "layers")

    def __post_init__(self) -> None:
        # Saved configurations hold the specs as text and lists for tuples; parse them here, once.
        coerce = object.__setattr__
        if not isinstance(self.burn_in, StepCount):
            coerce(self, "burn_in", StepCount.parse(self.burn_in, "--burn-in", minimum=0))
        if not isinstance(self.thin, StepCount):
            coerce(self, "thin", StepCount.parse(self.thin, "--thin", minimum=1))
        if not isinstance(self.temperature, Temperature):
            coerce(self, "temperature", Temperature.parse(self.temperature))
        if isinstance(self.methods, list):
            coerce(self, "methods", tuple(self.methods))
        if isinstance(self.prior_std, str):  # the option's text
            coerce(self, "prior_std", parse_prior_std(self.prior_std))
        self._check_types()
        self.check()

    def _check_types(self) -> None:
        """Each field has its annotated type (a saved configuration may have been edited by hand).

        Raises:
            ConfigError: naming the field, the type expected and the value found.
        """
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = _TYPE_CHECKS.get(str(f.type))
            if expected is not None and not expected[0](value):
                raise ConfigError(f"field {f.name!r} must be {expected[1]}, got {value!r}")

    def check(self) -> None:
        """Range checks, with messages that name the option (subclasses extend it).

        Raises:
            ConfigError: a value out of range.
        """
        for name in self.POSITIVE_INTS:
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 1, f"{_option(name)} must be >= 1, got {value}")
        need(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        need(0 <= self.dropconnect < 1, f"--dropconnect must be in [0, 1), got {self.dropconnect}")
        need(math.isfinite(self.clip) and self.clip >= 0, f"--clip must be >= 0, got {self.clip}")
        need(
            math.isfinite(self.weight_decay) and self.weight_decay >= 0,
            f"--weight-decay must be >= 0, got {self.weight_decay}",
        )
        need(0 <= self.alpha < 1, f"--alpha must be in [0, 1), got {self.alpha}")
        need(self.eps > 0, f"--eps must be > 0, got {self.eps}")
        need(len(self.methods) > 0, "no --method: give at least one")
        missing = [m for m in self.methods if m not in self.lr]
        need(not missing, f"no learning rate for {', '.join(missing)}")
        bad_lr = {m: v for m, v in self.lr.items() if not (math.isfinite(v) and v > 0)}
        need(not bad_lr, f"--lr must be > 0, got {bad_lr}")
        # Chain k trains with seed + k: every chain's seed must be a valid generator key.
        chains = getattr(self, "chains", 1)
        need(
            _is_int(self.seed) and 0 <= self.seed and self.seed + max(chains, 1) - 1 < 2**63,
            "--seed must be in [0, 2^63)"
            + (f" with its {chains} chains (seed + k)" if chains > 1 else "")
            + f", got {self.seed}",
        )
        need(self.mask in MASK_CHOICES, f"--mask must be one of {', '.join(MASK_CHOICES)}, got {self.mask!r}")
        need(self.masked in MASKED_CHOICES, f"--masked must be one of {', '.join(MASKED_CHOICES)}, got {self.masked!r}")
        unknown = [m for m in self.methods if m not in METHODS]
        need(not unknown, f"unknown method {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        need(
            self.step_impl == "auto" or self.step_impl in BACKENDS,
            f"--step-impl {self.step_impl}: unknown; choose auto or one of {', '.join(BACKENDS)}",
        )
        need(
            self.lstm_impl == "auto" or self.lstm_impl in LSTM_BACKENDS,
            f"--lstm-impl {self.lstm_impl}: unknown; choose auto or one of {', '.join(LSTM_BACKENDS)}",
        )
        need(self.nan_policy in NAN_POLICIES, f"--nan-policy must be one of {', '.join(NAN_POLICIES)}")
        need(self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}")
        check_prior_std(self.prior_std)
        need(self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        need(_is_int(self.cycles) and self.cycles >= 1, f"--cycles must be >= 1, got {self.cycles}")
        need(0 <= self.explore_fraction < 1, f"--explore-fraction must be in [0, 1), got {self.explore_fraction}")
        need(
            not (self.prior_std and self.weight_decay),
            "--prior-std and --weight-decay are both a Gaussian prior on the weights: give one",
        )

    # -- JSON ----------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The configuration as a JSON object (what config.json and the checkpoints hold)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if type(value) in _CODECS:
                value = value.spec
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls: type[C], saved: dict[str, Any]) -> C:
        """The configuration saved as `saved` (config.json or a checkpoint's); fields added since it
        was written take their defaults.

        Raises:
            ConfigError: a field this version does not know, or one without a default missing.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(saved) - names)
        if unknown:
            raise ConfigError(f"the saved configuration has fields this version does not know: {unknown}")
        try:
            return cls(**saved)
        except TypeError as e:  # a required field missing
            raise ConfigError(f"the saved configuration is incomplete: {e}") from None

    def replace(self: C, **changes: Any) -> C:
        """A copy with `changes`, checked like a new configuration."""
        return dataclasses.replace(self, **changes)

    def chain(self: C, k: int) -> C:
        """The configuration chain `k` of --chains trains with: seed + k."""
        return self.replace(seed=self.seed + k)


#: A field of a data part: (its check, what the message says it must be).
DataField = tuple[Callable[[Any], bool], str]
#: A field the loader needs, of any value.
ANY: DataField = (lambda v: True, "")
INTEGER: DataField = (lambda v: _is_int(v), "an integer")
NUMBER: DataField = (lambda v: _is_number(v), "a number")
PATH: DataField = (lambda v: isinstance(v, str), "a path")
PATH_OR_NONE: DataField = (lambda v: v is None or isinstance(v, str), "a path or null")


def integer_at_least(least: int) -> DataField:
    """A field that must be an integer >= `least`."""
    return (lambda v: _is_int(v) and v >= least, f"an integer >= {least}")


def check_data_part(data: dict[str, Any], kinds: dict[str, dict[str, DataField]]) -> None:
    """Raises ConfigError naming ``data.FIELD`` for a data part (of a config.json that may have been
    edited by hand) whose kind is unknown, or that lacks a field of its kind or has a bad value."""
    kind = data.get("kind")
    need(kind in kinds, f"data.kind must be one of {', '.join(kinds)}, got {kind!r}")
    for name, (valid, what) in kinds[kind].items():
        need(name in data, f"data.{name} is missing (the {kind} data part needs {', '.join(kinds[kind])})")
        need(valid(data[name]), f"data.{name} must be {what}, got {data[name]!r}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_number_dict(v: object) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and _is_number(x) for k, x in v.items())


#: Annotation (as written) -> (check, what the message says is expected).
_TYPE_CHECKS = {
    "int": (_is_int, "an integer"),
    "float": (_is_number, "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "str | None": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "dict[str, Any]": (lambda v: isinstance(v, dict), "a JSON object"),
    "dict[str, float] | None": (lambda v: v is None or _is_number_dict(v), "null or an object of numbers"),
    "dict[str, float]": (_is_number_dict, "an object of numbers"),
    "tuple[str, ...]": (lambda v: isinstance(v, tuple) and all(isinstance(x, str) for x in v), "a list of strings"),
}


def _option(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")
