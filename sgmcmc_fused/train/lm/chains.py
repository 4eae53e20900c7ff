"""The pooled result of a language model's independent chains (``--chains K``; `..chains`): the
perplexity of the average over every chain's samples, and the chains' agreement (split-R-hat). It reads
what the chains left on disk (their final checkpoints and logs)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from ...bayes import PredictiveAverager, split_rhat
from ..chains import chain_dir
from ..checkpoint import load_checkpoint
from .config import LMConfig


def pool_chains(method: str, cfg: LMConfig, out: Path, checkpoint_format: str) -> dict[str, Any]:
    """The result row of `method`'s `cfg.chains` finished chains under `out`.

    test_avg_ppl / valid_avg_ppl: perplexity of the average over all the chains' samples (each chain's
    running mean weighted by its total sample weight: its sample count, for uniform averaging);
    test_ppl / valid_ppl: the mean over chains of the last sample's perplexity; split_rhat: split-R̂
    (`split_rhat`) of the per-sample mean validation log-likelihood per token, -log(valid perplexity),
    across chains (None with fewer than 4 samples a chain); chain_test_avg_ppl: each chain's own
    model-average perplexity.

    Raises:
        CheckpointError: a chain's checkpoint is missing or damaged.
        ValueError: a chain has not finished (its log holds no result).
    """
    results, valid_avgs, test_avgs, traces = [], [], [], []
    for k in range(cfg.chains):
        run_dir = chain_dir(out, method, k)
        log = json.loads((run_dir / "log.json").read_text())
        if log.get("result") is None:
            raise ValueError(f"chain {k} of {method} in {run_dir} has not finished")
        results.append(log["result"])
        ck = load_checkpoint(run_dir / "checkpoint.pt", checkpoint_format)
        for averagers, split in ((valid_avgs, "valid"), (test_avgs, "test")):
            a = PredictiveAverager(1)
            a.load_state_dict(ck["averagers"][split])
            averagers.append(a)
        traces.append([-math.log(row["valid_ppl"]) for row in ck["curve"]])
    valid, test = PredictiveAverager.pooled(valid_avgs), PredictiveAverager.pooled(test_avgs)
    has_avg = test.num_samples > 0
    return {
        "method": method, "lr": cfg.lr[method], "epochs": results[0]["epochs"], "steps": results[0]["steps"],
        "test_ppl": statistics.fmean(r["test_ppl"] for r in results),
        "test_avg_ppl": test.perplexity() if has_avg else None,
        "valid_ppl": statistics.fmean(r["valid_ppl"] for r in results),
        "valid_avg_ppl": valid.perplexity() if has_avg else None,
        "num_samples": test.num_samples,
        "sec_per_epoch": statistics.median(r["sec_per_epoch"] for r in results),
        "chains": cfg.chains,
        "split_rhat": split_rhat(traces) if min(len(t) for t in traces) >= 4 else None,
        "chain_test_avg_ppl": [r["test_avg_ppl"] for r in results],
        "test_avg_ppl_by_samples": [],
    }  # fmt: skip
