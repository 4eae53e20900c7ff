"""Sentence-classifier trainer: ``python -m sgmcmc_fused.train classify [options]``.

Trains embedding → dropout → bidirectional DropConnectLSTM → dropout → linear classifiers
(`sgmcmc_fused.train.sentence_model`) with one or more methods (sgd, rmsprop, sgld, psgld;
`sgmcmc_fused.train.methods`), one after another from the same initialisation and data order, and
reports per method the test error, its calibration (ECE) and the predictive uncertainty of every test
sentence. The samplers' predictions are the Bayesian model average
(docs/spec.md#posterior-averaging): after burn-in, a sample
every `thin` steps; the class probabilities of the samples are averaged.

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
index in its file, label, prediction, the predictive mean and std across samples of each class
probability, predictive entropy and mutual information, in nats); per method and fold
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
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import classify_config
from .checkpoint import CheckpointError
from .classify_config import ConfigError
from .classify_data import ClassifyData, encode_split, load_classify_data
from .classify_trainer import FOLD_COLUMNS, ClassifierTrainer, prediction_columns
from .distributed import World, barrier, gather_objects, run_in_world
from .options import cpu_threads
from .run_control import InterruptFlag, Printer, Stop, resolve_device
from .runlog import write_csv, write_json

RESULT_COLUMNS = [
    "method", "lr", "epochs", "folds", "error_mean", "error_std", "last_error_mean", "last_error_std", "ece_mean",
    "ece_std", "nll_mean", "mean_entropy", "mean_mutual_information", "mean_std", "num_samples", "sec_per_epoch",
]  # fmt: skip
#: Options that only steer how a run executes; --resume accepts them (plus RESUMABLE_OVERRIDES).
_RUN_CONTROL = {
    "out", "resume", "device", "threads", "stop_after_steps", "progress", "quiet", "func", "parser", "command",
}  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``classify`` subcommand."""
    p = subparsers.add_parser(
        "classify", help="bidirectional LSTM sentence classifiers with SG-MCMC, model averaging and uncertainty",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    classify_config.add_arguments(p)
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; bad options, malformed data files and checkpoints become a usage error (status 2)."""
    try:
        return _run(args)
    except (ConfigError, CheckpointError) as e:
        args.parser.error(str(e))
    return 2  # not reached: parser.error exits


# ---------------------------------------------------------------------------------------------------
# the run: configuration, data, every fold and method, the table


def _run(args: argparse.Namespace) -> int:
    if args.stop_after_steps is not None and args.stop_after_steps < 1:
        raise ConfigError(f"--stop-after-steps must be >= 1, got {args.stop_after_steps}")
    with cpu_threads(args.threads):
        return run_in_world(resolve_device(args.device), lambda world, device: _run_in_world(args, world, device))


def _run_in_world(args: argparse.Namespace, world: World, device: torch.device) -> int:
    if args.resume:
        out = Path(args.resume)
        cfg = _resumed_config(args, out)
    else:
        cfg = classify_config.resolve_config(args)
        if args.out:
            out = Path(args.out)
        else:
            name = "synthetic" if cfg["data"]["kind"] == "synthetic" else Path(cfg["data"]["train"]).name
            # Every rank must write to rank 0's folder (the clock may pass a second between ranks).
            out = Path(gather_objects(f"runs/classify-{name}-{time.strftime('%Y%m%d-%H%M%S')}", world)[0])
        if (out / "config.json").exists():
            raise ConfigError(
                f"--out {out} already holds a run: continue it with --resume {out}, or choose another --out"
            )
    data = load_classify_data(cfg["data"])
    if data.word_vectors is not None:
        dim = data.word_vectors[1].shape[1]
        if not args.resume and args.embedding_dim is not None and args.embedding_dim != dim:
            raise ConfigError(f"--embedding-dim {args.embedding_dim} differs from the {dim}-d --word-vectors")
        cfg["embedding_dim"] = dim
    if cfg["select"] == "best-valid" and any(sp.valid is None for sp in data.splits):
        raise ConfigError("--select best-valid needs validation sentences (--valid, or --valid-fraction > 0)")
    if world.distributed:
        smallest = min(min(len(sp.test), len(sp.valid) if sp.valid is not None else len(sp.test)) for sp in data.splits)
        if smallest < world.size:
            raise ConfigError(f"{world.size} processes share evaluation sets of only {smallest} sentences")
    barrier(world)  # every rank has checked --out before rank 0 writes into it
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", cfg)
    barrier(world)
    say = Printer(args.quiet, silent=not world.is_main)
    say(f"data: {data.description}")
    for note in data.notes:
        say(note)
    say(
        f"model: {cfg['preset']} preset, {cfg['layers']}x{cfg['hidden']} "
        f"{'bidirectional ' if cfg['bidirectional'] else ''}LSTM over {cfg['embedding_dim']}-d embeddings, "
        f"dropout {cfg['dropout']}, batch {cfg['batch_size']}, {cfg['epochs']} epochs; device {device}, "
        f"{torch.get_num_threads()} threads; output {out}"
        + (f"; {world.size} processes (data parallel)" if world.distributed else "")
    )
    progress = args.progress if args.progress is not None else (sys.stderr.isatty() and not args.quiet)
    progress = progress and world.is_main
    runs: list[dict[str, Any]] = []
    predictions: dict[str, list[dict[str, Any]]] = {m: [] for m in cfg["methods"]}
    with InterruptFlag() as interrupted:
        for split in data.splits:
            encoded = encode_split(split, data, cfg["data"].get("min_count", 1))
            for method in cfg["methods"]:
                run_dir = out / method / (f"fold-{split.fold}" if split.fold else "")
                trainer = ClassifierTrainer(method, cfg, encoded, data.num_classes, run_dir, device, world=world,
                                            say=say, progress=progress)  # fmt: skip
                try:
                    result, rows = trainer.train(stop_after=args.stop_after_steps, interrupted=interrupted)
                except Stop as stop:
                    say(str(stop), force=True)
                    return stop.status
                runs.append(result)
                predictions[method].extend(rows)
                if split.fold:
                    say(f"{method:>8} fold {split.fold}/{data.folds}: test error {100 * result['error']:.2f}%")
    if not world.is_main:
        return 0
    columns = prediction_columns(data.num_classes)
    for method, rows in predictions.items():
        write_csv(out / method / "predictions.csv", columns, rows)
    results = [summarize(method, [r for r in runs if r["method"] == method], cfg) for method in cfg["methods"]]
    majority = statistics.fmean(r["majority_error"] for r in runs)
    write_json(out / "results.json", {
        "data": data.description, "num_classes": data.num_classes, "folds": data.folds,
        "folds_run": len(data.splits), "bayes_optimal": data.bayes, "majority_error": majority,
        "methods": results, "runs": runs,
    })  # fmt: skip
    write_csv(out / "results.csv", RESULT_COLUMNS, results)
    write_csv(out / "folds.csv", FOLD_COLUMNS, runs)
    print(format_table(results, data, cfg, majority))
    return 0


def _resumed_config(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The saved configuration of the run in `out`, with --epochs changed if given."""
    path = out / "config.json"
    if not path.is_file():
        raise ConfigError(f"--resume {out}: no run there (no config.json)")
    cfg = json.loads(path.read_text())
    parser: argparse.ArgumentParser = args.parser
    changed = sorted(
        k for k, v in vars(args).items()
        if k not in _RUN_CONTROL and k not in classify_config.RESUMABLE_OVERRIDES and v != parser.get_default(k)
    )  # fmt: skip
    if changed:
        names = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise ConfigError(
            f"--resume continues the run with its saved configuration; {names} cannot be changed "
            "(only --epochs and the run options --device, --threads, --stop-after-steps, --progress, --quiet)"
        )
    if args.epochs is not None:
        cfg["epochs"] = args.epochs
        classify_config.check_config(cfg)
    return cfg


def summarize(method: str, runs: list[dict[str, Any]], cfg: dict[str, Any]) -> dict[str, Any]:
    """One method's row of results.csv: mean and std (over folds; None for one split) of the fold rows."""

    def mean(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return statistics.fmean(values) if values else None

    def std(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return statistics.stdev(values) if len(values) > 1 else None

    return {
        "method": method, "lr": cfg["lr"][method], "epochs": cfg["epochs"], "folds": len(runs),
        "error_mean": mean("error"), "error_std": std("error"), "last_error_mean": mean("last_error"),
        "last_error_std": std("last_error"), "ece_mean": mean("ece"), "ece_std": std("ece"), "nll_mean": mean("nll"),
        "mean_entropy": mean("mean_entropy"), "mean_mutual_information": mean("mean_mutual_information"),
        "mean_std": mean("mean_std"), "num_samples": mean("num_samples"),
        "sec_per_epoch": statistics.median(r["sec_per_epoch"] for r in runs),
        "errors": [r["error"] for r in runs],
    }  # fmt: skip


def format_table(results: list[dict[str, Any]], data: ClassifyData, cfg: dict[str, Any], majority: float) -> str:
    """The final stdout table (errors and ECE in %; entropy and mutual information in nats)."""
    over = f"mean ± std over {len(data.splits)} folds" if data.folds else "one split"
    lines = [
        "",
        f"Test error: {data.description}",
        f"{cfg['layers']}x{cfg['hidden']} {'bidirectional ' if cfg['bidirectional'] else ''}LSTM, {cfg['epochs']} "
        f"epochs, select {cfg['select']}; error and ECE in % ({over}); 'last' = the last weights alone",
        "",
        f"{'method':<9} {'lr':>7} {'error':>14} {'last':>7} {'ECE':>12} {'NLL':>7} {'entropy':>8} {'MI':>8} "
        f"{'std':>7} {'samples':>8} {'s/epoch':>8}",
    ]

    def pm(m: float | None, s: float | None) -> str:
        if m is None:
            return "-"
        return f"{100 * m:.2f}" + ("" if s is None else f" ± {100 * s:.2f}")

    for r in results:
        lines.append(
            f"{r['method']:<9} {r['lr']:>7.3g} {pm(r['error_mean'], r['error_std']):>14} "
            f"{100 * r['last_error_mean']:>7.2f} {pm(r['ece_mean'], r['ece_std']):>12} {r['nll_mean']:>7.4f} "
            f"{r['mean_entropy']:>8.4f} {r['mean_mutual_information']:>8.4f} {r['mean_std']:>7.4f} "
            f"{r['num_samples']:>8.3g} {r['sec_per_epoch']:>8.2f}"
        )
    lines.append(f"{'majority class (training counts)':<33} {100 * majority:>6.2f}")
    if data.bayes is not None:
        b = data.bayes
        lines.append(
            f"{'Bayes-optimal (the source)':<33} {100 * b['realized_error']:>6.2f} {'':>7} {'':>12} {b['nll']:>7.4f}"
            f"   (expected error {100 * b['expected_error']:.2f} ± {100 * b['error_std']:.2f} over label draws)"
        )
    lines.append(
        "entropy: mean predictive entropy; MI: mean mutual information (nats); std: mean std across samples of "
        "the predicted class's probability"
    )
    return "\n".join(lines)
