"""Image-caption trainer: ``python -m sgmcmc_fused.train caption [options]``.

Trains image features → linear → DropConnectLSTM ← word embeddings, → dropout → softmax caption
generators (`sgmcmc_fused.train.caption.model`) with one or more methods (sgd, rmsprop, sgld, psgld),
one after another from the same initialisation and data order, and scores the captions they generate
for the test images with BLEU-1..4, METEOR, ROUGE-L and CIDEr-D (the COCO caption evaluation code,
`pycocoevalcap`). The samplers caption with the model average of their samples: every decoding step's
word distribution is the mean of the samples' (`decode`), all samples in one batched forward.

    python -m sgmcmc_fused.train caption        # embedded default: synthetic scenes of coloured shapes,
                                                # tiny model, rmsprop vs psgld, a few CPU minutes
    python -m sgmcmc_fused.train caption-features --images Flickr8k_Dataset --captions dataset_flickr8k.json \\
        --arch resnet152 --weights resnet152.pth --out flickr8k-resnet152.safetensors
    python -m sgmcmc_fused.train caption --captions dataset_flickr8k.json --features flickr8k-resnet152.safetensors \\
        --method rmsprop psgld --device cuda
    python -m sgmcmc_fused.train caption --resume runs/caption-...   # continue a stopped run

Data: the Karpathy split JSON of Flickr8k, Flickr30k or COCO (``images[].filename``, ``split``,
``sentences[].tokens``; "restval" counts as training) and a feature file with one row per image in the
JSON's order. The vocabulary is the training captions' words seen at least --min-count times.
Units: `lr` is the step size of the mean loss per caption token; num_data = training target tokens.

Outputs in --out DIR: config.json; per method METHOD/log.csv (one row per epoch: perplexities of the
validation captions, of the last weights and of the average of every sample so far, and the
validation BLEU-4 and CIDEr-D of the captions decoded with the kept samples, or the last weights
before the first sample), METHOD/samples.csv (one row per collected sample),
METHOD/captions.csv (every test image: the caption and its scores), METHOD/log.json and checkpoint.pt;
results.json, results.csv and scores.png (validation perplexity against epochs and against the number
of samples averaged) for all methods.

The printed table has two reference points: every test image given the most frequent training caption
(the trivial baseline), and the references' own agreement (each of an image's references scored
against the others).

Checkpoints (each epoch end, every --checkpoint-every steps, at --stop-after-steps and on Ctrl-C) hold
everything the rest of the run depends on, the kept samples included, so ``--resume`` computes bit for
bit what the uninterrupted run would have.

    torchrun --nproc_per_node=2 -m sgmcmc_fused.train caption    # data parallel (DDP)
    python -m sgmcmc_fused.train caption --chains 4 --method psgld  # 4 chains, their samples pooled

Under torchrun with --chains 1 the run is data parallel: each rank takes a contiguous share of every
batch's captions, DDP averages the gradients weighted by the ranks' target tokens, and the samplers'
noise is the same on every rank. Rank 0 alone keeps the samples, decodes and writes. With --chains K > 1
chain k (seed SEED + k) trains in METHOD/chain-k, on rank k mod WORLD_SIZE under torchrun; the test
captions are then decoded with every chain's kept samples together (METHOD/pooled.json and
METHOD/captions.csv; without samples, each chain's last weights' captions are in
METHOD/chain-k/captions.csv).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..chains import check_chains_world, train_chains
from ..command import Session, Task
from ..distributed import World
from ..options import RUN_CONTROL, ConfigError
from ..run_folder import claim_samples_dir
from ..runlog import write_csv, write_json
from . import config
from .chains import pool_caption_chains
from .config import CaptionConfig
from .data import CaptionData
from .plots import plot_caption_runs
from .scores import CaptionScores, most_frequent_caption, reference_agreement, score_captions
from .sources import load_caption_data
from .trainer import FINAL_METRICS, CaptionTrainer, joined_references

RESULT_COLUMNS = [
    "method", "model", "lr", "epochs", "steps", "num_samples", *FINAL_METRICS, "sec_per_epoch", "chains", "split_rhat",
]  # fmt: skip


class CaptionTask(Task):
    name = "caption"
    help = "image-caption LSTMs with SG-MCMC, decoding with the posterior's model average"
    description = __doc__
    config_type = CaptionConfig
    run_control = RUN_CONTROL | {"show"}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        config.add_arguments(parser)

    def new_config(self, args: argparse.Namespace) -> CaptionConfig:
        _check_show(args)
        return config.resolve_config(args)

    def run_name(self, cfg: CaptionConfig) -> str:
        return "caption-" + ("scenes" if cfg.data["kind"] == "synthetic" else Path(cfg.data["captions"]).stem)

    def claim(self, cfg: CaptionConfig, out: Path, resumed: bool) -> Callable[[], None] | None:
        return claim_samples_dir(Path(cfg.samples_dir), out, resumed) if cfg.samples_dir else None

    def load_data(
        self, cfg: CaptionConfig, args: argparse.Namespace, world: World
    ) -> tuple[CaptionConfig, CaptionData]:
        _check_show(args)
        check_chains_world(cfg.chains, world)
        return cfg, load_caption_data(cfg.data, progress=bool(args.progress))

    def train(self, session: Session, data: CaptionData) -> int:
        cfg, say, world = session.cfg, session.say, session.world
        say(f"data: {data.description}")
        for note in data.notes:
            say(note)
        say(
            f"model: {cfg.preset} preset, {data.feature_dim}-d "
            f"features, {cfg.embedding_dim}-d embeddings, 1x{cfg.hidden} LSTM, dropout {cfg.dropout}, dropconnect "
            f"{cfg.dropconnect}, batch {cfg.batch_size}, {cfg.epochs} epochs, beam {cfg.beam}, {cfg.precision}; "
            f"device {session.device}, {torch.get_num_threads()} threads; output {session.out}"
            + (f"; {world.size} processes" + (" (data parallel)" if cfg.chains == 1 else " (one chain each)")
               if world.distributed else "")
            + (f"; {cfg.chains} chains per method" if cfg.chains > 1 else "")
        )  # fmt: skip
        results, histories, curves = [], {}, {}
        for method in cfg.methods:
            if cfg.chains == 1:
                trainer = CaptionTrainer(method, cfg, data, session.out / method, session.device,
                                         show=session.args.show, **session.trainer_options())  # fmt: skip
                result = trainer.train(**session.train_options())
            else:
                trainer, result = _run_chains(method, session, data)
            if not session.world.is_main:
                continue
            results.append(result)
            histories[method], curves[method] = trainer.history, trainer.curve
            plot_caption_runs(session.out / "scores.png", histories, curves, title=data.description)
        if not session.world.is_main:
            return 0
        refs = joined_references(data.test)
        baseline_caption = most_frequent_caption(joined_references(data.train))
        baseline = score_captions(refs, [baseline_caption] * len(refs), metrics=FINAL_METRICS)
        agreement, agreement_note = _reference_agreement(refs)
        rows = result_rows(results)
        unavailable = {**baseline.unavailable, **(agreement.unavailable if agreement else {})}
        for r in results:
            unavailable.update(r["unavailable"])
        write_csv(session.out / "results.csv", RESULT_COLUMNS, rows)
        write_json(session.out / "results.json", {
            "data": data.description, "vocab_size": len(data.vocab), "tokenizer": baseline.tokenizer,
            "unavailable": unavailable, "methods": results,
            "most_frequent_caption": {"caption": baseline_caption, "scores": baseline.corpus},
            "reference_agreement": agreement.corpus if agreement else None,
            "reference_agreement_images": sum(len(r) >= 2 for r in refs),
        })  # fmt: skip
        for r in results:
            for shown in r["show"]:
                say(format_show(r["method"], shown))
        table = format_table(results, data, cfg, baseline.corpus, baseline_caption,
                             agreement.corpus if agreement else dict.fromkeys(FINAL_METRICS), unavailable)  # fmt: skip
        print(table + (f"\n{agreement_note}" if agreement_note else ""))
        return 0


def _reference_agreement(refs: list[list[str]]) -> tuple[CaptionScores | None, str]:
    """The references' own agreement over the test images that have two references or more (one
    reference has nothing to be scored against), and a note when some or all of them have only one."""
    several = [r for r in refs if len(r) >= 2]
    single = len(refs) - len(several)
    if not several:
        return None, "references (1 vs rest): n/a, every test image has a single reference"
    note = ""
    if single:
        note = (f"references (1 vs rest): over the {len(several)} of {len(refs)} test images that have two "
                f"references or more ({single} {'has' if single == 1 else 'have'} only one)")  # fmt: skip
    return reference_agreement(several, metrics=FINAL_METRICS), note


def _run_chains(method: str, session: Session, data: CaptionData) -> tuple[CaptionTrainer | None, dict | None]:
    """Train chains 0..K-1 of `method` (this rank's share: k = rank mod world size), then on rank 0 pool
    them (`pool_caption_chains`). Returns (chain 0's trainer, for the plot; the pooled result) on rank
    0, (None, None) on the others."""
    cfg, world, out = session.cfg, session.world, session.out
    first = train_chains(method, session, lambda chain_cfg, run_dir, **options: CaptionTrainer(
        method, chain_cfg, data, run_dir, session.device, show=session.args.show, **options))  # fmt: skip
    if not world.is_main:
        return None, None
    result = pool_caption_chains(method, cfg, data, out, session.device, show=session.args.show)
    rhat = "-" if result["split_rhat"] is None else f"{result['split_rhat']:.3f}"
    session.say(f"{method}: {cfg.chains} chains, {result['num_samples']} samples pooled for decoding; split-R-hat "
                f"of the validation log-likelihood {rhat}")  # fmt: skip
    return first, result


def _check_show(args: argparse.Namespace) -> None:
    if args.show < 0:
        raise ConfigError(f"--show must be >= 0, got {args.show}")


def result_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of results.csv: per method, the model average (if it has samples) and the last weights (with
    --chains: the pooled average, and the mean over chains of the last weights' scores)."""
    rows = []
    for r in results:
        common = {k: r[k] for k in ("method", "lr", "epochs", "steps", "sec_per_epoch")}
        common.update(chains=r.get("chains", 1), split_rhat=r.get("split_rhat"))
        if r["average"] is not None:
            rows.append({**common, "model": "average", "num_samples": r["num_samples"], **r["average"]})
        rows.append({**common, "model": "last", "num_samples": 1, **r["last"]})
    return rows


def format_show(method: str, shown: dict[str, Any]) -> str:
    """One test image's references and generated captions, for --show."""
    lines = [f"{method}: {shown['filename']}"]
    lines += [f"    reference      {ref}" for ref in shown["references"]]
    if shown["average"] is not None:
        lines.append(f"    model average  {shown['average']}")
    lines.append(f"    last weights   {shown['last']}")
    for s in shown["samples"]:
        where = f"chain {s['chain']} @{s['step']}" if "chain" in s else f"sample @{s['step']}"
        lines.append(f"    {where:<14} {s['caption']}")
    return "\n".join(lines)


def format_table(results, data: CaptionData, cfg: CaptionConfig, baseline, baseline_caption, agreement,
                 unavailable) -> str:  # fmt: skip
    """The final stdout table: every metric ×100 (CIDEr-D too, as the field reports it)."""
    rows = result_rows(results)

    def cell(v: float | None) -> str:
        return f"{100 * v:>8.1f}" if v is not None else f"{'n/a':>8}"

    head = f"{'':<24}" + "".join(f"{m:>8}" for m in FINAL_METRICS)
    lines = ["", f"Test captions: {data.description}",
             f"{cfg.preset} preset (1x{cfg.hidden} LSTM), {cfg.epochs} epochs, beam {cfg.beam}; scores x100", "",
             head]  # fmt: skip
    for r in rows:
        name = f"{r['method']} {'average' if r['model'] == 'average' else 'last'}"
        if r["model"] == "average":
            name += f" ({r['num_samples']})"
        lines.append(f"{name:<24}" + "".join(cell(r[m]) for m in FINAL_METRICS))
    lines.append(f"{'most frequent caption':<24}" + "".join(cell(baseline[m]) for m in FINAL_METRICS))
    lines.append(f"{'references (1 vs rest)':<24}" + "".join(cell(agreement[m]) for m in FINAL_METRICS))
    lines.append(f"most frequent training caption: {baseline_caption!r}")
    for r in results:
        if r.get("chains", 1) > 1:
            rhat = "-" if r["split_rhat"] is None else f"{r['split_rhat']:.3f}"
            own = ", ".join("-" if a is None else f"{100 * a['CIDEr-D']:.1f}" for a in r["chain_average"])
            lines.append(
                f"{r['method']}: {r['chains']} chains pooled (last: mean over chains); split-R-hat of the validation "
                f"log-likelihood {rhat}; each chain's own average CIDEr-D: {own}"
            )
    for metric, why in unavailable.items():
        lines.append(f"{metric} unavailable: {why}")
    return "\n".join(lines)
