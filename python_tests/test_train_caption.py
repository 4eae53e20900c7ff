"""The caption trainer (`python -m sgmcmc_fused.train caption`): tiny runs on a few dozen synthetic
scenes (1x16 LSTM, 32-px images through a random ResNet-18), a few seconds each. Every number checked
is recomputed here from the saved files or the schedule."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sgmcmc_fused.bayes import split_rhat
from sgmcmc_fused.data.scenes import make_scenes
from sgmcmc_fused.train import main
from sgmcmc_fused.train.caption.config import SYNTHETIC_DEFAULTS
from sgmcmc_fused.train.caption.decode import StackedCaptionModels, decode_in_batches
from sgmcmc_fused.train.caption.scores import reference_agreement, score_captions
from sgmcmc_fused.train.caption.sources import load_caption_data
from sgmcmc_fused.train.caption.trainer import FINAL_METRICS
from sgmcmc_fused.train.chains import check_chains_world
from sgmcmc_fused.train.distributed import World
from sgmcmc_fused.train.options import ConfigError

#: 40 training images x 5 captions = 200 pairs / batch 25 = 8 steps an epoch; burn-in 1 epoch, a sample
#: every 4 steps: samples after steps 12, 16, ..., 24 in 3 epochs (4 of them).
TINY = [
    "caption", "--synthetic-train", "40", "--synthetic-valid", "8", "--synthetic-test", "10",
    "--synthetic-image-size", "32", "--hidden", "16", "--embedding-dim", "16", "--batch-size", "25",
    "--epochs", "3", "--burn-in", "1ep", "--thin", "0.5ep", "--beam", "2", "--max-caption-words", "8",
    "--threads", "2", "--no-progress", "--quiet", "--show", "1",
]  # fmt: skip
TINY_SAMPLES = 4
METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("caption") / "run"
    assert main([*TINY, "--method", "rmsprop", "psgld", "--out", str(out)]) == 0
    return out


def test_end_to_end_numbers_match_the_saved_files(tiny_run):
    results = json.loads((tiny_run / "results.json").read_text())
    by_method = {r["method"]: r for r in results["methods"]}
    assert set(by_method) == {"rmsprop", "psgld"}
    assert by_method["rmsprop"]["average"] is None and by_method["rmsprop"]["num_samples"] == 0
    psgld = by_method["psgld"]
    assert psgld["num_samples"] == TINY_SAMPLES and psgld["steps"] == 24
    # The per-sample curve: steps of the schedule; a one-sample average is that sample.
    curve = _csv(tiny_run / "psgld" / "samples.csv")
    assert [int(r["step"]) for r in curve] == [12, 16, 20, 24]
    assert float(curve[0]["valid_avg_ppl"]) == pytest.approx(float(curve[0]["valid_ppl"]), rel=1e-12)
    # The average's perplexity is at most the mean sample's (Jensen: log of a mean >= mean of logs).
    per_sample = [math.log(float(r["valid_ppl"])) for r in curve]
    assert math.log(float(curve[-1]["valid_avg_ppl"])) <= np.mean(per_sample) + 1e-12
    log = _csv(tiny_run / "psgld" / "log.csv")
    assert [int(r["epoch"]) for r in log] == [1, 2, 3]
    assert float(log[-1]["valid_avg_ppl"]) == pytest.approx(float(curve[-1]["valid_avg_ppl"]), rel=1e-12)
    # captions.csv holds every test image; rescoring its captions gives the reported corpus scores.
    rows = _csv(tiny_run / "psgld" / "captions.csv")
    scenes = make_scenes(40, 8, 10, seed=0, image_size=32)
    test = [im for im in scenes.dataset["images"] if im["split"] == "test"]
    assert [r["filename"] for r in rows] == [im["filename"] for im in test]
    refs = [[" ".join(s["tokens"]) for s in im["sentences"]] for im in test]
    again = score_captions(refs, [r["caption"] for r in rows], metrics=("BLEU-4", "CIDEr-D"))
    assert again.corpus["BLEU-4"] == pytest.approx(psgld["average"]["BLEU-4"], abs=1e-9)
    assert again.corpus["CIDEr-D"] == pytest.approx(psgld["average"]["CIDEr-D"], abs=1e-9)
    # Reference points: the references agree with each other far better than one caption for all.
    agree, base = results["reference_agreement"], results["most_frequent_caption"]["scores"]
    assert agree["CIDEr-D"] > base["CIDEr-D"] and agree["BLEU-4"] > base["BLEU-4"]
    table = _csv(tiny_run / "results.csv")
    assert [(r["method"], r["model"]) for r in table] == [("rmsprop", "last"), ("psgld", "average"), ("psgld", "last")]
    assert (tiny_run / "scores.png").stat().st_size > 0
    shown = psgld["show"]
    assert len(shown) == 1 and len(shown[0]["references"]) == 5
    assert [s["step"] for s in shown[0]["samples"]] == [12, 20, 24]  # oldest, middle, newest kept


def test_resume_after_a_stop_is_bit_identical(tiny_run, tmp_path):
    out = tmp_path / "run"
    argv = [*TINY, "--method", "rmsprop", "psgld", "--out", str(out)]
    assert main([*argv, "--stop-after-steps", "13"]) == 0  # rmsprop stops mid-epoch 2
    ck = torch.load(out / "rmsprop" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 13
    # psgld stops mid burn-in
    assert main(["caption", "--resume", str(out), "--quiet", "--show", "1", "--stop-after-steps", "14"]) == 0
    assert main(["caption", "--resume", str(out), "--quiet", "--show", "1"]) == 0
    a = json.loads((out / "results.json").read_text())
    b = json.loads((tiny_run / "results.json").read_text())
    for ra, rb in zip(a["methods"], b["methods"], strict=True):
        for key in ("last", "average", "num_samples", "steps", "show"):
            assert ra[key] == rb[key], key
    assert _csv(out / "psgld" / "samples.csv") == _csv(tiny_run / "psgld" / "samples.csv")


def _karpathy_files(tmp_path: Path, features: np.ndarray | None = None) -> tuple[Path, Path]:
    scenes = make_scenes(30, 6, 6, seed=1, image_size=32)
    captions = tmp_path / "dataset.json"
    captions.write_text(json.dumps(scenes.dataset))
    feats = tmp_path / "features.npy"
    if features is None:
        features = np.random.default_rng(0).normal(size=(42, 12)).astype(np.float32)
    np.save(feats, features)
    return captions, feats


def test_files_run_with_average_optimizers(tmp_path):
    captions, feats = _karpathy_files(tmp_path)
    out = tmp_path / "run"
    argv = ["caption", "--captions", str(captions), "--features", str(feats), "--min-count", "1", "--preset", "tiny",
            "--hidden", "8", "--embedding-dim", "8", "--epochs", "2", "--burn-in", "1ep", "--thin", "1ep",
            "--method", "rmsprop", "--average-optimizers", "--quiet", "--no-progress", "--show", "0",
            "--samples-dir", str(tmp_path / "samples"), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    (result,) = json.loads((out / "results.json").read_text())["methods"]
    # burn-in 1 epoch + thin 1 epoch: one snapshot, after the last step
    assert result["num_samples"] == 1 and result["average"] is not None and result["show"] == []
    assert result["average"] == result["last"]  # the average of the last weights alone
    assert len(_csv(out / "rmsprop" / "captions.csv")) == 6
    # The kept sample lives on disk, in a folder that names its run.
    assert len(list((tmp_path / "samples" / "rmsprop").glob("sample_*.safetensors"))) == 1
    assert json.loads((tmp_path / "samples" / "run.json").read_text())["run"] == str(out.resolve())


@pytest.mark.parametrize("single", [1, 6])
def test_test_images_with_a_single_reference_finish_the_run(tmp_path, capsys, single):
    # A test image with one caption has nothing to agree with: the references' agreement row covers the
    # images with two or more (none here when all six have one), and the run writes its results.
    scenes = make_scenes(30, 6, 6, seed=1, image_size=32)
    test = [im for im in scenes.dataset["images"] if im["split"] == "test"]
    for im in test[:single]:
        im["sentences"] = im["sentences"][:1]
    captions, feats = _karpathy_files(tmp_path)
    captions.write_text(json.dumps(scenes.dataset))
    out = tmp_path / "run"
    argv = ["caption", "--captions", str(captions), "--features", str(feats), "--min-count", "1", "--preset", "tiny",
            "--hidden", "8", "--embedding-dim", "8", "--epochs", "1", "--method", "rmsprop", "--quiet",
            "--no-progress", "--show", "0", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    several = [[" ".join(s["tokens"]) for s in im["sentences"]] for im in test[single:]]
    assert results["reference_agreement_images"] == len(several)
    printed = capsys.readouterr().out
    if several:
        want = reference_agreement(several, metrics=FINAL_METRICS)
        assert results["reference_agreement"] == pytest.approx(want.corpus, rel=1e-12)
        assert "over the 5 of 6 test images that have two references or more (1 has only one)" in printed
    else:
        assert results["reference_agreement"] is None
        assert "references (1 vs rest): n/a, every test image has a single reference" in printed
    assert len(_csv(out / "results.csv")) == 1


@pytest.mark.parametrize(
    "make_argv, message",
    [
        (lambda c, f: ["--captions", str(c)], "--captions needs --features"),
        (lambda c, f: ["--features", str(f)], "--features needs --captions"),
        (lambda c, f: ["--captions", str(c), "--features", str(f), "--beam", "0"], "--beam must be >= 1"),
        (lambda c, f: ["--show", "-1"], "--show must be >= 0"),
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path, capsys, make_argv, message):
    captions, feats = _karpathy_files(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["caption", *make_argv(captions, feats), "--out", str(tmp_path / "run"), "--quiet"])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_a_feature_file_with_a_row_missing_names_both_counts(tmp_path, capsys):
    captions, feats = _karpathy_files(tmp_path, np.zeros((41, 12), np.float32))
    with pytest.raises(SystemExit) as e:
        main(["caption", "--captions", str(captions), "--features", str(feats), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "41" in err and "42" in err and "features.npy" in err


def test_chains_pool_their_samples_for_decoding(tiny_run, tmp_path):
    """--chains 2 (samples on disk): chain 0 is the single run with the same seed, bit for bit; the
    pooled captions are those decoded with both chains' samples, read back from their files; the last
    weights' scores are the chains' mean, and split-R-hat is that of the chains' per-sample validation
    log-likelihoods."""
    out, samples = tmp_path / "run", tmp_path / "samples"
    argv = [*TINY, "--method", "psgld", "--chains", "2", "--samples-dir", str(samples), "--out", str(out)]
    assert main(argv) == 0
    (pooled,) = json.loads((out / "results.json").read_text())["methods"]
    chain = [json.loads((out / "psgld" / f"chain-{k}" / "log.json").read_text()) for k in range(2)]
    single = json.loads((tiny_run / "results.json").read_text())["methods"][1]
    assert chain[0]["result"]["average"] == single["average"] and chain[0]["result"]["last"] == single["last"]
    assert chain[1]["config"]["seed"] == chain[0]["config"]["seed"] + 1
    assert chain[1]["result"]["last"] != chain[0]["result"]["last"]  # another initialisation and noise

    assert pooled["chains"] == 2 and pooled["num_samples"] == 2 * TINY_SAMPLES
    for m in METRICS:
        assert pooled["last"][m] == pytest.approx(np.mean([c["result"]["last"][m] for c in chain]), abs=1e-12)
    assert pooled["chain_average"] == [c["result"]["average"] for c in chain]
    traces = [[-math.log(s["valid_ppl"]) for s in c["samples"]] for c in chain]
    assert pooled["split_rhat"] == pytest.approx(split_rhat(traces), rel=1e-12)

    # Decode with every sample file of both chains, independently of the pooling code.
    files = sorted((samples / "psgld").glob("chain-*/sample_*.safetensors"))
    assert len(files) == 2 * TINY_SAMPLES
    states = [load_file(f) for f in files]
    spec = {**SYNTHETIC_DEFAULTS, "num_train": 40, "num_valid": 8, "num_test": 10, "image_size": 32}
    data = load_caption_data({"kind": "synthetic", "seed": 0, **spec})
    ids = decode_in_batches(StackedCaptionModels(states), data.test.features, beam=2, max_len=8, batch_size=100)
    expected = [" ".join(data.vocab.decode(c)) for c in ids]
    assert [r["caption"] for r in _csv(out / "psgld" / "captions.csv")] == expected
    refs = [[" ".join(r) for r in image] for image in data.test.references]
    again = score_captions(refs, expected, metrics=("CIDEr-D",))
    assert pooled["average"]["CIDEr-D"] == pytest.approx(again.corpus["CIDEr-D"], abs=1e-9)
    # --show: the pooled caption, and the newest sample of each chain.
    (shown,) = pooled["show"]
    assert shown["average"] == expected[0]
    assert [(s["chain"], s["step"]) for s in shown["samples"]] == [(0, 24), (1, 24)]


def test_more_chains_than_processes_is_refused_clearly():
    world = World(rank=0, size=3)
    with pytest.raises(ConfigError, match="--chains 2 with 3 processes"):
        check_chains_world(2, world)
    check_chains_world(3, world)
    check_chains_world(1, world)  # data parallel
