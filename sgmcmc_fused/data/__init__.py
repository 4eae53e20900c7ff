"""Data for the trainers: corpora, minibatch streams, sentence sets, a synthetic source, downloads.

    from sgmcmc_fused.data import load_word_corpus_dir, batchify, successive_batches
    corpus = load_word_corpus_dir("data/ptb")
    for x, y in successive_batches(batchify(corpus.train, 20), bptt=20): ...

`make_synthetic_corpus` samples a corpus from a random hidden Markov model and returns its
Bayes-optimal test perplexity; `download.download` fetches the public corpora.
"""

from .corpus import (
    EOS,
    UNK,
    Corpus,
    Vocabulary,
    batchify,
    load_char_corpus,
    load_word_corpus,
    load_word_corpus_dir,
    num_random_batches,
    random_batches,
    read_text,
    successive_batches,
)
from .sentences import (
    LabelledFile,
    describe_label_only_lines,
    kfold_splits,
    load_labelled_sentences,
    load_word2vec_text,
    read_labelled_sentences,
)
from .synthetic import HMMSource, make_synthetic_corpus, sample_synthetic_corpus

__all__ = [
    "EOS",
    "UNK",
    "Corpus",
    "HMMSource",
    "Vocabulary",
    "batchify",
    "kfold_splits",
    "load_char_corpus",
    "LabelledFile",
    "describe_label_only_lines",
    "load_labelled_sentences",
    "read_labelled_sentences",
    "load_word2vec_text",
    "load_word_corpus",
    "load_word_corpus_dir",
    "make_synthetic_corpus",
    "sample_synthetic_corpus",
    "num_random_batches",
    "random_batches",
    "read_text",
    "successive_batches",
]
