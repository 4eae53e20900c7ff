"""Atomic writes: whole files or none, and the mode the user's umask gives new files."""

import os
import stat

import pytest
import torch

from sgmcmc_fused.atomic_file import atomic_write
from sgmcmc_fused.bayes import SampleCollector
from sgmcmc_fused.train.checkpoint import write_checkpoint
from sgmcmc_fused.train.runlog import write_csv, write_json


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    before = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(before)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_output_file_gets_the_mode_of_the_umask(tmp_path, umask):
    expected = 0o666 & ~umask  # what open(path, "w") would give
    with atomic_write(tmp_path / "a.bin") as f:
        f.write(b"x")
    write_json(tmp_path / "config.json", {"a": 1})
    write_csv(tmp_path / "log.csv", ["a"], [{"a": 1}])
    write_checkpoint({"w": torch.ones(2)}, tmp_path / "checkpoint.pt")
    SampleCollector(0, 1, 1, tmp_path / "samples").collect(1, torch.nn.Linear(2, 2))
    with open(tmp_path / "reference", "w"):
        pass
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert [p.name for p in files] == [
        "a.bin", "checkpoint.pt", "config.json", "log.csv", "reference", "sample_00000000.safetensors"
    ]  # fmt: skip
    assert {p.name: _mode(p) for p in files} == {p.name: expected for p in files}


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(path, "w") as f:
            f.write("new, half")
            raise RuntimeError("boom")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
