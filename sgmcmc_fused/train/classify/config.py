"""Configuration of the sentence-classifier task: presets, options, and `ClassifyConfig`.

A run's configuration is a preset's fields overridden by the options given. Learning rates are in the
units of docs/spec.md#langevin-step: the gradient of the mean loss per sentence, and num_data = the
number of training sentences.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, ClassVar

from ..config import ANY, NUMBER, PATH, PATH_OR_NONE, DataField, RunConfig, check_data_part
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
#: The synthetic task of the embedded default (see sgmcmc_fused.train.classify.data.make_synthetic_task).
SYNTHETIC_DEFAULTS = dict(
    num_classes=4, vocab_size=300, train_size=5000, test_size=1000, min_len=4, max_len=12, signal=0.3,
    label_noise=0.1,
)  # fmt: skip

#: Default temperature of the samplers, 1/N (N training sentences): Gan et al.'s reference code adds
#: noise of variance 2·lr·G/N² per step. docs/results.md ("The samplers' temperature") has the TREC
#: runs that chose it over T = 1.
DEFAULT_TEMPERATURE = "1/N"

#: Options that fill the fields of a preset.
PRESET_FIELDS = [
    PresetField("embedding_dim", int, "word-vector size E (ignored with --word-vectors: the file's)"),
    PresetField("hidden", int, "LSTM hidden size H per direction"),
    PresetField("layers", int, "LSTM layers"),
    PresetField("dropout", float, "dropout on the embeddings, between layers and on the final vector"),
    PresetField("batch_size", int, "training minibatch size (sentences)"),
    PresetField("epochs", int, "training epochs"),
    PresetField("clip", float, "max L2 norm of the gradient (mean loss per sentence); 0 = off"),
    *SCHEDULE_FIELDS,
]


@dataclass(frozen=True, kw_only=True)
class ClassifyConfig(RunConfig):
    """A sentence-classifier run (`RunConfig` and these; num_data = training sentences).

    `data` is {"kind": "synthetic", "seed", "valid_fraction", and the SYNTHETIC_DEFAULTS fields} or
    {"kind": "files", "seed", "valid_fraction", "train", "test", "valid", "word_vectors" (absolute
    paths or None), "folds", "max_folds" (None with --test), "min_count"}.
    """

    embedding_dim: int
    bidirectional: bool
    #: Keep the word vectors fixed (neither trained nor sampled).
    static_embeddings: bool
    #: "last": report the end of training; "best-valid": the epoch best on validation.
    select: str

    POSITIVE_INTS: ClassVar[tuple[str, ...]] = (*RunConfig.POSITIVE_INTS, "embedding_dim")

    def check(self) -> None:
        super().check()
        data = self.data
        check_data_part(data, _DATA_FIELDS)
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


# ---------------------------------------------------------------------------------------------------
# options


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m sgmcmc_fused.train classify``."""
    _add_data_arguments(p)
    _add_synthetic_arguments(p)
    _add_model_arguments(p)
    _add_method_arguments(p)
    run = add_run_arguments(p, default_out="runs/classify-<data>-<time>")
    run.add_argument(
        "--eval-batch-size", type=int, default=200, help="sentences per batch when evaluating (default 200)"
    )


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
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
        "--label-only-lines",
        choices=["skip", "error"],
        default="skip",
        help="lines with a label and no sentence (a few lines of some distributed sets): skip them, "
        "reported with their line numbers and counted in results.json, or stop with an error (default skip)",
    )
    data.add_argument(
        "--data-seed", type=int, default=0, help="seed of the synthetic task, the folds and the held-out validation"
    )


def _add_synthetic_arguments(p: argparse.ArgumentParser) -> None:
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


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    model = p.add_argument_group("model and schedule (defaults from --preset)")
    model.add_argument(
        "--preset", choices=sorted(PRESETS), help="default: tiny for the synthetic task, paper for files"
    )
    add_preset_arguments(model, PRESET_FIELDS, PRESETS)
    model.add_argument("--unidirectional", action="store_true", help="one LSTM direction instead of two (ablation)")
    model.add_argument(
        "--static-embeddings",
        action="store_true",
        help="keep the word vectors fixed (Kim's CNN-static); they are then neither trained nor sampled",
    )
    add_dropconnect_arguments(model, "LSTM matrices masked by DropConnect")


def _add_method_arguments(p: argparse.ArgumentParser) -> None:
    meth = p.add_argument_group("methods")
    add_method_arguments(
        meth, datum="sentence", temperature=DEFAULT_TEMPERATURE,
        lr_defaults="rmsprop/psgld 1e-3 (tiny preset 3e-3), sgd/sgld 0.5",
    )  # fmt: skip
    meth.add_argument(
        "--select",
        choices=["last", "best-valid"],
        default="last",
        help="last: report the end of training; best-valid: the epoch whose validation error (of the model "
        "average where there is one) is lowest, i.e. early stopping (default last)",
    )


# ---------------------------------------------------------------------------------------------------
# resolution


#: The fields of each kind of data part (a saved config.json may have been edited by hand).
_DATA_FIELDS: dict[str, dict[str, DataField]] = {
    "synthetic": {"seed": NUMBER, "valid_fraction": NUMBER, **dict.fromkeys(SYNTHETIC_DEFAULTS, NUMBER)},
    "files": {"seed": NUMBER, "valid_fraction": NUMBER, "train": PATH, "test": PATH_OR_NONE, "valid": PATH_OR_NONE,
              "folds": ANY},
}  # fmt: skip


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
    spec["label_only_lines"] = args.label_only_lines
    if args.test is None and args.valid is not None:
        raise ConfigError("--valid needs --test (cross-validation holds out a validation part of each fold)")
    return spec


def resolve_config(args: argparse.Namespace) -> ClassifyConfig:
    """The configuration of a new run: the preset's fields, overridden by the options given.

    Raises:
        ConfigError: a value out of range or a malformed option.
    """
    data = data_spec(args)
    preset = args.preset or DEFAULT_PRESET[data["kind"]]
    methods = parse_methods(args.methods)
    lr = learning_rates(args.lr, methods, sgd_lr=PRESETS[preset]["sgd_lr"], rms_lr=PRESETS[preset]["rms_lr"])
    return ClassifyConfig(
        preset=preset, data=data, methods=methods, lr=lr, **preset_values(args, PRESETS[preset], PRESET_FIELDS),
        **shared_options(args), bidirectional=not args.unidirectional, static_embeddings=args.static_embeddings,
        select=args.select, eval_batch_size=args.eval_batch_size,
    )  # fmt: skip
