"""The language-model trainer (`python -m sgmcmc_fused.train lm`) end to end, on tiny synthetic corpora.

Each run takes a second or two: 20k training tokens, a 1x32 LSTM, 3 epochs of 200 steps.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from sgmcmc_fused.bayes import perplexity_by_num_samples, split_rhat
from sgmcmc_fused.data import batchify
from sgmcmc_fused.train import main
from sgmcmc_fused.train.checkpoint import load_checkpoint, write_checkpoint
from sgmcmc_fused.train.lm.command import RESULT_COLUMNS
from sgmcmc_fused.train.lm.config import DEFAULT_SAMPLES_ON_DISK, LMConfig
from sgmcmc_fused.train.lm.data import load_lm_data
from sgmcmc_fused.train.lm.model import LanguageModel, target_probabilities
from sgmcmc_fused.train.lm.trainer import EPOCH_COLUMNS, SAMPLE_COLUMNS, LMTrainer
from sgmcmc_fused.train.run_control import Stop

ROOT = Path(__file__).resolve().parents[1]
#: A tiny configuration: 20000 tokens / (batch 10 x bptt 10) = 200 steps per epoch.
TINY = [
    "lm", "--synthetic-train-tokens", "20000", "--synthetic-eval-tokens", "2000", "--hidden", "32",
    "--batch-size", "10", "--bptt", "10", "--epochs", "3", "--lr", "1e-2", "--quiet",
]  # fmt: skip
STEPS_PER_EPOCH = 200


def _run(tmp_path: Path, name: str, *extra: str) -> Path:
    out = tmp_path / name
    assert main([*TINY, "--out", str(out), *extra]) == 0
    return out


def _csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open() as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _test_probabilities(out: Path, records: list[dict]) -> torch.Tensor:
    """The stored samples `records` (collector records of the run in `out`) re-evaluated on its test
    split, independently of the trainer's running average: float64 [S, N] target probabilities."""
    cfg = json.loads((out / "config.json").read_text())
    data = load_lm_data(cfg["data"])
    test_tb = batchify(data.corpus.test, cfg["eval_batch_size"])
    model = LanguageModel(data.vocab_size, cfg["hidden"], cfg["layers"])
    probs = []
    for r in records:
        model.load_state_dict(r["state"])
        probs.append(target_probabilities(model, test_tb, cfg["bptt"], "cpu"))
    return torch.stack(probs).double()


def _markov_sentences(num: int, seed: int) -> list[str]:
    """Sentences of a small first-order Markov source over 20 words: each word has 3 successors."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(20)]
    successors = {w: random.Random(i).sample(words, 3) for i, w in enumerate(words)}
    lines = []
    for _ in range(num):
        w, line = rng.choice(words), []
        for _ in range(rng.randint(4, 9)):
            line.append(w)
            w = rng.choice(successors[w])
        lines.append(" ".join(line))
    return lines


def _reference_test_perplexity(out: Path, method: str) -> float:
    """The final weights of `method` scored on the run's test split by torch's own nn.Embedding,
    nn.LSTM and nn.Linear, each evaluation stream in one call (no truncation into bptt chunks)."""
    cfg = json.loads((out / "config.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the loader's notes were checked on the run itself
        data = load_lm_data(cfg["data"])
    state = load_checkpoint(out / method / "checkpoint.pt")["model"]
    v, h, layers = data.vocab_size, cfg["hidden"], cfg["layers"]
    embedding, lstm, decoder = torch.nn.Embedding(v, h), torch.nn.LSTM(h, h, layers), torch.nn.Linear(h, v)
    embedding.load_state_dict({"weight": state["embedding.weight"]})
    lstm.load_state_dict({k.removeprefix("lstm."): t for k, t in state.items() if k.startswith("lstm.")})
    decoder.load_state_dict({"weight": state["decoder.weight"], "bias": state["decoder.bias"]})
    streams = batchify(data.corpus.test, cfg["eval_batch_size"])
    with torch.no_grad():
        logits = decoder(lstm(embedding(streams[:-1]))[0]).double()
    logp = torch.log_softmax(logits, -1).gather(-1, streams[1:].unsqueeze(-1))
    return math.exp(-logp.mean().item())


@pytest.mark.parametrize("level", ["word", "char"])
def test_trains_on_corpus_files(tmp_path, level):
    """A PTB-format folder and a plain text file train end to end: the reported test perplexity is
    that of the final weights scored independently, and below the unigram's."""
    small = ["--hidden", "16", "--batch-size", "4", "--bptt", "8", "--epochs", "2", "--eval-batch-size", "2",
             "--lr", "1e-2", "--method", "rmsprop", "--quiet", "--no-plot"]  # fmt: skip
    if level == "word":
        folder = tmp_path / "ptb"
        folder.mkdir()
        for split, num, seed in (("train", 400, 0), ("valid", 40, 1), ("test", 40, 2)):
            lines = _markov_sentences(num, seed)
            if split == "test":
                lines[3] += " never-seen"
            (folder / f"ptb.{split}.txt").write_text("".join(f" {line} \n" for line in lines))
        source = ["--word-corpus", str(folder)]
    else:
        text = tmp_path / "input.txt"
        text.write_text("\n".join(_markov_sentences(300, 3)) + "\n", encoding="utf-8")
        source = ["--char-corpus", str(text)]
    out = tmp_path / level
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["lm", *source, *small, "--out", str(out)]) == 0
    if level == "word":
        assert any("<unk>" in str(w.message) for w in caught)  # the test split's unseen word, mapped clearly
    results = json.loads((out / "results.json").read_text())
    (row,) = results["methods"]
    assert row["test_ppl"] == pytest.approx(_reference_test_perplexity(out, "rmsprop"), rel=1e-4)
    assert row["test_ppl"] < 0.8 * results["unigram_test_ppl"]
    assert json.loads((out / "config.json").read_text())["preset"] == ("small" if level == "word" else "char")


def test_default_entry_point_learns_and_prints_the_table(tmp_path):
    """The real command line: both methods learn context (test perplexity below the unigram's, above the
    source's Bayes-optimal floor), and the table is printed with the floor beside the methods."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sgmcmc_fused.train", *TINY, "--burn-in", "1ep", "--thin", "0.25ep", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    unigram, floor = results["unigram_test_ppl"], results["bayes_optimal_test_ppl"]
    assert 90 < floor < unigram  # the source has context to learn
    by_method = {r["method"]: r for r in results["methods"]}
    assert list(by_method) == ["rmsprop", "psgld"]
    for r in by_method.values():
        assert floor < r["test_ppl"] < 0.95 * unigram, r
    assert by_method["rmsprop"]["test_avg_ppl"] is None  # optimisers report their last weights only
    psgld = by_method["psgld"]
    assert floor < psgld["test_avg_ppl"] < 0.95 * unigram
    # Noise on after 200 steps; a sample after steps 250, 300, ..., 600.
    assert psgld["num_samples"] == 8
    for name in ("rmsprop", "psgld", "unigram (training counts)", "Bayes-optimal (the source)"):
        assert name in proc.stdout
    assert f"{floor:.3f}" in proc.stdout and f"{psgld['test_avg_ppl']:.3f}" in proc.stdout
    assert (out / "perplexity.png").stat().st_size > 10_000


def test_model_average_matches_the_stored_samples(tmp_path):
    """The online running average (PredictiveAverager during training) equals averaging the probabilities
    of the collected samples afterwards, sample by sample; and averaging probabilities is never worse
    than the geometric mean of the samples' own perplexities (Jensen), which log-averaging would not give."""
    out = _run(tmp_path, "avg", "--method", "psgld", "--burn-in", "1ep", "--thin", "0.25ep", "--max-samples", "8",
               "--no-plot")  # fmt: skip
    _, samples = _csv(out / "psgld" / "samples.csv")
    ck = load_checkpoint(out / "psgld" / "checkpoint.pt")
    records = ck["collector"]["records"]
    assert len(records) == len(samples) == 8
    assert [r["step"] for r in records] == [int(s["step"]) for s in samples] == list(range(250, 601, 50))

    curve = perplexity_by_num_samples(_test_probabilities(out, records))
    online = torch.tensor([float(s["test_avg_ppl"]) for s in samples], dtype=torch.float64)
    torch.testing.assert_close(curve, online, rtol=1e-9, atol=0)
    singles = torch.tensor([float(s["test_ppl"]) for s in samples], dtype=torch.float64)
    assert float(online[-1]) <= math.exp(float(torch.log(singles).mean())) + 1e-9
    assert float(online[-1]) < float(singles.max())


def test_lr_weighted_model_average_matches_the_stored_samples(tmp_path):
    """--sample-weights lr weighs each sample by the learning rate it was drawn at (Welling & Teh): the
    running average equals Σ lr_s p(θ_s) / Σ lr_s over the stored samples, after every sample."""
    out = _run(
        tmp_path, "lr_weights", "--method", "psgld", "--decay-after", "1", "--lr-decay", "2", "--burn-in", "1ep",
        "--thin", "0.5ep", "--sample-weights", "lr", "--max-samples", "4", "--no-plot",
    )  # fmt: skip
    _, samples = _csv(out / "psgld" / "samples.csv")
    records = load_checkpoint(out / "psgld" / "checkpoint.pt")["collector"]["records"]
    # steps 300, 400 fall in the second epoch (lr 1e-2 / 2), steps 500, 600 in the third (1e-2 / 4)
    assert [int(s["step"]) for s in samples] == [r["step"] for r in records] == [300, 400, 500, 600]
    weights = [float(s["weight"]) for s in samples]
    assert weights == pytest.approx([5e-3, 5e-3, 2.5e-3, 2.5e-3], rel=1e-12)

    assert json.loads((out / "config.json").read_text())["sample_weights"] == "lr"
    probs = _test_probabilities(out, records)
    w = torch.tensor(weights, dtype=torch.float64)
    for n, row in enumerate(samples, start=1):
        mean = (w[:n, None] * probs[:n]).sum(0) / w[:n].sum()
        assert float(row["test_avg_ppl"]) == pytest.approx(math.exp(-mean.log().mean().item()), rel=1e-9)
    uniform = perplexity_by_num_samples(probs)[-1].item()
    assert float(samples[-1]["test_avg_ppl"]) != pytest.approx(uniform, rel=1e-9)  # the weights mattered


@pytest.mark.parametrize(
    "variant",
    [
        # successive minibatches carry the hidden state across the stop; dropout draws torch's RNG and
        # DropConnect counts its calls; samples in memory (they live in the checkpoint).
        ["--minibatch", "successive", "--dropout", "0.2", "--dropconnect", "0.3"],
        # random minibatches replay the data-order RNG; Gaussian masks; samples on disk.
        ["--minibatch", "random", "--dropconnect", "0.3", "--mask", "gaussian", "--samples-dir", "SAMPLES"],
    ],
    ids=["successive-memory", "random-disk"],
)
def test_resume_is_bit_exact(tmp_path, variant):
    """3 epochs straight == 230 steps, stop, --resume to the end: identical parameters, optimizer state,
    collected samples and running averages, bit for bit."""
    args = ["--method", "psgld", "--burn-in", "150", "--thin", "40", "--max-samples", "5", "--no-plot", *variant]

    def with_samples_dir(name):
        return [str(tmp_path / f"samples-{name}") if a == "SAMPLES" else a for a in args]

    straight = _run(tmp_path, "straight", *with_samples_dir("straight"))
    split = tmp_path / "split"
    # Periodic checkpoints (every 70 steps) must not change anything either.
    stop = ["--stop-after-steps", "230", "--checkpoint-every", "70"]
    assert main([*TINY, "--out", str(split), *with_samples_dir("split"), *stop]) == 0
    # Random minibatches drop the last partial batch of segments: 199 steps an epoch instead of 200.
    steps_per_epoch = json.loads((straight / "psgld" / "log.json").read_text())["steps_per_epoch"]
    assert steps_per_epoch == (199 if "random" in variant else STEPS_PER_EPOCH)
    mid = load_checkpoint(split / "psgld" / "checkpoint.pt")
    assert (mid["step"], mid["epoch"], mid["batch_in_epoch"]) == (230, 1, 230 - steps_per_epoch)
    assert main(["lm", "--resume", str(split), "--quiet"]) == 0

    a = load_checkpoint(straight / "psgld" / "checkpoint.pt")
    b = load_checkpoint(split / "psgld" / "checkpoint.pt")
    assert a["step"] == b["step"] == 3 * steps_per_epoch
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert (a["lstm_calls"], a["lstm_seed"]) == (b["lstm_calls"], b["lstm_seed"]) == (3 * steps_per_epoch, 0)
    for key, st in a["optimizer"]["state"].items():
        assert st["step"] == b["optimizer"]["state"][key]["step"] > 0
        assert torch.equal(st["square_avg"], b["optimizer"]["state"][key]["square_avg"])
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    for split_name in ("valid", "test"):
        assert torch.equal(a["averagers"][split_name]["acc"], b["averagers"][split_name]["acc"])
        assert a["averagers"][split_name]["num_samples"] == 11  # steps 190, 230, ..., 590
    ra, rb = a["collector"]["records"], b["collector"]["records"]
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == [430, 470, 510, 550, 590]  # the last 5 kept
    if "--samples-dir" in variant:
        files = [sorted(p.name for p in (tmp_path / f"samples-{n}" / "psgld").iterdir()) for n in ("straight", "split")]
        assert files[0] == files[1] == [r["file"] for r in ra]
        for name in files[0]:
            assert (tmp_path / "samples-straight" / "psgld" / name).read_bytes() == (
                tmp_path / "samples-split" / "psgld" / name
            ).read_bytes()
    else:
        for x, y in zip(ra, rb, strict=True):
            for k, v in x["state"].items():
                assert torch.equal(v, y["state"][k]), (x["step"], k)
    # The logs of the resumed run hold each epoch once, with the straight run's numbers.
    ha, hb = _csv(straight / "psgld" / "log.csv")[1], _csv(split / "psgld" / "log.csv")[1]
    assert [r["epoch"] for r in hb] == ["1", "2", "3"]
    assert [r["valid_ppl"] for r in ha] == [r["valid_ppl"] for r in hb]
    assert _csv(straight / "psgld" / "samples.csv")[1] == _csv(split / "psgld" / "samples.csv")[1]


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_checkpoint_and_resume_exactly(tmp_path, signum, status):
    """SIGINT (Ctrl-C) or SIGTERM (a cluster scheduler's notice) in the middle of training: the run
    checkpoints at the next step boundary and exits with status 128 + the signal; resumed to the end of
    the interrupted epoch, it equals an uninterrupted run."""
    # One thread in every part: CPU reductions split by thread, so the count is part of the result.
    args = ["--method", "psgld", "--burn-in", "100", "--thin", "40", "--no-plot", "--threads", "1"]
    out = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "sgmcmc_fused.train", *TINY, *args, "--epochs", "40", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (out / "psgld" / "log.csv").exists():  # the first epoch is done: the handler is in place
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status, stderr
    assert f"interrupted ({signal.Signals(signum).name}) at step" in stdout and "Traceback" not in stderr
    ck = load_checkpoint(out / "psgld" / "checkpoint.pt")
    epochs = ck["epoch"] + 1
    assert 1 <= ck["epoch"] < 40 and ck["step"] >= STEPS_PER_EPOCH

    assert main(["lm", "--resume", str(out), "--epochs", str(epochs), "--quiet", "--no-plot", "--threads", "1"]) == 0
    straight = _run(tmp_path, "straight", *args, "--epochs", str(epochs))
    a = load_checkpoint(straight / "psgld" / "checkpoint.pt")
    b = load_checkpoint(out / "psgld" / "checkpoint.pt")
    assert a["step"] == b["step"] == epochs * STEPS_PER_EPOCH
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def test_threads_are_restored_and_a_resume_under_another_count_warns(tmp_path):
    """--threads holds for the run only (an in-process caller keeps its own count); resuming a CPU run
    under another thread count warns that the result will not be bitwise the uninterrupted one's."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = _run(
            tmp_path, "threads", "--method", "rmsprop", "--no-plot", "--threads", "1", "--stop-after-steps", "30"
        )
        assert torch.get_num_threads() == 2
        assert load_checkpoint(out / "rmsprop" / "checkpoint.pt")["cpu_threads"] == 1
        with pytest.warns(RuntimeWarning, match=r"resumed with 2 CPU threads, checkpointed with 1; pass --threads 1"):
            assert main(["lm", "--resume", str(out), "--quiet", "--no-plot", "--stop-after-steps", "60"]) == 0
        with warnings.catch_warnings(record=True) as caught:  # the count of the last checkpoint: no warning
            warnings.simplefilter("always")
            assert main(["lm", "--resume", str(out), "--quiet", "--no-plot", "--epochs", "1"]) == 0
        assert not [w for w in caught if "CPU threads" in str(w.message)]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_checkpoint_and_logs(tmp_path):
    """Checkpoints load with weights_only=True; the CSV/JSON logs have the documented columns; --resume
    of a finished run with more epochs continues it; a corrupted checkpoint is a clear error."""
    out = _run(tmp_path, "logs", "--method", "sgd", "rmsprop", "--epochs", "2", "--no-plot")
    ck = torch.load(out / "rmsprop" / "checkpoint.pt", weights_only=True)
    assert ck["format"] == "sgmcmc_fused.train.lm/1" and ck["epoch"] == 2 and ck["step"] == 2 * STEPS_PER_EPOCH
    assert {"model", "optimizer", "lstm_seed", "lstm_calls", "torch_rng", "epoch_rng", "collector", "averagers"} <= set(
        ck
    )
    assert ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-2)

    columns, rows = _csv(out / "rmsprop" / "log.csv")
    assert columns == EPOCH_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2] and [int(r["step"]) for r in rows] == [200, 400]
    assert all(float(r["train_ppl"]) > 1 and float(r["valid_ppl"]) > 1 and float(r["epoch_time_s"]) > 0 for r in rows)
    assert all(r["valid_avg_ppl"] == "" for r in rows)  # no samples for an optimiser
    assert _csv(out / "rmsprop" / "samples.csv")[0] == SAMPLE_COLUMNS
    log = json.loads((out / "rmsprop" / "log.json").read_text())
    assert {"config", "epochs", "samples", "result", "burn_in_steps", "thin_steps"} <= set(log)
    assert log["result"]["test_ppl"] > 1
    columns, rows = _csv(out / "results.csv")
    assert columns == RESULT_COLUMNS and [r["method"] for r in rows] == ["sgd", "rmsprop"]
    assert float(rows[0]["lr"]) == 1e-2  # --lr VALUE sets every method

    assert main(["lm", "--resume", str(out), "--epochs", "3", "--quiet", "--no-plot"]) == 0
    assert [int(r["epoch"]) for r in _csv(out / "rmsprop" / "log.csv")[1]] == [1, 2, 3]

    path = out / "rmsprop" / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(SystemExit) as e:
        main(["lm", "--resume", str(out), "--quiet"])
    assert e.value.code == 2


def test_samples_are_kept_only_when_asked(tmp_path):
    """By default no sample is kept (the averages are online), so checkpoints hold one copy of the
    parameters; --samples-dir keeps DEFAULT_SAMPLES_ON_DISK of them there, as safetensors files."""
    sampling = ["--method", "psgld", "--burn-in", "1ep", "--thin", "0.25ep", "--no-plot"]
    plain = _run(tmp_path, "plain", *sampling)
    ck = load_checkpoint(plain / "psgld" / "checkpoint.pt")
    assert ck["config"]["max_samples"] == 0
    assert ck["collector"]["records"] == [] and ck["collector"]["next_index"] == 8  # all 8 averaged, none kept
    assert len(_csv(plain / "psgld" / "samples.csv")[1]) == 8

    kept = _run(tmp_path, "kept", *sampling, "--max-samples", "3")
    ck_kept = load_checkpoint(kept / "psgld" / "checkpoint.pt")
    assert [r["step"] for r in ck_kept["collector"]["records"]] == [500, 550, 600]  # the newest 3
    model_bytes = sum(t.numel() * t.element_size() for t in ck["model"].values())
    extra = (kept / "psgld" / "checkpoint.pt").stat().st_size - (plain / "psgld" / "checkpoint.pt").stat().st_size
    assert extra == pytest.approx(3 * model_bytes, rel=0.05)
    # The same chain either way: keeping samples changes nothing it computes.
    assert (
        json.loads((kept / "results.json").read_text())["methods"][0]["test_avg_ppl"]
        == json.loads((plain / "results.json").read_text())["methods"][0]["test_avg_ppl"]
    )

    newest = ck_kept["collector"]["records"][-1]["state"]
    assert all(torch.equal(newest[k], ck_kept["model"][k]) for k in newest)  # step 600: the final weights

    # On disk: a sample every 15 steps after step 200 gives 26; the default keeps the newest 20.
    disk_args = ["--method", "psgld", "--burn-in", "1ep", "--thin", "15", "--no-plot"]
    on_disk = _run(tmp_path, "disk", *disk_args, "--samples-dir", str(tmp_path / "samples"))
    assert load_checkpoint(on_disk / "psgld" / "checkpoint.pt")["config"]["max_samples"] == DEFAULT_SAMPLES_ON_DISK
    assert len(_csv(on_disk / "psgld" / "samples.csv")[1]) == 26
    files = sorted(p.name for p in (tmp_path / "samples" / "psgld").iterdir())
    assert files == [f"sample_{i:08d}.safetensors" for i in range(26 - DEFAULT_SAMPLES_ON_DISK, 26)]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "adam"], "unknown method 'adam'"),
        (["--method", "psgld", "psgld"], "lists a method twice"),
        (["--lr", "psgld=-1"], "must be a finite number > 0"),
        (["--lr", "fast"], "expected VALUE or METHOD=VALUE"),
        (["--burn-in", "2 days"], "--burn-in '2 days': expected a number of steps"),
        (["--thin", "0"], "--thin '0': must be at least 1 step"),
        (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
        (["--lr-decay", "0.5"], "--lr-decay must be >= 1"),
        (["--max-samples", "-1"], "--max-samples must be >= 0, got -1"),
        (["--samples-dir", "s", "--max-samples", "0"], "with --max-samples 0 would keep nothing there"),
        (["--sample-weights", "step"], "argument --sample-weights: invalid choice: 'step'"),
        (["--word-corpus", "/nonexistent/ptb"], "neither a folder nor a prefix"),
        (["--char-corpus", "/nonexistent/text.txt"], "no such file"),
        (["--char-corpus", "/"], "--char-corpus / is a folder: give the text file itself"),
        (["--char-corpus", "x", "--word-corpus", "y"], "not allowed with argument"),
        (["--eval-batch-size", "5000"], "too few for 5000 parallel streams"),
        (["--device", "tpu:7"], "--device 'tpu:7'"),
        (["--step-impl", "foo"], "--step-impl foo: unknown; choose auto or one of cuda, cpu, triton, eager, foreach"),
        (["--lstm-impl", "fast"], "--lstm-impl fast: unknown; choose auto or one of"),
        (["--lr", "sgd=0.1"], "--lr sgd=0.1: sgd is not run (--method rmsprop psgld)"),
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main([*TINY, "--out", str(tmp_path / "x"), *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_resume_refuses_changes_and_missing_runs(tmp_path, capsys):
    out = _run(tmp_path, "r", "--method", "rmsprop", "--epochs", "1", "--no-plot")
    for argv, message in [
        (["lm", "--resume", str(out), "--hidden", "64"], "--hidden cannot be given"),
        (["lm", "--resume", str(out), "--hidden", "32"], "--hidden cannot be given"),  # even the saved value
        (["lm", "--resume", str(out), "--method", "psgld"], "--method cannot be given"),
        (["lm", "--resume", str(out), "--out", str(tmp_path / "y")], "--out cannot be given with it"),
        (["lm", "--resume", str(tmp_path / "none")], "no run there"),
        ([*TINY, "--out", str(out)], "already holds a run"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_an_interrupt_before_a_method_begins_claims_no_checkpoint(tmp_path):
    out = _run(tmp_path, "i", "--method", "rmsprop", "--epochs", "1", "--no-plot")
    cfg = LMConfig.from_json(json.loads((out / "config.json").read_text()))

    class SigTerm:  # an InterruptFlag whose signal arrived before this method's first step
        name, status = "SIGTERM", 143

        def __bool__(self):
            return True

    fresh = out / "not-begun"  # a method folder without a checkpoint, as for the second method of a run
    trainer = LMTrainer("rmsprop", cfg, load_lm_data(cfg.data), fresh, torch.device("cpu"), run_root=out)
    with pytest.raises(Stop) as stop:
        trainer.train(interrupted=SigTerm())
    want = f"rmsprop: interrupted (SIGTERM) before its first step; nothing to save, continue with --resume {out}"
    assert str(stop.value) == want
    assert stop.value.status == 143 and not (fresh / "checkpoint.pt").exists()


def test_a_new_lr_for_a_finished_method_leaves_its_results_as_trained(tmp_path, capsys):
    # The resumed run evaluates the test split again: both runs use one thread so that the sums
    # are taken in the same order and the perplexities agree to the bit.
    out = _run(tmp_path, "f", "--method", "rmsprop", "--epochs", "1", "--no-plot", "--threads", "1")
    before = json.loads((out / "results.json").read_text())["methods"][0]
    assert main(["lm", "--resume", str(out), "--lr", "rmsprop=0.1", "--no-plot", "--threads", "1"]) == 0
    assert "rmsprop: finished its 1 epochs at lr 0.01; --lr 0.1 changes nothing for it" in capsys.readouterr().out
    after = json.loads((out / "results.json").read_text())["methods"][0]
    assert after["lr"] == before["lr"] == 0.01 and after["test_ppl"] == before["test_ppl"]
    assert json.loads((out / "rmsprop" / "log.json").read_text())["config"]["lr"]["rmsprop"] == 0.01
    # The run's configuration keeps that lr too, so that extending the run later trains at it.
    assert json.loads((out / "config.json").read_text())["lr"]["rmsprop"] == 0.01


def test_a_resume_with_fewer_epochs_than_a_checkpoint_has_begun_is_refused(tmp_path, capsys):
    """A checkpoint 50 steps into epoch 2 is past --epochs 1: the run would otherwise report a result
    of neither length (one epoch and 50 steps)."""
    out = _run(tmp_path, "e", "--method", "rmsprop", "--epochs", "2", "--no-plot", "--stop-after-steps",
               str(STEPS_PER_EPOCH + 50))  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(["lm", "--resume", str(out), "--epochs", "1", "--no-plot"])
    assert exc.value.code == 2
    assert "is 50 steps into epoch 2, past --epochs 1: give --epochs 2 or more" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["epochs"] == 2  # as it was


def test_a_log_that_cannot_be_written_on_a_full_disk_is_a_usage_error(tmp_path, capsys, monkeypatch):
    """A full disk while writing the logs (after the checkpoint) ends the run with exit 2 and what to
    do, not a traceback; --resume then finishes it as an uninterrupted run."""
    import errno

    from sgmcmc_fused.train import command, runlog

    straight = _run(tmp_path, "straight", "--method", "rmsprop", "--epochs", "2", "--no-plot", "--threads", "1")
    real_write = runlog.write_text_atomic
    calls = {"log.csv": 0}

    def full_disk(path, text, *args, **kwargs):
        if Path(path).name == "log.csv":
            calls["log.csv"] += 1
            if calls["log.csv"] == 2:  # the second epoch's logs
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, text, *args, **kwargs)

    monkeypatch.setattr(runlog, "write_text_atomic", full_disk)
    out = tmp_path / "full"
    with pytest.raises(SystemExit) as exc:
        main([*TINY, "--out", str(out), "--method", "rmsprop", "--epochs", "2", "--no-plot", "--threads", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "log.csv: No space left on device; the run's files and its last checkpoint are whole" in err
    assert "--resume" in err and "Traceback" not in err
    monkeypatch.undo()
    assert main(["lm", "--resume", str(out), "--no-plot", "--threads", "1"]) == 0
    ours, theirs = (json.loads((o / "results.json").read_text())["methods"][0] for o in (out, straight))
    assert ours["test_ppl"] == theirs["test_ppl"] and ours["steps"] == theirs["steps"]
    # A new run that cannot write its config.json has not begun: it leaves nothing, and says so.
    real_json = command.write_json

    def no_space_for_config(path, obj):
        if Path(path).name == "config.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_json(path, obj)

    monkeypatch.setattr(command, "write_json", no_space_for_config)
    new = tmp_path / "new"
    with pytest.raises(SystemExit) as exc:
        main([*TINY, "--out", str(new), "--method", "rmsprop", "--epochs", "1", "--no-plot"])
    assert exc.value.code == 2 and not new.exists()
    err = capsys.readouterr().err
    assert "config.json: No space left on device; the run had not begun and leaves nothing behind" in err


def test_resume_takes_every_given_nan_policy(tmp_path):
    out = _run(tmp_path, "n", "--method", "rmsprop", "--epochs", "1", "--no-plot", "--nan-policy", "skip")
    assert main(["lm", "--resume", str(out), "--nan-policy", "raise", "--quiet"]) == 0  # the default value
    assert json.loads((out / "config.json").read_text())["nan_policy"] == "raise"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_backend_the_device_cannot_run_is_a_usage_error(tmp_path, capsys):
    for option in ("--step-impl", "--lstm-impl"):
        with pytest.raises(SystemExit) as e:
            main([*TINY, "--out", str(tmp_path / "x"), "--device", "cpu", option, "cuda"])
        assert e.value.code == 2
        assert f"{option} cuda on cpu: impl='cuda' cannot" in capsys.readouterr().err


def test_a_damaged_config_or_a_lost_checkpoint_is_named_on_resume(tmp_path, capsys):
    out = _run(tmp_path, "r", "--method", "rmsprop", "--stop-after-steps", "10", "--no-plot")
    config = out / "config.json"
    good = config.read_text()
    saved = json.loads(good)
    for text, message in [
        (good[:-20], f"--resume {out}: {config} is not readable JSON (Unterminated string"),
        ("[1, 2]", f"{config} holds a JSON list, not a configuration"),
        (json.dumps({**saved, "dropout": "high"}), f"{config}: field 'dropout' must be a number, got 'high'"),
        (json.dumps({**saved, "epochs": 2.5}), "field 'epochs' must be an integer, got 2.5"),
        (json.dumps({k: v for k, v in saved.items() if k != "bptt"}), "incomplete: .*'bptt'"),
    ]:
        config.write_text(text)
        with pytest.raises(SystemExit) as e:
            main(["lm", "--resume", str(out)])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert re.search(message if "incomplete" in message else re.escape(message), err), err
        assert "Traceback" not in err
    config.write_text(good)
    checkpoint = out / "rmsprop" / "checkpoint.pt"
    checkpoint.unlink()
    with pytest.raises(SystemExit) as e:
        main(["lm", "--resume", str(out)])
    err = capsys.readouterr().err
    assert f"{out / 'rmsprop'} holds the logs of rmsprop but not its checkpoint.pt" in err
    assert "resuming would train it again from step 0" in err and (out / "rmsprop" / "log.json").exists()


def test_a_burn_in_past_the_end_of_training_is_said(tmp_path, capsys):
    _run(tmp_path, "long", "--method", "psgld", "--burn-in", "5ep", "--no-plot")
    out = capsys.readouterr().out
    assert "psgld: warning: burn-in 1000 + thin 20 steps exceed the 600 steps of training: no noise and no " in out


def test_a_run_saved_before_sample_weights_existed_resumes_exactly(tmp_path):
    """Runs saved without the sample_weights field (nor the averagers' total weight) resume as the
    uniform average they computed, and finish bit for bit like an uninterrupted run."""
    sampling = ["--method", "psgld", "--burn-in", "1ep", "--thin", "0.5ep", "--no-plot"]
    straight = _run(tmp_path, "straight", *sampling)
    old = tmp_path / "old"
    assert main([*TINY, "--out", str(old), *sampling, "--stop-after-steps", "450"]) == 0
    cfg = json.loads((old / "config.json").read_text())
    del cfg["sample_weights"]
    (old / "config.json").write_text(json.dumps(cfg))
    ck_path = old / "psgld" / "checkpoint.pt"
    ck = load_checkpoint(ck_path)
    assert ck["averagers"]["test"]["num_samples"] == 2  # steps 300 and 400
    del ck["config"]["sample_weights"]
    for state in ck["averagers"].values():
        del state["total_weight"]
    for row in ck["curve"]:
        del row["weight"]
    write_checkpoint(ck, ck_path)
    assert main(["lm", "--resume", str(old), "--quiet", "--no-plot"]) == 0
    # the resumed run's config.json now names the field, with the value the run used all along
    assert json.loads((old / "config.json").read_text()) == {**cfg, "sample_weights": "uniform"}
    assert (old / "psgld" / "samples.csv").read_text() == (straight / "psgld" / "samples.csv").read_text()
    assert _csv(old / "results.csv")[1][0]["test_avg_ppl"] == _csv(straight / "results.csv")[1][0]["test_avg_ppl"]


def test_chains_pool_their_samples_and_report_split_rhat(tmp_path):
    """--chains 2: chain k is the run with seed SEED + k (bit for bit), the pooled model average equals
    averaging the probabilities of every stored sample of both chains, and split-R-hat is that of the
    chains' per-sample validation log-likelihoods."""
    common = ["--method", "psgld", "--burn-in", "1ep", "--thin", "0.25ep", "--epochs", "2", "--max-samples", "4",
              "--no-plot"]  # fmt: skip
    out = _run(tmp_path, "chains", *common, "--chains", "2", "--seed", "5")
    alone = _run(tmp_path, "seed6", *common, "--seed", "6")
    chain1 = load_checkpoint(out / "psgld" / "chain-1" / "checkpoint.pt")
    single = load_checkpoint(alone / "psgld" / "checkpoint.pt")
    for k in single["model"]:
        assert torch.equal(chain1["model"][k], single["model"][k]), k
    assert chain1["curve"] == single["curve"]

    result = json.loads((out / "results.json").read_text())["methods"][0]
    assert result["chains"] == 2 and result["num_samples"] == 8
    records, traces = [], []
    for k in range(2):
        ck = load_checkpoint(out / "psgld" / f"chain-{k}" / "checkpoint.pt")
        records += ck["collector"]["records"]
        traces.append([-math.log(row["valid_ppl"]) for row in ck["curve"]])
    pooled = math.exp(-float(_test_probabilities(out, records).mean(0).log().mean()))
    assert result["test_avg_ppl"] == pytest.approx(pooled, rel=1e-9)
    # Pooling two chains beats the worse chain's own average.
    assert result["test_avg_ppl"] < max(result["chain_test_avg_ppl"])
    assert result["split_rhat"] == pytest.approx(split_rhat(traces), rel=1e-12)
    assert (out / "psgld" / "pooled.json").is_file()


def test_a_new_lr_given_after_one_chain_finished_stays_with_the_unfinished_chain(tmp_path, monkeypatch, capsys):
    """Chain 0 finished, chain 1 stopped at step 50: --resume --lr trains chain 1 on at the new lr, and so
    does a later plain --resume (config.json keeps the given lr while a chain still trains at it, where
    chain 0's restore used to write its own lr back); the pooled row says the chains' lrs differ."""
    real_train = LMTrainer.train

    def chain_1_stops_at_50(self, stop_after=None, **options):
        return real_train(self, stop_after=50 if self.run_dir.name == "chain-1" else stop_after, **options)

    monkeypatch.setattr(LMTrainer, "train", chain_1_stops_at_50)
    out = _run(tmp_path, "c", "--method", "psgld", "--burn-in", "0.5ep", "--thin", "0.25ep", "--epochs", "1",
               "--chains", "2", "--no-plot", "--threads", "1")  # fmt: skip
    monkeypatch.setattr(LMTrainer, "train", real_train)
    resume = ["lm", "--resume", str(out), "--no-plot", "--quiet", "--threads", "1"]
    assert main([*resume, "--lr", "psgld=0.002", "--stop-after-steps", "100"]) == 0
    assert "psgld chain 0: finished its 1 epochs at lr 0.01, and keeps it" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["lr"]["psgld"] == 0.002
    assert main(resume) == 0
    lrs = [load_checkpoint(out / "psgld" / f"chain-{k}" / "checkpoint.pt")["optimizer"]["param_groups"][0]["lr"]
           for k in range(2)]  # fmt: skip
    assert lrs[1] == pytest.approx(lrs[0] * 0.2, rel=1e-12), lrs  # chain 1 ended at 0.002, chain 0 at 0.01
    result = json.loads((out / "results.json").read_text())["methods"][0]
    assert result["lr"] is None and result["chain_lr"] == [0.01, 0.002]
    assert json.loads((out / "psgld" / "pooled.json").read_text())["chain_lr"] == [0.01, 0.002]
    printed = capsys.readouterr().out
    assert re.search(r"^psgld\s+mixed\s", printed, re.M) and "each chain's lr: 0.01, 0.002" in printed
    assert json.loads((out / "config.json").read_text())["lr"]["psgld"] == 0.002
    # Every chain has finished now: another --lr changes nothing, config.json included.
    assert main([*resume, "--lr", "psgld=0.5"]) == 0
    assert "psgld: finished its 1 epochs at lr 0.002, 0.01; --lr 0.5 changes nothing" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["lr"]["psgld"] == 0.002


def test_a_finished_method_keeps_its_lr_when_a_resume_with_a_new_one_is_cut_short(tmp_path, monkeypatch, capsys):
    """rmsprop finished, psgld stopped: --resume --lr for both, stopped again, leaves rmsprop's lr in
    config.json (a later --epochs extends it at the lr it trained with), and psgld's new one."""
    real_train = LMTrainer.train

    def psgld_stops_at_50(self, stop_after=None, **options):
        return real_train(self, stop_after=50 if self.method == "psgld" else stop_after, **options)

    monkeypatch.setattr(LMTrainer, "train", psgld_stops_at_50)
    out = _run(tmp_path, "m", "--method", "rmsprop", "psgld", "--epochs", "1", "--no-plot", "--threads", "1")
    monkeypatch.setattr(LMTrainer, "train", real_train)
    lrs = ["--lr", "rmsprop=0.1", "--lr", "psgld=0.002"]
    assert main(["lm", "--resume", str(out), *lrs, "--stop-after-steps", "100", "--no-plot", "--quiet"]) == 0
    assert "rmsprop: finished its 1 epochs at lr 0.01; --lr 0.1 changes nothing" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["lr"] == {"rmsprop": 0.01, "psgld": 0.002}


class _NaNGradient(torch.autograd.Function):
    """Identity forward; NaN gradients backward (a finite loss whose gradient is not)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


@pytest.mark.parametrize(
    "poison, what",
    [
        (lambda logits: logits * float("nan"), "the loss is nan"),
        (_NaNGradient.apply, r"the gradient of 'embedding.weight' \(shape \(200, 32\)\) holds NaN or inf"),
    ],
    ids=["loss", "gradient"],
)
def test_a_diverging_run_skips_the_step_checkpoints_and_resumes_with_another_lr(tmp_path, monkeypatch, capsys, poison,
                                                                                 what):  # fmt: skip
    """A NaN loss or gradient at step 7: the step is skipped (nothing updated), the run checkpoints and
    stops with status 1 and a message naming the method, the cause and the remedies; resumed with
    another lr it finishes. Under --nan-policy skip the same run finishes, the step skipped."""
    forward = LanguageModel.forward
    calls = []

    def poisoned(self, x, hidden=None):
        logits, hidden = forward(self, x, hidden)
        if self.training:
            calls.append(1)
            if len(calls) == 7:
                logits = poison(logits)
        return logits, hidden

    monkeypatch.setattr(LanguageModel, "forward", poisoned)
    args = ["--method", "rmsprop", "--epochs", "1", "--no-plot", "--threads", "1"]
    out = tmp_path / "diverged"
    assert main([*TINY, *args, "--out", str(out)]) == 1
    message = capsys.readouterr().out
    assert re.search(
        rf"rmsprop: {what} at step 7 \(the run diverged\); the step was skipped and a checkpoint saved, continue "
        rf"with --resume {re.escape(str(out))} and a smaller --lr rmsprop=LR, or with --nan-policy skip",
        message,
    ), message
    ck = load_checkpoint(out / "rmsprop" / "checkpoint.pt")
    assert ck["step"] == 7 and ck["batch_in_epoch"] == 7 and ck["optimizer"]["skipped_steps"] == 1
    monkeypatch.setattr(LanguageModel, "forward", forward)
    # Skipped means not applied: the parameters are those after step 6 of an unpoisoned run.
    six = _run(tmp_path, "six", *args, "--stop-after-steps", "6")
    reference = load_checkpoint(six / "rmsprop" / "checkpoint.pt")
    for k, v in reference["model"].items():
        assert torch.equal(ck["model"][k], v), k
    # Resumed with a smaller lr, the run finishes; the lr is the new one from step 8 on.
    assert main(["lm", "--resume", str(out), "--lr", "rmsprop=5e-3", "--quiet", "--no-plot", "--threads", "1"]) == 0
    (row,) = _csv(out / "rmsprop" / "log.csv")[1]
    assert float(row["lr"]) == 5e-3 and row["skipped_steps"] == "1" and math.isfinite(float(row["train_ppl"]))
    assert json.loads((out / "config.json").read_text())["lr"] == {"rmsprop": 5e-3}

    # --nan-policy skip: the run goes on past the bad step.
    monkeypatch.setattr(LanguageModel, "forward", poisoned)
    calls.clear()
    skipped = tmp_path / "skipped"
    assert main([*TINY, *args, "--nan-policy", "skip", "--out", str(skipped)]) == 0
    (row,) = _csv(skipped / "rmsprop" / "log.csv")[1]
    assert (
        row["skipped_steps"] == "1" and int(row["step"]) == STEPS_PER_EPOCH and math.isfinite(float(row["train_ppl"]))
    )


def test_a_loss_too_large_for_exp_reports_an_infinite_perplexity(tmp_path):
    """sgd at lr 1e4 without a clip: the loss grows past exp's range, finite; the perplexities are inf,
    not an OverflowError."""
    out = _run(tmp_path, "huge", "--method", "sgd", "--lr", "1e4", "--clip", "0", "--epochs", "1", "--no-plot")
    (row,) = _csv(out / "sgd" / "log.csv")[1]
    assert row["train_ppl"] == "inf" and row["valid_ppl"] == "inf"
    assert json.loads((out / "results.json").read_text())["methods"][0]["test_ppl"] == math.inf


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_close_to_fp32_and_resumes_exactly(tmp_path, capsys, precision):
    """--precision bf16/fp16: autocast forwards (fp16 with a GradScaler), fp32 master weights; the test
    perplexities within 2 % of the fp32 run's, and a stopped run resumes bit for bit."""
    args = ["--method", "psgld", "--epochs", "2", "--burn-in", "1ep", "--thin", "0.25ep", "--no-plot", "--threads", "1"]
    fp32 = _run(tmp_path, "fp32", *args)
    low = _run(tmp_path, precision, *args, "--precision", precision)
    assert f"tiny preset (1x32 LSTM), 2 epochs, {precision}\n" in capsys.readouterr().out
    (a,), (b,) = (json.loads((d / "results.json").read_text())["methods"] for d in (fp32, low))
    for key in ("test_ppl", "test_avg_ppl"):
        assert abs(b[key] / a[key] - 1) < 0.02, (key, a[key], b[key])
    ck = load_checkpoint(low / "psgld" / "checkpoint.pt")
    assert all(v.dtype == torch.float32 for v in ck["model"].values())  # fp32 master weights
    assert bool(ck["grad_scaler"]) == (precision == "fp16")
    split = tmp_path / "split"
    assert main([*TINY, "--out", str(split), *args, "--precision", precision, "--stop-after-steps", "250"]) == 0
    assert main(["lm", "--resume", str(split), "--quiet", "--no-plot", "--threads", "1"]) == 0
    (c,) = json.loads((split / "results.json").read_text())["methods"]
    assert (c["test_ppl"], c["test_avg_ppl"]) == (b["test_ppl"], b["test_avg_ppl"])


def test_prior_std_is_the_matching_weight_decay_and_per_part(tmp_path):
    """--prior-std σ is the Gaussian prior N(0, σ²): weight decay 1/(N σ²) in mean-loss units (N = the
    20000 training tokens). One σ for every part gives bit for bit the run with that --weight-decay;
    per-part values reach the optimizer's groups (embedding, lstm, decoder), for the optimiser and the
    sampler alike."""
    common = ("--epochs", "1", "--method", "rmsprop", "psgld", "--burn-in", "100", "--thin", "50", "--no-plot")
    prior = _run(tmp_path, "prior", *common, "--prior-std", "0.5")
    decay = _run(tmp_path, "decay", *common, "--weight-decay", repr(1 / (20000 * 0.25)))
    for method in ("rmsprop", "psgld"):
        a = load_checkpoint(prior / method / "checkpoint.pt")
        b = load_checkpoint(decay / method / "checkpoint.pt")
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), (method, k)
        assert [g["weight_decay"] for g in a["optimizer"]["param_groups"]] == [1 / (20000 * 0.25)] * 3
    parts = _run(tmp_path, "parts", *common, "--prior-std", "embedding=0.1, output=2")
    for method in ("rmsprop", "psgld"):
        groups = load_checkpoint(parts / method / "checkpoint.pt")["optimizer"]["param_groups"]
        assert [len(g["params"]) for g in groups] == [1, 4, 2]  # embedding; the LSTM layer's 4; decoder
        assert [g["weight_decay"] for g in groups] == pytest.approx([1 / (20000 * 0.01), 0.0, 1 / (20000 * 4)])
    assert json.loads((parts / "config.json").read_text())["prior_std"] == {"embedding": 0.1, "output": 2.0}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prior-std", "0.1", "--weight-decay", "1e-4"], "--prior-std and --weight-decay are both a Gaussian prior"),
        (["--prior-std", "softmax=0.1"], "unknown part 'softmax'"),
        (["--prior-std", "lstm=0.1,lstm=0.2"], "lstm is given twice"),
        (["--prior-std", "-1"], "a standard deviation must be a finite number > 0"),
        (["--prior-std", "lstm"], "expected one STD for every part, or PART=STD"),
        (["--prior-std", "lstm=0.1,output"], "'output' is not PART=STD"),
    ],
)
def test_bad_priors_are_usage_errors(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        main([*TINY, "--out", str(tmp_path / "x"), *extra])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
