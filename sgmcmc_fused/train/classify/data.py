"""The classifier's data: labelled sentence files, their splits, and the embedded synthetic task.

`load_classify_data` reads ``LABEL sentence`` files (or generates the synthetic task) and cuts them into
splits: the fixed split of a test file (TREC, SST-2), or k-fold cross-validation of one file (MR, CR,
SUBJ, MPQA), each with a validation part. `encode_split` turns one split into word indices over a
vocabulary built from that split's training sentences alone.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...data import (
    Vocabulary,
    describe_label_only_lines,
    kfold_splits,
    load_word2vec_text,
    read_labelled_sentences,
)
from ..options import ConfigError

#: The token of words outside a split's training vocabulary.
UNK = "<unk>"


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
    #: Lines skipped for holding a label and no sentence, by file (line numbers, 1-based).
    label_only_lines: dict[str, list[int]] = field(default_factory=dict)


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


def _load_file(
    path: str, label_only: str, skipped: dict[str, list[int]], train: tuple[str, LabelledSet] | None = None
) -> LabelledSet:
    """The examples of `path`; label-only lines skipped are recorded in `skipped[path]`.

    With `train` (the training file's path and examples), a label it never shows is refused, naming
    this file's line: a classifier cannot learn a class it is never shown.
    """
    try:
        examples = read_labelled_sentences(path, label_only)
    except (ValueError, OSError) as e:  # ValueError names file:line; OSError: missing, a directory, ...
        raise ConfigError(str(e)) from None
    if examples.label_only_lines:
        skipped[path] = examples.label_only_lines
    if train is not None:
        known = set(train[1].labels.tolist())
        unknown = [(n, c) for n, c in zip(examples.lines, examples.labels.tolist(), strict=True) if c not in known]
        if unknown:
            (line, label), more = unknown[0], len(unknown) - 1
            raise ConfigError(
                f"{path}:{line}: label {label} never occurs in the training file {train[0]}"
                + (f" (nor do the labels of {more} more line(s))" if more else "")
                + f"; its labels are {sorted(known)[:10]}{' ...' if len(known) > 10 else ''}"
            )
    return LabelledSet(examples.labels, examples.sentences, torch.arange(len(examples.sentences)))


def _hold_out(
    train: LabelledSet, fraction: float, seed: list[int], what: str
) -> tuple[LabelledSet, LabelledSet | None]:
    """Split off round(fraction × N) random sentences (at least 1) for validation.

    A class whose sentences all fell into the held-out part keeps one of them in training (the first
    in the random order), so that the held-out part never holds a class training cannot learn.
    """
    if fraction == 0:
        return train, None
    n_valid = max(1, round(fraction * len(train)))
    if len(train) - n_valid < 1:
        raise ConfigError(f"{what}: {len(train)} sentences are too few to hold out a validation part")
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0] >> 1))
    perm = torch.randperm(len(train), generator=gen).tolist()
    labels = train.labels.tolist()
    in_training = {labels[i] for i in perm[n_valid:]}
    held, kept = [], perm[n_valid:]
    for i in perm[:n_valid]:
        if labels[i] in in_training:
            held.append(i)
        else:
            in_training.add(labels[i])
            kept.append(i)
    if not held:
        raise ConfigError(
            f"{what}: {len(train)} sentences are too few to hold out a validation part and keep every class in training"
        )
    return train.subset(torch.tensor(sorted(kept))), train.subset(torch.tensor(sorted(held)))


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

    # Runs saved before --label-only-lines existed stopped at such a line: "skip" reads what they read.
    label_only, skipped = spec.get("label_only_lines", "skip"), {}
    train_file = _load_file(spec["train"], label_only, skipped)
    # The classes are those of the training file (the other files' labels must be among them).
    num_classes = 1 + int(train_file.labels.max())
    if num_classes < 2:
        raise ConfigError(f"{spec['train']}: every label is 0; a classifier needs at least two classes")
    present = set(train_file.labels.unique().tolist())
    if len(present) < num_classes:
        # The first few absent classes, without listing range(K): K may be a stray 10**12.
        absent = list(itertools.islice((c for c in range(num_classes) if c not in present), 5))
        missing = num_classes - len(present)
        hint = "labels counted from 1? subtract 1" if absent[0] == 0 else "renumber the labels 0..K-1"
        shown = str(absent) if missing <= len(absent) else f"{str(absent)[:-1]}, ...] ({missing} classes)"
        raise ConfigError(
            f"{spec['train']}: labels must be the class indices 0..K-1, but class(es) {shown} of "
            f"0..{num_classes - 1} never occur ({hint})"
        )
    names = [Path(spec["train"]).name]
    if spec["test"] is not None:
        known = (spec["train"], train_file)
        test = _load_file(spec["test"], label_only, skipped, known)
        if spec["valid"] is not None:
            train, valid = train_file, _load_file(spec["valid"], label_only, skipped, known)
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
    for sp in splits:
        seen = set(sp.train.labels.tolist())
        for name, s in (("valid", sp.valid), ("test", sp.test)):
            unseen = sorted(set([] if s is None else s.labels.tolist()) - seen)
            if unseen:
                where = f"fold {sp.fold}" if sp.fold else "the training sentences"
                raise ConfigError(f"{name} label(s) {unseen} never occur in {where}: check the label columns")
    desc += f", {num_classes} classes"
    data = ClassifyData(desc, num_classes, splits, folds, label_only_lines=skipped)
    data.notes.extend(describe_label_only_lines(path, lines) for path, lines in skipped.items())
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
