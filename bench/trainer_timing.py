"""Run the language-model trainer for a fixed number of steps and read the training time it records.

Shared by `ddp_step_time.py` and `method_step_time.py`. The trainer's checkpoint holds ``train_time``
(the current epoch's) and each finished epoch's ``epoch_time_s``: forward, backward, clipping and the
optimizer step, with evaluation excluded; start-up and data loading are outside it. So the time per
step here is the trainer's own measure, whatever the process count.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sgmcmc_fused.train.checkpoint import load_checkpoint  # noqa: E402


def ptb_small_args(word_corpus: str) -> list[str]:
    """Data and preset options: PTB in `word_corpus`, or 'synthetic' for the embedded corpus."""
    if word_corpus == "synthetic":
        return ["--synthetic-train-tokens", "200000", "--preset", "small"]
    return ["--word-corpus", word_corpus, "--preset", "small"]


def trainer_step_ms(
    method: str, steps: int, extra: list[str], out: Path, *, processes: int = 1, threads: int = 1
) -> tuple[float, int]:
    """Train `method` for `steps` steps (noise on from the first, no sample collected) with the options
    `extra`, in `processes` processes (torchrun when > 1) of `threads` threads each.

    Returns (milliseconds per step, steps taken).
    Raises:
        RuntimeError: the trainer failed (with the end of its output).
    """
    args = [
        "lm", *extra, "--method", method, "--burn-in", "0", "--thin", "1000000", "--stop-after-steps", str(steps),
        "--threads", str(threads), "--quiet", "--no-progress", "--no-plot", "--out", str(out),
    ]  # fmt: skip
    if processes == 1:
        cmd = [sys.executable, "-m", "sgmcmc_fused.train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "sgmcmc_fused.train", *args]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
        "OMP_NUM_THREADS": str(threads),
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    ck = load_checkpoint(out / method / "checkpoint.pt")
    # train_time covers the current epoch's steps; each finished epoch's is in its history row.
    seconds = sum(float(row["epoch_time_s"]) for row in ck["history"]) + float(ck["train_time"])
    return 1e3 * seconds / int(ck["step"]), int(ck["step"])
