"""Configuration of the sentence-classifier trainer: presets, command-line options, and their resolution.

A run's configuration is a plain JSON-serialisable dict (stored in config.json and every checkpoint):
a preset's fields, overridden by the options given. Learning rates are in the units of docs/spec.md#langevin-step: the
gradient of the mean loss per sentence, and num_data = the number of training sentences.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from .methods import METHODS, RMS_DEFAULT_LR, default_lr
from .options import (
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

__all__ = [
    "PRESETS", "SYNTHETIC_DEFAULTS", "ConfigError", "add_arguments", "check_config", "resolve_config", "temperature",
]  # fmt: skip

#: Presets. burn_in/thin: steps, or epochs with "ep" (fractions allowed); clip: max L2 norm of the
#: mean-loss gradient (0 = off); sgd_lr: the default lr of sgd/sgld; rms_lr that of rmsprop/psgld.
# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    # Gan et al. (2017): one bidirectional layer of 200 units each way over 300-d (word2vec-sized)
    # embeddings, dropout 0.5 on the embeddings and the final vector, minibatches of 50 sentences.
    "paper": dict(
        embedding_dim=300, hidden=200, layers=1, dropout=0.5, batch_size=50, epochs=20, clip=5.0,
        burn_in="5ep", thin="0.25ep", sgd_lr=0.5, rms_lr=RMS_DEFAULT_LR,
    ),
    # The embedded default (the synthetic task): small enough for ~1 minute on 2 CPU cores for both
    # default methods.
    "tiny": dict(
        embedding_dim=32, hidden=32, layers=1, dropout=0.5, batch_size=50, epochs=15, clip=5.0,
        burn_in="5ep", thin="0.25ep", sgd_lr=0.5, rms_lr=3e-3,
    ),
}
# fmt: on
#: Preset chosen when --preset is not given, by data kind.
DEFAULT_PRESET = {"synthetic": "tiny", "files": "paper"}
#: The synthetic task of the embedded default (see sgmcmc_fused.train.classify_data.make_synthetic_task).
SYNTHETIC_DEFAULTS = dict(
    num_classes=4, vocab_size=300, train_size=5000, test_size=1000, min_len=4, max_len=12, signal=0.3,
    label_noise=0.1,
)  # fmt: skip

#: Default temperature of the samplers, 1/N (N training sentences): Gan et al.'s reference code adds
#: noise of variance 2·lr·G/N² per step, i.e. T = 1/N in the units of
#: docs/spec.md#langevin-step. At T = 1 (the exact Bayes
#: posterior under the flat prior) the noise on a word vector seen in a handful of sentences, whose
#: RMS preconditioner G = 1/(eps + sqrt(V)) approaches 1/eps, is a random walk of ~sqrt(2·lr/(eps·N))
#: per step, and a few thousand sentences do not hold it back. Measured on TREC (the paper preset,
#: 8 epochs, burn-in 3 epochs, one run each): psgld model-average test error 23.2 % at T = 1 (22.4 %
#: with a N(0, 1) prior), 16.2 % at T = 0.01, 14.4 % at 0.001, 12.4 % at 2e-4 ≈ 1/N (14.6 % with
#: --static-embeddings); rmsprop 14.8 % after 10 epochs.
DEFAULT_TEMPERATURE = "1/N"

#: Options that fill the fields of a preset: (option dest, type, help).
_PRESET_FIELDS: list[tuple[str, type, str]] = [
    ("embedding_dim", int, "word-vector size E (ignored with --word-vectors: the file's)"),
    ("hidden", int, "LSTM hidden size H per direction"),
    ("layers", int, "LSTM layers"),
    ("dropout", float, "dropout on the embeddings, between layers and on the final vector"),
    ("batch_size", int, "training minibatch size (sentences)"),
    ("epochs", int, "training epochs"),
    ("clip", float, "max L2 norm of the gradient (mean loss per sentence); 0 = off"),
    ("burn_in", str, "steps (N) or epochs (Nep) before the samplers' noise and the sample collection start"),
    ("thin", str, "steps (N) or epochs (Nep, may be fractional) between collected samples"),
]

#: Fields of the configuration that --resume may change.
RESUMABLE_OVERRIDES = frozenset({"epochs"})


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m sgmcmc_fused.train classify``."""
    data = p.add_argument_group(
        "data (default: the embedded synthetic task)",
        "Files hold one 'LABEL sentence' per line (integer labels 0..C-1, tokenised text). With --test, "
        "the fixed split (TREC, SST-2); without, k-fold cross-validation of --train (MR, CR, SUBJ, MPQA).",
    )
    data.add_argument("--train", metavar="FILE", help="training sentences (or all of them, for cross-validation)")
    data.add_argument("--test", metavar="FILE", help="test sentences: the fixed split (no cross-validation)")
    data.add_argument(
        "--valid",
        metavar="FILE",
        help="validation sentences (default: --valid-fraction of the training sentences held out)",
    )
    data.add_argument("--folds", type=int, default=10, help="k of the k-fold cross-validation (default 10)")
    data.add_argument(
        "--max-folds",
        type=int,
        metavar="N",
        help="run only the first N folds of the k-fold split (quick looks; the table says so)",
    )
    data.add_argument(
        "--valid-fraction",
        type=float,
        default=0.1,
        help="fraction of the training sentences (of each training fold) held out for validation when "
        "there is no --valid (default 0.1; 0: no validation)",
    )
    data.add_argument(
        "--word-vectors",
        metavar="FILE",
        help="pretrained word vectors, word2vec text format ('word v1 ... vE' lines, optional 'count E' header)",
    )
    data.add_argument(
        "--min-count", type=int, default=1, help="words seen fewer times in training map to <unk> (default 1)"
    )
    data.add_argument(
        "--data-seed", type=int, default=0, help="seed of the synthetic task, the folds and the held-out validation"
    )
    syn = p.add_argument_group("synthetic task (no --train)")
    for name, typ, help_text in (
        ("num_classes", int, "classes"),
        ("vocab_size", int, "words"),
        ("train_size", int, "training sentences"),
        ("test_size", int, "test sentences"),
        ("min_len", int, "shortest sentence (words)"),
        ("max_len", int, "longest sentence (words)"),
        ("signal", float, "probability that a word comes from its class's own distribution"),
        ("label_noise", float, "probability that a label is replaced by another class, uniformly"),
    ):
        syn.add_argument(
            "--synthetic-" + name.replace("_", "-"),
            dest="synthetic_" + name,
            type=typ,
            default=SYNTHETIC_DEFAULTS[name],
            help=f"{help_text} (default %(default)s)",
        )

    model = p.add_argument_group("model and schedule (defaults from --preset)")
    model.add_argument(
        "--preset", choices=sorted(PRESETS), help="default: tiny for the synthetic task, paper for files"
    )
    for dest, typ, help_text in _PRESET_FIELDS:
        model.add_argument("--" + dest.replace("_", "-"), dest=dest, type=typ, default=None, help=help_text)
    model.add_argument("--unidirectional", action="store_true", help="one LSTM direction instead of two (ablation)")
    model.add_argument(
        "--static-embeddings",
        action="store_true",
        help="keep the word vectors fixed (Kim's CNN-static); they are then neither trained nor sampled",
    )
    add_dropconnect_arguments(model, "LSTM matrices masked by DropConnect")

    meth = p.add_argument_group("methods")
    meth.add_argument(
        "--method",
        dest="methods",
        nargs="+",
        action="extend",
        metavar="METHOD",
        help=f"one or more of {', '.join(METHODS)} (also comma-separated), run one after another from the "
        "same initialisation and data order (default: rmsprop psgld)",
    )
    meth.add_argument(
        "--lr",
        action="append",
        metavar="[METHOD=]LR",
        help="learning rate, for every method or for one (repeatable). Defaults: rmsprop/psgld 1e-3 "
        "(tiny preset 3e-3), sgd/sgld 0.5",
    )
    meth.add_argument(
        "--temperature",
        default=DEFAULT_TEMPERATURE,
        metavar="T",
        help="posterior temperature of the samplers: a number (1 = the Bayes posterior) or K/N, K over the "
        "number of training sentences (default %(default)s, the noise scale of Gan et al.'s reference code; "
        "see classify_config.DEFAULT_TEMPERATURE for why not 1)",
    )
    meth.add_argument(
        "--weight-decay", type=float, default=0.0, help="Gaussian prior precision / num_data (mean-loss units)"
    )
    add_rms_arguments(meth)
    meth.add_argument(
        "--average-optimizers",
        action="store_true",
        help="also average snapshots of sgd/rmsprop after burn-in (off: the optimisers predict with their "
        "final weights)",
    )
    meth.add_argument(
        "--select",
        choices=["last", "best-valid"],
        default="last",
        help="last: report the end of training; best-valid: the epoch whose validation error (of the model "
        "average where there is one) is lowest, i.e. early stopping (default last)",
    )
    add_nan_policy_argument(meth)
    meth.add_argument(
        "--seed", type=int, default=0, help="seed of the initialisation, dropout, data order, masks and noise"
    )

    run = p.add_argument_group("run")
    run.add_argument("--out", metavar="DIR", help="output folder (default runs/classify-<data>-<time>)")
    run.add_argument(
        "--resume", metavar="DIR", help="continue the run in DIR from its checkpoints (only --epochs may change)"
    )
    add_backend_arguments(run)
    run.add_argument(
        "--eval-batch-size", type=int, default=200, help="sentences per batch when evaluating (default 200)"
    )
    run.add_argument(
        "--stop-after-steps",
        type=int,
        metavar="STEPS",
        help="checkpoint and stop once the current method (and fold) has taken STEPS steps (resume later)",
    )
    add_output_arguments(run)


def data_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The data part of the configuration from the options (paths made absolute for --resume)."""
    spec: dict[str, Any] = {"seed": args.data_seed, "valid_fraction": args.valid_fraction}
    if args.train is None:
        for name in ("test", "valid", "word_vectors"):
            if getattr(args, name) is not None:
                raise ConfigError(f"--{name.replace('_', '-')} needs --train (the synthetic task has its own split)")
        spec["kind"] = "synthetic"
        spec.update({k: getattr(args, "synthetic_" + k) for k in SYNTHETIC_DEFAULTS})
        return spec
    spec["kind"] = "files"
    for name in ("train", "test", "valid", "word_vectors"):
        value = getattr(args, name)
        spec[name] = None if value is None else os.path.abspath(value)
    spec["folds"] = None if args.test else args.folds
    spec["max_folds"] = None if args.test else args.max_folds
    spec["min_count"] = args.min_count
    if args.test is None and args.valid is not None:
        raise ConfigError("--valid needs --test (cross-validation holds out a validation part of each fold)")
    return spec


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration of a new run: the preset's fields, overridden by the options given.

    Raises:
        ConfigError: a value out of range or a malformed option.
    """
    data = data_spec(args)
    cfg, given = preset_config(args, data, PRESETS, DEFAULT_PRESET, _PRESET_FIELDS)
    methods = cfg["methods"]
    fields = PRESETS[cfg["preset"]]
    cfg["lr"] = {m: given.get(m, default_lr(m, sgd_lr=fields["sgd_lr"], rms_lr=fields["rms_lr"])) for m in methods}
    cfg.update(
        bidirectional=not args.unidirectional, static_embeddings=args.static_embeddings,
        dropconnect=args.dropconnect, mask=args.mask, masked=args.masked, temperature=args.temperature,
        weight_decay=args.weight_decay, alpha=args.alpha, eps=args.eps, average_optimizers=args.average_optimizers,
        select=args.select, nan_policy=args.nan_policy, seed=args.seed, step_impl=args.step_impl,
        lstm_impl=args.lstm_impl, eval_batch_size=args.eval_batch_size,
    )  # fmt: skip
    check_config(cfg)
    return cfg


def check_config(cfg: dict[str, Any]) -> None:
    """Range checks with messages that name the option."""

    for name in ("embedding_dim", "hidden", "layers", "batch_size", "epochs", "eval_batch_size"):
        need(isinstance(cfg[name], int) and cfg[name] >= 1, f"--{name.replace('_', '-')} must be >= 1, got {cfg[name]}")
    need(0 <= cfg["dropout"] < 1, f"--dropout must be in [0, 1), got {cfg['dropout']}")
    need(0 <= cfg["dropconnect"] < 1, f"--dropconnect must be in [0, 1), got {cfg['dropconnect']}")
    need(math.isfinite(cfg["clip"]) and cfg["clip"] >= 0, f"--clip must be >= 0, got {cfg['clip']}")
    temperature(cfg["temperature"], 1)  # checks the spec
    check_optimizer_config(cfg)
    data = cfg["data"]
    need(0 <= data["valid_fraction"] < 1, f"--valid-fraction must be in [0, 1), got {data['valid_fraction']}")
    if data["kind"] == "synthetic":
        for name in ("num_classes", "vocab_size", "train_size", "test_size"):
            need(data[name] >= 2, f"--synthetic-{name.replace('_', '-')} must be >= 2, got {data[name]}")
        need(
            1 <= data["min_len"] <= data["max_len"],
            f"need 1 <= --synthetic-min-len <= --synthetic-max-len, got {data['min_len']} and {data['max_len']}",
        )
        need(0 < data["signal"] <= 1, f"--synthetic-signal must be in (0, 1], got {data['signal']}")
        c = data["num_classes"]
        need(
            0 <= data["label_noise"] < (c - 1) / c,
            f"--synthetic-label-noise must be in [0, {(c - 1) / c:.3g}) (beyond, the labels carry no signal), "
            f"got {data['label_noise']}",
        )
    else:
        if data["folds"] is not None:
            need(data["folds"] >= 2, f"--folds must be >= 2, got {data['folds']}")
        if data.get("max_folds") is not None:
            need(data["max_folds"] >= 1, f"--max-folds must be >= 1, got {data['max_folds']}")
        need(data["min_count"] >= 1, f"--min-count must be >= 1, got {data['min_count']}")
