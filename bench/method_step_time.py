"""Training step time of the language-model trainer per method: what a sampler costs over its optimiser.

    python bench/method_step_time.py                    # PTB small, 300 steps, 2 rounds, 1 thread
    python bench/method_step_time.py --json bench/results/method_step_cpu.json

Runs ``python -m sgmcmc_fused.train lm`` with the `small` preset for --steps steps per method, with
the samplers' noise on from the first step and no evaluation inside the timed span, and reads the
training time the trainer itself records (its checkpoint's ``train_time``: forward, backward, clipping
and the optimizer step; start-up, data loading and evaluation are outside it). The methods run in
turn, --rounds times over, so a slow spell of the machine falls on all of them alike; the median of
the rounds is reported.

Target: a pSGLD epoch at most 1.1x an RMSprop epoch; SGLD over SGD is printed beside it. The
trainers' rmsprop and sgd are PSGLD and SGLD with the noise off (the same fused step), so the ratios
are the cost of the noise. An epoch is a fixed number of these steps, so the ratio of step times is
the ratio of epoch times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from trainer_timing import REPO, ptb_small_args, trainer_step_ms

METHODS = ("sgd", "sgld", "rmsprop", "psgld")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--word-corpus",
        default=str(REPO / "data" / "ptb"),
        help="PTB folder (default data/ptb, from `train download ptb`); 'synthetic': the embedded corpus",
    )
    p.add_argument("--json", type=Path, help="also write the measurements here")
    a = p.parse_args(argv)
    data_args = ptb_small_args(a.word_corpus)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory(prefix="method-bench-") as tmp:
        for r in range(a.rounds):
            for m in METHODS:
                ms, _ = trainer_step_ms(m, a.steps, data_args, Path(tmp) / f"{m}-{r}", threads=a.threads)
                times[m].append(ms)
    median = {m: statistics.median(t) for m, t in times.items()}
    print(f"torch {torch.__version__}, {a.threads} thread(s); small preset (2x200 LSTM, batch 20, bptt 20) "
          f"on {a.word_corpus}; {a.steps} steps x {a.rounds} rounds")  # fmt: skip
    print(f"{'method':<8} {'ms/step (median)':>17}  rounds")
    for m in METHODS:
        print(f"{m:<8} {median[m]:>17.1f}  " + " ".join(f"{t:.1f}" for t in times[m]))
    ratios = {
        "psgld_over_rmsprop": median["psgld"] / median["rmsprop"],
        "sgld_over_sgd": median["sgld"] / median["sgd"],
    }
    print(f"psgld / rmsprop: {ratios['psgld_over_rmsprop']:.3f} (target <= 1.1)")
    print(f"sgld / sgd:      {ratios['sgld_over_sgd']:.3f}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"steps": a.steps, "threads": a.threads, "ms_per_step": times,
                                      "median_ms_per_step": median, **ratios}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
