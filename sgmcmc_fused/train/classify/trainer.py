"""One method on one split of a classifier run: `ClassifierTrainer` feeds minibatches of sentences to the
`SamplerTrainer` loop and scores every sample by its class probabilities on valid and test."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ...bayes import (
    PredictiveAverager,
    expected_calibration_error,
    mutual_information,
    predictive_entropy,
    predictive_std,
)
from ..checkpoint import CheckpointError
from ..distributed import SINGLE, World, data_parallel, gather_dim, shard
from ..sampler_trainer import SamplerTrainer, StepLoss
from .config import ClassifyConfig
from .data import EncodedSplit
from .model import SentenceClassifier, class_probabilities, pad_batch

EPOCH_COLUMNS = [
    "method", "fold", "epoch", "step", "lr", "noise", "train_loss", "train_error", "valid_error", "valid_avg_error",
    "test_error", "test_avg_error", "num_samples", "epoch_time_s", "eval_time_s", "skipped_steps",
]  # fmt: skip
SAMPLE_COLUMNS = ["method", "fold", "sample", "step", "epoch", "valid_error", "valid_avg_error", "test_error",
                  "test_avg_error"]  # fmt: skip
#: Columns of folds.csv: the row `ClassifierTrainer.train` returns for one method on one split.
FOLD_COLUMNS = [
    "method", "fold", "lr", "epochs", "steps", "selected_epoch", "num_train", "num_valid", "num_test", "error",
    "last_error", "ece", "last_ece", "nll", "last_nll", "mean_entropy", "mean_mutual_information", "mean_std",
    "boundary_mean_entropy", "boundary_mean_mutual_information", "shuffled_mean_entropy",
    "shuffled_mean_mutual_information", "valid_error", "num_samples", "majority_error", "sec_per_epoch",
]  # fmt: skip
#: The share of the test sentences, those with the smallest margin between the model average's two most
#: probable classes, whose uncertainty is reported as "near the decision boundary". Each method picks its
#: own quarter from its own predictions (with two classes: its highest-entropy quarter).
BOUNDARY_FRACTION = 0.25


def prediction_columns(num_classes: int) -> list[str]:
    """Columns of METHOD/predictions.csv."""
    return (
        ["fold", "index", "label", "prediction"]
        + [f"mean_{c}" for c in range(num_classes)]
        + [f"std_{c}" for c in range(num_classes)]
        + ["entropy", "mutual_information"]
    )


class ClassifierTrainer(SamplerTrainer):
    """Trains one method on one split of a classifier run; see `SamplerTrainer`.

    Every method of a split starts from the split's seed. Data parallel, each rank takes a contiguous
    share of every minibatch's sentences and of the evaluation sentences. A sample's class
    probabilities on valid and test are folded into running means (`PredictiveAverager`); the test
    ones are also kept ([S, N, C], in the checkpoint too) for the predictive std and the mutual
    information, and so are those of the test sentences with their words shuffled
    (`shuffled_sentences`: the same words, no sentence structure; out of distribution for a model
    that reads word order). No parameters are kept.
    """

    CHECKPOINT_FORMAT = "sgmcmc_fused.train.classify/1"
    EPOCH_COLUMNS = EPOCH_COLUMNS
    SAMPLE_COLUMNS = SAMPLE_COLUMNS
    RANK_SUMS = ("loss_sum", "errors")  # sum of mean loss × sentences (nats), and of misclassified sentences
    COUNTS = ("seen",)
    PROGRESS_EVERY = 20

    def __init__(self, method: str, cfg: ClassifyConfig, data: EncodedSplit, num_classes: int, run_dir: Path,
                 device: torch.device, *, world: World = SINGLE, **options: Any):  # fmt: skip
        self.data, self.data_fingerprint, self.num_classes = data, data.fingerprint, num_classes
        self.fold = data.split.fold
        self.num_train = len(data.train)
        self.train_labels = data.split.train.labels
        self.valid_labels = None if data.valid is None else data.split.valid.labels
        self.test_labels = data.split.test.labels
        self.averagers = {"test": PredictiveAverager(len(data.test))}
        if data.valid is not None:
            self.averagers["valid"] = PredictiveAverager(len(data.valid))
        self.test_samples: list[torch.Tensor] = []  # per collected sample: test class probabilities [N, C]
        self.shuffled_test = shuffled_sentences(data.test, seed=cfg.seed * 1_000_003 + self.fold)
        # Per collected sample: of the shuffled test sentences (None: a resumed run whose checkpoint
        # predates them, so the ones before it are missing).
        self.shuffled_samples: list[torch.Tensor] | None = []
        self.epoch_test_probs: list[torch.Tensor] = []  # per epoch end: the last weights' test probabilities
        self.epoch_shuffled_probs: list[torch.Tensor] | None = []  # and of the shuffled test sentences
        label = f"{method} fold {self.fold}" if self.fold else method
        options.setdefault("run_root", run_dir.parent.parent if self.fold else run_dir.parent)
        super().__init__(
            method, cfg, run_dir, device, world=world, seed=(cfg.seed * 1_000_003 + self.fold) % 2**63,
            num_data=self.num_train, steps_per_epoch=math.ceil(self.num_train / cfg.batch_size), label=label,
            **options,
        )  # fmt: skip

    def build_model(self, seed: int) -> torch.nn.Module:
        cfg, data = self.cfg, self.data
        model = SentenceClassifier(
            len(data.vocab), self.num_classes, embedding_dim=cfg.embedding_dim, hidden_size=cfg.hidden,
            num_layers=cfg.layers, bidirectional=cfg.bidirectional, dropout=cfg.dropout,
            dropconnect=cfg.dropconnect, mask=cfg.mask, masked=cfg.masked, embeddings=data.embeddings,
            freeze_embeddings=cfg.static_embeddings, lstm_seed=seed, lstm_impl=cfg.lstm_impl,
        )  # fmt: skip
        self.forward_model = data_parallel(model.to(self.device), self.world, self.device, seed)
        return model

    # -- training ------------------------------------------------------------------------------------

    def epoch_batches(self) -> Iterator[torch.Tensor]:
        order = torch.randperm(self.num_train, generator=self.data_rng)
        return iter(torch.split(order, self.cfg.batch_size)[self.batch_in_epoch :])

    def train_step(self, idx: torch.Tensor) -> StepLoss:
        world = self.world
        batch_size = len(idx)
        share = 1.0
        if world.distributed:
            mine = idx[shard(batch_size, world)]
            # DDP averages the ranks' gradients: weight each rank's mean loss by its share of the
            # batch. A rank left without a sentence (a last batch smaller than the process count)
            # still runs forward and backward, on one sentence with weight 0, as DDP requires.
            share = world.size * len(mine) / batch_size
            idx = mine if len(mine) else idx[:1]
        tokens, lengths = pad_batch([self.data.train[i] for i in idx.tolist()], self.device)
        y = self.train_labels[idx].to(self.device, non_blocking=True)
        logits = self.forward_model(tokens, lengths)
        loss = F.cross_entropy(logits.float(), y)  # fp32 under autocast
        sums = {}
        if share:  # this rank's sentences; summed over ranks when the epoch pauses
            sums = {"loss_sum": loss.detach().double() * len(idx), "errors": (logits.detach().argmax(1) != y).sum()}
        return StepLoss(loss * share if world.distributed else loss, sums, {"seen": batch_size})

    def progress_figures(self) -> dict[str, str]:
        loss_sum = self.totals["loss_sum"] + float(self.sums["loss_sum"])
        return {"loss": f"{loss_sum / max(self.totals['seen'], 1):.4f}"}

    # -- evaluation ----------------------------------------------------------------------------------

    def _probabilities(self, sentences: list[torch.Tensor]) -> torch.Tensor:
        """Class probabilities [N, C] (float64, CPU) of the current weights; data parallel, each rank
        computes its share of the sentences and all ranks receive the whole result."""
        if not self.world.distributed:
            return class_probabilities(self.model, sentences, self.cfg.eval_batch_size, self.device)
        mine = sentences[shard(len(sentences), self.world)]
        local = class_probabilities(self.model, mine, self.cfg.eval_batch_size, self.device)
        return gather_dim(local.to(self.device), 0, self.world).cpu()

    def evaluate_sample(self, row: dict[str, Any]) -> None:
        row["fold"] = self.fold
        for split, sentences, labels in (("valid", self.data.valid, self.valid_labels),
                                         ("test", self.data.test, self.test_labels)):  # fmt: skip
            if sentences is None:
                continue
            probs = self._probabilities(sentences)
            avg = self.averagers[split]
            avg.update(probs)
            row[f"{split}_error"] = error_rate(probs, labels)
            row[f"{split}_avg_error"] = error_rate(avg.mean, labels)
            if split == "test":
                self.test_samples.append(probs)
        if self.shuffled_samples is not None:
            self.shuffled_samples.append(self._probabilities(self.shuffled_test))
        row["sample"] = self.averagers["test"].num_samples

    def epoch_row(self, lr: float) -> dict[str, Any]:
        with self.evaluating():
            test = self._probabilities(self.data.test)
            valid = None if self.data.valid is None else self._probabilities(self.data.valid)
        self.epoch_test_probs.append(test)
        if self.epoch_shuffled_probs is not None:
            with self.evaluating():
                self.epoch_shuffled_probs.append(self._probabilities(self.shuffled_test))
        n = self.averagers["test"].num_samples
        has_valid = valid is not None
        seen = max(self.totals["seen"], 1)
        return {
            "method": self.method, "fold": self.fold, "epoch": self.epoch + 1, "step": self.step, "lr": lr,
            "noise": bool(self.optimizer.param_groups[0]["add_noise"]),
            "train_loss": self.totals["loss_sum"] / seen, "train_error": self.totals["errors"] / seen,
            "valid_error": error_rate(valid, self.valid_labels) if has_valid else None,
            "valid_avg_error": error_rate(self.averagers["valid"].mean, self.valid_labels) if has_valid and n else None,
            "test_error": error_rate(test, self.test_labels),
            "test_avg_error": error_rate(self.averagers["test"].mean, self.test_labels) if n else None,
            "num_samples": n, "epoch_time_s": round(self.train_time, 4), "eval_time_s": round(self.eval_time, 4),
            "skipped_steps": self.optimizer.skipped_steps,
        }  # fmt: skip

    def epoch_message(self, row: dict[str, Any]) -> str:
        def pct(v):
            return "-" if v is None else f"{100 * v:.2f}%"

        n = row["num_samples"]
        avg = f"  valid avg {pct(row['valid_avg_error'])} ({n} samples)" if n else ""
        return (
            f"{self.label:>8} epoch {row['epoch']:>3}/{self.cfg.epochs}  train loss {row['train_loss']:.4f} "
            f"error {pct(row['train_error'])}  valid {pct(row['valid_error'])}{avg}  {row['epoch_time_s']:.1f} s"
        )

    # -- results -------------------------------------------------------------------------------------

    def selected_epoch(self) -> int:
        """The epoch (1-based) whose predictions are reported: the last, or the best on validation."""
        if self.cfg.select == "last" or not self.history:
            return len(self.history)

        def key(row):
            v = row["valid_avg_error"] if row["valid_avg_error"] is not None else row["valid_error"]
            return (v, row["epoch"])

        return min(self.history, key=key)["epoch"]

    def final_result(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The fold row (FOLD_COLUMNS) and the per-sentence prediction rows (`prediction_columns`)."""
        e = self.selected_epoch()
        row = self.history[e - 1]
        last = self.epoch_test_probs[e - 1]
        s = row["num_samples"]
        if self.collects and not s:
            when = ("the first cycle's sampling stage" if self.cyclical is not None
                    else f"burn-in {self.burn_in} + thin {self.thin} steps")  # fmt: skip
            self.say(f"{self.label}: no sample by epoch {e} ({when}, {self.step} steps taken): reporting the last "
                     "weights")  # fmt: skip
        # The model average of the samples taken by the end of the selected epoch, or the last weights.
        stack = torch.stack(self.test_samples[:s]) if s else last[None]
        mean = stack.mean(0)
        std = predictive_std(stack)
        entropy = predictive_entropy(mean)
        mi = mutual_information(stack)
        labels = self.test_labels
        pred = mean.argmax(1)
        boundary = near_boundary(mean, BOUNDARY_FRACTION)
        shuffled = self._shuffled_stack(s, e)
        shuffled_entropy = None if shuffled is None else float(predictive_entropy(shuffled.mean(0)).mean())
        shuffled_mi = None if shuffled is None else float(mutual_information(shuffled).mean())
        counts = torch.bincount(self.train_labels, minlength=self.num_classes)
        result = {
            "method": self.method, "fold": self.fold, "lr": self.cfg.lr[self.method], "epochs": self.epoch,
            "steps": self.step, "selected_epoch": e, "num_train": self.num_train,
            "num_valid": 0 if self.data.valid is None else len(self.data.valid), "num_test": len(self.data.test),
            "error": error_rate(mean, labels), "last_error": error_rate(last, labels),
            "ece": expected_calibration_error(mean, labels), "last_ece": expected_calibration_error(last, labels),
            "nll": negative_log_likelihood(mean, labels), "last_nll": negative_log_likelihood(last, labels),
            "mean_entropy": float(entropy.mean()), "mean_mutual_information": float(mi.mean()),
            "mean_std": float(std.gather(1, pred[:, None]).mean()),
            "boundary_mean_entropy": float(entropy[boundary].mean()),
            "boundary_mean_mutual_information": float(mi[boundary].mean()),
            "shuffled_mean_entropy": shuffled_entropy, "shuffled_mean_mutual_information": shuffled_mi,
            "valid_error": row["valid_avg_error"] if row["valid_avg_error"] is not None else row["valid_error"],
            "num_samples": s,
            "majority_error": float((labels != counts.argmax()).double().mean()),
            "sec_per_epoch": self.sec_per_epoch(),
        }  # fmt: skip
        index = self.data.split.test.index.tolist()
        rows = []
        for n in range(len(index)):
            r = {"fold": self.fold, "index": index[n], "label": int(labels[n]), "prediction": int(pred[n])}
            r.update({f"mean_{c}": float(mean[n, c]) for c in range(self.num_classes)})
            r.update({f"std_{c}": float(std[n, c]) for c in range(self.num_classes)})
            r.update(entropy=float(entropy[n]), mutual_information=float(mi[n]))
            rows.append(r)
        self.write_logs(result)
        return result, rows

    def _shuffled_stack(self, samples: int, epoch: int) -> torch.Tensor | None:
        """The shuffled test sentences' probabilities [S, N, C] of the first `samples` samples, or [1, N, C]
        of the last weights at `epoch` (1-based) when there are none; None where a run resumed from a
        checkpoint written before they were recorded lacks them."""
        if samples:
            return None if self.shuffled_samples is None else torch.stack(self.shuffled_samples[:samples])
        return None if self.epoch_shuffled_probs is None else self.epoch_shuffled_probs[epoch - 1][None]

    # -- logs and checkpoints ------------------------------------------------------------------------

    def log_fields(self) -> dict[str, Any]:
        return {"fold": self.fold, "vocab_size": len(self.data.vocab),
                "unknown_test_tokens": self.data.unknown_test_tokens}  # fmt: skip

    def checkpoint_fields(self) -> dict[str, Any]:
        return {
            "fold": self.fold,
            "test_samples": torch.stack(self.test_samples) if self.test_samples else None,
            "shuffled_samples": torch.stack(self.shuffled_samples) if self.shuffled_samples else None,
            "shuffled_recorded": self.shuffled_samples is not None and self.epoch_shuffled_probs is not None,
            "epoch_test_probs": torch.stack(self.epoch_test_probs) if self.epoch_test_probs else None,
            "epoch_shuffled_probs": torch.stack(self.epoch_shuffled_probs) if self.epoch_shuffled_probs else None,
        }

    def check_checkpoint_owner(self, ck: dict[str, Any]) -> None:
        if ck["method"] != self.method or ck["fold"] != self.fold:
            raise CheckpointError(
                f"{self.checkpoint_path} is a checkpoint of {ck['method']!r} fold {ck['fold']}, not {self.label!r}"
            )

    def restore_fields(self, ck: dict[str, Any]) -> None:
        self.test_samples = [] if ck["test_samples"] is None else list(ck["test_samples"])
        self.epoch_test_probs = [] if ck["epoch_test_probs"] is None else list(ck["epoch_test_probs"])
        # Checkpoints written before the shuffled sentences were evaluated lack them: that run then
        # reports no shuffled figures (the ones before the checkpoint are missing).
        if not ck.get("shuffled_recorded", False):
            self.shuffled_samples, self.epoch_shuffled_probs = None, None
            return
        self.shuffled_samples = [] if ck["shuffled_samples"] is None else list(ck["shuffled_samples"])
        self.epoch_shuffled_probs = [] if ck["epoch_shuffled_probs"] is None else list(ck["epoch_shuffled_probs"])


def negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-probability (nats) of the true labels [N] under the class probabilities [N, C]."""
    return float(-torch.log(probs.gather(1, labels[:, None])).mean())


def error_rate(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax (the first on ties) is not the label: probs [N, C], labels [N]."""
    return float((probs.argmax(1) != labels.to(probs.device)).double().mean())


def shuffled_sentences(sentences: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """Each sentence (int64 [L] ids) with its words in a random order (a seeded permutation per
    sentence, the same for every method of a run): the words of the test set without its syntax."""
    g = torch.Generator().manual_seed(seed % 2**63)
    return [s[torch.randperm(len(s), generator=g)] for s in sentences]


def near_boundary(mean: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the ceil(fraction · N) rows of `mean` [N, C] with the smallest margin between their two
    largest probabilities (ties: the lower index first)."""
    top2 = mean.topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    n = max(1, math.ceil(fraction * len(mean)))
    return torch.sort(torch.argsort(margin, stable=True)[:n]).values
