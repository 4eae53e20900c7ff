"""The pooled result of a caption method's independent chains (``--chains K``; `..chains`): the test
captions decoded with every chain's kept samples together, the validation perplexity of the average
over all their samples, and the chains' agreement (split-R-hat). It reads what the chains left on disk
(their final checkpoints, logs and sample files)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

from ...bayes import PredictiveAverager, SampleCollector
from ..chains import finished_chains, validation_rhat
from ..methods import shared_lr
from ..run_folder import chain_dir
from ..runlog import write_json
from .config import CaptionConfig
from .data import CaptionData
from .decode import StackedCaptionModels
from .scores import score_captions, write_per_image_csv
from .trainer import FINAL_METRICS, CaptionTrainer, generate_captions, joined_references


def pool_caption_chains(method: str, cfg: CaptionConfig, data: CaptionData, out: Path, device: torch.device,
                        show: int = 0) -> dict[str, Any]:  # fmt: skip
    """The result row of `method`'s `cfg.chains` finished chains under `out` (what
    `CaptionTrainer.final_result` returns for one chain, pooled), also written to METHOD/pooled.json,
    with the pooled captions in METHOD/captions.csv (not written when no chain kept a sample: each
    chain's last weights' captions are then in METHOD/chain-k/captions.csv).

    average: the test scores of the captions decoded with the model average of every chain's kept
    samples (K × up to --max-samples models, one batched forward a step; None if no chain kept one);
    last: each metric's mean over the chains' last weights; valid_avg_ppl: the validation perplexity
    of the average over all samples taken (each chain's running mean weighted by its sample count);
    split_rhat: split-R-hat of the per-sample validation log-likelihood per token, -log(valid
    perplexity), across chains (None with fewer than 4 samples a chain); chain_average: each chain's
    own model-average scores. show: for the first `show` test images, the references, the pooled
    average's caption, chain 0's last weights' and the newest sample of each chain.

    Raises:
        CheckpointError: a chain's checkpoint is missing or damaged.
        ValueError: a chain has not finished (its log holds no result).
    """
    finished = finished_chains(out, method, cfg.chains, CaptionTrainer.CHECKPOINT_FORMAT)
    results = [result for result, _ in finished]
    chain_lr = [r["lr"] for r in results]
    averagers, collectors = [], []
    for k, (_, ck) in enumerate(finished):
        valid = PredictiveAverager(1)
        valid.load_state_dict(ck["averagers"]["valid"])
        averagers.append(valid)
        collectors.append(_collector(ck["collector"], cfg, method, k))
    states = [state for c in collectors for state in c]
    test, refs = data.test, joined_references(data.test)
    average, captions = None, None
    if states:
        captions = generate_captions(StackedCaptionModels(states, device), test.features, data.vocab, cfg)
        average = score_captions(refs, captions, metrics=FINAL_METRICS)
        write_per_image_csv(out / method / "captions.csv", test.filenames, captions, average)
    pooled_valid = PredictiveAverager.pooled(averagers)
    pooled: dict[str, Any] = {
        "method": method, "lr": shared_lr(chain_lr), "chain_lr": chain_lr,
        "epochs": results[0]["epochs"], "steps": results[0]["steps"],
        "num_samples": len(states), "samples_taken": sum(r["samples_taken"] for r in results),
        "sec_per_epoch": statistics.median(r["sec_per_epoch"] for r in results), "tokenizer": results[0]["tokenizer"],
        "unavailable": {**results[0]["unavailable"], **(average.unavailable if average is not None else {})},
        "last": {m: _mean(r["last"][m] for r in results) for m in FINAL_METRICS},
        "average": None if average is None else average.corpus,
        "valid_avg_ppl": pooled_valid.perplexity() if pooled_valid.num_samples else None,
        "chains": cfg.chains,
        "split_rhat": validation_rhat([ck for _, ck in finished]),
        "chain_average": [r["average"] for r in results],
    }  # fmt: skip
    pooled["show"] = _show(results, collectors, captions, data, cfg, device, show)
    write_json(out / method / "pooled.json", pooled)
    return pooled


def _collector(state: dict[str, Any], cfg: CaptionConfig, method: str, k: int) -> SampleCollector:
    """Chain k's kept samples, from its checkpoint's collector state (and its sample files, if any)."""
    directory = chain_dir(Path(cfg.samples_dir), method, k) if cfg.samples_dir else None
    collector = SampleCollector(state["burn_in"], state["thin"], state["max_samples"], directory)
    collector.load_state_dict(state)
    return collector


def _mean(values) -> float | None:
    """The mean, or None if any value is (a metric that was unavailable)."""
    values = list(values)
    return None if any(v is None for v in values) else statistics.fmean(values)


def _show(results: list[dict[str, Any]], collectors: list[SampleCollector], pooled: list[str] | None,
          data: CaptionData, cfg: CaptionConfig, device: torch.device, n: int) -> list[dict[str, Any]]:  # fmt: skip
    """--show for pooled chains: chain 0's entries with the pooled average's caption, and the newest
    sample of each chain in place of one chain's samples."""
    shown = results[0]["show"][:n]
    if not shown:
        return []
    features = data.test.features[: len(shown)]
    newest = [
        (k, c.steps[-1], generate_captions(StackedCaptionModels([c[-1]], device), features, data.vocab, cfg))
        for k, c in enumerate(collectors) if len(c)
    ]  # fmt: skip
    return [
        {**entry, "average": None if pooled is None else pooled[j],
         "samples": [{"chain": k, "step": step, "caption": caps[j]} for k, step, caps in newest]}
        for j, entry in enumerate(shown)
    ]  # fmt: skip
