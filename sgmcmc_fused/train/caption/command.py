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
bit what the uninterrupted run would have. The caption task runs in one process (no torchrun).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from ..command import Session, Task
from ..distributed import World
from ..options import RUN_CONTROL, ConfigError
from ..run_folder import claim_samples_dir
from ..runlog import write_csv, write_json
from . import config
from .config import CaptionConfig
from .data import CaptionData
from .plots import plot_caption_runs
from .scores import most_frequent_caption, reference_agreement, score_captions
from .sources import load_caption_data
from .trainer import FINAL_METRICS, CaptionTrainer

RESULT_COLUMNS = ["method", "model", "lr", "epochs", "steps", "num_samples", *FINAL_METRICS, "sec_per_epoch"]


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

    def claim(self, cfg: CaptionConfig, out: Path, resumed: bool) -> None:
        if cfg.samples_dir:
            claim_samples_dir(Path(cfg.samples_dir), out, resumed)

    def load_data(
        self, cfg: CaptionConfig, args: argparse.Namespace, world: World
    ) -> tuple[CaptionConfig, CaptionData]:
        if world.distributed:
            raise ConfigError("the caption task runs in one process: start it without torchrun")
        _check_show(args)
        return cfg, load_caption_data(cfg.data, progress=bool(args.progress))

    def train(self, session: Session, data: CaptionData) -> int:
        cfg, say = session.cfg, session.say
        say(f"data: {data.description}")
        for note in data.notes:
            say(note)
        say(
            f"model: {cfg.preset} preset, {data.feature_dim}-d "
            f"features, {cfg.embedding_dim}-d embeddings, 1x{cfg.hidden} LSTM, dropout {cfg.dropout}, dropconnect "
            f"{cfg.dropconnect}, batch {cfg.batch_size}, {cfg.epochs} epochs, beam {cfg.beam}, {cfg.precision}; "
            f"device {session.device}, {torch.get_num_threads()} threads; output {session.out}"
        )
        results, histories, curves = [], {}, {}
        for method in cfg.methods:
            trainer = CaptionTrainer(method, cfg, data, session.out / method, session.device, show=session.args.show,
                                     **session.trainer_options())  # fmt: skip
            results.append(trainer.train(**session.train_options()))
            histories[method], curves[method] = trainer.history, trainer.curve
            plot_caption_runs(session.out / "scores.png", histories, curves, title=data.description)
        refs = [[" ".join(r) for r in image] for image in data.test.references]
        baseline_caption = most_frequent_caption([[" ".join(r) for r in image] for image in data.train.references])
        baseline = score_captions(refs, [baseline_caption] * len(refs), metrics=FINAL_METRICS)
        agreement = reference_agreement(refs, metrics=FINAL_METRICS)
        rows = result_rows(results)
        unavailable = {**baseline.unavailable, **agreement.unavailable}
        for r in results:
            unavailable.update(r["unavailable"])
        write_csv(session.out / "results.csv", RESULT_COLUMNS, rows)
        write_json(session.out / "results.json", {
            "data": data.description, "vocab_size": len(data.vocab), "tokenizer": baseline.tokenizer,
            "unavailable": unavailable, "methods": results,
            "most_frequent_caption": {"caption": baseline_caption, "scores": baseline.corpus},
            "reference_agreement": agreement.corpus,
        })  # fmt: skip
        for r in results:
            for shown in r["show"]:
                say(format_show(r["method"], shown))
        print(format_table(rows, data, cfg, baseline.corpus, baseline_caption, agreement.corpus, unavailable))
        return 0


def _check_show(args: argparse.Namespace) -> None:
    if args.show < 0:
        raise ConfigError(f"--show must be >= 0, got {args.show}")


def result_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of results.csv: per method, the model average (if it has samples) and the last weights."""
    rows = []
    for r in results:
        common = {k: r[k] for k in ("method", "lr", "epochs", "steps", "sec_per_epoch")}
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
    lines += [f"    sample @{s['step']:<7} {s['caption']}" for s in shown["samples"]]
    return "\n".join(lines)


def format_table(rows, data: CaptionData, cfg: CaptionConfig, baseline, baseline_caption, agreement,
                 unavailable) -> str:  # fmt: skip
    """The final stdout table: every metric ×100 (CIDEr-D too, as the field reports it)."""

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
    for metric, why in unavailable.items():
        lines.append(f"{metric} unavailable: {why}")
    return "\n".join(lines)
