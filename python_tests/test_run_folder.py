"""A run owns its folder (and its samples folder) for its whole life: concurrent runs into one folder,
folders of other files and another run's samples folder are refused, and nothing is overwritten."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sgmcmc_fused.train import main
from sgmcmc_fused.train.checkpoint import load_checkpoint
from sgmcmc_fused.train.run_control import InterruptFlag
from sgmcmc_fused.train.run_folder import LOCK_NAME, RunFolder, claim_samples_dir

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "lm", "--synthetic-train-tokens", "4000", "--synthetic-eval-tokens", "1000", "--hidden", "16",
    "--batch-size", "10", "--bptt", "10", "--epochs", "1", "--quiet", "--no-plot", "--threads", "1",
]  # fmt: skip


def _usage_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _popen(*argv: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-m", "sgmcmc_fused.train", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, cwd=cwd,
    )  # fmt: skip


def test_a_second_run_into_a_running_runs_folder_is_refused_and_loses_nothing(tmp_path):
    """Two processes, one --out: the second is refused with the first's process id while the first
    runs on; the first's run is whole."""
    out = tmp_path / "run"
    first = _popen(*TINY, "--method", "rmsprop", "--epochs", "200", "--out", str(out), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (out / "rmsprop" / "log.csv").exists():  # training: the folder is held
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = _popen(*TINY, "--lr", "0.5", "--out", str(out), cwd=tmp_path)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert f"--out {out} is in use by process {first.pid} on " in err and "Traceback" not in err
        assert first.poll() is None  # still running, undisturbed
        first.send_signal(signal.SIGINT)
        stdout, stderr = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 130, stderr
    assert json.loads((out / "config.json").read_text())["lr"] == {"rmsprop": 0.003}  # the first run's
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "config.json", "rmsprop"]
    # Once the first has stopped, the folder is free: resuming it works.
    step = load_checkpoint(out / "rmsprop" / "checkpoint.pt")["step"]
    argv = ["lm", "--resume", str(out), "--stop-after-steps", str(step + 5), "--quiet", "--no-plot", "--threads", "1"]
    assert main(argv) == 0
    assert load_checkpoint(out / "rmsprop" / "checkpoint.pt")["step"] == step + 5


def test_the_lock_of_a_killed_process_is_not_in_the_way(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from sgmcmc_fused.train.run_folder import RunFolder; "
         "RunFolder(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        assert (out / LOCK_NAME).read_text().split()[0] == str(holder.pid)
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    finally:
        holder.kill()
    assert main([*TINY, "--out", str(out)]) == 0  # the dead holder's lock is gone with it
    assert (out / LOCK_NAME).read_text().split()[0] == str(os.getpid())


def test_a_folder_held_in_this_process_is_refused_too(tmp_path, capsys):
    folder = RunFolder(tmp_path / "run")
    folder.acquire()
    try:
        err = _usage_error(capsys, [*TINY, "--out", str(tmp_path / "run")])
        assert f"is in use by process {os.getpid()} on " in err
    finally:
        folder.release()
    assert main([*TINY, "--out", str(tmp_path / "run")]) == 0


def test_an_out_folder_of_other_files_or_a_file_is_refused(tmp_path, capsys):
    other = tmp_path / "docs"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    err = _usage_error(capsys, [*TINY, "--out", str(other)])
    assert f"--out {other} is a folder of other files (notes.txt): a new run needs a new or empty folder" in err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]  # not even a lock file left there
    assert (other / "notes.txt").read_text() == "mine"
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    err = _usage_error(capsys, [*TINY, "--out", str(a_file)])
    assert f"--out {a_file}: cannot use it as a run folder (File exists)" in err
    assert a_file.read_text() == "x"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*TINY, "--out", str(empty)]) == 0  # an empty folder is fine


def test_a_run_whose_data_do_not_load_leaves_no_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = ["lm", "--word-corpus", str(tmp_path / "missing"), "--quiet", "--threads", "1"]
    _usage_error(capsys, [*missing, "--out", str(tmp_path / "new")])
    assert not (tmp_path / "new").exists()
    _usage_error(capsys, missing)  # the default folder, runs/NAME-TIME
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_a_resume_refused_by_its_checkpoint_leaves_config_json_as_it_was(tmp_path, capsys):
    corpus = tmp_path / "ptb"
    corpus.mkdir()
    words = "the cat sat on a mat and the dog ran to the park".split()
    for split, lines in (("train", 60), ("valid", 12), ("test", 12)):
        text = "".join(" ".join(words[(i + j) % len(words)] for j in range(9)) + "\n" for i in range(lines))
        (corpus / f"ptb.{split}.txt").write_text(text)
    run = tmp_path / "run"
    argv = ["lm", "--word-corpus", str(corpus), "--hidden", "8", "--batch-size", "4", "--bptt", "5",
            "--epochs", "1", "--quiet", "--no-plot", "--threads", "1", "--method", "rmsprop"]  # fmt: skip
    assert main([*argv, "--out", str(run)]) == 0
    before = (run / "config.json").read_bytes()
    with (corpus / "ptb.train.txt").open("a") as f:
        f.write("a new line\n")
    err = _usage_error(capsys, ["lm", "--resume", str(run), "--epochs", "2", "--quiet", "--threads", "1"])
    assert "the data differ from the data this run was trained on" in err
    assert (run / "config.json").read_bytes() == before


def test_config_json_keeps_the_epochs_a_method_has_trained_to_when_a_later_one_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TINY, "--method", "rmsprop", "psgld", "--out", str(run)]) == 0
    damaged = run / "psgld" / "checkpoint.pt"
    damaged.write_bytes(damaged.read_bytes()[:-100])
    err = _usage_error(capsys, ["lm", "--resume", str(run), "--epochs", "2", "--quiet", "--threads", "1"])
    assert "psgld/checkpoint.pt" in err
    assert json.loads((run / "config.json").read_text())["epochs"] == 2  # rmsprop went on to epoch 2
    assert load_checkpoint(run / "rmsprop" / "checkpoint.pt", None)["epoch"] == 2


def test_a_samples_folder_belongs_to_one_run(tmp_path, capsys):
    samples = tmp_path / "samples"
    first, second = tmp_path / "first", tmp_path / "second"
    args = ["--method", "psgld", "--burn-in", "10", "--thin", "10", "--samples-dir", str(samples)]
    assert main([*TINY, *args, "--stop-after-steps", "30", "--out", str(first)]) == 0
    kept = sorted(p.name for p in (samples / "psgld").iterdir())
    assert kept == ["sample_00000000.safetensors", "sample_00000001.safetensors"]
    before = {p: p.read_bytes() for p in (samples / "psgld").iterdir()}
    err = _usage_error(capsys, [*TINY, *args, "--out", str(second)])
    assert f"--samples-dir {samples} holds the samples of the run in {first.resolve()}" in err
    assert {p: p.read_bytes() for p in (samples / "psgld").iterdir()} == before  # untouched
    assert not (second / "config.json").exists()
    # The run it belongs to resumes into it.
    assert main(["lm", "--resume", str(first), "--quiet", "--no-plot", "--threads", "1"]) == 0
    # Moved or renamed, the run takes its samples folder along; another run still cannot have it.
    moved = tmp_path / "moved"
    first.rename(moved)
    assert main(["lm", "--resume", str(moved), "--quiet", "--no-plot", "--threads", "1"]) == 0
    assert json.loads((samples / "run.json").read_text()) == {"run": str(moved.resolve())}
    err = _usage_error(capsys, [*TINY, *args, "--out", str(tmp_path / "fourth")])
    assert f"--samples-dir {samples} holds the samples of the run in {moved.resolve()}" in err
    # A non-empty folder that names no run is refused to a new run.
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "weights.bin").write_bytes(b"\0")
    err = _usage_error(capsys, [*TINY, *args[:-1], str(stray), "--out", str(tmp_path / "third")])
    assert f"--samples-dir {stray} is not empty and belongs to no run" in err


def test_a_new_run_refused_after_claiming_its_samples_folder_leaves_no_claim(tmp_path, capsys):
    """The data check comes after the claim: the refused run's record in --samples-dir goes with it,
    so that the corrected command is not refused as "another run's" folder."""
    samples = tmp_path / "samples"
    args = ["--method", "psgld", "--burn-in", "10", "--thin", "10", "--samples-dir", str(samples)]
    err = _usage_error(capsys, [*TINY, *args, "--eval-batch-size", "5000", "--out", str(tmp_path / "refused")])
    assert "--eval-batch-size" in err
    assert not (tmp_path / "refused").exists() and not samples.exists()
    assert main([*TINY, *args, "--stop-after-steps", "20", "--out", str(tmp_path / "fixed")]) == 0
    assert json.loads((samples / "run.json").read_text()) == {"run": str((tmp_path / "fixed").resolve())}


@pytest.mark.parametrize("task", ["lm", "classify"])
def test_a_new_run_refused_when_its_trainer_is_built_leaves_nothing(tmp_path, capsys, task):
    """--cycles beyond the training steps is found once a trainer knows the epoch's length, after
    config.json is written: the refused run leaves no folder (nor an lm's --samples-dir claim), so the corrected
    command can use it, where it used to need --resume, which the same --cycles refused again."""
    out, samples = tmp_path / "run", tmp_path / "samples"
    if task == "lm":
        args = [*TINY, "--samples-dir", str(samples)]
    else:  # classify keeps its samples in memory
        args = ["classify", "--quiet", "--threads", "1", "--epochs", "1"]
    args += ["--method", "psgld", "--schedule", "cyclical", "--out", str(out)]
    err = _usage_error(capsys, [*args, "--cycles", "100000"])
    assert "--cycles 100000 exceeds the" in err and "training steps: each cycle needs a step" in err
    assert not out.exists() and not samples.exists()
    assert main([*args, "--cycles", "2", "--stop-after-steps", "5"]) == 0
    assert (out / "psgld" / "checkpoint.pt").is_file()


def test_undoing_a_claim_leaves_a_record_another_run_wrote_since(tmp_path):
    samples, mine, theirs = tmp_path / "samples", tmp_path / "mine", tmp_path / "theirs"
    undo = claim_samples_dir(samples, mine, resumed=False)
    (samples / "run.json").write_text(json.dumps({"run": str(theirs.resolve())}))  # a race won by another
    undo()
    assert json.loads((samples / "run.json").read_text()) == {"run": str(theirs.resolve())}
    (samples / "run.json").write_text(json.dumps({"run": str(mine.resolve())}))
    undo()
    assert not samples.exists()  # its own record, and the folder it made, go


def test_a_resume_whose_samples_folder_is_gone_is_refused(tmp_path, capsys):
    """A samples folder inside the run's folder moves with it, away from the recorded path: resuming
    would split the samples between two folders (and a caption run fail after training)."""
    run = tmp_path / "run"
    args = ["--method", "psgld", "--burn-in", "10", "--thin", "10", "--samples-dir", str(run / "samples")]
    assert main([*TINY, *args, "--stop-after-steps", "30", "--out", str(run)]) == 0
    moved = tmp_path / "moved"
    run.rename(moved)
    err = _usage_error(capsys, ["lm", "--resume", str(moved), "--quiet", "--no-plot", "--threads", "1"])
    assert f"the run's --samples-dir {run / 'samples'} is gone (moved along with the run's folder?)" in err
    assert not run.exists()  # nothing recreated there
    moved.rename(run)  # put back, it resumes
    assert main(["lm", "--resume", str(run), "--quiet", "--no-plot", "--threads", "1"]) == 0


def test_a_second_signal_stops_at_once_with_that_signals_status(capsys):
    """The first SIGTERM asks for a checkpoint at the next step; a second one stops the process at
    once, with status 143 (not a KeyboardInterrupt traceback and 130)."""
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stop, InterruptFlag() as interrupted:
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupted and interrupted.status == 143
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # not reached: the handler raises as soon as the signal arrives
    assert stop.value.code == 143
    assert "SIGTERM again: stopping now, without a checkpoint; the last one stays" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == before  # the handler in place before the block
