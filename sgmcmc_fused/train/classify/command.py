"""Sentence-classifier trainer: ``python -m sgmcmc_fused.train classify [options]``.

Trains embedding → dropout → bidirectional DropConnectLSTM → dropout → linear classifiers
(`sgmcmc_fused.train.classify.model`) with one or more methods (sgd, rmsprop, sgld, psgld;
`sgmcmc_fused.train.methods`), one after another from the same initialisation and data order, and
reports per method the test error, calibration (ECE) and NLL of its predictions and of its last weights
alone, and the predictive uncertainty of every test sentence. The samplers' predictions are the
Bayesian model average (docs/spec.md#posterior-averaging): after burn-in, a sample every `thin`
steps; the class probabilities of the samples are averaged.

    python -m sgmcmc_fused.train classify          # embedded default: a synthetic task of known
                                                   # Bayes error, tiny model, rmsprop vs psgld, ~1 min
    python -m sgmcmc_fused.train classify --train data/sentcls/TREC.train.all \\
        --test data/sentcls/TREC.test.all --method sgd rmsprop sgld psgld
    python -m sgmcmc_fused.train classify --train rt-polarity.all --word-vectors vectors.txt  # 10-fold CV
    python -m sgmcmc_fused.train classify --resume runs/classify-...   # continue a stopped run

Data: files of "LABEL sentence" lines. With --test, the fixed split (TREC, SST-2), validation from
--valid or held out of the training file; without, k-fold cross-validation of --train (MR, CR, SUBJ,
MPQA), a validation part held out of each training fold. The vocabulary of each fold is built from its
training sentences (other words map to <unk>). Units: `lr` is the step size of the mean loss per
sentence (docs/spec.md#langevin-step); num_data = training sentences.

Outputs in --out DIR: config.json; per method METHOD/predictions.csv (every test sentence: fold, its
index among its file's examples (0-based; blank and label-only lines not counted), label,
prediction, the predictive mean and std across samples of each class probability, predictive
entropy and mutual information, in nats); per method and fold
METHOD[/fold-K]/log.csv (one row per epoch), samples.csv (one row per collected sample), log.json and
checkpoint.pt; results.json and results.csv (one row per method: mean ± std over folds), folds.csv (one
row per method and fold).

Checkpoints (each epoch end, at --stop-after-steps and on Ctrl-C) hold everything the rest of the run
depends on, so ``--resume`` computes bit for bit what the uninterrupted run would have.

Under ``torchrun --nproc_per_node=K`` the run is data parallel (DDP; gloo on CPU, NCCL on GPU): each
rank takes a contiguous share of every minibatch's sentences and of the evaluation sentences, and the
parameters stay bitwise equal across ranks (the samplers' noise is counter-based; checked at every
checkpoint). Rank 0 prints and writes; resume under the same number of processes.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import torch

from ..command import Session, Task
from ..distributed import World
from ..methods import format_lr, shared_lr
from ..options import ConfigError
from ..runlog import write_csv, write_json
from . import config
from .config import ClassifyConfig
from .data import ClassifyData, encode_split, load_classify_data
from .trainer import FOLD_COLUMNS, ClassifierTrainer, prediction_columns

RESULT_COLUMNS = [
    "method", "lr", "epochs", "folds", "error_mean", "error_std", "last_error_mean", "last_error_std", "ece_mean",
    "ece_std", "last_ece_mean", "nll_mean", "last_nll_mean", "mean_entropy", "mean_mutual_information", "mean_std",
    "boundary_mean_entropy", "boundary_mean_mutual_information", "shuffled_mean_entropy",
    "shuffled_mean_mutual_information", "num_samples", "sec_per_epoch",
]  # fmt: skip
#: The uncertainty figures that the table prints below the methods, by where they are measured.
UNCERTAINTY = (("test", "mean_entropy", "mean_mutual_information"),
               ("near the boundary", "boundary_mean_entropy", "boundary_mean_mutual_information"),
               ("shuffled words", "shuffled_mean_entropy", "shuffled_mean_mutual_information"))  # fmt: skip


class ClassifyTask(Task):
    name = "classify"
    help = "bidirectional LSTM sentence classifiers with SG-MCMC, model averaging and uncertainty"
    description = __doc__
    config_type = ClassifyConfig

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        config.add_arguments(parser)

    def new_config(self, args: argparse.Namespace) -> ClassifyConfig:
        return config.resolve_config(args)

    def run_name(self, cfg: ClassifyConfig) -> str:
        return "classify-" + ("synthetic" if cfg.data["kind"] == "synthetic" else Path(cfg.data["train"]).name)

    def run_dirs(self, cfg: ClassifyConfig, out: Path, method: str) -> list[Path]:
        """The folders of `method`'s runs: one per fold of a k-fold run (fold-1 ...), else its own."""
        spec = cfg.data
        if spec["kind"] != "files" or spec["test"] is not None:
            return [out / method]
        folds = min(int(spec["folds"]), spec.get("max_folds") or int(spec["folds"]))
        return [out / method / f"fold-{fold}" for fold in range(1, folds + 1)]

    def load_data(
        self, cfg: ClassifyConfig, args: argparse.Namespace, world: World
    ) -> tuple[ClassifyConfig, ClassifyData]:
        data = load_classify_data(cfg.data)
        if data.word_vectors is not None:
            dim = data.word_vectors[1].shape[1]
            if not args.resume and args.embedding_dim is not None and args.embedding_dim != dim:
                raise ConfigError(f"--embedding-dim {args.embedding_dim} differs from the {dim}-d --word-vectors")
            cfg = cfg.replace(embedding_dim=dim)
        if cfg.select == "best-valid" and any(sp.valid is None for sp in data.splits):
            raise ConfigError("--select best-valid needs validation sentences (--valid, or --valid-fraction > 0)")
        if world.distributed:
            smallest = min(
                min(len(sp.test), len(sp.valid) if sp.valid is not None else len(sp.test)) for sp in data.splits
            )
            if smallest < world.size:
                raise ConfigError(f"{world.size} processes share evaluation sets of only {smallest} sentences")
        return cfg, data

    def train(self, session: Session, data: ClassifyData) -> int:
        cfg, world, say = session.cfg, session.world, session.say
        say(f"data: {data.description}")
        for note in data.notes:
            say(note)
        say(
            f"model: {cfg.preset} preset, {cfg.layers}x{cfg.hidden} {'bidirectional ' if cfg.bidirectional else ''}"
            f"LSTM over {cfg.embedding_dim}-d embeddings, dropout {cfg.dropout}, batch {cfg.batch_size}, "
            f"{cfg.epochs} epochs, {cfg.precision}; device {session.device}, {torch.get_num_threads()} threads; "
            f"output {session.out}" + (f"; {world.size} processes (data parallel)" if world.distributed else "")
        )
        runs: list[dict[str, Any]] = []
        predictions: dict[str, list[dict[str, Any]]] = {m: [] for m in cfg.methods}
        for split in data.splits:
            encoded = encode_split(split, data, cfg.data.get("min_count", 1))
            for method in cfg.methods:
                run_dir = session.out / method / (f"fold-{split.fold}" if split.fold else "")
                trainer = ClassifierTrainer(method, cfg, encoded, data.num_classes, run_dir, session.device,
                                            **session.trainer_options())  # fmt: skip
                result, rows = trainer.train(**session.train_options())
                runs.append(result)
                predictions[method].extend(rows)
                if split.fold:
                    say(f"{method:>8} fold {split.fold}/{data.folds}: test error {100 * result['error']:.2f}%")
        if not world.is_main:
            return 0
        out = session.out
        columns = prediction_columns(data.num_classes)
        for method, rows in predictions.items():
            write_csv(out / method / "predictions.csv", columns, rows)
        results = [summarize(method, [r for r in runs if r["method"] == method], cfg) for method in cfg.methods]
        majority = statistics.fmean(r["majority_error"] for r in runs)
        write_json(out / "results.json", {
            "data": data.description, "num_classes": data.num_classes, "folds": data.folds,
            "folds_run": len(data.splits), "bayes_optimal": data.bayes, "majority_error": majority,
            "label_only_lines_skipped": {path: len(lines) for path, lines in data.label_only_lines.items()},
            "methods": results, "runs": runs,
        })  # fmt: skip
        write_csv(out / "results.csv", RESULT_COLUMNS, results)
        write_csv(out / "folds.csv", FOLD_COLUMNS, runs)
        print(format_table(results, data, cfg, majority))
        return 0


def summarize(method: str, runs: list[dict[str, Any]], cfg: ClassifyConfig) -> dict[str, Any]:
    """One method's row of results.csv: mean and std (over folds; None for one split) of the fold rows."""

    def mean(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return statistics.fmean(values) if values else None

    def std(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return statistics.stdev(values) if len(values) > 1 else None

    fold_lr = [r["lr"] for r in runs]
    return {
        # The lr the folds trained with (None where they differ): a finished fold keeps its own when the run
        # is resumed with another --lr.
        "method": method, "lr": shared_lr(fold_lr) if runs else cfg.lr[method],
        "fold_lr": fold_lr, "epochs": cfg.epochs, "folds": len(runs),
        "error_mean": mean("error"), "error_std": std("error"), "last_error_mean": mean("last_error"),
        "last_error_std": std("last_error"), "ece_mean": mean("ece"), "ece_std": std("ece"),
        "last_ece_mean": mean("last_ece"), "nll_mean": mean("nll"), "last_nll_mean": mean("last_nll"),
        "mean_entropy": mean("mean_entropy"), "mean_mutual_information": mean("mean_mutual_information"),
        "mean_std": mean("mean_std"), "num_samples": mean("num_samples"),
        **{key: mean(key) for key in ("boundary_mean_entropy", "boundary_mean_mutual_information",
                                      "shuffled_mean_entropy", "shuffled_mean_mutual_information")},
        "sec_per_epoch": statistics.median(r["sec_per_epoch"] for r in runs),
        "errors": [r["error"] for r in runs],
    }  # fmt: skip


def format_table(results: list[dict[str, Any]], data: ClassifyData, cfg: ClassifyConfig, majority: float) -> str:
    """The final stdout table (errors and ECE in %; entropy and mutual information in nats)."""
    over = f"mean ± std over {len(data.splits)} folds" if data.folds else "one split"
    lines = [
        "",
        f"Test error: {data.description}",
        f"{cfg.layers}x{cfg.hidden} {'bidirectional ' if cfg.bidirectional else ''}LSTM, {cfg.epochs} "
        f"epochs, {cfg.precision}, select {cfg.select}; error and ECE in % ({over}); 'last' = the last weights alone",
        "",
        f"{'method':<9} {'lr':>7} {'error':>14} {'ECE':>12} {'NLL':>7} {'last':>7} {'last ECE':>8} {'last NLL':>8} "
        f"{'entropy':>8} {'MI':>8} {'std':>7} {'samples':>8} {'s/epoch':>8}",
    ]

    def pm(m: float | None, s: float | None) -> str:
        if m is None:
            return "-"
        return f"{100 * m:.2f}" + ("" if s is None else f" ± {100 * s:.2f}")

    for r in results:
        lines.append(
            f"{r['method']:<9} {format_lr(r['lr']):>7} {pm(r['error_mean'], r['error_std']):>14} "
            f"{pm(r['ece_mean'], r['ece_std']):>12} {r['nll_mean']:>7.4f} {100 * r['last_error_mean']:>7.2f} "
            f"{100 * r['last_ece_mean']:>8.2f} {r['last_nll_mean']:>8.4f} {r['mean_entropy']:>8.4f} "
            f"{r['mean_mutual_information']:>8.4f} {r['mean_std']:>7.4f} {r['num_samples']:>8.3g} "
            f"{r['sec_per_epoch']:>8.2f}"
        )
    lines.append(f"{'majority class (training counts)':<33} {100 * majority:>6.2f}")
    if data.bayes is not None:
        b = data.bayes
        lines.append(
            f"{'Bayes-optimal (the source)':<33} {100 * b['realized_error']:>6.2f} {'':>12} {b['nll']:>7.4f}"
            f"   (expected error {100 * b['expected_error']:.2f} ± {100 * b['error_std']:.2f} over label draws)"
        )
    lines.append(
        "entropy: mean predictive entropy; MI: mean mutual information (nats); std: mean std across samples of "
        "the predicted class's probability"
    )

    def nats(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    lines.append("entropy / MI (nats) where: " + "; ".join(where for where, _, _ in UNCERTAINTY)
                 + " (the quarter of the test sentences with the smallest margin between the two likeliest classes; "
                 "the test sentences with their words in random order)")  # fmt: skip
    for r in results:
        lines.append(f"{r['method']:<9} " + "   ".join(f"{nats(r[h])} / {nats(r[m])}" for _, h, m in UNCERTAINTY))
    return "\n".join(lines)
