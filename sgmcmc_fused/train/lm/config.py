"""Configuration of the language-model task: presets, options, and `LMConfig`.

A run's configuration is a preset's fields overridden by every option given on the command line.
Learning rates are in the units of docs/spec.md#langevin-step (gradient of the mean loss per token);
see `sgmcmc_fused.train.methods` for why the SGD defaults are bptt × Zaremba's lr 1 and the clips
Zaremba's clip / bptt. docs/results.md has what each preset measured.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from typing import Any, ClassVar

from ..chains import add_chains_argument
from ..config import NUMBER, PATH, DataField, RunConfig, check_data_part, integer_at_least
from ..methods import RMS_DEFAULT_LR
from ..options import (
    SCHEDULE_FIELDS,
    ConfigError,
    PresetField,
    add_dropconnect_arguments,
    add_method_arguments,
    add_preset_arguments,
    add_run_arguments,
    learning_rates,
    need,
    parse_methods,
    preset_values,
    shared_options,
)

#: Presets. clip is the max L2 norm of the mean-loss gradient; lr_decay divides the lr once per epoch
#: after `decay_after` epochs; burn_in/thin are step counts or fractions of an epoch ("4ep"); rms_lr
#: (optional) the default lr of rmsprop/psgld (else methods.RMS_DEFAULT_LR); sgd/sgld default to bptt.
# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    # The embedded default, on SYNTHETIC_DEFAULTS: rmsprop overfits the 50k-token corpus and the model
    # average of psgld beats it, in under a minute for both methods on 2 CPU cores.
    "tiny": dict(
        hidden=128, layers=1, batch_size=20, bptt=20, init_scale=0.1, clip=0.25, dropout=0.0,
        epochs=10, lr_decay=2.0, decay_after=6, burn_in="3ep", thin="0.1ep", rms_lr=3e-3,
    ),
    # Zaremba et al. small: lr 1 / clip 5 on the loss summed over 20 steps = lr 20 / clip 0.25 here.
    "small": dict(
        hidden=200, layers=2, batch_size=20, bptt=20, init_scale=0.1, clip=5 / 20, dropout=0.0,
        epochs=13, lr_decay=2.0, decay_after=4, burn_in="4ep", thin="0.25ep",
    ),
    # Zaremba et al. medium: lr 1 / clip 5 over 35 steps; lr ÷1.2 per epoch after 6.
    "medium": dict(
        hidden=650, layers=2, batch_size=20, bptt=35, init_scale=0.05, clip=5 / 35, dropout=0.5,
        epochs=39, lr_decay=1.2, decay_after=6, burn_in="6ep", thin="0.25ep",
    ),
    # Zaremba et al. large: lr 1 / clip 10 over 35 steps; lr ÷1.15 per epoch after 14.
    "large": dict(
        hidden=1500, layers=2, batch_size=20, bptt=35, init_scale=0.04, clip=10 / 35, dropout=0.65,
        epochs=55, lr_decay=1.15, decay_after=14, burn_in="14ep", thin="0.25ep",
    ),
    # Character level (Gan et al.: 2×128 on War and Peace); batch/bptt/init/decay as Karpathy's char-rnn.
    "char": dict(
        hidden=128, layers=2, batch_size=100, bptt=100, init_scale=0.08, clip=1.0, dropout=0.0,
        epochs=50, lr_decay=1 / 0.97, decay_after=10, burn_in="10ep", thin="0.5ep", rms_lr=2e-3,
    ),
}
# fmt: on
#: Preset chosen when --preset is not given, by data kind.
DEFAULT_PRESET = {"synthetic": "tiny", "word": "small", "char": "char"}

#: Default temperature of the samplers, 1/N (N training tokens): the noise scale of Gan et al.'s
#: reference code (variance 2·lr·G/N² per step). docs/results.md ("The samplers' temperature") has
#: what T = 1 does to the embeddings of rare words.
DEFAULT_TEMPERATURE = "1/N"

#: --max-samples when --samples-dir is given (without it the default is 0: keep none).
DEFAULT_SAMPLES_ON_DISK = 20

#: --sample-weights: how the model average weighs its samples (see PredictiveAverager).
SAMPLE_WEIGHTS = ("uniform", "lr")

#: The synthetic corpus of the embedded default (sgmcmc_fused.data.synthetic.make_synthetic_corpus):
#: 50k training tokens for a 1x128 LSTM (~85k parameters), a regime where rmsprop overfits and
#: averaging posterior samples pays (docs/results.md, "Language model, embedded synthetic corpus").
SYNTHETIC_DEFAULTS = dict(num_states=16, vocab_size=200, train_tokens=50_000, eval_tokens=20_000)

#: Options that fill the model/schedule fields of a preset.
PRESET_FIELDS = [
    PresetField("hidden", int, "hidden size H (also the embedding size)"),
    PresetField("layers", int, "LSTM layers"),
    PresetField("batch_size", int, "training batch size B (parallel streams)"),
    PresetField("bptt", int, "truncated-BPTT length: time steps per minibatch"),
    PresetField("epochs", int, "training epochs"),
    PresetField("lr_decay", float, "divide the learning rate by this factor every epoch after --decay-after"),
    PresetField("decay_after", int, "epochs at the initial learning rate"),
    PresetField(
        "clip",
        float,
        "max L2 norm of the gradient of the mean loss per token, all parameters; 0 = off. A clip c "
        "on the loss summed over the bptt steps (Zaremba et al.'s convention) is c / bptt here",
    ),  # fmt: skip
    PresetField("dropout", float, "dropout on the embedding output, between layers and before the softmax"),
    PresetField("init_scale", float, "initialise every parameter U(-s, s)"),
    *SCHEDULE_FIELDS,
]


@dataclass(frozen=True, kw_only=True)
class LMConfig(RunConfig):
    """A language-model run (`RunConfig` and these; num_data = training tokens).

    `data` is {"kind": "synthetic", "seed", "num_states", "vocab_size", "train_tokens", "eval_tokens"},
    {"kind": "word", "path"} or {"kind": "char", "path", "split": [train, valid, test] fractions}.
    """

    bptt: int
    init_scale: float
    #: The lr of epoch e (0-based) is lr / lr_decay^max(0, e + 1 - decay_after).
    lr_decay: float
    decay_after: int
    #: "successive": stateful truncated BPTT over B streams; "random": shuffled segments.
    minibatch: str
    #: Parameter samples kept (the model averages need none), on disk in samples_dir/METHOD if set.
    max_samples: int
    samples_dir: str | None
    chains: int
    #: Added after the first runs were saved; "uniform" is what they computed with.
    sample_weights: str = "uniform"

    POSITIVE_INTS: ClassVar[tuple[str, ...]] = (*RunConfig.POSITIVE_INTS, "bptt", "chains")

    def check(self) -> None:
        super().check()
        check_data_part(self.data, _DATA_FIELDS)
        need(self.max_samples >= 0, f"--max-samples must be >= 0, got {self.max_samples}")
        need(
            self.max_samples > 0 or not self.samples_dir,
            f"--samples-dir {self.samples_dir} with --max-samples 0 would keep nothing there: "
            "give --max-samples N >= 1",
        )
        need(self.decay_after >= 0, f"--decay-after must be >= 0, got {self.decay_after}")
        need(
            math.isfinite(self.lr_decay) and self.lr_decay >= 1,
            f"--lr-decay must be >= 1 (a divisor), got {self.lr_decay}",
        )
        need(math.isfinite(self.init_scale) and self.init_scale > 0, f"--init-scale must be > 0, got {self.init_scale}")
        need(
            self.sample_weights in SAMPLE_WEIGHTS,
            f"--sample-weights must be one of {', '.join(SAMPLE_WEIGHTS)}, got {self.sample_weights!r}",
        )

    def lr_at(self, method: str, epoch: int) -> float:
        """The learning rate of `method` in (0-based) `epoch`."""
        return self.lr[method] / self.lr_decay ** max(0, epoch + 1 - self.decay_after)


# ---------------------------------------------------------------------------------------------------
# options


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m sgmcmc_fused.train lm``."""
    _add_data_arguments(p)
    _add_model_arguments(p)
    _add_method_arguments(p)
    run = add_run_arguments(p, default_out="runs/lm-<data>-<preset>-<time>")
    run.add_argument("--no-plot", dest="plot", action="store_false", help="skip the matplotlib plot")


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data (default: the embedded synthetic corpus)")
    src = data.add_mutually_exclusive_group()
    src.add_argument(
        "--data",
        choices=["synthetic"],
        default=None,
        help="synthetic: text sampled from a seeded hidden Markov model of known entropy rate",
    )
    src.add_argument(
        "--word-corpus",
        metavar="DIR_OR_PREFIX",
        help="word level, PTB format: a folder with PREFIX{train,valid,test}.txt (or .tokens, as WikiText's), or "
        "the prefix itself (data/ptb/ptb for ptb.train.txt, ...)",
    )
    src.add_argument("--char-corpus", metavar="FILE", help="character level: any UTF-8 text, split by --char-split")
    data.add_argument(
        "--char-split",
        default="0.9,0.05,0.05",
        metavar="TRAIN,VALID,TEST",
        help="fractions of a --char-corpus for train/valid/test (default 0.9,0.05,0.05)",
    )
    for name, dest, help_text in (
        ("train_tokens", "synthetic_train_tokens", "training tokens of the synthetic corpus"),
        ("eval_tokens", "synthetic_eval_tokens", "validation and test tokens each"),
        ("vocab_size", "synthetic_vocab", "vocabulary of the synthetic source"),
        ("num_states", "synthetic_states", "hidden states of the synthetic source"),
    ):
        data.add_argument(
            "--" + dest.replace("_", "-"), dest=dest, type=int, default=SYNTHETIC_DEFAULTS[name],
            help=f"{help_text} (default %(default)s)",
        )  # fmt: skip
    data.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic source (default 0)")
    data.add_argument(
        "--minibatch",
        choices=["successive", "random"],
        default="successive",
        help="successive: B parallel streams with the state carried across minibatches "
        "(stateful truncated BPTT); random: shuffled segments from a zero state",
    )
    data.add_argument(
        "--eval-batch-size", type=int, default=10, help="parallel streams when evaluating valid/test (default 10)"
    )


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    model = p.add_argument_group("model and schedule (defaults from --preset)")
    model.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="default: tiny for synthetic data, small for --word-corpus, char for --char-corpus",
    )
    add_preset_arguments(model, PRESET_FIELDS, PRESETS)
    add_dropconnect_arguments(model, "LSTM matrices masked by DropConnect: recurrent (hh), input (ih) or both")


def _add_method_arguments(p: argparse.ArgumentParser) -> None:
    meth = p.add_argument_group("methods")
    rms_presets = ", ".join(f"{name} {preset['rms_lr']:g}" for name, preset in PRESETS.items() if "rms_lr" in preset)
    add_method_arguments(
        meth, datum="token", temperature=DEFAULT_TEMPERATURE,
        lr_defaults=f"rmsprop/psgld {RMS_DEFAULT_LR:g} ({rms_presets}); sgd/sgld = bptt (Zaremba's lr 1 on the loss "
        "summed over the bptt steps)",
    )  # fmt: skip
    meth.add_argument(
        "--max-samples",
        type=int,
        help="posterior samples kept for later use (oldest dropped). The model averages are computed online "
        "from every sample and need none kept. Default: 0 (none); with --samples-dir, "
        f"{DEFAULT_SAMPLES_ON_DISK}. Without --samples-dir the kept samples live in memory and in every "
        "checkpoint (a full copy of the parameters each)",
    )
    meth.add_argument(
        "--sample-weights",
        choices=list(SAMPLE_WEIGHTS),
        default="uniform",
        help="weights of the samples in the model average: uniform, or lr, the learning rate each sample "
        "was drawn at (Welling & Teh 2011: with a decaying lr, late samples from a chain that barely moves "
        "would otherwise outvote the early, spread-out ones). Default %(default)s",
    )
    meth.add_argument(
        "--samples-dir",
        metavar="DIR",
        help="keep the samples on disk in DIR/METHOD instead of in memory (and in checkpoints)",
    )
    add_chains_argument(meth)


# ---------------------------------------------------------------------------------------------------
# resolution


#: The fields of each kind of data part, with their checks (a saved config.json may have been edited).
_DATA_FIELDS: dict[str, dict[str, DataField]] = {
    "word": {"path": PATH},
    "char": {
        "path": PATH,
        "split": (lambda v: isinstance(v, list) and len(v) == 3 and all(NUMBER[0](x) and 0 < x < 1 for x in v),
                  "three fractions"),
    },
    "synthetic": {
        "seed": integer_at_least(0),
        **dict.fromkeys(("num_states", "vocab_size", "train_tokens", "eval_tokens"), integer_at_least(2)),
    },
}  # fmt: skip


def data_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The data part of the configuration from the options."""
    # Paths are stored absolute, so that --resume works from any working directory.
    if args.word_corpus:
        return {"kind": "word", "path": os.path.abspath(args.word_corpus)}
    if args.char_corpus:
        try:
            split = [float(s) for s in args.char_split.split(",")]
        except ValueError:
            raise ConfigError(f"--char-split {args.char_split!r}: expected three numbers, e.g. 0.9,0.05,0.05") from None
        if len(split) != 3 or min(split) <= 0 or abs(sum(split) - 1) > 1e-6:
            raise ConfigError(f"--char-split {args.char_split!r}: expected three fractions > 0 summing to 1")
        return {"kind": "char", "path": os.path.abspath(args.char_corpus), "split": split}
    for name in ("synthetic_train_tokens", "synthetic_eval_tokens", "synthetic_vocab", "synthetic_states"):
        if getattr(args, name) < 2:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 2, got {getattr(args, name)}")
    return {
        "kind": "synthetic", "seed": args.data_seed, "num_states": args.synthetic_states,
        "vocab_size": args.synthetic_vocab, "train_tokens": args.synthetic_train_tokens,
        "eval_tokens": args.synthetic_eval_tokens,
    }  # fmt: skip


def resolve_config(args: argparse.Namespace) -> LMConfig:
    """The configuration of a new run: the preset's fields, overridden by the options given.

    Raises:
        ConfigError: a value out of range or a malformed option.
    """
    data = data_spec(args)
    preset = args.preset or DEFAULT_PRESET[data["kind"]]
    fields = preset_values(args, PRESETS[preset], PRESET_FIELDS)
    methods = parse_methods(args.methods)
    rms_lr = PRESETS[preset].get("rms_lr", RMS_DEFAULT_LR)
    # --max-samples defaults to none in memory (they would bloat every checkpoint and the averages do
    # not need them), DEFAULT_SAMPLES_ON_DISK when the user gave a folder for them.
    max_samples = args.max_samples
    if max_samples is None:
        max_samples = DEFAULT_SAMPLES_ON_DISK if args.samples_dir else 0
    return LMConfig(
        preset=preset, data=data, methods=methods,
        lr=learning_rates(args.lr, methods, sgd_lr=fields["bptt"], rms_lr=rms_lr), **fields, **shared_options(args),
        minibatch=args.minibatch, eval_batch_size=args.eval_batch_size, max_samples=max_samples,
        sample_weights=args.sample_weights, samples_dir=os.path.abspath(args.samples_dir) if args.samples_dir else None,
        chains=args.chains,
    )  # fmt: skip
