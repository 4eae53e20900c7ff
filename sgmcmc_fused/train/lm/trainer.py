"""One method of a language-model run: `LMTrainer` feeds minibatches of token streams to the
`SamplerTrainer` loop and scores every sample by its per-token probabilities on valid and test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ...bayes import PredictiveAverager, exp_or_inf, perplexity
from ...data import batchify
from ..distributed import SINGLE, World, data_parallel, gather_dim, shard
from ..sampler_trainer import SamplerTrainer, StepLoss
from .config import LMConfig
from .data import LMData, epoch_batches, prepare_train, steps_per_epoch
from .model import LanguageModel, detach_hidden, target_probabilities

EPOCH_COLUMNS = [
    "method", "epoch", "step", "lr", "noise", "train_ppl", "valid_ppl", "valid_avg_ppl", "num_samples",
    "epoch_time_s", "eval_time_s", "skipped_steps",
]  # fmt: skip
SAMPLE_COLUMNS = [
    "method", "sample", "step", "epoch", "weight", "valid_ppl", "valid_avg_ppl", "test_ppl", "test_avg_ppl",
]  # fmt: skip


class LMTrainer(SamplerTrainer):
    """Trains one method (or one chain of it) of a language-model run; see `SamplerTrainer`.

    Minibatches are [bptt, B] token streams (``successive``: the hidden state carried from one to the
    next and checkpointed with the run; ``random``: shuffled segments from a zero state). Data
    parallel, each rank takes a contiguous share of the B columns and of the evaluation streams.
    A sample's per-token probabilities are folded into the running averages at once, weighted by 1 or
    (``--sample-weights lr``) by the learning rate it was drawn at.
    """

    CHECKPOINT_FORMAT = "sgmcmc_fused.train.lm/1"
    EPOCH_COLUMNS = EPOCH_COLUMNS
    SAMPLE_COLUMNS = SAMPLE_COLUMNS
    RANK_SUMS = ("loss_sum",)  # sum over the epoch's minibatches of mean loss × tokens (nats)
    COUNTS = ("tokens",)

    def __init__(self, method: str, cfg: LMConfig, data: LMData, run_dir: Path, device: torch.device, *,
                 world: World = SINGLE, samples_subdir: str | None = None, **options: Any):  # fmt: skip
        self.data, self.data_fingerprint = data, data.fingerprint
        # This rank's columns of the training batch and of the evaluation streams (all when alone).
        self.columns = shard(cfg.batch_size, world)
        self.eval_columns = shard(cfg.eval_batch_size, world)
        self.successive = cfg.minibatch == "successive"
        self.hidden: tuple[torch.Tensor, torch.Tensor] | None = None  # carried across successive minibatches
        self.train_data = prepare_train(data, cfg.batch_size, cfg.minibatch, device)
        self.valid_tb = batchify(data.corpus.valid, cfg.eval_batch_size)
        self.test_tb = batchify(data.corpus.test, cfg.eval_batch_size)
        self.averagers = {
            "valid": PredictiveAverager((self.valid_tb.shape[0] - 1) * self.valid_tb.shape[1]),
            "test": PredictiveAverager((self.test_tb.shape[0] - 1) * self.test_tb.shape[1]),
        }
        samples_dir = Path(cfg.samples_dir) / (samples_subdir or method) if cfg.samples_dir else None
        super().__init__(
            method, cfg, run_dir, device, world=world, seed=cfg.seed, num_data=data.num_train_tokens,
            steps_per_epoch=steps_per_epoch(data, cfg.batch_size, cfg.bptt, cfg.minibatch),
            max_samples=cfg.max_samples, samples_dir=samples_dir, **options,
        )  # fmt: skip

    def build_model(self, seed: int) -> torch.nn.Module:
        cfg = self.cfg
        model = LanguageModel(
            self.data.vocab_size, cfg.hidden, cfg.layers, dropout=cfg.dropout, dropconnect=cfg.dropconnect,
            mask=cfg.mask, masked=cfg.masked, init_scale=cfg.init_scale, lstm_seed=seed, lstm_impl=cfg.lstm_impl,
        )  # fmt: skip
        self.forward_model = data_parallel(model.to(self.device), self.world, self.device, seed)
        return model

    def lr_at(self, epoch: int) -> float:
        return self.cfg.lr_at(self.method, epoch)

    # -- training ------------------------------------------------------------------------------------

    def epoch_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.cfg
        batches = epoch_batches(self.train_data, cfg.batch_size, cfg.bptt, cfg.minibatch, self.data_rng)
        for _ in range(self.batch_in_epoch):
            next(batches)
        return batches

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> StepLoss:
        x, y = batch
        batch_tokens = y.numel()
        if self.world.distributed:
            x, y = x[:, self.columns], y[:, self.columns]
        logits, hidden = self.forward_model(x, self.hidden if self.successive else None)
        if self.successive:
            self.hidden = detach_hidden(hidden)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))  # fp32 under autocast
        sums = {"loss_sum": loss.detach().double() * y.numel()}  # this rank's tokens
        if self.world.distributed:
            # DDP averages the ranks' gradients; weighting each rank's mean loss by its share of the
            # batch makes that average the gradient of the whole batch's mean loss.
            loss = loss * (self.world.size * y.numel() / batch_tokens)
        return StepLoss(loss, sums, {"tokens": batch_tokens})

    def progress_figures(self) -> dict[str, str]:
        loss_sum = self.totals["loss_sum"] + float(self.sums["loss_sum"])
        ppl = exp_or_inf(loss_sum / max(self.totals["tokens"], 1))
        return {"ppl": f"{ppl:.2f}", "lr": f"{self.optimizer.param_groups[0]['lr']:.3g}"}

    def step_skipped(self) -> None:
        self.hidden = None  # a diverged minibatch leaves a non-finite state: start the next from zero

    def end_epoch(self) -> None:
        self.hidden = None

    # -- evaluation ----------------------------------------------------------------------------------

    def _target_probabilities(self, data_tb: torch.Tensor) -> torch.Tensor:
        """`target_probabilities` of the current weights on a batchified split [T, B]; data parallel,
        each rank evaluates its share of the B streams and all ranks receive the whole result."""
        if not self.world.distributed:
            return target_probabilities(self.model, data_tb, self.cfg.bptt, self.device)
        local = target_probabilities(self.model, data_tb[:, self.eval_columns], self.cfg.bptt, self.device)
        local = local.view(data_tb.shape[0] - 1, -1).to(self.device)  # [T - 1, this rank's streams]
        return gather_dim(local, 1, self.world).reshape(-1).cpu()

    def evaluate_sample(self, row: dict[str, Any]) -> None:
        weight = self.step_lr(self.step) if self.cfg.sample_weights == "lr" else 1.0
        row["weight"] = weight
        for split, data_tb in (("valid", self.valid_tb), ("test", self.test_tb)):
            probs = self._target_probabilities(data_tb)
            avg = self.averagers[split]
            avg.update(probs, weight=weight)
            row[f"{split}_ppl"] = perplexity(probs)
            row[f"{split}_avg_ppl"] = avg.perplexity()
        row["sample"] = self.averagers["valid"].num_samples

    def epoch_row(self, lr: float) -> dict[str, Any]:
        with self.evaluating():
            valid = self._target_probabilities(self.valid_tb)
        avg = self.averagers["valid"]
        return {
            "method": self.method, "epoch": self.epoch + 1, "step": self.step, "lr": lr,
            "noise": bool(self.optimizer.param_groups[0]["add_noise"]),
            "train_ppl": exp_or_inf(self.totals["loss_sum"] / max(self.totals["tokens"], 1)),
            "valid_ppl": perplexity(valid), "valid_avg_ppl": avg.perplexity() if avg.num_samples else None,
            "num_samples": avg.num_samples, "epoch_time_s": round(self.train_time, 4),
            "eval_time_s": round(self.eval_time, 4), "skipped_steps": self.optimizer.skipped_steps,
        }  # fmt: skip

    def epoch_message(self, row: dict[str, Any]) -> str:
        avg = f"  valid avg {row['valid_avg_ppl']:.3f} ({row['num_samples']} samples)" if row["num_samples"] else ""
        return (
            f"{self.label:>8} epoch {row['epoch']:>3}/{self.cfg.epochs}  lr {row['lr']:.3g}  train "
            f"{row['train_ppl']:.3f}  valid {row['valid_ppl']:.3f}{avg}  {row['epoch_time_s']:.1f} s"
        )

    def final_result(self) -> dict[str, Any]:
        """The result row (see `sgmcmc_fused.train.lm.command.RESULT_COLUMNS`)."""
        test = self._target_probabilities(self.test_tb)
        valid = self._target_probabilities(self.valid_tb)
        has_avg = self.averagers["test"].num_samples > 0
        result = {
            "method": self.method, "lr": self.cfg.lr[self.method], "epochs": self.epoch, "steps": self.step,
            "test_ppl": perplexity(test), "test_avg_ppl": self.averagers["test"].perplexity() if has_avg else None,
            "valid_ppl": perplexity(valid),
            "valid_avg_ppl": self.averagers["valid"].perplexity() if has_avg else None,
            "num_samples": self.averagers["test"].num_samples, "sec_per_epoch": self.sec_per_epoch(),
            "test_avg_ppl_by_samples": [r["test_avg_ppl"] for r in self.curve], "chains": 1, "split_rhat": None,
        }  # fmt: skip
        self.write_logs(result)
        return result

    # -- checkpoints ---------------------------------------------------------------------------------

    def checkpoint_fields(self) -> dict[str, Any]:
        hidden = self.hidden
        if self.world.distributed and hidden is not None:
            hidden = tuple(gather_dim(t, 1, self.world) for t in hidden)  # [L, B, H]: the whole batch
        return {"hidden": None if hidden is None else [t.cpu() for t in hidden]}

    def restore_fields(self, ck: dict[str, Any]) -> None:
        if ck["hidden"] is None:
            self.hidden = None
        else:  # the whole batch's [L, B, H]: this rank's columns
            self.hidden = tuple(t[:, self.columns].contiguous().to(self.device) for t in ck["hidden"])
        for row in self.curve:  # samples of a run saved before --sample-weights counted once each
            row.setdefault("weight", 1.0)
