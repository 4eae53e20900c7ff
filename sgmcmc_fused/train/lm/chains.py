"""The pooled result of a language model's independent chains (``--chains K``; `..chains`): the
perplexity of the average over every chain's samples, and the chains' agreement (split-R-hat). It reads
what the chains left on disk (their final checkpoints and logs)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from ...bayes import PredictiveAverager
from ..chains import finished_chains, validation_rhat
from ..methods import shared_lr
from .config import LMConfig


def pool_chains(method: str, cfg: LMConfig, out: Path, checkpoint_format: str) -> dict[str, Any]:
    """The result row of `method`'s `cfg.chains` finished chains under `out`.

    lr: the lr every chain trained with (None where they differ: `shared_lr`), chain_lr: each chain's;
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
    finished = finished_chains(out, method, cfg.chains, checkpoint_format)
    results = [result for result, _ in finished]
    chain_lr = [r["lr"] for r in results]
    valid_avgs, test_avgs = [], []
    for _, ck in finished:
        for averagers, split in ((valid_avgs, "valid"), (test_avgs, "test")):
            a = PredictiveAverager(1)
            a.load_state_dict(ck["averagers"][split])
            averagers.append(a)
    valid, test = PredictiveAverager.pooled(valid_avgs), PredictiveAverager.pooled(test_avgs)
    has_avg = test.num_samples > 0
    return {
        "method": method, "lr": shared_lr(chain_lr), "chain_lr": chain_lr,
        "epochs": results[0]["epochs"], "steps": results[0]["steps"],
        "test_ppl": statistics.fmean(r["test_ppl"] for r in results),
        "test_avg_ppl": test.perplexity() if has_avg else None,
        "valid_ppl": statistics.fmean(r["valid_ppl"] for r in results),
        "valid_avg_ppl": valid.perplexity() if has_avg else None,
        "num_samples": test.num_samples,
        "sec_per_epoch": statistics.median(r["sec_per_epoch"] for r in results),
        "chains": cfg.chains,
        "split_rhat": validation_rhat([ck for _, ck in finished]),
        "chain_test_avg_ppl": [r["test_avg_ppl"] for r in results],
        "test_avg_ppl_by_samples": [],
    }  # fmt: skip
