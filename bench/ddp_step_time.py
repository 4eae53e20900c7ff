"""Data-parallel step time of the language-model trainer: torchrun with 2 CPU processes against one.

    python bench/ddp_step_time.py                       # PTB small shape, pSGLD with noise on
    python bench/ddp_step_time.py --steps 400 --json bench/results/ddp_cpu.json

Runs ``python -m sgmcmc_fused.train lm`` for --steps steps (noise on from the first step, no
evaluation inside the timed span) in three configurations and reads the training time the trainer
itself records (its checkpoint's ``train_time``, evaluations excluded; the start-up and data loading
are outside it):

  single   1 process, 1 thread, batch B
  ddp      torchrun --nproc_per_node=2, 1 thread each, global batch 2B (B per process)
  single2  1 process, 2 threads, batch 2B (the same cores and batch as ddp, without DDP)

and prints the time per step and per sequence (one batch column). Target: the ddp time per
step at most 1.2x the single time per step, i.e. per sequence processed by one process. ddp / single2
compares data parallelism with intra-op threading on the same two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from trainer_timing import REPO, ptb_small_args, trainer_step_ms


def run_case(name: str, nproc: int, threads: int, batch: int, steps: int, data_args: list[str], out: Path) -> dict:
    extra = [*data_args, "--batch-size", str(batch)]
    ms, taken = trainer_step_ms("psgld", steps, extra, out / name, processes=nproc, threads=threads)
    return {"case": name, "processes": nproc, "threads_per_process": threads, "global_batch": batch,
            "steps": taken, "step_ms": ms, "ms_per_sequence": ms / batch}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=20, help="batch per process B (default 20, PTB small)")
    p.add_argument(
        "--word-corpus",
        default=str(REPO / "data" / "ptb"),
        help="PTB folder (default data/ptb, from `train download ptb`); 'synthetic': the embedded corpus",
    )
    p.add_argument("--json", type=Path, help="also write the rows here")
    a = p.parse_args(argv)
    data_args = ptb_small_args(a.word_corpus)
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as tmp:
        out = Path(tmp)
        rows = [
            run_case("single", 1, 1, a.batch, a.steps, data_args, out),
            run_case("ddp", 2, 1, 2 * a.batch, a.steps, data_args, out),
            run_case("single2", 1, 2, 2 * a.batch, a.steps, data_args, out),
        ]
    by = {r["case"]: r for r in rows}
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; small preset (2x200 LSTM, bptt 20) on {a.word_corpus}")
    print(f"{'case':<8} {'procs':>5} {'threads':>7} {'batch':>5} {'ms/step':>8} {'ms/seq':>7}")
    for r in rows:
        print(f"{r['case']:<8} {r['processes']:>5} {r['threads_per_process']:>7} {r['global_batch']:>5} "
              f"{r['step_ms']:>8.1f} {r['ms_per_sequence']:>7.2f}")  # fmt: skip
    weak = by["ddp"]["step_ms"] / by["single"]["step_ms"]
    same_cores = by["ddp"]["ms_per_sequence"] / by["single2"]["ms_per_sequence"]
    print(f"ddp step time / single step time (per sequence of one process): {weak:.3f} (target <= 1.2)")
    print(f"ddp time per sequence / single2 (2 threads, same batch): {same_cores:.3f}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"rows": rows, "ddp_over_single": weak, "ddp_over_single2": same_cores},
                                     indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
