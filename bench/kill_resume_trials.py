"""Randomised SIGKILL-and-resume trials of the language-model trainer.

    python bench/kill_resume_trials.py                 # 50 trials
    python bench/kill_resume_trials.py --trials 5 --seed 1

Runs ``python -m sgmcmc_fused.train lm`` once uninterrupted (the reference), then, per trial, starts
the same run in a fresh folder, waits for its first checkpoint, kills it with SIGKILL after a random
delay (seeded; uniform over the first 80% of the span between the reference's first checkpoint and
its exit), checks the checkpoint left behind, and resumes with ``--resume`` until the run completes.
The final checkpoint (parameters, optimizer state with the noise counters, collected samples, running averages, RNG
states, logs) and results.json must be bit-identical to the reference's; only wall-clock timings may
differ.

Counted per trial:
  - corrupted: the checkpoint left by the kill (or any final checkpoint) fails to load with the
    trainers' own loader (``torch.load(weights_only=True)`` and the content's SHA-256 digest);
  - lost: no checkpoint after the kill although one existed before, or it is older (fewer steps) than
    the one seen just before the kill;
  - mismatch: the resumed run's final state differs from the reference.

Prints a summary line and exits 1 if any trial failed in any of these ways (or a run crashed).
The module's functions are also used by python_tests/test_kill_resume.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sgmcmc_fused.train import checkpoint  # noqa: E402

METHOD = "psgld"

#: Options that only steer execution; --resume accepts them (they must match the reference's so the
#: periodic checkpoints, which fold the running loss, fall at the same steps).
RUN_CONTROL = ["--checkpoint-every", "7", "--threads", "1", "--no-progress", "--no-plot", "--quiet"]
#: A tiny synthetic run of a few seconds: 30 steps per epoch, 3 epochs, noise after step 12, a sample
#: every 9 steps (the newest 4 kept, so checkpoints hold samples and drop old ones), dropout and
#: DropConnect on (so torch's RNG and the mask counters must resume too), and a learning-rate decay
#: after the first epoch.
RUN_ARGS = [
    "--method", METHOD, "--synthetic-train-tokens", "12000", "--synthetic-eval-tokens", "400",
    "--hidden", "32", "--epochs", "3", "--decay-after", "1", "--burn-in", "12", "--thin", "9",
    "--dropout", "0.1", "--dropconnect", "0.2", "--max-samples", "4", "--seed", "11", *RUN_CONTROL,
]  # fmt: skip

#: Wall-clock entries: the only ones allowed to differ between the reference and a resumed run.
TIMING_KEYS = frozenset({"train_time", "eval_time", "epoch_time_s", "eval_time_s", "sec_per_epoch"})


class RunFailed(RuntimeError):
    pass


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _start(args: list[str], log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sgmcmc_fused.train", "lm", *args],
        cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _checkpoint(out: Path) -> Path:
    return out / METHOD / "checkpoint.pt"


def load_checkpoint(path: Path) -> dict[str, Any]:
    return checkpoint.load_checkpoint(path)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> float:
    """Poll until `path` exists; returns the time it appeared (or the process exited first)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            return time.monotonic()
        if time.monotonic() > deadline:
            proc.kill()
            raise RunFailed(f"no checkpoint at {path} after {timeout:.0f} s")
        time.sleep(0.005)
    return time.monotonic()


def _finish(proc: subprocess.Popen, log_path: Path, what: str, timeout: float) -> None:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RunFailed(f"{what}: did not finish within {timeout:.0f} s") from None
    if rc != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RunFailed(f"{what}: exit status {rc}\n{tail}")


def reference_run(out: Path, timeout: float = 300.0) -> float:
    """Run uninterrupted into `out`; returns the seconds from the first checkpoint to the exit."""
    log_path = out.parent / f"{out.name}.log"
    with open(log_path, "wb") as log:
        proc = _start(["--out", str(out), *RUN_ARGS], log)
        t_first = _wait_for(_checkpoint(out), proc, timeout)
        _finish(proc, log_path, "reference run", timeout)
    return time.monotonic() - t_first


def final_state(out: Path) -> dict[str, Any]:
    """What a completed run computed: its final checkpoint and results.json."""
    return {"checkpoint": load_checkpoint(_checkpoint(out)), "results": json.loads((out / "results.json").read_text())}


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where `a` and `b` differ (tensors: torch.equal, dtype and shape; timing entries skipped)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return [f"{path}: tensor vs {type(b if isinstance(a, torch.Tensor) else a).__name__}"]
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            return [f"{path}: tensors differ"]
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(a.keys() | b.keys(), key=str):
            if k in TIMING_KEYS:
                continue
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in one")
            else:
                out += differences(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")]
    if type(a) is not type(b) or a != b:
        # NaN == NaN for our purposes (bit-identical runs produce the same NaNs).
        if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
            return []
        return [f"{path}: {a!r} vs {b!r}"]
    return []


@dataclass
class TrialResult:
    trial: int
    kill_delay_s: float
    killed_at_step: int | None = None  # step of the checkpoint left by the kill
    killed_before_exit: bool = True
    resumes: int = 0
    lost: bool = False
    corrupted: bool = False
    mismatches: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not (self.lost or self.corrupted or self.mismatches or self.error)


def kill_resume_trial(
    trial: int, out: Path, reference: dict[str, Any], kill_delay_s: float, timeout: float = 300.0, max_resumes: int = 5
) -> TrialResult:
    """One trial: run into `out`, SIGKILL it `kill_delay_s` after its first checkpoint, check what the
    kill left, resume until done and compare with `reference` (a `final_state`)."""
    res = TrialResult(trial, kill_delay_s)
    ck_path = _checkpoint(out)
    log_path = out.parent / f"{out.name}.log"
    try:
        with open(log_path, "ab") as log:
            proc = _start(["--out", str(out), *RUN_ARGS], log)
            _wait_for(ck_path, proc, timeout)
            time.sleep(kill_delay_s)
            step_before = None
            try:
                step_before = int(load_checkpoint(ck_path)["step"])
            except Exception:  # noqa: BLE001 - judged below, after the kill
                pass
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            else:
                res.killed_before_exit = False
            proc.wait()
            if res.killed_before_exit and proc.returncode != -signal.SIGKILL:
                res.killed_before_exit = False  # it exited on its own just before the signal
            if not ck_path.exists():
                res.lost = True
                raise RunFailed("no checkpoint after the kill")
            try:
                left = load_checkpoint(ck_path)
            except Exception as e:  # noqa: BLE001
                res.corrupted = True
                raise RunFailed(f"the checkpoint left by the kill does not load: {e}") from e
            res.killed_at_step = int(left["step"])
            if step_before is not None and res.killed_at_step < step_before:
                res.lost = True
            while not (out / "results.json").exists() or res.resumes == 0:
                if res.resumes >= max_resumes:
                    raise RunFailed(f"not complete after {max_resumes} resumes")
                res.resumes += 1
                proc = _start(["--resume", str(out), *RUN_CONTROL], log)
                _finish(proc, log_path, f"resume {res.resumes}", timeout)
        try:
            got = final_state(out)
        except Exception as e:  # noqa: BLE001
            res.corrupted = True
            raise RunFailed(f"the final checkpoint or results.json does not load: {e}") from e
        res.mismatches = differences(reference, got)
    except RunFailed as e:
        res.error = str(e)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=50, help="kill-and-resume trials (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random kill times")
    p.add_argument("--workdir", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the run folders")
    args = p.parse_args(argv)
    if args.trials < 1:
        p.error("--trials must be >= 1")

    work = Path(tempfile.mkdtemp(prefix="kill_resume_")) if args.workdir is None else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    results: list[TrialResult] = []
    try:
        span = reference_run(work / "reference")
        reference = final_state(work / "reference")
        print(f"reference: {reference['checkpoint']['step']} steps, "
              f"{len(reference['checkpoint']['collector']['records'])} samples kept, "
              f"{span:.2f} s from the first checkpoint to the exit", flush=True)  # fmt: skip
        for i in range(args.trials):
            delay = rng.uniform(0.0, 0.8 * span)
            r = kill_resume_trial(i, work / f"trial{i:03d}", reference, delay)
            results.append(r)
            status = "ok" if r.ok else "FAIL"
            detail = r.error or ("; ".join(r.mismatches[:5]) if r.mismatches else "")
            print(f"trial {i:3d}: kill after {delay:5.2f} s, checkpoint at step {r.killed_at_step}, "
                  f"{'killed' if r.killed_before_exit else 'had exited'}, {r.resumes} resume(s): {status} {detail}",
                  flush=True)  # fmt: skip
            if not args.keep and r.ok:
                shutil.rmtree(work / f"trial{i:03d}", ignore_errors=True)
    finally:
        if not args.keep and args.workdir is None:
            failed_dirs = [d for d in work.glob("trial*") if d.is_dir()]
            if not failed_dirs:
                shutil.rmtree(work, ignore_errors=True)
            else:
                print(f"runs of failed trials kept in {work}")
    identical = sum(1 for r in results if not r.mismatches and not r.error)
    lost = sum(r.lost for r in results)
    corrupted = sum(r.corrupted for r in results)
    errors = sum(1 for r in results if r.error and not (r.lost or r.corrupted))
    killed = sum(r.killed_before_exit for r in results)
    total_steps = int(reference["checkpoint"]["step"]) if results else 0
    in_training = sum(r.killed_before_exit and (r.killed_at_step or 0) < total_steps for r in results)
    print(
        f"{identical}/{len(results)} trials bit-identical to the reference; {killed} killed before exiting "
        f"({in_training} during training); "
        f"checkpoints lost: {lost}, corrupted: {corrupted}; other failures: {errors} "
        f"({time.monotonic() - t0:.0f} s)"
    )
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
