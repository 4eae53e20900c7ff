"""Data of the language-model trainer: loading a corpus from the configuration, batching it, and the
reference perplexities printed beside the models' (unigram; Bayes-optimal for the synthetic source)."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...data import (
    Corpus,
    HMMSource,
    batchify,
    load_char_corpus,
    load_word_corpus,
    load_word_corpus_dir,
    num_random_batches,
    random_batches,
    sample_synthetic_corpus,
    successive_batches,
)
from ..options import ConfigError


@dataclass
class LMData:
    """A loaded corpus and what the trainer derives from it.

    Attributes:
        corpus: the three splits and the vocabulary.
        description: one line naming the data, for the results table.
        source: the hidden Markov model the synthetic corpus was drawn from (else None), for
            `reference_perplexities`.
        fingerprint: sizes and CRC32s of the splits; a resumed run checks that its data are the same.
    """

    corpus: Corpus
    description: str
    source: HMMSource | None
    fingerprint: dict[str, Any]

    @property
    def vocab_size(self) -> int:
        return len(self.corpus.vocab)

    @property
    def num_train_tokens(self) -> int:
        """N of the Langevin step (docs/spec.md#langevin-step): training tokens (each a target once an epoch)."""
        return self.corpus.num_tokens


def load_lm_data(spec: dict[str, Any]) -> LMData:
    """Load the corpus described by the configuration's ``data`` entry (see `sgmcmc_fused.train.lm.config.data_spec`).

    Raises:
        ConfigError: a path that does not exist or does not hold a corpus, or an unreadable corpus
            (the loaders' own messages name the file and line).
    """
    kind = spec["kind"]
    source = None
    try:
        if kind == "synthetic":
            corpus, source = sample_synthetic_corpus(
                seed=spec["seed"], num_states=spec["num_states"], vocab_size=spec["vocab_size"],
                train_tokens=spec["train_tokens"], valid_tokens=spec["eval_tokens"], test_tokens=spec["eval_tokens"],
            )  # fmt: skip
            description = (
                f"synthetic HMM source ({spec['num_states']} states, {spec['vocab_size']} words, seed {spec['seed']})"
            )
        elif kind == "word":
            corpus = _load_word(spec["path"])
            description = f"word corpus {spec['path']}"
        elif kind == "char":
            if Path(spec["path"]).is_dir():
                raise ConfigError(f"--char-corpus {spec['path']} is a folder: give the text file itself")
            if not Path(spec["path"]).is_file():
                raise ConfigError(f"--char-corpus {spec['path']}: no such file")
            corpus = load_char_corpus(spec["path"], tuple(spec["split"]))
            description = f"character corpus {spec['path']}"
        else:
            raise ConfigError(f"unknown data kind {kind!r}")
    except (OSError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"cannot load the {kind} corpus: {e}") from e
    description += (
        f"; {corpus.train.numel():,}/{corpus.valid.numel():,}/{corpus.test.numel():,} train/valid/test tokens, "
        f"vocabulary {len(corpus.vocab):,}"
    )
    return LMData(corpus, description, source, fingerprint(corpus))


def _load_word(path: str) -> Corpus:
    p = Path(path)
    if p.is_dir():
        return load_word_corpus_dir(p)
    for suffix in (".txt", ".tokens"):  # PTB's ptb.train.txt, WikiText's wiki.train.tokens
        files = [Path(f"{path}.{split}{suffix}") for split in ("train", "valid", "test")]
        if all(f.is_file() for f in files):
            return load_word_corpus(*files)
    missing = [name for split in ("train", "valid", "test") if not Path(name := f"{path}.{split}.txt").is_file()]
    raise ConfigError(
        f"--word-corpus {path}: neither a folder nor a prefix of existing files (missing {', '.join(missing)})"
    )


def fingerprint(corpus: Corpus) -> dict[str, Any]:
    out: dict[str, Any] = {"vocab_size": len(corpus.vocab), "level": corpus.level}
    for name in ("train", "valid", "test"):
        t = getattr(corpus, name).contiguous().cpu()
        out[name] = [int(t.numel()), zlib.crc32(t.numpy().tobytes())]
    return out


def reference_perplexities(data: LMData, split: str, eval_batch_size: int) -> tuple[float, float | None]:
    """(unigram, Bayes-optimal) perplexity of `split` ("valid" or "test") on the tokens the trainer
    scores there, with the context it has: the split cut into `eval_batch_size` streams (`batchify`
    drops the last N mod B tokens), each stream's first token given as context only.

    Unigram: p(w) = (count_train(w) + 1) / (N + V), the no-context baseline. Bayes-optimal: the
    source's exact predictive p(x_t | the stream's earlier tokens) by the forward algorithm, the
    floor a model scored on these streams approaches from above (synthetic data only, else None).
    """
    corpus = data.corpus
    streams = batchify(getattr(corpus, split), eval_batch_size)  # [T, B]
    counts = torch.bincount(corpus.train, minlength=len(corpus.vocab)).double() + 1
    unigram = math.exp(-float(torch.log(counts / counts.sum())[streams[1:]].mean()))
    if data.source is None:
        return unigram, None
    log_p = torch.cat([data.source.log_predictive(streams[:, b])[1:] for b in range(streams.shape[1])])
    return unigram, math.exp(-float(log_p.mean()))


def check_splits(data: LMData, batch_size: int, bptt: int, eval_batch_size: int, minibatch: str) -> None:
    """Clear errors for a corpus too short for the batch shape (before any training starts)."""
    c = data.corpus
    if minibatch == "random" and num_random_batches(c.train.numel(), bptt, batch_size) < 1:
        raise ConfigError(
            f"the training split has {c.train.numel()} tokens: too few for one random minibatch of "
            f"{batch_size} segments of {bptt} tokens (lower --batch-size or --bptt)"
        )
    for name, tokens, b in (("training", c.train, batch_size), ("validation", c.valid, eval_batch_size),
                            ("test", c.test, eval_batch_size)):  # fmt: skip
        if tokens.numel() // b < 2:
            raise ConfigError(
                f"the {name} split has {tokens.numel()} tokens: too few for {b} parallel streams of at least "
                "2 tokens (lower --batch-size / --eval-batch-size)"
            )


def steps_per_epoch(data: LMData, batch_size: int, bptt: int, minibatch: str) -> int:
    """Minibatches in one epoch (successive: ceil((T - 1) / bptt) with T = N // B)."""
    n = data.corpus.train.numel()
    if minibatch == "random":
        return num_random_batches(n, bptt, batch_size)
    return math.ceil((n // batch_size - 1) / bptt)


def epoch_batches(train: torch.Tensor, batch_size: int, bptt: int, minibatch: str, generator: torch.Generator):
    """One epoch of (x [t, B], y [t, B]) minibatches; `train` is [T, B] (successive, already batchified
    on the device) or [N] (random). Random batches draw their permutation from `generator` when the
    first batch is taken."""
    if minibatch == "random":
        return random_batches(train, bptt, batch_size, generator)
    return successive_batches(train, bptt)


def prepare_train(data: LMData, batch_size: int, minibatch: str, device: torch.device) -> torch.Tensor:
    """The training split on the device: batchified [T, B] for successive minibatches, flat [N] for random."""
    train = data.corpus.train
    return (batchify(train, batch_size) if minibatch == "successive" else train).to(device)
