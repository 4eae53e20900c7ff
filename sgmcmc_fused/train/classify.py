"""Sentence-classifier trainer: ``python -m sgmcmc_fused.train classify [options]``.

Trains embedding → dropout → bidirectional DropConnectLSTM → dropout → linear classifiers
(`sgmcmc_fused.train.sentence_model`) with one or more methods (sgd, rmsprop, sgld, psgld;
`sgmcmc_fused.train.methods`), one after another from the same initialisation and data order, and
reports per method the test error, its calibration (ECE) and the predictive uncertainty of every test
sentence. The samplers' predictions are the Bayesian model average (SPEC §4): after burn-in, a sample
every `thin` steps; the class probabilities of the samples are averaged.

    python -m sgmcmc_fused.train classify          # embedded default: a synthetic task of known
                                                   # Bayes error, tiny model, rmsprop vs psgld, ~1 min
    python -m sgmcmc_fused.train classify --train ../shared/data/sentcls/TREC.train.all \\
        --test ../shared/data/sentcls/TREC.test.all --method sgd rmsprop sgld psgld
    python -m sgmcmc_fused.train classify --train rt-polarity.all --word-vectors vectors.txt  # 10-fold CV
    python -m sgmcmc_fused.train classify --resume runs/classify-...   # continue a stopped run

Data: files of "LABEL sentence" lines. With --test, the fixed split (TREC, SST-2), validation from
--valid or held out of the training file; without, k-fold cross-validation of --train (MR, CR, SUBJ,
MPQA), a validation part held out of each training fold. The vocabulary of each fold is built from its
training sentences (other words map to <unk>). Units: `lr` is the step size of the mean loss per
sentence (SPEC §1); num_data = training sentences.

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
import hashlib
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..bayes import (
    PredictiveAverager,
    expected_calibration_error,
    mutual_information,
    predictive_entropy,
    predictive_std,
)
from ..data import Vocabulary, kfold_splits, load_labelled_sentences, load_word2vec_text
from . import classify_config
from .checkpoint import (
    CheckpointError,
    capture_training_state,
    check_same_config,
    load_checkpoint,
    restore_training_state,
    warn_if_threads_changed,
    write_checkpoint,
)
from .classify_config import ConfigError
from .distributed import (
    SINGLE,
    World,
    any_rank,
    barrier,
    data_parallel,
    gather_dim,
    gather_objects,
    replica_checkpoint_state,
    restore_replica_state,
    run_in_world,
    shard,
    sum_ranks,
)
from .lm import _device, _InterruptFlag, _Printer, _Stop
from .methods import SAMPLERS, make_optimizer, set_noise
from .options import cpu_threads, parse_steps
from .runlog import write_csv, write_json, write_run_logs
from .sentence_model import SentenceClassifier, class_probabilities, pad_batch

#: Format tag of the checkpoints written here.
CHECKPOINT_FORMAT = "sgmcmc_fused.train.classify/1"
UNK = "<unk>"
EPOCH_COLUMNS = [
    "method", "fold", "epoch", "step", "lr", "noise", "train_loss", "train_error", "valid_error", "valid_avg_error",
    "test_error", "test_avg_error", "num_samples", "epoch_time_s", "eval_time_s", "skipped_steps",
]  # fmt: skip
SAMPLE_COLUMNS = ["method", "fold", "sample", "step", "epoch", "valid_error", "valid_avg_error", "test_error",
                  "test_avg_error"]  # fmt: skip
FOLD_COLUMNS = [
    "method", "fold", "lr", "epochs", "steps", "selected_epoch", "num_train", "num_valid", "num_test", "error",
    "last_error", "ece", "nll", "mean_entropy", "mean_mutual_information", "mean_std", "valid_error", "num_samples",
    "majority_error", "sec_per_epoch",
]  # fmt: skip
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
# data: labelled sentence sets, splits, the synthetic task


@dataclass
class LabelledSet:
    """Sentences with labels; `index` is each sentence's position among the examples of its file."""

    labels: torch.Tensor  # [N] int64
    sentences: list[list[str]]
    index: torch.Tensor  # [N] int64

    def __len__(self) -> int:
        return len(self.sentences)

    def subset(self, idx: torch.Tensor) -> LabelledSet:
        return LabelledSet(self.labels[idx], [self.sentences[i] for i in idx.tolist()], self.index[idx])


@dataclass
class Split:
    """One train/valid/test split: a fold of the cross-validation (fold 1..k) or the fixed split (fold 0)."""

    fold: int
    train: LabelledSet
    valid: LabelledSet | None
    test: LabelledSet


@dataclass
class ClassifyData:
    """The splits to run, and what the report says about them."""

    description: str
    num_classes: int
    splits: list[Split]
    folds: int | None  # k of a cross-validation, None for a fixed split
    #: The synthetic task: the Bayes-optimal classifier's expected error, its std, its error on the
    #: labels drawn, and its NLL (`SyntheticTask`).
    bayes: dict[str, float] | None = None
    word_vectors: tuple[Vocabulary, torch.Tensor] | None = None  # over every training word, + <unk>
    notes: list[str] = field(default_factory=list)


@dataclass
class SyntheticTask:
    """A seeded classification task with a known best possible error (`make_synthetic_task`).

    Attributes:
        train, test: the sentences (words "w0".."w{V-1}") and their observed (noisy) labels.
        word_probs: float64 [C, V], p(word | class).
        test_posterior: float64 [N_test, C], p(observed label = c | test sentence) under the source.
        bayes_error: mean over the test sentences of 1 - max_c test_posterior: the expected test error
            of the Bayes-optimal classifier on these sentences (the floor no classifier beats on average).
        bayes_error_std: the standard deviation of that classifier's error over draws of the test
            labels, sqrt(Σ_n q_n (1 - q_n)) / N with q_n = 1 - max_c test_posterior[n].
        bayes_realized_error: its error on the labels actually drawn.
        bayes_nll: its mean negative log-likelihood of the labels drawn (nats; the floor of the NLL).
    """

    train: LabelledSet
    test: LabelledSet
    word_probs: np.ndarray
    test_posterior: np.ndarray
    bayes_error: float
    bayes_error_std: float
    bayes_realized_error: float
    bayes_nll: float


def make_synthetic_task(
    num_classes: int = 4,
    vocab_size: int = 300,
    train_size: int = 2000,
    test_size: int = 1000,
    min_len: int = 4,
    max_len: int = 12,
    signal: float = 0.3,
    label_noise: float = 0.1,
    seed: int = 0,
) -> SyntheticTask:
    """Sentences from class-dependent word distributions, with label noise; the Bayes error is known.

    The source: a class y uniform over C classes; a length uniform in [min_len, max_len]; words drawn
    independently from p(w | y) = (1 - signal) q_0(w) + signal q_y(w), with q_0 a Zipf background
    shared by all classes and q_y a sparse Dirichlet(0.05) draw (a few dozen words typical of class y);
    the observed label is y, or with probability `label_noise` another class chosen uniformly.

    Given a sentence x, p(y | x) ∝ Π_t p(w_t | y) exactly (the words are independent given y), and
    p(observed = c | x) = (1 - η) p(y = c | x) + η / (C - 1) (1 - p(y = c | x)), η the label noise.
    """
    # Independent streams for the source, the training and the test sentences: changing one size
    # leaves the other sets (and the source) as they were.
    rng = np.random.default_rng([seed, 0x5E47, 0])
    ranks = rng.permutation(vocab_size)
    background = 1.0 / (1.0 + ranks)
    background /= background.sum()
    topics = rng.dirichlet(np.full(vocab_size, 0.05), size=num_classes)
    word_probs = (1 - signal) * background[None, :] + signal * topics  # [C, V]
    log_word_probs = np.log(word_probs)

    def sample(n: int, stream: int) -> tuple[LabelledSet, np.ndarray]:
        rng = np.random.default_rng([seed, 0x5E47, stream])
        classes = rng.integers(0, num_classes, size=n)
        lengths = rng.integers(min_len, max_len + 1, size=n)
        sentences, loglik = [], np.empty((n, num_classes))
        for i in range(n):
            words = rng.choice(vocab_size, size=lengths[i], p=word_probs[classes[i]])
            sentences.append([f"w{w}" for w in words])
            loglik[i] = log_word_probs[:, words].sum(1)
        flip = rng.random(n) < label_noise
        other = (classes + rng.integers(1, num_classes, size=n)) % num_classes  # uniform over the other classes
        observed = np.where(flip, other, classes)
        clean = np.exp(loglik - loglik.max(1, keepdims=True))
        clean /= clean.sum(1, keepdims=True)
        posterior = (1 - label_noise) * clean + label_noise / (num_classes - 1) * (1 - clean)
        labels = torch.from_numpy(observed).long()
        return LabelledSet(labels, sentences, torch.arange(n)), posterior

    train, _ = sample(train_size, 1)
    test, test_posterior = sample(test_size, 2)
    q = 1 - test_posterior.max(1)
    labels = test.labels.numpy()
    return SyntheticTask(
        train, test, word_probs, test_posterior, bayes_error=float(q.mean()),
        bayes_error_std=float(np.sqrt((q * (1 - q)).sum()) / len(q)),
        bayes_realized_error=float(np.mean(test_posterior.argmax(1) != labels)),
        bayes_nll=float(-np.log(test_posterior[np.arange(len(labels)), labels]).mean()),
    )  # fmt: skip


def _load_file(path: str) -> LabelledSet:
    try:
        labels, sentences = load_labelled_sentences(path)
    except (ValueError, OSError) as e:  # ValueError names file:line; OSError: missing, a directory, ...
        raise ConfigError(str(e)) from None
    return LabelledSet(labels, sentences, torch.arange(len(sentences)))


def _hold_out(
    train: LabelledSet, fraction: float, seed: list[int], what: str
) -> tuple[LabelledSet, LabelledSet | None]:
    """Split off round(fraction × N) random sentences (at least 1) for validation."""
    if fraction == 0:
        return train, None
    n_valid = max(1, round(fraction * len(train)))
    if len(train) - n_valid < 1:
        raise ConfigError(f"{what}: {len(train)} sentences are too few to hold out a validation part")
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0] >> 1))
    perm = torch.randperm(len(train), generator=gen)
    return train.subset(perm[n_valid:].sort().values), train.subset(perm[:n_valid].sort().values)


def load_classify_data(spec: dict[str, Any]) -> ClassifyData:
    """The splits of a run from the data part of its configuration.

    Raises:
        ConfigError: a missing or malformed file (naming file:line), too few sentences for the split,
            or a test/valid label that the training sentences never show.
    """
    seed = int(spec["seed"])
    frac = float(spec["valid_fraction"])
    if spec["kind"] == "synthetic":
        keys = ("num_classes", "vocab_size", "train_size", "test_size", "min_len", "max_len", "signal", "label_noise")
        task = make_synthetic_task(**{k: spec[k] for k in keys}, seed=seed)
        train, valid = _hold_out(task.train, frac, [seed, 0], "the synthetic task")
        c = spec["num_classes"]
        desc = (
            f"synthetic task: {c} classes, {spec['vocab_size']} words, {len(train)}/{len(valid or [])}/"
            f"{len(task.test)} train/valid/test sentences of {spec['min_len']}-{spec['max_len']} words, "
            f"signal {spec['signal']}, label noise {spec['label_noise']} (seed {seed})"
        )
        bayes = {
            "expected_error": task.bayes_error, "error_std": task.bayes_error_std,
            "realized_error": task.bayes_realized_error, "nll": task.bayes_nll,
        }  # fmt: skip
        return ClassifyData(desc, c, [Split(0, train, valid, task.test)], None, bayes=bayes)

    train_file = _load_file(spec["train"])
    names = [Path(spec["train"]).name]
    if spec["test"] is not None:
        test = _load_file(spec["test"])
        if spec["valid"] is not None:
            train, valid = train_file, _load_file(spec["valid"])
            names.append(Path(spec["valid"]).name)
        else:
            train, valid = _hold_out(train_file, frac, [seed, 0], spec["train"])
        names.append(Path(spec["test"]).name)  # in the order of the counts: train / valid / test
        splits = [Split(0, train, valid, test)]
        desc = f"{' / '.join(names)}: {len(train)}/{len(valid or [])}/{len(test)} train/valid/test sentences" + (
            "" if spec["valid"] or valid is None else f" (valid: {frac:g} of {names[0]} held out)"
        )
        folds = None
    else:
        k = int(spec["folds"])
        if len(train_file) < k:
            raise ConfigError(f"{spec['train']}: {len(train_file)} sentences are too few for {k}-fold cross-validation")
        splits = []
        for fold, (train_idx, test_idx) in enumerate(kfold_splits(len(train_file), k, seed), start=1):
            if spec.get("max_folds") is not None and fold > spec["max_folds"]:
                break
            train, valid = _hold_out(
                train_file.subset(train_idx), frac, [seed, fold], f"fold {fold} of {spec['train']}"
            )
            splits.append(Split(fold, train, valid, train_file.subset(test_idx)))
        desc = f"{names[0]}: {len(train_file)} sentences, {k}-fold cross-validation" + (
            f" (valid: {frac:g} of each training fold)" if frac else ""
        )
        if len(splits) < k:
            desc += f", first {len(splits)} folds only"
        folds = k
    num_classes = 1 + max(int(s.labels.max()) for sp in splits for s in (sp.train, sp.valid, sp.test) if s is not None)
    if num_classes < 2:
        raise ConfigError(f"{spec['train']}: every label is 0; a classifier needs at least two classes")
    present = {
        int(c) for sp in splits for s in (sp.train, sp.valid, sp.test) if s is not None for c in s.labels.unique()
    }
    absent = sorted(set(range(num_classes)) - present)
    if absent:
        hint = "labels counted from 1? subtract 1" if absent[0] == 0 else "renumber the labels 0..K-1"
        raise ConfigError(
            f"{spec['train']}: labels must be the class indices 0..K-1, but class(es) {absent} of 0..{num_classes - 1} "
            f"never occur ({hint})"
        )
    for sp in splits:
        seen = set(sp.train.labels.tolist())
        for name, s in (("valid", sp.valid), ("test", sp.test)):
            unseen = sorted(set([] if s is None else s.labels.tolist()) - seen)
            if unseen:
                where = f"fold {sp.fold}" if sp.fold else "the training sentences"
                raise ConfigError(f"{name} label(s) {unseen} never occur in {where}: check the label columns")
    desc += f", {num_classes} classes"
    data = ClassifyData(desc, num_classes, splits, folds)
    if spec.get("word_vectors"):
        # One pass over the (possibly huge) vector file for every fold: the vectors of all training words.
        vocab = Vocabulary.build((w for s in train_file.sentences for w in s), unk=UNK)
        try:
            vectors, found = load_word2vec_text(
                spec["word_vectors"], vocab, generator=torch.Generator().manual_seed(seed)
            )  # fmt: skip
        except (ValueError, OSError) as e:
            raise ConfigError(str(e)) from None
        if found == 0:
            raise ConfigError(
                f"--word-vectors {spec['word_vectors']}: none of the {len(vocab) - 1} training words has a vector "
                "there (a different tokenisation or letter case?)"
            )
        data.word_vectors = (vocab, vectors)
        data.notes.append(
            f"word vectors: {Path(spec['word_vectors']).name}, {vectors.shape[1]}-d, {found} of {len(vocab) - 1} "
            "training words found (others U(±0.25))"
        )
    return data


@dataclass
class EncodedSplit:
    """A split as id tensors over the vocabulary of its training sentences."""

    split: Split
    vocab: Vocabulary
    train: list[torch.Tensor]
    valid: list[torch.Tensor] | None
    test: list[torch.Tensor]
    embeddings: torch.Tensor | None
    unknown_test_tokens: int
    fingerprint: str


def encode_split(split: Split, data: ClassifyData, min_count: int = 1) -> EncodedSplit:
    vocab = Vocabulary.build((w for s in split.train.sentences for w in s), unk=UNK, min_count=min_count)

    def enc(s: LabelledSet | None) -> tuple[list[torch.Tensor] | None, int]:
        if s is None:
            return None, 0
        out, unknown = [], 0
        for words in s.sentences:
            ids, u = vocab.encode_counting(words)
            out.append(ids)
            unknown += u
        return out, unknown

    train, _ = enc(split.train)
    valid, _ = enc(split.valid)
    test, unknown = enc(split.test)
    embeddings = None
    if data.word_vectors is not None:
        wv_vocab, vectors = data.word_vectors
        embeddings = vectors[torch.tensor([wv_vocab.stoi[w] for w in vocab.itos])]
    h = hashlib.sha1()
    for name, s in (("train", split.train), ("valid", split.valid), ("test", split.test)):
        h.update(name.encode())
        if s is not None:
            for label, words in zip(s.labels.tolist(), s.sentences, strict=True):
                h.update(f"{label} {' '.join(words)}\n".encode())
    if embeddings is not None:
        h.update(embeddings.numpy().tobytes())
    return EncodedSplit(split, vocab, train, valid, test, embeddings, unknown, h.hexdigest()[:16])


# ---------------------------------------------------------------------------------------------------
# the run: configuration, data, every fold and method, the table


def _run(args: argparse.Namespace) -> int:
    if args.stop_after_steps is not None and args.stop_after_steps < 1:
        raise ConfigError(f"--stop-after-steps must be >= 1, got {args.stop_after_steps}")
    with cpu_threads(args.threads):
        return run_in_world(_device(args.device), lambda world, device: _run_in_world(args, world, device))


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
    say = _Printer(args.quiet, silent=not world.is_main)
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
    with _InterruptFlag() as interrupted:
        for split in data.splits:
            encoded = encode_split(split, data, cfg["data"].get("min_count", 1))
            for method in cfg["methods"]:
                run_dir = out / method / (f"fold-{split.fold}" if split.fold else "")
                trainer = ClassifierTrainer(method, cfg, encoded, data.num_classes, run_dir, device, world=world,
                                            say=say, progress=progress)  # fmt: skip
                try:
                    result, rows = trainer.train(stop_after=args.stop_after_steps, interrupted=interrupted)
                except _Stop as stop:
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


def prediction_columns(num_classes: int) -> list[str]:
    """Columns of METHOD/predictions.csv."""
    return (
        ["fold", "index", "label", "prediction"]
        + [f"mean_{c}" for c in range(num_classes)]
        + [f"std_{c}" for c in range(num_classes)]
        + ["entropy", "mutual_information"]
    )


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


# ---------------------------------------------------------------------------------------------------
# one method on one split


class ClassifierTrainer:
    """Trains one method on one split from the split's initialisation, or resumes from ``run_dir/checkpoint.pt``.

    Step numbering: step t (1-based) is the t-th parameter update. The samplers' noise is on for the
    steps t > burn_in; a sample is collected after step t = burn_in + k * thin, k >= 1, and its class
    probabilities on valid and test are computed at once: the test ones are stacked ([S, N, C], for the
    predictive std and mutual information), both folded into running means (`PredictiveAverager`).
    No parameters are stored. sgd/rmsprop collect too with ``average_optimizers``.
    """

    def __init__(self, method: str, cfg: dict[str, Any], data: EncodedSplit, num_classes: int, run_dir: Path,
                 device: torch.device, *, world: World = SINGLE, say=print, progress: bool = False):  # fmt: skip
        self.method, self.cfg, self.data, self.run_dir, self.device = method, cfg, data, run_dir, device
        self.world = world
        self.num_classes, self.say, self.progress = num_classes, say, progress
        self.fold = data.split.fold
        self.sampler = method in SAMPLERS
        self.collects = self.sampler or cfg["average_optimizers"]
        self.num_train = len(data.train)
        self.steps_per_epoch = math.ceil(self.num_train / cfg["batch_size"])
        self.burn_in = parse_steps(cfg["burn_in"], self.steps_per_epoch, "--burn-in", minimum=0)
        self.thin = parse_steps(cfg["thin"], self.steps_per_epoch, "--thin", minimum=1)
        self.train_labels = data.split.train.labels
        self.valid_labels = None if data.valid is None else data.split.valid.labels
        self.test_labels = data.split.test.labels

        # Same initialisation, dropout stream and data order for every method of a split.
        seed = (cfg["seed"] * 1_000_003 + self.fold) % 2**63
        torch.manual_seed(seed)
        self.model = SentenceClassifier(
            len(data.vocab), num_classes, embedding_dim=cfg["embedding_dim"], hidden_size=cfg["hidden"],
            num_layers=cfg["layers"], bidirectional=cfg["bidirectional"], dropout=cfg["dropout"],
            dropconnect=cfg["dropconnect"], mask=cfg["mask"], masked=cfg["masked"], embeddings=data.embeddings,
            freeze_embeddings=cfg["static_embeddings"], lstm_seed=seed, lstm_impl=cfg["lstm_impl"],
        ).to(device)  # fmt: skip
        self.forward_model = data_parallel(self.model, world, device, seed)
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.optimizer = make_optimizer(
            method, params, lr=cfg["lr"][method], num_data=self.num_train, seed=seed,
            temperature=classify_config.temperature(cfg["temperature"], self.num_train),
            weight_decay=cfg["weight_decay"], alpha=cfg["alpha"], eps=cfg["eps"], impl=cfg["step_impl"],
        )  # fmt: skip
        self.optimizer.nan_policy = cfg["nan_policy"]
        self.data_rng = torch.Generator().manual_seed(seed)
        self.averagers = {"test": PredictiveAverager(len(data.test))}
        if data.valid is not None:
            self.averagers["valid"] = PredictiveAverager(len(data.valid))
        self.test_samples: list[torch.Tensor] = []  # per collected sample: test class probabilities [N, C]
        self.epoch_test_probs: list[torch.Tensor] = []  # per epoch end: the last weights' test probabilities
        # Position and per-epoch accumulators.
        self.epoch = 0
        self.batch_in_epoch = 0
        self.step = 0
        self.epoch_rng_state = self.data_rng.get_state()
        self.loss_sum = 0.0
        self.errors = 0
        self.seen = 0
        self.train_time = 0.0
        self.eval_time = 0.0
        self.history: list[dict[str, Any]] = []
        self.curve: list[dict[str, Any]] = []
        self.checkpoint_path = run_dir / "checkpoint.pt"
        if self.checkpoint_path.exists():
            self._restore(load_checkpoint(self.checkpoint_path, CHECKPOINT_FORMAT))

    @property
    def name(self) -> str:
        return f"{self.method} fold {self.fold}" if self.fold else self.method

    # -- training ------------------------------------------------------------------------------------

    def train(self, stop_after: int | None = None, interrupted=False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Train to the configured number of epochs (from wherever the checkpoint left off).

        Returns the fold row (FOLD_COLUMNS) and the per-sentence prediction rows. Raises _Stop after
        checkpointing when `stop_after` steps are reached or `interrupted` becomes true.
        """
        cfg = self.cfg
        resume_hint = f"--resume {self.run_dir.parent.parent if self.fold else self.run_dir.parent}"
        if self.epoch < cfg["epochs"] and (self.step or self.batch_in_epoch):
            self.say(f"{self.name}: resuming at epoch {self.epoch + 1}, step {self.step}")
        while self.epoch < cfg["epochs"]:
            if stop_after is not None and self.step >= stop_after:
                raise _Stop(f"{self.name}: stopped after step {self.step} (--stop-after-steps); continue with "
                            f"{resume_hint}", 0)  # fmt: skip
            if any_rank(bool(interrupted), self.world, self.device):
                raise _Stop(f"{self.name}: interrupted at step {self.step}; checkpoint saved, continue with "
                            f"{resume_hint}", 130)  # fmt: skip
            self._train_epoch(stop_after, interrupted)
        return self._final_result()

    def _train_epoch(self, stop_after, interrupted) -> None:
        cfg, model, opt, data, world = self.cfg, self.model, self.optimizer, self.data, self.world
        self.data_rng.set_state(self.epoch_rng_state)
        order = torch.randperm(self.num_train, generator=self.data_rng)
        batches = torch.split(order, cfg["batch_size"])
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        errors = torch.zeros((), dtype=torch.long, device=self.device)
        seen = 0
        desc = f"{self.name} epoch {self.epoch + 1}/{cfg['epochs']}"
        bar = tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch, disable=not self.progress, leave=False,
                   desc=desc, unit="step", dynamic_ncols=True)  # fmt: skip
        model.train()
        t0 = time.perf_counter()
        eval_before = self.eval_time
        stopped = False
        try:
            for idx in batches[self.batch_in_epoch :]:
                step = self.step + 1
                noise = self.sampler and step > self.burn_in
                if noise != bool(opt.param_groups[0]["add_noise"]):
                    set_noise(opt, noise)
                batch_size = len(idx)
                share = 1.0
                if world.distributed:
                    mine = idx[shard(batch_size, world)]
                    # DDP averages the ranks' gradients: weight each rank's mean loss by its share of the
                    # batch. A rank left without a sentence (a last batch smaller than the process count)
                    # still runs forward and backward, on one sentence with weight 0, as DDP requires.
                    share = world.size * len(mine) / batch_size
                    idx = mine if len(mine) else idx[:1]
                tokens, lengths = pad_batch([data.train[i] for i in idx.tolist()], self.device)
                y = self.train_labels[idx].to(self.device, non_blocking=True)
                opt.zero_grad(set_to_none=True)
                logits = self.forward_model(tokens, lengths)
                loss = F.cross_entropy(logits, y)
                (loss * share if world.distributed else loss).backward()
                if cfg["clip"] > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
                opt.step()
                if share:  # this rank's sentences; summed over ranks below
                    loss_sum += loss.detach().double() * len(idx)
                    errors += (logits.detach().argmax(1) != y).sum()
                seen += batch_size
                self.step, self.batch_in_epoch = step, self.batch_in_epoch + 1
                if self.collects and step >= self.burn_in + self.thin and (step - self.burn_in) % self.thin == 0:
                    self._evaluate_sample()
                bar.update(1)
                if self.progress and step % 20 == 0 and not world.distributed:
                    bar.set_postfix(loss=f"{(self.loss_sum + float(loss_sum)) / (self.seen + seen):.4f}")
                stop_now = any_rank(bool(interrupted), world, self.device)  # all ranks stop at the same step
                stop = (stop_after is not None and step >= stop_after) or stop_now
                if stop and self.batch_in_epoch < self.steps_per_epoch:
                    stopped = True
                    break
        finally:
            bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.train_time += time.perf_counter() - t0 - (self.eval_time - eval_before)
        self.loss_sum += float(sum_ranks(loss_sum, world))
        self.errors += int(sum_ranks(errors, world))
        self.seen += seen
        if stopped:
            self.save_checkpoint()
            hint = f"--resume {self.run_dir.parent.parent if self.fold else self.run_dir.parent}"
            if stop_now:
                raise _Stop(f"{self.name}: interrupted at step {self.step}; checkpoint saved, continue with {hint}",
                            130)  # fmt: skip
            raise _Stop(f"{self.name}: stopped after step {self.step} (--stop-after-steps); continue with {hint}", 0)
        self._end_epoch()

    def _probabilities(self, sentences: list[torch.Tensor]) -> torch.Tensor:
        """Class probabilities [N, C] (float64, CPU) of the current weights; data parallel, each rank
        computes its share of the sentences and all ranks receive the whole result."""
        if not self.world.distributed:
            return class_probabilities(self.model, sentences, self.cfg["eval_batch_size"], self.device)
        mine = sentences[shard(len(sentences), self.world)]
        local = class_probabilities(self.model, mine, self.cfg["eval_batch_size"], self.device)
        return gather_dim(local.to(self.device), 0, self.world).cpu()

    def _evaluate_sample(self) -> None:
        """Class probabilities of the sample just taken on valid and test, folded into the averages."""
        t0 = time.perf_counter()
        row: dict[str, Any] = {"method": self.method, "fold": self.fold, "step": self.step,
                               "epoch": round(self.step / self.steps_per_epoch, 4)}  # fmt: skip
        for split, sentences, labels in (("valid", self.data.valid, self.valid_labels),
                                         ("test", self.data.test, self.test_labels)):  # fmt: skip
            if sentences is None:
                continue
            probs = self._probabilities(sentences)
            avg = self.averagers[split]
            avg.update(probs)
            row[f"{split}_error"] = error_rate(probs, labels)
            row[f"{split}_avg_error"] = error_rate(avg.mean, labels)
            if split == "test":
                self.test_samples.append(probs)
        row["sample"] = self.averagers["test"].num_samples
        self.curve.append(row)
        self.eval_time += time.perf_counter() - t0

    def _end_epoch(self) -> None:
        t0 = time.perf_counter()
        test = self._probabilities(self.data.test)
        valid = None if self.data.valid is None else self._probabilities(self.data.valid)
        self.eval_time += time.perf_counter() - t0
        self.epoch_test_probs.append(test)
        n = self.averagers["test"].num_samples
        has_valid = valid is not None
        row = {
            "method": self.method, "fold": self.fold, "epoch": self.epoch + 1, "step": self.step,
            "lr": self.cfg["lr"][self.method], "noise": bool(self.optimizer.param_groups[0]["add_noise"]),
            "train_loss": self.loss_sum / max(self.seen, 1), "train_error": self.errors / max(self.seen, 1),
            "valid_error": error_rate(valid, self.valid_labels) if has_valid else None,
            "valid_avg_error": error_rate(self.averagers["valid"].mean, self.valid_labels) if has_valid and n else None,
            "test_error": error_rate(test, self.test_labels),
            "test_avg_error": error_rate(self.averagers["test"].mean, self.test_labels) if n else None,
            "num_samples": n, "epoch_time_s": round(self.train_time, 4), "eval_time_s": round(self.eval_time, 4),
            "skipped_steps": self.optimizer.skipped_steps,
        }  # fmt: skip
        self.history.append(row)
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_rng_state = self.data_rng.get_state()
        self.loss_sum, self.errors, self.seen, self.train_time, self.eval_time = 0.0, 0, 0, 0.0, 0.0
        self.save_checkpoint()

        def pct(v):
            return "-" if v is None else f"{100 * v:.2f}%"

        avg = f"  valid avg {pct(row['valid_avg_error'])} ({n} samples)" if n else ""
        self.say(
            f"{self.name:>8} epoch {row['epoch']:>3}/{self.cfg['epochs']}  train loss {row['train_loss']:.4f} "
            f"error {pct(row['train_error'])}  valid {pct(row['valid_error'])}{avg}  {row['epoch_time_s']:.1f} s"
        )

    # -- results -------------------------------------------------------------------------------------

    def selected_epoch(self) -> int:
        """The epoch (1-based) whose predictions are reported: the last, or the best on validation."""
        if self.cfg["select"] == "last" or not self.history:
            return len(self.history)

        def key(row):
            v = row["valid_avg_error"] if row["valid_avg_error"] is not None else row["valid_error"]
            return (v, row["epoch"])

        return min(self.history, key=key)["epoch"]

    def _final_result(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        e = self.selected_epoch()
        row = self.history[e - 1]
        last = self.epoch_test_probs[e - 1]
        s = row["num_samples"]
        if self.collects and not s:
            self.say(f"{self.name}: no sample by epoch {e} (burn-in {self.burn_in} + thin {self.thin} steps, "
                     f"{self.step} steps taken): reporting the last weights")  # fmt: skip
        # The model average of the samples taken by the end of the selected epoch, or the last weights.
        stack = torch.stack(self.test_samples[:s]) if s else last[None]
        mean = stack.mean(0)
        std = predictive_std(stack)
        entropy = predictive_entropy(mean)
        mi = mutual_information(stack)
        labels = self.test_labels
        pred = mean.argmax(1)
        times = [r["epoch_time_s"] for r in self.history]
        counts = torch.bincount(self.train_labels, minlength=self.num_classes)
        result = {
            "method": self.method, "fold": self.fold, "lr": self.cfg["lr"][self.method], "epochs": self.epoch,
            "steps": self.step, "selected_epoch": e, "num_train": self.num_train,
            "num_valid": 0 if self.data.valid is None else len(self.data.valid), "num_test": len(self.data.test),
            "error": error_rate(mean, labels), "last_error": error_rate(last, labels),
            "ece": expected_calibration_error(mean, labels),
            "nll": float(-torch.log(mean.gather(1, labels[:, None])).mean()),
            "mean_entropy": float(entropy.mean()), "mean_mutual_information": float(mi.mean()),
            "mean_std": float(std.gather(1, pred[:, None]).mean()),
            "valid_error": row["valid_avg_error"] if row["valid_avg_error"] is not None else row["valid_error"],
            "num_samples": s,
            "majority_error": float((labels != counts.argmax()).double().mean()),
            "sec_per_epoch": statistics.median(times) if times else 0.0,
        }  # fmt: skip
        index = self.data.split.test.index.tolist()
        rows = []
        for n in range(len(index)):
            r = {"fold": self.fold, "index": index[n], "label": int(labels[n]), "prediction": int(pred[n])}
            r.update({f"mean_{c}": float(mean[n, c]) for c in range(self.num_classes)})
            r.update({f"std_{c}": float(std[n, c]) for c in range(self.num_classes)})
            r.update(entropy=float(entropy[n]), mutual_information=float(mi[n]))
            rows.append(r)
        self._write_logs(result)
        return result, rows

    def _write_logs(self, result: dict[str, Any] | None = None) -> None:
        if not self.world.is_main:
            return
        write_run_logs(self.run_dir, EPOCH_COLUMNS, self.history, SAMPLE_COLUMNS, self.curve, {
            "method": self.method, "fold": self.fold, "config": self.cfg, "burn_in_steps": self.burn_in,
            "thin_steps": self.thin, "steps_per_epoch": self.steps_per_epoch, "vocab_size": len(self.data.vocab),
            "unknown_test_tokens": self.data.unknown_test_tokens, "epochs": self.history, "samples": self.curve,
            "result": result,
        })  # fmt: skip

    # -- checkpoints ---------------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` atomically, then the logs (derived from the same state).

        Data parallel, every rank calls it: the ranks check that their parameters are bitwise equal and
        send rank 0 their RNG states; rank 0 writes.
        """
        world = self.world
        replica = replica_checkpoint_state(list(self.model.parameters()), world, f"{self.name}: the parameters")
        if not world.is_main:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "method": self.method,
            "fold": self.fold,
            "config": self.cfg,
            "data_fingerprint": self.data.fingerprint,
            **capture_training_state(
                epoch=self.epoch,
                batch_in_epoch=self.batch_in_epoch,
                step=self.step,
                model=self.model,
                optimizer=self.optimizer,
                device=self.device,
                epoch_rng=self.epoch_rng_state,
            ),  # fmt: skip
            "loss_sum": self.loss_sum,
            "errors": self.errors,
            "seen": self.seen,
            "train_time": self.train_time,
            "eval_time": self.eval_time,
            "averagers": {k: v.state_dict() for k, v in self.averagers.items()},
            "test_samples": torch.stack(self.test_samples) if self.test_samples else None,
            "epoch_test_probs": torch.stack(self.epoch_test_probs) if self.epoch_test_probs else None,
            "history": self.history,
            "curve": self.curve,
            **replica,
        }
        write_checkpoint(state, self.checkpoint_path)
        self._write_logs()

    def _restore(self, ck: dict[str, Any]) -> None:
        if ck["method"] != self.method or ck["fold"] != self.fold:
            raise CheckpointError(
                f"{self.checkpoint_path} is a checkpoint of {ck['method']!r} fold {ck['fold']}, not {self.name!r}"
            )
        if ck["data_fingerprint"] != self.data.fingerprint:
            raise ConfigError(f"{self.checkpoint_path}: the data differ from the data this run was trained on")
        check_same_config(self.checkpoint_path, ck["config"], self.cfg, classify_config.RESUMABLE_OVERRIDES)
        self.epoch, self.batch_in_epoch, self.step, self.epoch_rng_state = restore_training_state(
            ck, model=self.model, optimizer=self.optimizer, device=self.device, nan_policy=self.cfg["nan_policy"]
        )
        restore_replica_state(ck, self.world, self.device, self.checkpoint_path)
        if self.epoch < self.cfg["epochs"]:  # a finished method computes nothing more
            warn_if_threads_changed(ck, self.device, self.name)
        self.loss_sum, self.errors, self.seen = float(ck["loss_sum"]), int(ck["errors"]), int(ck["seen"])
        self.train_time, self.eval_time = float(ck["train_time"]), float(ck["eval_time"])
        for k, v in self.averagers.items():
            v.load_state_dict(ck["averagers"][k])
        self.test_samples = [] if ck["test_samples"] is None else list(ck["test_samples"])
        self.epoch_test_probs = [] if ck["epoch_test_probs"] is None else list(ck["epoch_test_probs"])
        self.history, self.curve = list(ck["history"]), list(ck["curve"])
        if self.epoch > self.cfg["epochs"]:
            raise ConfigError(f"{self.checkpoint_path} is at epoch {self.epoch}, past --epochs {self.cfg['epochs']}")


def error_rate(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax (the first on ties) is not the label: probs [N, C], labels [N]."""
    return float((probs.argmax(1) != labels.to(probs.device)).double().mean())
