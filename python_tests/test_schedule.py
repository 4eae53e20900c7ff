"""The cyclical schedule (`sgmcmc_fused.train.schedule`, Zhang et al. 2020): its step sizes, stages and
sample steps against the paper's formula written out here, and a language-model run that follows it:
the samplers' noise only in the sampling stages, the samples and the optimiser's snapshots at the same
steps, and an exact resume mid-cycle."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from sgmcmc_fused.train import main
from sgmcmc_fused.train.checkpoint import load_checkpoint
from sgmcmc_fused.train.lm.config import LMConfig
from sgmcmc_fused.train.lm.data import load_lm_data
from sgmcmc_fused.train.lm.trainer import LMTrainer
from sgmcmc_fused.train.options import ConfigError
from sgmcmc_fused.train.schedule import CyclicalSchedule


def _zhang_lr_factor(k: int, total: int, cycles: int) -> float:
    # alpha_k = alpha_0 / 2 * [cos(pi * mod(k - 1, ceil(K / M)) / ceil(K / M)) + 1]
    length = math.ceil(total / cycles)
    return 0.5 * (math.cos(math.pi * ((k - 1) % length) / length) + 1)


@pytest.mark.parametrize("total, cycles", [(20, 2), (12, 3), (7, 7), (50, 1)])
def test_step_sizes_follow_the_cosine_of_each_cycle(total, cycles):
    s = CyclicalSchedule(total, cycles, 0.5, 1)
    for k in range(1, total + 1):
        assert s.lr_factor(k) == pytest.approx(_zhang_lr_factor(k, total, cycles), abs=1e-15)
    starts = range(1, total + 1, total // cycles)
    assert all(s.lr_factor(k) == 1.0 for k in starts)  # every cycle restarts at the initial lr


@pytest.mark.parametrize("total, cycles", [(10, 3), (11, 4), (100, 7), (5, 5), (13, 1)])
def test_uneven_cycles_differ_by_a_step_and_end_with_the_run(total, cycles):
    s = CyclicalSchedule(total, cycles, 0.5, 1)
    ends = sorted({s.cycle_end(k) for k in range(1, total + 1)})
    lengths = [b - a for a, b in zip([0, *ends], ends, strict=False)]
    assert len(ends) == cycles and ends[-1] == total
    assert sum(lengths) == total and max(lengths) - min(lengths) <= 1
    for k in range(1, total + 1):  # within a cycle: positions 0, 1/L, ..., (L - 1)/L
        length = lengths[next(i for i, e in enumerate(ends) if k <= e)]
        start = s.cycle_end(k) - length
        assert s.position(k) == pytest.approx((k - 1 - start) / length, abs=1e-15)


def test_stages_and_samples():
    # 20 steps, 2 cycles of 10: steps 1-5 and 11-15 explore (r < 0.5); samples every 2 steps back
    # from each cycle's end.
    s = CyclicalSchedule(20, 2, 0.5, 2)
    assert [k for k in range(1, 21) if s.explores(k)] == [1, 2, 3, 4, 5, 11, 12, 13, 14, 15]
    assert [k for k in range(1, 21) if s.collects(k)] == [6, 8, 10, 16, 18, 20]
    # 10 steps in 3 cycles of 3, 3 and 4 steps: every cycle whole, the last ending with the run.
    s = CyclicalSchedule(10, 3, 0.5, 3)
    assert [s.cycle_end(k) for k in range(1, 11)] == [3, 3, 3, 6, 6, 6, 10, 10, 10, 10]
    assert [k for k in range(1, 11) if s.collects(k)] == [3, 6, 10]
    # No exploration: every step samples.
    assert [k for k in range(1, 9) if CyclicalSchedule(8, 2, 0.0, 1).collects(k)] == list(range(1, 9))


@pytest.mark.parametrize("step", [0, -1, 11, 25])
def test_steps_outside_the_schedule_are_refused(step):
    # The cycle formula extends past both ends (a phantom fourth cycle at step 11 of 10); the schedule
    # only defines steps 1..K.
    s = CyclicalSchedule(10, 3, 0.5, 2)
    for ask in (s.lr_factor, s.explores, s.collects, s.cycle_end):
        with pytest.raises(ValueError, match=rf"step {step} is outside the schedule's steps 1\.\.10"):
            ask(step)


@pytest.mark.parametrize("total, cycles, beta", [(16, 4, 0.8), (20, 4, 0.8), (21, 4, 0.8), (30, 3, 0.9), (29, 3, 0.9)])
def test_every_cycle_samples_iff_each_cycle_collects_a_step(total, cycles, beta):
    s = CyclicalSchedule(total, cycles, beta, 1)
    ends = {s.cycle_end(k) for k in range(1, total + 1)}
    sampled_ends = {s.cycle_end(k) for k in range(1, total + 1) if s.collects(k)}
    assert s.every_cycle_samples() == (sampled_ends == ends)
    # Cycles of 4 steps end at r = 3/4 < 0.8, cycles of 5 at r = 0.8: the boundary of the docstring.
    if (total, cycles, beta) in {(16, 4, 0.8), (20, 4, 0.8)}:
        assert s.every_cycle_samples() == (total == 20)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(total_steps=5, cycles=6, explore_fraction=0.5, thin=1), "cycles <= total steps"),
        (dict(total_steps=5, cycles=0, explore_fraction=0.5, thin=1), "cycles <= total steps"),
        (dict(total_steps=5, cycles=1, explore_fraction=1.0, thin=1), r"explore_fraction must be in \[0, 1\)"),
        (dict(total_steps=5, cycles=1, explore_fraction=0.5, thin=0), "thin must be >= 1"),
    ],
)
def test_bad_schedules(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CyclicalSchedule(**kwargs)


# 4000 training tokens / (batch 10 x bptt 10) = 40 steps an epoch; 2 epochs = 80 steps in 2 cycles of 40.
LM = [
    "lm", "--synthetic-train-tokens", "4000", "--synthetic-eval-tokens", "500", "--hidden", "16", "--batch-size",
    "10", "--bptt", "10", "--epochs", "2", "--lr", "1e-2", "--quiet", "--no-plot", "--schedule", "cyclical",
    "--cycles", "2", "--explore-fraction", "0.75", "--thin", "4", "--average-optimizers", "--sample-weights", "lr",
]  # fmt: skip
BOTH = ["--method", "rmsprop", "psgld"]


def _samples(out: Path, method: str) -> list[dict[str, str]]:
    with (out / method / "samples.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_cyclical_run_samples_in_the_sampling_stages_with_its_control_at_the_same_steps(tmp_path):
    out = tmp_path / "run"
    assert main([*LM, *BOTH, "--out", str(out)]) == 0
    schedule = CyclicalSchedule(80, 2, 0.75, 4)
    steps = [k for k in range(1, 81) if schedule.collects(k)]
    assert steps == [32, 36, 40, 72, 76, 80]
    for method in ("rmsprop", "psgld"):
        rows = _samples(out, method)
        assert [int(r["step"]) for r in rows] == steps  # the snapshot ensemble is sampled where the sampler is
        # --sample-weights lr: each sample weighs the step size it was drawn at.
        for r in rows:
            assert float(r["weight"]) == pytest.approx(1e-2 * _zhang_lr_factor(int(r["step"]), 80, 2), rel=1e-12)
    ck = load_checkpoint(out / "psgld" / "checkpoint.pt")
    # The last step (80) is in a sampling stage: the noise is on, at the cycle's smallest step size.
    assert ck["optimizer"]["param_groups"][0]["add_noise"] is True
    assert ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-2 * _zhang_lr_factor(80, 80, 2), rel=1e-12)
    # Noisy steps: the sampling stages, steps 31-40 and 71-80 (r >= 0.75), 20 in all.
    assert {v["step"] for v in ck["optimizer"]["state"].values()} == {20}
    rms = load_checkpoint(out / "rmsprop" / "checkpoint.pt")
    assert {v["step"] for v in rms["optimizer"]["state"].values()} == {0}  # the control never adds noise
    log = json.loads((out / "psgld" / "log.json").read_text())["epochs"]
    assert [e["lr"] for e in log] == pytest.approx([1e-2 * _zhang_lr_factor(k, 80, 2) for k in (40, 80)], rel=1e-12)


def test_a_cyclical_run_resumes_bit_for_bit_mid_cycle(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    args = [*LM, "--method", "psgld", "--dropout", "0.2"]
    assert main([*args, "--out", str(straight)]) == 0
    assert main([*args, "--out", str(split), "--stop-after-steps", "34", "--checkpoint-every", "10"]) == 0
    assert main(["lm", "--resume", str(split), "--quiet", "--no-plot"]) == 0
    a, b = load_checkpoint(straight / "psgld" / "checkpoint.pt"), load_checkpoint(split / "psgld" / "checkpoint.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["curve"] == b["curve"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--burn-in", "10"], "--burn-in does not apply to --schedule cyclical"),
        (["--cycles", "81"], "--cycles 81 exceeds the 80 training steps"),
        (["--explore-fraction", "1"], "--explore-fraction must be in [0, 1)"),
        (["--cycles", "0"], "--cycles must be >= 1"),
    ],
)
def test_bad_cyclical_options_are_usage_errors(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        main([*LM, *BOTH, "--out", str(tmp_path / "x"), *extra])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_cycle_options_without_the_cyclical_schedule_are_refused(tmp_path, capsys):
    decay = [a for a in LM if a not in ("--schedule", "cyclical")]
    with pytest.raises(SystemExit):
        main([*decay, *BOTH, "--out", str(tmp_path / "x")])
    assert "--cycles and --explore-fraction shape(s) the cycles of --schedule cyclical" in capsys.readouterr().err


def test_a_cyclical_run_keeps_its_epochs_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*LM, *BOTH, "--out", str(out), "--stop-after-steps", "10"]) == 0
    with pytest.raises(SystemExit):
        main(["lm", "--resume", str(out), "--epochs", "3", "--quiet"])
    assert "the cyclical schedule's cycles span the run's 2 epochs" in capsys.readouterr().err
    # A trainer built from the API refuses it too: 3 epochs would move the cycles of the steps taken.
    cfg = LMConfig.from_json(json.loads((out / "config.json").read_text()))
    with pytest.raises(ConfigError, match=r"another configuration \(differs in \['epochs'\]\)"):
        LMTrainer("rmsprop", cfg.replace(epochs=3), load_lm_data(cfg.data), out / "rmsprop", torch.device("cpu"))
    LMTrainer("rmsprop", cfg, load_lm_data(cfg.data), out / "rmsprop", torch.device("cpu"))  # as saved: resumes


def test_cycles_too_short_to_sample_are_said(tmp_path, capsys):
    # 80 steps in 20 cycles of 4: each ends at r = 3/4, inside the exploration stage of β = 0.8.
    args = [*LM, "--method", "psgld", "--cycles", "20", "--explore-fraction", "0.8", "--out", str(tmp_path / "x")]
    assert main(args) == 0  # the later --cycles and --explore-fraction win
    out = capsys.readouterr().out
    assert "psgld: warning: cycles of 4 steps explore to their end with --explore-fraction 0.8" in out
