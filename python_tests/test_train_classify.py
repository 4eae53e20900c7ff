"""The sentence-classifier trainer (`python -m sgmcmc_fused.train classify`) and the `download` command.

Runs are tiny (a 1x16 bidirectional LSTM on a few hundred to 1500 synthetic sentences, a few epochs):
a second or two each on 2 CPU cores. Every number checked is recomputed here from the saved files.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import json
import math
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from sgmcmc_fused.data import download as dl
from sgmcmc_fused.train import main
from sgmcmc_fused.train.checkpoint import load_checkpoint
from sgmcmc_fused.train.classify.data import (
    LabelledSet,
    _hold_out,
    encode_split,
    load_classify_data,
    make_synthetic_task,
)
from sgmcmc_fused.train.classify.trainer import ClassifierTrainer, near_boundary, shuffled_sentences
from sgmcmc_fused.train.options import ConfigError

#: 1350 training sentences / batch 50 = 27 steps per epoch; burn-in 2 epochs (54 steps), a sample every
#: round(0.25 * 27) = 7 steps: samples after steps 61, 68, ..., 159 (15 of them) in 6 epochs (162 steps).
TINY = [
    "classify", "--synthetic-train-size", "1500", "--synthetic-test-size", "600", "--hidden", "16",
    "--embedding-dim", "16", "--epochs", "6", "--burn-in", "2ep", "--thin", "0.25ep", "--threads", "2",
    "--no-progress", "--quiet",
]  # fmt: skip
TINY_SAMPLES = 15


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _predictive(rows: list[dict[str, str]], num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean [N, C], std [N, C], labels [N]) from predictions.csv rows (floats round-trip exactly)."""
    mean = np.array([[float(r[f"mean_{c}"]) for c in range(num_classes)] for r in rows])
    std = np.array([[float(r[f"std_{c}"]) for c in range(num_classes)] for r in rows])
    return mean, std, np.array([int(r["label"]) for r in rows])


def _ece(mean: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error, equal-width bins (b/M, (b+1)/M], written independently of sgmcmc_fused.bayes."""
    conf = mean.max(1)
    correct = mean.argmax(1) == labels
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.sum() / len(conf) * abs(correct[sel].mean() - conf[sel].mean())
    return total


def _write_sentences(path: Path, labels, sentences) -> None:
    path.write_text("".join(f"{int(y)} {' '.join(s)}\n" for y, s in zip(labels, sentences, strict=True)))


def test_synthetic_bayes_error_is_the_error_of_the_true_posterior():
    """The task's Bayes error is what the classifier argmax p(label | x) actually scores on freshly drawn labels
    (the labels are drawn by the generative process, not from the computed posterior), and it sits between
    the label noise alone and chance."""
    task = make_synthetic_task(train_size=2, test_size=20000, seed=3)
    labels = task.test.labels.numpy()
    realized = np.mean(task.test_posterior.argmax(1) != labels)
    assert realized == pytest.approx(task.bayes_realized_error)
    assert abs(realized - task.bayes_error) < 4 * task.bayes_error_std, (realized, task.bayes_error)
    assert 0.1 < task.bayes_error < 0.75
    assert np.allclose(task.test_posterior.sum(1), 1) and np.allclose(task.word_probs.sum(1), 1)
    # Same seed, same task; the test set does not depend on the training-set size.
    again = make_synthetic_task(train_size=5, test_size=20000, seed=3)
    assert again.test.sentences == task.test.sentences and torch.equal(again.test.labels, task.test.labels)


def test_synthetic_end_to_end_numbers_match_the_saved_predictions(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--out", str(out)]) == 0
    table = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    bayes, chance = res["bayes_optimal"], res["majority_error"]
    assert 0.1 < bayes["expected_error"] < 0.5 < chance
    by_method = {r["method"]: r for r in res["methods"]}
    assert list(by_method) == ["rmsprop", "psgld"]
    for method, r in by_method.items():
        # Learns: far below chance; never (beyond sampling noise) below the best possible classifier.
        assert bayes["realized_error"] - 0.03 < r["error_mean"] < 0.6 * chance, (method, r)
        assert r["nll_mean"] > bayes["nll"] - 0.05
        rows = _csv(out / method / "predictions.csv")
        assert [int(x["index"]) for x in rows] == list(range(600))
        mean, std, labels = _predictive(rows, res["num_classes"])
        assert np.allclose(mean.sum(1), 1)
        # Error and ECE recomputed from the per-sentence file equal the reported ones.
        assert np.mean(mean.argmax(1) != labels) == pytest.approx(r["error_mean"], abs=1e-12)
        assert _ece(mean, labels) == pytest.approx(r["ece_mean"], abs=1e-9)
        entropy = -np.sum(np.where(mean > 0, mean * np.log(np.where(mean > 0, mean, 1)), 0), 1)
        assert np.allclose(entropy, [float(x["entropy"]) for x in rows], atol=1e-9)
        mi = np.array([float(x["mutual_information"]) for x in rows])
        assert np.all(mi >= 0) and np.all(mi <= entropy + 1e-9)
        assert f"{100 * r['error_mean']:.2f}" in table
    rms, psgld = by_method["rmsprop"], by_method["psgld"]
    # The optimiser predicts with its last weights: one "sample", no spread.
    assert rms["num_samples"] == 0 and rms["error_mean"] == rms["last_error_mean"]
    assert rms["mean_mutual_information"] == 0 and rms["mean_std"] == 0
    # The sampler averages its 15 samples; they disagree somewhat.
    assert psgld["num_samples"] == TINY_SAMPLES
    assert psgld["mean_mutual_information"] > 0 and psgld["mean_std"] > 0
    samples = _csv(out / "psgld" / "samples.csv")
    assert [int(s["step"]) for s in samples] == [54 + 7 * k for k in range(1, TINY_SAMPLES + 1)]
    # Each sentence's predictive mean, std and mutual information, recomputed in numpy from the
    # samples' class probabilities that the checkpoint keeps ([S, N, C]).
    checkpoint = load_checkpoint(out / "psgld" / "checkpoint.pt")
    per_sample = checkpoint["test_samples"].double().numpy()
    assert per_sample.shape == (TINY_SAMPLES, 600, res["num_classes"])
    rows = _csv(out / "psgld" / "predictions.csv")
    mean, std, labels = _predictive(rows, res["num_classes"])
    np.testing.assert_allclose(mean, per_sample.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(std, per_sample.std(0, ddof=0), rtol=0, atol=1e-12)
    # The last weights' figures, beside the average's, recomputed from their test probabilities [N, C].
    assert (rms["last_ece_mean"], rms["last_nll_mean"]) == (rms["ece_mean"], rms["nll_mean"])
    run = next(r for r in res["runs"] if r["method"] == "psgld")
    last = checkpoint["epoch_test_probs"][run["selected_epoch"] - 1].double()
    assert psgld["last_error_mean"] == pytest.approx(np.mean(last.numpy().argmax(1) != labels), abs=1e-12)
    assert psgld["last_ece_mean"] == pytest.approx(_ece(last.numpy(), labels), abs=1e-9)
    assert psgld["last_nll_mean"] == pytest.approx(-np.log(last.numpy()[np.arange(600), labels]).mean(), rel=1e-9)
    assert psgld["last_nll_mean"] != pytest.approx(psgld["nll_mean"], rel=1e-3)

    def entropy_of(p):
        return -(p * np.log(np.clip(p, 1e-300, None))).sum(-1)

    mi = entropy_of(per_sample.mean(0)) - entropy_of(per_sample).mean(0)
    np.testing.assert_allclose([float(x["mutual_information"]) for x in rows], mi, rtol=0, atol=1e-9)
    assert psgld["mean_std"] == pytest.approx(std[np.arange(600), mean.argmax(1)].mean(), abs=1e-12)
    # Near the decision boundary: the 150 sentences with the smallest margin between the two likeliest
    # classes of the average; out of distribution: the test sentences with their words shuffled.
    top2 = np.sort(mean, 1)[:, -2:]
    boundary = np.argsort(top2[:, 1] - top2[:, 0], kind="stable")[:150]
    assert psgld["boundary_mean_entropy"] == pytest.approx(entropy_of(mean)[boundary].mean(), abs=1e-9)
    assert psgld["boundary_mean_mutual_information"] == pytest.approx(mi[boundary].mean(), abs=1e-9)
    assert psgld["boundary_mean_entropy"] > psgld["mean_entropy"]  # the uncertain ones, by construction
    shuffled = checkpoint["shuffled_samples"].double().numpy()
    assert shuffled.shape == per_sample.shape and not np.allclose(shuffled, per_sample)
    shuffled_mi = entropy_of(shuffled.mean(0)) - entropy_of(shuffled).mean(0)
    assert psgld["shuffled_mean_entropy"] == pytest.approx(entropy_of(shuffled.mean(0)).mean(), abs=1e-9)
    assert psgld["shuffled_mean_mutual_information"] == pytest.approx(shuffled_mi.mean(), abs=1e-9)
    # RMSprop's last weights: their own shuffled probabilities at the last epoch, one "sample".
    last_shuffled = load_checkpoint(out / "rmsprop" / "checkpoint.pt")["epoch_shuffled_probs"][-1].double().numpy()
    assert rms["shuffled_mean_entropy"] == pytest.approx(entropy_of(last_shuffled).mean(), abs=1e-9)
    assert rms["shuffled_mean_mutual_information"] == 0
    # The online running average (PredictiveAverager) ends where the stacked samples' mean does.
    assert float(samples[-1]["test_avg_error"]) == pytest.approx(psgld["error_mean"], abs=1e-12)
    # Before burn-in the two methods are the same computation (same initialisation, data order, kernels).
    logs = {m: _csv(out / m / "log.csv") for m in by_method}
    assert logs["rmsprop"][1]["train_loss"] == logs["psgld"][1]["train_loss"]
    assert logs["rmsprop"][3]["train_loss"] != logs["psgld"][3]["train_loss"]
    assert "Bayes-optimal (the source)" in table and "majority class" in table
    assert [r["method"] for r in _csv(out / "results.csv")] == ["rmsprop", "psgld"]


def test_shuffled_sentences_are_seeded_permutations_of_each_sentence():
    sentences = [torch.arange(n) + 10 * n for n in (1, 5, 12, 30)]
    a, b = shuffled_sentences(sentences, seed=3), shuffled_sentences(sentences, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(torch.equal(torch.sort(x).values, s) for x, s in zip(a, sentences, strict=True))
    assert not torch.equal(a[3], sentences[3])
    assert not all(torch.equal(x, y) for x, y in zip(a, shuffled_sentences(sentences, seed=4), strict=True))


def test_near_boundary_takes_the_smallest_margins():
    mean = torch.tensor([[0.5, 0.5, 0.0], [0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    # margins 0, 0.85, 0.05, 0.5, 0.7: the two smallest are rows 0 and 2.
    assert near_boundary(mean, 0.4).tolist() == [0, 2]
    assert near_boundary(mean, 0.01).tolist() == [0]


def test_kfold_covers_every_sentence_once(tmp_path):
    task = make_synthetic_task(train_size=300, test_size=2, seed=1)
    data = tmp_path / "all.txt"
    _write_sentences(data, task.train.labels.tolist(), task.train.sentences)
    out = tmp_path / "cv"
    argv = ["classify", "--train", str(data), "--folds", "3", "--epochs", "1", "--hidden", "8", "--embedding-dim",
            "8", "--method", "rmsprop", "sgld", "--burn-in", "0", "--thin", "1", "--no-progress", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["folds"] == 3 and res["folds_run"] == 3
    runs = _csv(out / "folds.csv")
    for method in ("rmsprop", "sgld"):
        rows = _csv(out / method / "predictions.csv")
        index = sorted(int(r["index"]) for r in rows)
        assert index == list(range(300))  # each sentence is a test sentence exactly once
        assert all(int(r["label"]) == int(task.train.labels[int(r["index"])]) for r in rows)
        fold_sizes = [sum(r["fold"] == str(k) for r in rows) for k in (1, 2, 3)]
        assert fold_sizes == [100, 100, 100]
        errors = []
        for k in (1, 2, 3):
            mean, _, labels = _predictive([r for r in rows if r["fold"] == str(k)], 4)
            errors.append(float(np.mean(mean.argmax(1) != labels)))
            run = next(r for r in runs if r["method"] == method and r["fold"] == str(k))
            # Training = the other two folds minus the 10 % validation part: 200 - 20.
            assert (int(run["num_train"]), int(run["num_valid"]), int(run["num_test"])) == (180, 20, 100)
        summary = next(r for r in res["methods"] if r["method"] == method)
        assert summary["error_mean"] == pytest.approx(np.mean(errors), abs=1e-12)
        assert summary["error_std"] == pytest.approx(np.std(errors, ddof=1), abs=1e-12)
    # sgld with burn-in 0 and thin 1 collects a sample after every step: ceil(180 / 50) = 4.
    assert all(int(r["num_samples"]) == 4 for r in runs if r["method"] == "sgld")


def test_fixed_split_files_word_vectors_and_select(tmp_path):
    task = make_synthetic_task(num_classes=3, train_size=400, test_size=50, seed=2)
    train, valid, test = tmp_path / "train.txt", tmp_path / "valid.txt", tmp_path / "test.txt"
    _write_sentences(train, task.train.labels[:350].tolist(), task.train.sentences[:350])
    _write_sentences(valid, task.train.labels[350:].tolist(), task.train.sentences[350:])
    _write_sentences(test, task.test.labels.tolist(), [s + ["never-seen"] for s in task.test.sentences])
    vectors = tmp_path / "vec.txt"
    vectors.write_text("2 6\n" + "".join(f"w{i} " + " ".join(f"{0.01 * (i + j):.3f}" for j in range(6)) + "\n"
                                         for i in (0, 5)))  # fmt: skip
    out = tmp_path / "fixed"
    argv = ["classify", "--train", str(train), "--valid", str(valid), "--test", str(test), "--word-vectors",
            str(vectors), "--hidden", "8", "--epochs", "3", "--method", "psgld", "--burn-in", "1ep",
            "--thin", "2", "--select", "best-valid", "--no-progress", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["embedding_dim"] == 6  # the vectors' width
    (run,) = _csv(out / "folds.csv")
    assert (int(run["num_train"]), int(run["num_valid"]), int(run["num_test"])) == (350, 50, 50)
    data = json.loads((out / "results.json").read_text())["data"]
    assert data.startswith("train.txt / valid.txt / test.txt: 350/50/50 train/valid/test sentences"), data
    rows = _csv(out / "psgld" / "predictions.csv")
    assert [int(r["index"]) for r in rows] == list(range(50)) and {r["fold"] for r in rows} == {"0"}
    log = _csv(out / "psgld" / "log.csv")
    # best-valid: the epoch whose model-average validation error is lowest (the earliest on ties).
    errs = [float(r["valid_avg_error"] or r["valid_error"]) for r in log]
    assert int(run["selected_epoch"]) == 1 + errs.index(min(errs))
    assert float(run["num_samples"]) == int(log[int(run["selected_epoch"]) - 1]["num_samples"])
    summary = json.loads((out / "psgld" / "log.json").read_text())
    assert summary["unknown_test_tokens"] >= 50  # "never-seen" maps to <unk>


def test_the_held_out_part_keeps_every_class_in_training():
    """A class whose few sentences all fall into the random validation part keeps one in training;
    every other split is exactly the random one (seeded randperm, the first round(f * N) held out)."""
    labels = torch.tensor([0, 1] * 20 + [2])  # class 2: a single sentence
    sentences = [[f"s{i}"] for i in range(len(labels))]
    train = LabelledSet(labels, sentences, torch.arange(len(labels)))
    moved = 0
    for seed in range(60):
        kept, held = _hold_out(train, 0.1, [seed, 0], "t")
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 0]).generate_state(1, np.uint64)[0] >> 1))
        perm = torch.randperm(len(labels), generator=gen)
        random_held = set(perm[:4].tolist())
        assert 2 in kept.labels.tolist() and 2 not in held.labels.tolist()
        assert sorted(kept.index.tolist() + held.index.tolist()) == list(range(41))
        if 40 in random_held:  # the single class-2 sentence was drawn: it stays in training instead
            moved += 1
            assert set(held.index.tolist()) == random_held - {40}
        else:
            assert set(held.index.tolist()) == random_held
    assert moved >= 2  # the case arises (about 1 seed in 10)
    tiny = LabelledSet(torch.tensor([0, 1]), [["a"], ["b"]], torch.arange(2))
    with pytest.raises(ConfigError, match="too few to hold out a validation part and keep every class in training"):
        _hold_out(tiny, 0.5, [0, 0], "t")


def test_lines_with_a_label_and_no_sentence_are_skipped_and_counted(tmp_path, capsys):
    """Some distributed sets hold a few "LABEL" lines with no text: they are skipped, named in the
    output and counted in results.json; --label-only-lines error stops at the first."""
    task = make_synthetic_task(num_classes=2, train_size=200, test_size=40, seed=5)
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    _write_sentences(train, task.train.labels.tolist(), task.train.sentences)
    lines = train.read_text().splitlines(keepends=True)
    lines[10:10] = ["1\n"]  # line 11
    lines[50:50] = ["0 \n"]  # line 51
    train.write_text("".join(lines))
    _write_sentences(test, task.test.labels.tolist(), task.test.sentences)
    argv = ["classify", "--train", str(train), "--test", str(test), "--hidden", "8", "--embedding-dim", "8",
            "--epochs", "1", "--method", "sgd", "--no-progress"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"{train}: skipped 2 lines that hold a label and no sentence (lines 11, 51)" in out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["label_only_lines_skipped"] == {str(train): 2}
    assert results["runs"][0]["num_train"] + results["runs"][0]["num_valid"] == 200  # every sentence, no more
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--label-only-lines", "error", "--out", str(tmp_path / "strict")])
    assert exc.value.code == 2 and f"{train}:11: label 1 has no sentence after it" in capsys.readouterr().err


def test_bf16_precision_classifies_like_fp32(tmp_path, capsys):
    """--precision bf16: autocast forwards, fp32 weights; the error within 2 points of the fp32 run's."""
    runs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert main([*TINY, "--method", "psgld", "--epochs", "3", "--precision", precision, "--out", str(out)]) == 0
        runs[precision] = json.loads((out / "results.json").read_text())["runs"][0]
    assert "LSTM, 3 epochs, bf16, select last" in capsys.readouterr().out
    assert abs(runs["bf16"]["error"] - runs["fp32"]["error"]) <= 0.02, runs
    assert abs(runs["bf16"]["nll"] / runs["fp32"]["nll"] - 1) < 0.05, runs


def test_word_vectors_initialise_their_words_rows(tmp_path):
    """Each training word with a vector starts from the file's numbers; the others from U(±0.25).
    With --static-embeddings the trained model still holds exactly those rows."""
    train, test, vectors = tmp_path / "train.txt", tmp_path / "test.txt", tmp_path / "vec.txt"
    _write_sentences(
        train, [0, 1] * 30, [["good", "film", f"x{i}"] if i % 2 == 0 else ["bad", "film"] for i in range(60)]
    )
    _write_sentences(test, [0, 1], [["good"], ["bad"]])
    table = {"good": [0.5, -1.0, 2.0], "bad": [-0.5, 1.0, -2.0], "absent": [9.0, 9.0, 9.0]}
    vectors.write_text("3 3\n" + "".join(f"{w} {' '.join(map(str, v))}\n" for w, v in table.items()))
    spec = {"kind": "files", "train": str(train), "test": str(test), "valid": None, "valid_fraction": 0.0,
            "word_vectors": str(vectors), "folds": None, "max_folds": None, "min_count": 1, "seed": 0}  # fmt: skip
    data = load_classify_data(spec)
    enc = encode_split(data.splits[0], data)
    for word in ("good", "bad"):
        assert enc.embeddings[enc.vocab.stoi[word]].tolist() == table[word]
    others = [enc.vocab.stoi[w] for w in enc.vocab.itos if w not in table]
    assert enc.embeddings[others].abs().max() <= 0.25 and enc.embeddings[others].std() > 0.05

    out = tmp_path / "run"
    argv = ["classify", "--train", str(train), "--test", str(test), "--word-vectors", str(vectors),
            "--static-embeddings", "--valid-fraction", "0", "--hidden", "4", "--epochs", "1", "--method", "rmsprop",
            "--no-progress", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    model = load_checkpoint(out / "rmsprop" / "checkpoint.pt")["model"]
    (name,) = [k for k in model if k.endswith("weight") and tuple(model[k].shape) == tuple(enc.embeddings.shape)]
    assert torch.equal(model[name], enc.embeddings)


def _bad_file(tmp_path: Path, text: str, name: str = "bad.txt") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _with_vectors(tmp_path: Path, vectors: str, *extra: str) -> list[str]:
    """A two-class fixed split over the words a, b, c, with `vectors` as the --word-vectors file."""
    train, test = _bad_file(tmp_path, "0 a b\n1 b c\n"), _bad_file(tmp_path, "0 a\n", "t.txt")
    return ["--train", train, "--test", test, "--word-vectors", _bad_file(tmp_path, vectors, "vec.txt"),
            "--valid-fraction", "0", *extra]  # fmt: skip


@pytest.mark.parametrize(
    "make_argv, message",
    [
        (lambda p: ["--train", _bad_file(p, "0 a b\n1 c d\nx e f\n")], r"bad\.txt:3: expected 'LABEL sentence'"),
        (
            lambda p: ["--train", _bad_file(p, "0 a b\n1\n"), "--label-only-lines", "error"],
            r"bad\.txt:2: label 1 has no sentence",
        ),
        (lambda p: ["--train", _bad_file(p, "0 a\x00b\n")], r"bad\.txt:1: control character"),
        (lambda p: ["--train", _bad_file(p, "\n\n")], r"no 'LABEL sentence' lines"),
        (lambda p: ["--train", str(p / "missing.txt")], r"missing\.txt"),
        (lambda p: ["--train", _bad_file(p, "0 a\n1 b\n"), "--folds", "3"], r"too few for 3-fold"),
        (lambda p: ["--train", _bad_file(p, "0 a\n1 b\n"), "--folds", "1"], r"--folds must be >= 2"),
        (  # a stray label of the test or valid file is named there, not blamed on the training file
            lambda p: ["--train", _bad_file(p, "0 a\n1 b\n0 c\n"), "--test", _bad_file(p, "0 a\n2 b\n7 c\n", "t.txt")],
            r"t\.txt:2: label 2 never occurs in the training file .*bad\.txt "
            r"\(nor do the labels of 1 more line\(s\)\); its labels are \[0, 1\]",
        ),
        (
            lambda p: [
                "--train",
                _bad_file(p, "0 a\n1 b\n"),
                "--valid",
                _bad_file(p, "0 a\n\n12 b\n", "v.txt"),
                "--test",
                _bad_file(p, "0 a\n", "t.txt"),
            ],  # fmt: skip
            r"v\.txt:3: label 12 never occurs in the training file",
        ),
        (
            lambda p: ["--train", _bad_file(p, "0 a\n1 b\n"), "--valid", _bad_file(p, "0 a\n", "v.txt")],
            r"--valid needs --test",
        ),
        (lambda p: ["--test", _bad_file(p, "0 a\n")], r"--test needs --train"),
        (
            lambda p: ["--train", _bad_file(p, "1 a\n2 b\n1 c\n2 d\n"), "--test", _bad_file(p, "1 a\n2 b\n", "t.txt")],
            r"class\(es\) \[0\] of 0\.\.2 never occur \(labels counted from 1\?",
        ),
        (
            lambda p: ["--train", _bad_file(p, "0 a\n3 b\n0 c\n3 d\n"), "--folds", "2"],
            r"class\(es\) \[1, 2\] of 0\.\.3 never occur \(renumber the labels 0\.\.K-1\)",
        ),
        (  # a stray huge label: a short message, not a list of a million classes
            lambda p: ["--train", _bad_file(p, "0 a\n1 b\n0 c\n1000000 d\n"), "--folds", "2"],
            r"class\(es\) \[2, 3, 4, 5, 6, \.\.\.\] \(999998 classes\) of 0\.\.1000000 never occur",
        ),
        (lambda p: _with_vectors(p, "A 1 2\nB 1 2\n"), r"vec\.txt: none of the 3 training words has a vector"),
        (
            lambda p: _with_vectors(p, "a 1 2\n", "--embedding-dim", "5"),
            r"--embedding-dim 5 differs from the 2-d --word-vectors",
        ),
        (lambda p: ["--method", "adam"], r"unknown method 'adam'"),
        (lambda p: ["--temperature", "hot"], r"--temperature 'hot'"),
        (lambda p: ["--burn-in", "soon"], r"--burn-in 'soon'"),
        (lambda p: ["--dropout", "1.5"], r"--dropout must be in \[0, 1\)"),
        (lambda p: ["--valid-fraction", "0", "--select", "best-valid"], r"best-valid needs validation"),
        (lambda p: ["--synthetic-label-noise", "0.8"], r"--synthetic-label-noise must be in"),
        (lambda p: ["--resume", str(p / "nothing")], r"no run there"),
        (lambda p: _with_vectors(p, "a 1 2\nb 1\n"), r"vec\.txt:2: expected a word and 2 numbers"),
    ],
)
def test_bad_arguments_and_malformed_files_are_usage_errors(tmp_path, capsys, make_argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["classify", "--out", str(tmp_path / "run"), *make_argv(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(message, err), err


def test_a_new_lr_for_a_finished_method_leaves_its_results_as_trained(tmp_path):
    out = tmp_path / "done"
    assert main([*TINY, "--method", "sgld", "--epochs", "1", "--lr", "0.5", "--out", str(out)]) == 0
    before = json.loads((out / "results.json").read_text())["methods"][0]
    assert main(["classify", "--resume", str(out), "--lr", "sgld=0.1", "--no-progress", "--quiet"]) == 0
    after = json.loads((out / "results.json").read_text())["methods"][0]
    assert after["lr"] == before["lr"] == 0.5 and after["error_mean"] == before["error_mean"]
    assert _csv(out / "results.csv")[0]["lr"] == "0.5"
    assert json.loads((out / "config.json").read_text())["lr"]["sgld"] == 0.5


def test_resume_after_a_stop_is_bit_identical(tmp_path):
    ref = tmp_path / "ref"
    assert main([*TINY, "--method", "psgld", "--epochs", "4", "--out", str(ref)]) == 0
    out = tmp_path / "stopped"
    # Checkpoint within epochs (every 25 of the 27 steps an epoch) without stopping, stop mid-epoch
    # (step 70: after the first samples), then resume from the checkpoint.
    stop = ["--checkpoint-every", "25", "--stop-after-steps", "70"]
    assert main([*TINY, "--method", "psgld", "--epochs", "4", *stop, "--out", str(out)]) == 0
    assert not (out / "results.json").exists()
    assert main(["classify", "--resume", str(out), "--no-progress", "--quiet"]) == 0
    assert (out / "psgld" / "predictions.csv").read_bytes() == (ref / "psgld" / "predictions.csv").read_bytes()
    a, b = (json.loads((d / "results.json").read_text())["runs"][0] for d in (ref, out))
    for key in ("error", "ece", "nll", "mean_mutual_information", "num_samples", "steps"):
        assert a[key] == b[key], key
    # Options that would change the steps taken are refused on resume (--lr and --nan-policy are not:
    # they let a diverged run go on).
    with pytest.raises(SystemExit):
        main(["classify", "--resume", str(out), "--dropout", "0.2"])


# -- download ---------------------------------------------------------------------------------------


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www (as in test_data); yields (root, base url)."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_download_command_fetches_prints_and_feeds_classify(http_root, tmp_path, capsys, monkeypatch):
    root, base = http_root
    task = make_synthetic_task(num_classes=2, train_size=120, test_size=30, seed=4)
    served = root / "harvardnlp/sent-conv-torch/master/data"
    served.mkdir(parents=True)
    _write_sentences(served / "TREC.train.all", task.train.labels.tolist(), task.train.sentences)
    _write_sentences(served / "TREC.test.all", task.test.labels.tolist(), task.test.sentences)
    for name in ("TREC.train.all", "TREC.test.all"):  # the stand-ins are the published files here
        body = (served / name).read_bytes()
        monkeypatch.setitem(dl.EXPECTED, f"sentcls/{name}", dl.Expected(hashlib.sha256(body).hexdigest(), len(body)))
    dest = tmp_path / "data"
    assert main(["download", "trec", "--dest", str(dest), "--base-url", base]) == 0
    lines = capsys.readouterr().out.splitlines()
    files = [dest / "sentcls" / f"TREC.{s}.all" for s in ("train", "test")]
    assert lines == [f"wrote {p} ({p.stat().st_size} bytes; SHA-256 verified)" for p in files]
    assert [p.read_bytes() for p in files] == [(served / p.name).read_bytes() for p in files]
    # Again: nothing fetched, both files verified and kept.
    assert main(["download", "trec", "--dest", str(dest), "--base-url", base]) == 0
    assert capsys.readouterr().out.splitlines() == [f"kept {p} (already there; SHA-256 verified)" for p in files]
    # A set the server does not have: exit 1 with the URL and the HTTP status, no partial file.
    assert main(["download", "sst2", "--dest", str(dest), "--base-url", base]) == 1
    err = capsys.readouterr().err
    assert "stsa.binary.train failed: HTTP 404" in err and "Traceback" not in err
    assert not (dest / "sentcls" / "stsa.binary.train").exists()
    with pytest.raises(SystemExit) as exc:
        main(["download", "imagenet"])
    assert exc.value.code == 2 and "invalid choice: 'imagenet'" in capsys.readouterr().err
    # The downloaded files are a fixed split for the classifier.
    out = tmp_path / "cls"
    argv = ["classify", "--train", str(files[0]), "--test", str(files[1]), "--hidden", "8", "--embedding-dim", "8",
            "--epochs", "1", "--method", "sgd", "--no-progress", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert run["num_test"] == 30 and math.isfinite(run["nll"])


def test_a_new_lr_given_after_one_fold_finished_stays_with_the_unfinished_fold(tmp_path, monkeypatch, capsys):
    """k-fold, fold 1 finished and fold 2 stopped: --resume --lr trains fold 2 on at the new lr, and so does a
    later plain --resume (fold 1's restore used to write its own lr back to config.json); the results say
    the folds' lrs differ."""
    task = make_synthetic_task(train_size=200, test_size=2, seed=1)
    data = tmp_path / "all.txt"
    _write_sentences(data, task.train.labels.tolist(), task.train.sentences)
    out = tmp_path / "cv"
    real_train = ClassifierTrainer.train

    def fold_2_stops_at_3(self, stop_after=None, **options):
        return real_train(self, stop_after=3 if self.fold == 2 else stop_after, **options)

    monkeypatch.setattr(ClassifierTrainer, "train", fold_2_stops_at_3)
    base = ["classify", "--train", str(data), "--folds", "2", "--epochs", "2", "--hidden", "8", "--embedding-dim",
            "8", "--method", "rmsprop", "--no-progress", "--quiet", "--threads", "1"]  # fmt: skip
    assert main([*base, "--out", str(out)]) == 0
    monkeypatch.setattr(ClassifierTrainer, "train", real_train)
    resume = ["classify", "--resume", str(out), "--no-progress", "--quiet", "--threads", "1"]
    assert main([*resume, "--lr", "rmsprop=0.0005", "--stop-after-steps", "5"]) == 0
    assert "rmsprop fold 1: finished its 2 epochs at lr 0.001, and keeps it" in capsys.readouterr().out
    assert main(resume) == 0
    lrs = [load_checkpoint(out / "rmsprop" / f"fold-{k}" / "checkpoint.pt")["optimizer"]["param_groups"][0]["lr"]
           for k in (1, 2)]  # fmt: skip
    assert lrs[1] == pytest.approx(lrs[0] / 2, rel=1e-12), lrs
    result = json.loads((out / "results.json").read_text())["methods"][0]
    assert result["lr"] is None and result["fold_lr"] == [0.001, 0.0005]
    assert re.search(r"^rmsprop\s+mixed\s", capsys.readouterr().out, re.M)
    assert json.loads((out / "config.json").read_text())["lr"]["rmsprop"] == 0.0005
