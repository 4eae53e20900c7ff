"""Configuration of the language-model trainer: presets, command-line options, and their resolution.

A run's configuration is a plain dict (JSON-serialisable, stored in every checkpoint): a preset's
fields, overridden by every option given on the command line. Learning rates are in the units of
docs/spec.md#langevin-step
(gradient of the mean loss per token); see `sgmcmc_fused.train.methods` for why the SGD defaults are
bptt × Zaremba's lr 1 and the clips Zaremba's clip / bptt.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from .methods import METHODS, RMS_DEFAULT_LR, SAMPLERS, default_lr
from .options import (
    DEFAULT_METHODS,
    ConfigError,
    add_backend_arguments,
    add_dropconnect_arguments,
    add_nan_policy_argument,
    add_output_arguments,
    add_rms_arguments,
    check_optimizer_config,
    need,
    preset_config,
    temperature,
)
from .options import parse_methods as parse_methods  # re-exported: part of this module's interface
from .options import parse_steps as parse_steps  # re-exported

#: Presets. clip is the max L2 norm of the mean-loss gradient; lr_decay divides the lr once per epoch
#: after `decay_after` epochs; burn_in/thin are step counts or fractions of an epoch ("4ep"); rms_lr
#: (optional) the default lr of rmsprop/psgld (else methods.RMS_DEFAULT_LR); sgd/sgld default to bptt.
# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    # The embedded default (with SYNTHETIC_DEFAULTS; see there): rmsprop overfits the 50k-token
    # corpus and the model average of psgld beats it; under a minute for both methods on 2 CPU cores.
    "tiny": dict(
        hidden=128, layers=1, batch_size=20, bptt=20, init_scale=0.1, clip=0.25, dropout=0.0,
        epochs=10, lr_decay=2.0, decay_after=6, burn_in="3ep", thin="0.1ep", rms_lr=3e-3,
    ),
    # Zaremba et al. small: lr 1 / clip 5 on the loss summed over 20 steps = lr 20 / clip 0.25 here.
    # Measured on PTB (docs/results.md): sgd 112.5 (101.3 with --dropout 0.3); psgld --lr 3e-3
    # --sample-weights lr averages to 107.0, as do RMSprop's own snapshots (--average-optimizers).
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
#: Default temperature of the samplers, 1/N (N training tokens): the noise scale of Gan et al.'s
#: reference code (variance 2·lr·G/N² per step, T = 1/N in the units of
#: docs/spec.md#langevin-step). At T = 1 the noise on the
#: embedding of a rare word, whose RMS preconditioner G = 1/(eps + sqrt(V)) approaches 1/eps, is a random
#: walk that the few gradients of that word do not hold back. Measured on PTB with the small preset: at
#: T = 1 the first noisy epoch (5) took the validation perplexity from 135.8 to 176.7 (train 107 -> 119),
#: while rmsprop went on to 128.1.
DEFAULT_TEMPERATURE = "1/N"

#: --max-samples when --samples-dir is given (without it the default is 0: keep none).
DEFAULT_SAMPLES_ON_DISK = 20

#: --sample-weights: how the model average weighs its samples (see PredictiveAverager).
SAMPLE_WEIGHTS = ("uniform", "lr")

#: Fields added to the configuration after runs were saved without them, with the value that
#: reproduces what those runs computed (see `with_added_fields`).
ADDED_FIELDS: dict[str, Any] = {"sample_weights": "uniform"}


def with_added_fields(cfg: dict[str, Any]) -> dict[str, Any]:
    """`cfg` (a saved configuration: config.json or a checkpoint's) completed with ADDED_FIELDS, so
    that a run saved before a field existed resumes and compares equal to its completed self."""
    return {**ADDED_FIELDS, **cfg}


#: Preset chosen when --preset is not given, by data kind.
DEFAULT_PRESET = {"synthetic": "tiny", "word": "small", "char": "char"}
#: Synthetic corpus of the embedded default (sgmcmc_fused.data.synthetic.make_synthetic_corpus).
#: 50k training tokens for a 1x128 LSTM (~85k parameters): rmsprop at lr 3e-3 overfits after epoch 3
#: (seed 0: valid 112.8 at epoch 3, 122.9 at epoch 10; Bayes-optimal 97.4), the regime where averaging
#: posterior samples pays. Measured test perplexities, rmsprop last / psgld model average: seed 0 ->
#: 121.1 / 113.9 at the default T = 1/N; at T = 1, --seed 0, 1, 2 -> 121.1 / 115.2, 119.7 / 115.8,
#: 120.0 / 115.1; 4 pooled chains (--chains 4) 110.7 (docs/results.md has the commands). In so small
#: a setting most of that gain comes from averaging along the trajectory: with --average-optimizers
#: rmsprop's own snapshot average reaches 113.9 (seed 0), and psgld at --temperature 0.1 reaches 113.3.
SYNTHETIC_DEFAULTS = dict(num_states=16, vocab_size=200, train_tokens=50_000, eval_tokens=20_000)

#: Options that fill the model/schedule fields of a preset: (option dest, type, help).
_PRESET_FIELDS: list[tuple[str, type, str]] = [
    ("hidden", int, "hidden size H (also the embedding size)"),
    ("layers", int, "LSTM layers"),
    ("batch_size", int, "training batch size B (parallel streams)"),
    ("bptt", int, "truncated-BPTT length: time steps per minibatch"),
    ("epochs", int, "training epochs"),
    ("lr_decay", float, "divide the learning rate by this factor every epoch after --decay-after"),
    ("decay_after", int, "epochs at the initial learning rate"),
    (
        "clip",
        float,
        "max L2 norm of the gradient of the mean loss per token, all parameters; 0 = off. A clip c "
        "on the loss summed over the bptt steps (Zaremba et al.'s convention) is c / bptt here",
    ),
    ("dropout", float, "dropout on the embedding output, between layers and before the softmax"),
    ("init_scale", float, "initialise every parameter U(-s, s)"),
    ("burn_in", str, "steps (N) or epochs (Nep) before the samplers' noise and the sample collection start"),
    ("thin", str, "steps (N) or epochs (Nep, may be fractional) between collected samples"),
]

#: Fields of the configuration that --resume may change (they do not alter the computed numbers of
#: the steps already taken; a longer schedule continues from the checkpoint).
RESUMABLE_OVERRIDES = frozenset({"epochs"})


def _preset_values(field: str) -> str:
    """'tiny 128, small 200, ...': the presets' values of `field`, for the --help text."""
    return ", ".join(
        f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"
        for name, preset in PRESETS.items()
        if (value := preset.get(field)) is not None
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m sgmcmc_fused.train lm``."""
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
        help="word level, PTB format: a folder with *.train.txt/*.valid.txt/*.test.txt, or a "
        "prefix (data/ptb/ptb for ptb.train.txt, ...)",
    )
    src.add_argument("--char-corpus", metavar="FILE", help="character level: any UTF-8 text, split by --char-split")
    data.add_argument(
        "--char-split",
        default="0.9,0.05,0.05",
        metavar="TRAIN,VALID,TEST",
        help="fractions of a --char-corpus for train/valid/test (default 0.9,0.05,0.05)",
    )
    data.add_argument(
        "--synthetic-train-tokens",
        type=int,
        default=SYNTHETIC_DEFAULTS["train_tokens"],
        help="training tokens of the synthetic corpus (default %(default)s)",
    )
    data.add_argument(
        "--synthetic-eval-tokens",
        type=int,
        default=SYNTHETIC_DEFAULTS["eval_tokens"],
        help="validation and test tokens each (default %(default)s)",
    )
    data.add_argument(
        "--synthetic-vocab",
        type=int,
        default=SYNTHETIC_DEFAULTS["vocab_size"],
        help="vocabulary of the synthetic source (default %(default)s)",
    )
    data.add_argument(
        "--synthetic-states",
        type=int,
        default=SYNTHETIC_DEFAULTS["num_states"],
        help="hidden states of the synthetic source (default %(default)s)",
    )
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

    model = p.add_argument_group("model and schedule (defaults from --preset)")
    model.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="default: tiny for synthetic data, small for --word-corpus, char for --char-corpus",
    )
    for dest, typ, help_text in _PRESET_FIELDS:
        model.add_argument(
            "--" + dest.replace("_", "-"), dest=dest, type=typ, default=None,
            help=f"{help_text}. Presets: {_preset_values(dest)}",
        )  # fmt: skip
    add_dropconnect_arguments(model, "LSTM matrices masked by DropConnect: recurrent (hh), input (ih) or both")

    meth = p.add_argument_group("methods")
    meth.add_argument(
        "--method",
        dest="methods",
        nargs="+",
        action="extend",
        metavar="METHOD",
        help=f"one or more of {', '.join(METHODS)} (also comma-separated), run one after another "
        f"from the same initialisation and data order (default: {' '.join(DEFAULT_METHODS)})",
    )
    meth.add_argument(
        "--lr",
        action="append",
        metavar="[METHOD=]LR",
        help="learning rate, for every method or for one (repeatable). Defaults: rmsprop/psgld "
        f"{RMS_DEFAULT_LR:g} ({_preset_values('rms_lr')}); sgd/sgld = bptt (Zaremba's lr 1 on the loss summed "
        "over the bptt steps)",
    )
    meth.add_argument(
        "--temperature",
        default=DEFAULT_TEMPERATURE,
        metavar="T",
        help="posterior temperature of the samplers: a number (1 = the Bayes posterior) or K/N, K over the "
        "number of training tokens (default %(default)s, the noise scale of Gan et al.'s reference code; see "
        "lm_config.DEFAULT_TEMPERATURE for why not 1)",
    )
    meth.add_argument(
        "--weight-decay",
        type=float,
        default=0.0,
        help="Gaussian prior precision / num_data (mean-loss units), all methods",
    )
    add_rms_arguments(meth)
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
    meth.add_argument(
        "--average-optimizers",
        action="store_true",
        help="also collect and average snapshots of sgd/rmsprop after burn-in (off: the "
        "optimisers report their final weights only)",
    )
    add_nan_policy_argument(meth)
    meth.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the initialisation, dropout, data order, DropConnect masks and noise",
    )
    meth.add_argument(
        "--chains",
        type=int,
        default=1,
        metavar="K",
        help="run K independent chains per sampler (seeds SEED..SEED+K-1; one after another, or one per "
        "process under torchrun) and pool their samples for model averaging, reporting the split-R-hat of "
        "the validation log-likelihood (default 1)",
    )

    run = p.add_argument_group("run")
    run.add_argument("--out", metavar="DIR", help="output folder (default runs/lm-<data>-<preset>)")
    run.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR exactly from its checkpoints (only --epochs may change)",
    )
    add_backend_arguments(run)
    run.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="STEPS",
        help="also checkpoint every STEPS steps within an epoch (default: at epoch ends only)",
    )
    run.add_argument(
        "--stop-after-steps",
        type=int,
        metavar="STEPS",
        help="checkpoint and stop once the current method has taken STEPS steps (resume later)",
    )
    add_output_arguments(run)
    run.add_argument("--no-plot", dest="plot", action="store_false", help="skip the matplotlib plot")


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


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration of a new run: the preset's fields, overridden by the options given.

    Raises:
        ConfigError: a value out of range or a malformed option.
    """
    data = data_spec(args)
    cfg, given = preset_config(args, data, PRESETS, DEFAULT_PRESET, _PRESET_FIELDS)
    preset, methods = cfg["preset"], cfg["methods"]
    rms_lr = PRESETS[preset].get("rms_lr", RMS_DEFAULT_LR)
    cfg["lr"] = {m: given.get(m, default_lr(m, sgd_lr=cfg["bptt"], rms_lr=rms_lr)) for m in methods}
    cfg.update(
        dropconnect=args.dropconnect, mask=args.mask, masked=args.masked, minibatch=args.minibatch,
        eval_batch_size=args.eval_batch_size, temperature=args.temperature, weight_decay=args.weight_decay,
        alpha=args.alpha, eps=args.eps, max_samples=_max_samples(args), sample_weights=args.sample_weights,
        samples_dir=os.path.abspath(args.samples_dir) if args.samples_dir else None,
        average_optimizers=args.average_optimizers, nan_policy=args.nan_policy, seed=args.seed,
        chains=args.chains, step_impl=args.step_impl, lstm_impl=args.lstm_impl,
    )  # fmt: skip
    check_config(cfg)
    return cfg


def _max_samples(args: argparse.Namespace) -> int:
    """--max-samples, or its default: keep none in memory (they would bloat every checkpoint and the
    averages do not need them), DEFAULT_SAMPLES_ON_DISK when the user gave a folder for them."""
    if args.max_samples is not None:
        return args.max_samples
    return DEFAULT_SAMPLES_ON_DISK if args.samples_dir else 0


def check_config(cfg: dict[str, Any]) -> None:
    """Range checks with messages that name the option."""

    for name in ("hidden", "layers", "batch_size", "bptt", "epochs", "eval_batch_size", "chains"):
        need(isinstance(cfg[name], int) and cfg[name] >= 1, f"--{name.replace('_', '-')} must be >= 1, got {cfg[name]}")
    need(cfg["max_samples"] >= 0, f"--max-samples must be >= 0, got {cfg['max_samples']}")
    need(
        cfg["max_samples"] > 0 or not cfg["samples_dir"],
        f"--samples-dir {cfg['samples_dir']} with --max-samples 0 would keep nothing there: give --max-samples N >= 1",
    )
    need(cfg["decay_after"] >= 0, f"--decay-after must be >= 0, got {cfg['decay_after']}")
    need(
        math.isfinite(cfg["lr_decay"]) and cfg["lr_decay"] >= 1,
        f"--lr-decay must be >= 1 (a divisor), got {cfg['lr_decay']}",
    )
    need(math.isfinite(cfg["clip"]) and cfg["clip"] >= 0, f"--clip must be >= 0, got {cfg['clip']}")
    need(0 <= cfg["dropout"] < 1, f"--dropout must be in [0, 1), got {cfg['dropout']}")
    need(0 <= cfg["dropconnect"] < 1, f"--dropconnect must be in [0, 1), got {cfg['dropconnect']}")
    need(
        math.isfinite(cfg["init_scale"]) and cfg["init_scale"] > 0, f"--init-scale must be > 0, got {cfg['init_scale']}"
    )
    temperature(cfg["temperature"], 1)  # checks the spec
    need(
        cfg["sample_weights"] in SAMPLE_WEIGHTS,
        f"--sample-weights must be one of {', '.join(SAMPLE_WEIGHTS)}, got {cfg['sample_weights']!r}",
    )
    check_optimizer_config(cfg)


def is_sampler(method: str) -> bool:
    return method in SAMPLERS
