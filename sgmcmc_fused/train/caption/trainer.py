"""One method of a caption run: `CaptionTrainer` feeds minibatches of (image, caption) pairs to the
`SamplerTrainer` loop, keeps the collected samples' weights for decoding, and scores the captions
that the model average and the last weights generate for the test images."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ...bayes import PredictiveAverager, exp_or_inf, perplexity
from ..distributed import data_parallel, gather_dim, shard
from ..sampler_trainer import SamplerTrainer, StepLoss
from .config import CaptionConfig
from .data import PAD, CaptionData, CaptionSplit, Vocabulary, training_pairs
from .decode import StackedCaptionModels, decode_in_batches
from .model import CaptionModel, caption_loss, target_probabilities
from .scores import score_captions, write_per_image_csv

#: Metrics scored on the validation captions at every epoch end (the cheap ones; no Java).
EPOCH_METRICS = ("BLEU-4", "CIDEr-D")
#: Metrics of the final table and results (every one pycocoevalcap computes but SPICE).
FINAL_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")

EPOCH_COLUMNS = [
    "method", "epoch", "step", "lr", "noise", "train_ppl", "valid_ppl", "valid_avg_ppl", "valid_bleu4",
    "valid_cider", "num_samples", "epoch_time_s", "eval_time_s", "skipped_steps",
]  # fmt: skip
SAMPLE_COLUMNS = ["method", "sample", "step", "epoch", "valid_ppl", "valid_avg_ppl"]


class CaptionTrainer(SamplerTrainer):
    """Trains one method of a caption run; see `SamplerTrainer`.

    A collected sample is scored at once by the teacher-forced probabilities of the validation
    captions (its own and the running model average's perplexity: `PredictiveAverager`) and its
    weights are kept (`SampleCollector`, the newest ``cfg.max_samples``) for decoding, since a
    caption's word distributions depend on the prefix the averaged model chose.

    Args:
        show: test images (the first ones) whose captions by single samples are also decoded.
        samples_subdir: the folder under --samples-dir of this trainer's samples (default: the method;
            a chain's: ``METHOD/chain-k``).
    """

    CHECKPOINT_FORMAT = "sgmcmc_fused.train.caption/1"
    EPOCH_COLUMNS = EPOCH_COLUMNS
    SAMPLE_COLUMNS = SAMPLE_COLUMNS
    RANK_SUMS = ("loss_sum", "targets")  # nats summed over target tokens, and their number
    COUNTS = ("captions",)

    def __init__(self, method: str, cfg: CaptionConfig, data: CaptionData, run_dir: Path, device: torch.device, *,
                 show: int = 0, samples_subdir: str | None = None, **options: Any):  # fmt: skip
        self.data, self.data_fingerprint, self.show = data, data.fingerprint, show
        self.image_index, self.tokens, _ = training_pairs(data.train, data.vocab, cfg.max_train_words)
        # Validation captions whole (not cut to max_train_words): their perplexity is of the data.
        longest = max(len(r) for refs in data.valid.references for r in refs)
        self.valid_images, self.valid_tokens, _ = training_pairs(data.valid, data.vocab, longest)
        num_targets = int((self.tokens[:, 1:] != PAD).sum())
        num_valid_targets = int((self.valid_tokens[:, 1:] != PAD).sum())
        self.averagers = {"valid": PredictiveAverager(num_valid_targets)}
        samples_dir = Path(cfg.samples_dir) / (samples_subdir or method) if cfg.samples_dir else None
        super().__init__(
            method, cfg, run_dir, device, seed=cfg.seed, num_data=num_targets,
            steps_per_epoch=math.ceil(len(self.tokens) / cfg.batch_size), max_samples=cfg.max_samples,
            samples_dir=samples_dir, **options,
        )  # fmt: skip

    def build_model(self, seed: int) -> torch.nn.Module:
        cfg = self.cfg
        model = CaptionModel(
            len(self.data.vocab), self.data.feature_dim, embedding_dim=cfg.embedding_dim, hidden_size=cfg.hidden,
            dropout=cfg.dropout, dropconnect=cfg.dropconnect, mask=cfg.mask, masked=cfg.masked, lstm_seed=seed,
            lstm_impl=cfg.lstm_impl,
        )  # fmt: skip
        self.forward_model = data_parallel(model.to(self.device), self.world, self.device, seed)
        return model

    # -- training ------------------------------------------------------------------------------------

    def epoch_batches(self) -> Iterator[torch.Tensor]:
        order = torch.randperm(len(self.tokens), generator=self.data_rng)
        return iter(torch.split(order, self.cfg.batch_size)[self.batch_in_epoch :])

    def train_step(self, idx: torch.Tensor) -> StepLoss:
        world, batch_size = self.world, len(idx)
        share = 1.0
        if world.distributed:
            # DDP averages the ranks' gradients: weight each rank's mean loss per token by its share
            # of the batch's target tokens, so the average is the gradient of the whole batch's mean.
            # A rank left without a caption still runs forward and backward, on one caption with
            # weight 0, as DDP requires.
            batch_targets = int((self.tokens[idx, 1:] != PAD).sum())
            mine = idx[shard(batch_size, world)]
            share = world.size * int((self.tokens[mine, 1:] != PAD).sum()) / batch_targets
            idx = mine if len(mine) else idx[:1]
        tokens = self.tokens[idx]
        tokens = tokens[:, : int((tokens != PAD).sum(1).max())].to(self.device)
        features = self.data.train.features[self.image_index[idx]].to(self.device)
        loss, count = caption_loss(self.forward_model(features, tokens), tokens)
        sums = {}
        if share:  # this rank's captions; summed over ranks when the epoch pauses
            sums = {"loss_sum": loss.detach().double() * count, "targets": count.double()}
        return StepLoss(loss * share if world.distributed else loss, sums, {"captions": batch_size})

    def progress_figures(self) -> dict[str, str]:
        loss = self.totals["loss_sum"] + float(self.sums["loss_sum"])
        targets = self.totals["targets"] + float(self.sums["targets"])
        return {"ppl": f"{exp_or_inf(loss / max(targets, 1)):.2f}"}

    # -- evaluation ----------------------------------------------------------------------------------

    def _valid_probabilities(self) -> torch.Tensor:
        """p of every validation target token under the current weights (float64, CPU); data parallel,
        each rank computes its share of the captions and all ranks receive the whole result."""
        images, tokens = self.valid_images, self.valid_tokens
        if self.world.distributed:
            mine = shard(len(tokens), self.world)
            images, tokens = images[mine], tokens[mine]
        features = self.data.valid.features[images]
        probs = target_probabilities(self.model, features, tokens, self.cfg.eval_batch_size, self.device)
        if not self.world.distributed:
            return probs
        return gather_dim(probs.to(self.device), 0, self.world).cpu()

    def evaluate_sample(self, row: dict[str, Any]) -> None:
        probs = self._valid_probabilities()
        avg = self.averagers["valid"]
        avg.update(probs)
        row.update(sample=avg.num_samples, valid_ppl=perplexity(probs), valid_avg_ppl=avg.perplexity())

    def models(self, which: str) -> StackedCaptionModels | None:
        """The decoder of the model average ("average": the kept samples; None if there are none) or of
        the current weights ("last")."""
        if which == "last":
            return StackedCaptionModels.from_model(self.model)
        if not len(self.collector):
            return None
        return StackedCaptionModels(list(self.collector), self.device)

    def captions(self, models: StackedCaptionModels, split: CaptionSplit) -> list[str]:
        """The captions `models` generate for every image of `split` (space-joined words)."""
        return generate_captions(models, split.features, self.data.vocab, self.cfg)

    def epoch_row(self, lr: float) -> dict[str, Any]:
        with self.evaluating():
            valid = self._valid_probabilities()
            # Rank 0 alone holds the samples: it decodes, the other ranks go on to the next step.
            scores = self._valid_scores() if self.world.is_main else dict.fromkeys(EPOCH_METRICS)
        avg = self.averagers["valid"]
        return {
            "method": self.method, "epoch": self.epoch + 1, "step": self.step, "lr": lr,
            "noise": bool(self.optimizer.param_groups[0]["add_noise"]),
            "train_ppl": exp_or_inf(self.totals["loss_sum"] / max(self.totals["targets"], 1)),
            "valid_ppl": perplexity(valid), "valid_avg_ppl": avg.perplexity() if avg.num_samples else None,
            "valid_bleu4": scores["BLEU-4"], "valid_cider": scores["CIDEr-D"],
            "num_samples": avg.num_samples, "epoch_time_s": round(self.train_time, 4),
            "eval_time_s": round(self.eval_time, 4), "skipped_steps": self.optimizer.skipped_steps,
        }  # fmt: skip

    def _valid_scores(self) -> dict[str, float | None]:
        """EPOCH_METRICS of the validation captions decoded with the kept samples (the last weights
        before the first sample)."""
        models = self.models("average") or self.models("last")
        captions = self.captions(models, self.data.valid)
        return score_captions(joined_references(self.data.valid), captions, metrics=EPOCH_METRICS).corpus

    def epoch_message(self, row: dict[str, Any]) -> str:
        n = row["num_samples"]
        avg = f" valid avg ppl {row['valid_avg_ppl']:.3f} ({n} samples)" if n else ""
        scores = (
            f"  valid BLEU-4 {100 * row['valid_bleu4']:.1f} CIDEr-D {100 * row['valid_cider']:.1f}"
            if row["valid_bleu4"] is not None else ""
        )  # fmt: skip
        return (
            f"{self.label:>8} epoch {row['epoch']:>3}/{self.cfg.epochs}  train ppl {row['train_ppl']:.3f}  valid ppl "
            f"{row['valid_ppl']:.3f}{avg}{scores}  {row['epoch_time_s']:.1f} s"
        )

    # -- results -------------------------------------------------------------------------------------

    def final_result(self) -> dict[str, Any]:
        """The method's result row: test scores of the last weights and of the model average, the
        per-image captions (METHOD/captions.csv, of the average or else the last weights), and the
        captions of single samples for the first `show` test images. None on ranks other than 0."""
        if not self.world.is_main:
            return None
        test, refs = self.data.test, joined_references(self.data.test)
        last_captions = self.captions(self.models("last"), test)
        last = score_captions(refs, last_captions, metrics=FINAL_METRICS)
        average = self.models("average")
        avg_captions = self.captions(average, test) if average is not None else None
        avg = score_captions(refs, avg_captions, metrics=FINAL_METRICS) if avg_captions is not None else None
        if self.world.is_main:
            shown, scores = (avg_captions, avg) if avg is not None else (last_captions, last)
            write_per_image_csv(self.run_dir / "captions.csv", test.filenames, shown, scores)
        result: dict[str, Any] = {
            "method": self.method, "lr": self.cfg.lr[self.method], "epochs": self.epoch, "steps": self.step,
            "num_samples": len(self.collector), "samples_taken": self.collector.num_taken,
            "sec_per_epoch": self.sec_per_epoch(), "tokenizer": last.tokenizer,
            "unavailable": {**last.unavailable, **(avg.unavailable if avg is not None else {})},
            "last": last.corpus, "average": None if avg is None else avg.corpus,
        }  # fmt: skip
        result["show"] = self._show(last_captions, avg_captions)
        self.write_logs(result)
        return result

    def _show(self, last: list[str], average: list[str] | None) -> list[dict[str, Any]]:
        """For the first `show` test images: references, the model average's and the last weights'
        captions, and those of up to three single samples (the oldest, middle and newest kept)."""
        n = min(self.show, len(self.data.test.features))
        if not n:
            return []
        kept = len(self.collector)
        picks = sorted({0, kept // 2, kept - 1}) if kept else []
        singles = []
        for i in picks:
            one = StackedCaptionModels([self.collector[i]], self.device)
            singles.append((self.collector.steps[i], generate_captions(one, self.data.test.features[:n],
                                                                       self.data.vocab, self.cfg)))  # fmt: skip
        test = self.data.test
        return [
            {"filename": test.filenames[j], "references": [" ".join(r) for r in test.references[j]],
             "average": None if average is None else average[j], "last": last[j],
             "samples": [{"step": step, "caption": caps[j]} for step, caps in singles]}
            for j in range(n)
        ]  # fmt: skip

    def log_fields(self) -> dict[str, Any]:
        return {"vocab_size": len(self.data.vocab)}


def generate_captions(models: StackedCaptionModels, features: torch.Tensor, vocab: Vocabulary,
                      cfg: CaptionConfig) -> list[str]:  # fmt: skip
    """The captions (space-joined words) that `models` decode for images `features` [M, F] with the
    run's beam, length cap and evaluation batch size."""
    ids = decode_in_batches(models, features, beam=cfg.beam, max_len=cfg.max_caption_words,
                            batch_size=cfg.eval_batch_size)  # fmt: skip
    return [" ".join(vocab.decode(c)) for c in ids]


def joined_references(split: CaptionSplit) -> list[list[str]]:
    """The references of every image of `split` as space-joined strings."""
    return [[" ".join(r) for r in refs] for refs in split.references]
