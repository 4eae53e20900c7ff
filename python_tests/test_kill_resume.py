"""A real SIGKILL test of the language-model trainer's checkpoints and exact resume.

Runs ``python -m sgmcmc_fused.train lm`` (tiny synthetic settings, psgld with dropout and DropConnect)
once uninterrupted, then a few times killed with SIGKILL at a seeded random moment after the first
checkpoint exists and resumed with ``--resume`` until done. The checkpoint left by each kill must load
with ``torch.load(weights_only=True)`` and be no older than the one before the kill, and the final
parameters, optimizer state, collected samples and results must be bit-identical to the reference.

The machinery lives in bench/kill_resume_trials.py (which runs the full 50 trials as a script).
"""

from __future__ import annotations

import copy
import importlib.util
import random
import signal
import sys
from pathlib import Path

import pytest
import torch

TRIALS = 3

_SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "kill_resume_trials.py"
if sys.platform == "win32" or not hasattr(signal, "SIGKILL"):
    pytest.skip("needs POSIX SIGKILL", allow_module_level=True)
if not _SCRIPT.is_file():
    pytest.skip(f"{_SCRIPT} not found", allow_module_level=True)
_spec = importlib.util.spec_from_file_location("kill_resume_trials", _SCRIPT)
kr = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = kr  # dataclasses look their module up there
_spec.loader.exec_module(kr)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("kill_resume") / "reference"
    span = kr.reference_run(out)
    return span, kr.final_state(out)


def test_reference_comparison_has_teeth(reference):
    _, ref = reference
    ck = ref["checkpoint"]
    assert ck["step"] > 0 and ck["epoch"] == ck["config"]["epochs"]
    assert len(ck["collector"]["records"]) >= 2, "the run should collect several posterior samples"
    assert kr.differences(ref, copy.deepcopy(ref)) == []
    changed = copy.deepcopy(ref)
    name, t = next(iter(changed["checkpoint"]["collector"]["records"][-1]["state"].items()))
    t.view(-1)[0] = torch.nextafter(t.view(-1)[0], torch.tensor(float("inf"), dtype=t.dtype))
    assert kr.differences(ref, changed), "a one-ulp change of a collected sample must be detected"
    changed = copy.deepcopy(ref)
    changed["checkpoint"]["optimizer"]["state"][0]["step"] += 1
    assert kr.differences(ref, changed)


def test_sigkill_and_resume_is_bit_identical(reference, tmp_path):
    span, ref = reference
    total_steps = int(ref["checkpoint"]["step"])
    rng = random.Random(20240613)
    results = []
    for i in range(TRIALS):
        # Seeded random kill times, stratified over the first 80% of the span from the first
        # checkpoint to the end of the reference run, so that the trials spread over the run.
        delay = span * 0.8 * (i + rng.random()) / TRIALS
        r = kr.kill_resume_trial(i, tmp_path / f"trial{i}", ref, delay, timeout=120.0)
        results.append(r)
        assert not r.corrupted, f"trial {i}: corrupted checkpoint: {r.error}"
        assert not r.lost, f"trial {i}: checkpoint lost: {r.error}"
        assert r.error is None, f"trial {i}: {r.error}"
        assert r.mismatches == [], (
            f"trial {i} (kill after {delay:.2f} s) differs from the reference: {r.mismatches[:10]}"
        )
        assert r.resumes >= 1
    # At least one kill really interrupted training (not just the final evaluation).
    assert any(r.killed_before_exit and r.killed_at_step < total_steps for r in results), [
        (r.kill_delay_s, r.killed_at_step) for r in results
    ]
