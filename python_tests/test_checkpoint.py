"""Checkpoint files: the previous checkpoint survives, and damage is detected and named.

`write_checkpoint` keeps the checkpoint it replaces as ``NAME.prev`` and stores a SHA-256 digest of
the content; `load_checkpoint` refuses truncated files, bit flips (which torch's own loader reads
silently) and files without a digest, and points to the intact previous checkpoint. End to end: a
language-model run whose latest checkpoint is damaged stops with that message, and resuming from the
previous checkpoint ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sgmcmc_fused.train import main
from sgmcmc_fused.train.checkpoint import (
    CheckpointError,
    content_digest,
    load_checkpoint,
    previous_path,
    write_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]


def _state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "format": "test/1",
        "step": seed,
        "model": {"w": torch.randn(64, 32, generator=g), "b": torch.randn(32, generator=g).half()},
        "history": [{"epoch": 1, "ppl": 12.5}, {"epoch": 2, "ppl": None}],
        "name": "psgld",
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert a["step"] == b["step"] and a["history"] == b["history"] and a["name"] == b["name"]
    for k in a["model"]:
        assert a["model"][k].dtype == b["model"][k].dtype and torch.equal(a["model"][k], b["model"][k])


def test_round_trip_and_previous_kept(tmp_path):
    path = tmp_path / "checkpoint.pt"
    write_checkpoint(_state(1), path)
    assert not previous_path(path).exists()
    _assert_same(load_checkpoint(path, "test/1"), _state(1))
    write_checkpoint(_state(2), path)
    _assert_same(load_checkpoint(path, "test/1"), _state(2))
    _assert_same(load_checkpoint(previous_path(path), "test/1"), _state(1))
    write_checkpoint(_state(3), path)
    _assert_same(load_checkpoint(previous_path(path), "test/1"), _state(2))
    # No temporary files are left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "checkpoint.pt.prev"]


def test_truncated_checkpoint_is_refused_and_names_the_previous(tmp_path):
    path = tmp_path / "checkpoint.pt"
    write_checkpoint(_state(1), path)
    write_checkpoint(_state(2), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert str(path) in msg and "truncated or corrupted" in msg
    assert f"the previous checkpoint {previous_path(path)} is intact" in msg
    _assert_same(load_checkpoint(previous_path(path)), _state(1))


def test_flipped_tensor_byte_fails_the_digest(tmp_path):
    """torch.load reads a flipped byte inside tensor data without complaint; the digest does not."""
    path = tmp_path / "checkpoint.pt"
    write_checkpoint(_state(1), path)
    write_checkpoint(_state(2), path)
    data = bytearray(path.read_bytes())
    raw = torch.load(path, weights_only=True)  # find the weight's bytes in the file to flip one of them
    needle = raw["model"]["w"].numpy().tobytes()[:64]
    at = bytes(data).find(needle)
    assert at > 0
    data[at + 5] ^= 0x10
    path.write_bytes(bytes(data))
    silently = torch.load(path, weights_only=True)["model"]["w"]
    assert not torch.equal(silently, _state(2)["model"]["w"])  # loads, with a wrong number
    with pytest.raises(CheckpointError, match="does not match its SHA-256 digest") as e:
        load_checkpoint(path)
    assert "is intact" in str(e.value)


def test_damaged_previous_is_reported_too(tmp_path):
    path = tmp_path / "checkpoint.pt"
    write_checkpoint(_state(1), path)
    write_checkpoint(_state(2), path)
    previous_path(path).write_bytes(b"garbage")
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is damaged too"):
        load_checkpoint(path)


def test_missing_digest_and_wrong_format_are_refused(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save(_state(1), plain)
    with pytest.raises(CheckpointError, match="no content digest"):
        load_checkpoint(plain)
    path = tmp_path / "checkpoint.pt"
    write_checkpoint(_state(1), path)
    with pytest.raises(CheckpointError, match="format 'test/1', expected 'other/1'"):
        load_checkpoint(path, "other/1")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(ValueError, match="reserved"):
        write_checkpoint({"content_sha256": "x"}, path)


def test_digest_sees_every_kind_of_change():
    base = _state(1)
    digest = content_digest(base)
    assert content_digest(_state(1)) == digest
    changed = [
        {**base, "step": 2},
        {**base, "name": "sgld"},
        {**base, "history": base["history"][:1]},
        {**base, "model": {**base["model"], "b": base["model"]["b"].float()}},  # dtype only
        {**base, "model": {**base["model"], "w": base["model"]["w"].reshape(32, 64)}},  # shape only
        {**base, "model": {**base["model"], "w": base["model"]["w"].clone().index_fill_(0, torch.tensor([3]), 0.0)}},
        {**base, "extra": None},
    ]
    assert len({content_digest(c) for c in changed} | {digest}) == len(changed) + 1


# -- end to end: the language-model trainer --------------------------------------------------------

TINY = [
    "lm", "--synthetic-train-tokens", "6000", "--synthetic-eval-tokens", "600", "--hidden", "16",
    "--batch-size", "10", "--bptt", "10", "--epochs", "2", "--method", "psgld", "--burn-in", "20",
    "--thin", "15", "--dropout", "0.1", "--quiet", "--no-plot", "--threads", "1",
]  # fmt: skip


def test_trainer_refuses_a_damaged_checkpoint_and_resumes_from_the_previous(tmp_path, capsys):
    straight = tmp_path / "straight"
    assert main([*TINY, "--out", str(straight)]) == 0

    run = tmp_path / "run"
    assert main([*TINY, "--out", str(run), "--checkpoint-every", "20", "--stop-after-steps", "40"]) == 0
    ck = run / "psgld" / "checkpoint.pt"
    assert load_checkpoint(ck)["step"] == 40 and load_checkpoint(previous_path(ck))["step"] == 20
    ck.write_bytes(ck.read_bytes()[:1000])  # as if the disk filled up mid-write outside our rename

    with pytest.raises(SystemExit) as e:
        main(["lm", "--resume", str(run), "--quiet", "--no-plot", "--threads", "1", "--checkpoint-every", "20"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"cannot read checkpoint .*checkpoint\.pt \(truncated or corrupted\?\)", err)
    assert "checkpoint.pt.prev is intact" in err

    shutil.move(previous_path(ck), ck)
    assert main(["lm", "--resume", str(run), "--quiet", "--no-plot", "--threads", "1", "--checkpoint-every", "20"]) == 0
    a, b = load_checkpoint(straight / "psgld" / "checkpoint.pt"), load_checkpoint(ck)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["curve"] == b["curve"]
    ra = json.loads((straight / "results.json").read_text())["methods"][0]
    rb = json.loads((run / "results.json").read_text())["methods"][0]
    assert ra["test_avg_ppl"] == rb["test_avg_ppl"] and ra["test_ppl"] == rb["test_ppl"]


def test_cli_reports_damage_as_a_usage_error(tmp_path):
    """Through the real command line: exit status 2 and the message on stderr, no traceback."""
    run = tmp_path / "run"
    assert main([*TINY, "--out", str(run), "--stop-after-steps", "30", "--checkpoint-every", "10"]) == 0
    ck = run / "psgld" / "checkpoint.pt"
    data = bytearray(ck.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ck.write_bytes(bytes(data))
    proc = subprocess.run(
        [sys.executable, "-m", "sgmcmc_fused.train", "lm", "--resume", str(run), "--quiet"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "checkpoint.pt" in proc.stderr and ("corrupted" in proc.stderr)


def test_a_trainer_removes_what_a_killed_checkpoint_write_left(tmp_path):
    """SIGKILL inside write_checkpoint leaves its partial file (and maybe the link to the previous
    checkpoint) under temporary names; the next trainer of that folder removes them, and only them."""
    run = tmp_path / "run"
    assert main([*TINY, "--stop-after-steps", "5", "--out", str(run)]) == 0
    method = run / "psgld"
    leftovers = [method / ".checkpoint.pt.k3j9x_2a.tmp", method / ".checkpoint.pt.prev.4242.tmp"]
    for path in leftovers:
        path.write_bytes(b"PK partial")
    keep = [method / ".sample_00000001.safetensors.tmp", method / "notes.tmp", method / ".other.pt.1.tmp"]
    for path in keep:
        path.write_bytes(b"not a checkpoint")
    assert main(["lm", "--resume", str(run), "--quiet", "--no-plot", "--threads", "1"]) == 0
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in keep)


def test_a_full_disk_is_named_and_the_last_checkpoint_stays_whole(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    write_checkpoint({"step": 1}, path)

    def save_onto_a_full_disk(obj, f):
        # As torch.save fails there: its zip writer's RuntimeError, raised while handling the OSError.
        f.write(b"PK" * 10)
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 89024 vs 88912")  # noqa: B904

    monkeypatch.setattr(torch, "save", save_onto_a_full_disk)
    message = r"cannot write the checkpoint \(No space left on device\); .*checkpoint\.pt is the last checkpoint, whole"
    with pytest.raises(CheckpointError, match=message + r"\. Free space .* --resume"):
        write_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "checkpoint.pt.prev"]  # no partial file
    with pytest.raises(Exception) as other:  # any other failure is not dressed up as a full disk
        write_checkpoint({"step": 3, "bad": lambda: 0}, path)
    assert not isinstance(other.value, CheckpointError)
