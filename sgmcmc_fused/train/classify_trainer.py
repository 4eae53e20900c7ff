"""One method on one split of a classifier run: `ClassifierTrainer` trains it, scores its samples,
checkpoints and resumes.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..bayes import (
    PredictiveAverager,
    expected_calibration_error,
    mutual_information,
    predictive_entropy,
    predictive_std,
)
from . import classify_config
from .checkpoint import (
    CheckpointError,
    capture_training_state,
    check_same_config,
    load_checkpoint,
    restore_training_state,
    warn_if_threads_changed,
    write_checkpoint,
)
from .classify_config import ConfigError
from .classify_data import EncodedSplit
from .distributed import (
    SINGLE,
    World,
    any_rank,
    data_parallel,
    gather_dim,
    replica_checkpoint_state,
    restore_replica_state,
    shard,
    sum_ranks,
)
from .methods import SAMPLERS, make_optimizer, set_noise
from .options import parse_steps
from .run_control import Stop
from .runlog import write_run_logs
from .sentence_model import SentenceClassifier, class_probabilities, pad_batch

#: Format tag of the checkpoints written here.
CHECKPOINT_FORMAT = "sgmcmc_fused.train.classify/1"
EPOCH_COLUMNS = [
    "method", "fold", "epoch", "step", "lr", "noise", "train_loss", "train_error", "valid_error", "valid_avg_error",
    "test_error", "test_avg_error", "num_samples", "epoch_time_s", "eval_time_s", "skipped_steps",
]  # fmt: skip
SAMPLE_COLUMNS = ["method", "fold", "sample", "step", "epoch", "valid_error", "valid_avg_error", "test_error",
                  "test_avg_error"]  # fmt: skip
#: Columns of folds.csv: the row `ClassifierTrainer.train` returns for one method on one split.
FOLD_COLUMNS = [
    "method", "fold", "lr", "epochs", "steps", "selected_epoch", "num_train", "num_valid", "num_test", "error",
    "last_error", "ece", "nll", "mean_entropy", "mean_mutual_information", "mean_std", "valid_error", "num_samples",
    "majority_error", "sec_per_epoch",
]  # fmt: skip


def prediction_columns(num_classes: int) -> list[str]:
    """Columns of METHOD/predictions.csv."""
    return (
        ["fold", "index", "label", "prediction"]
        + [f"mean_{c}" for c in range(num_classes)]
        + [f"std_{c}" for c in range(num_classes)]
        + ["entropy", "mutual_information"]
    )


class ClassifierTrainer:
    """Trains one method on one split from the split's initialisation, or resumes from ``run_dir/checkpoint.pt``.

    Step numbering: step t (1-based) is the t-th parameter update. The samplers' noise is on for the
    steps t > burn_in; a sample is collected after step t = burn_in + k * thin, k >= 1, and its class
    probabilities on valid and test are computed at once: the test ones are stacked ([S, N, C], for the
    predictive std and mutual information), both folded into running means (`PredictiveAverager`).
    No parameters are stored. sgd/rmsprop collect too with ``average_optimizers``.
    """

    def __init__(self, method: str, cfg: dict[str, Any], data: EncodedSplit, num_classes: int, run_dir: Path,
                 device: torch.device, *, world: World = SINGLE, say=print, progress: bool = False):  # fmt: skip
        self.method, self.cfg, self.data, self.run_dir, self.device = method, cfg, data, run_dir, device
        self.world = world
        self.num_classes, self.say, self.progress = num_classes, say, progress
        self.fold = data.split.fold
        self.sampler = method in SAMPLERS
        self.collects = self.sampler or cfg["average_optimizers"]
        self.num_train = len(data.train)
        self.steps_per_epoch = math.ceil(self.num_train / cfg["batch_size"])
        self.burn_in = parse_steps(cfg["burn_in"], self.steps_per_epoch, "--burn-in", minimum=0)
        self.thin = parse_steps(cfg["thin"], self.steps_per_epoch, "--thin", minimum=1)
        self.train_labels = data.split.train.labels
        self.valid_labels = None if data.valid is None else data.split.valid.labels
        self.test_labels = data.split.test.labels

        # Same initialisation, dropout stream and data order for every method of a split.
        seed = (cfg["seed"] * 1_000_003 + self.fold) % 2**63
        torch.manual_seed(seed)
        self.model = SentenceClassifier(
            len(data.vocab), num_classes, embedding_dim=cfg["embedding_dim"], hidden_size=cfg["hidden"],
            num_layers=cfg["layers"], bidirectional=cfg["bidirectional"], dropout=cfg["dropout"],
            dropconnect=cfg["dropconnect"], mask=cfg["mask"], masked=cfg["masked"], embeddings=data.embeddings,
            freeze_embeddings=cfg["static_embeddings"], lstm_seed=seed, lstm_impl=cfg["lstm_impl"],
        ).to(device)  # fmt: skip
        self.forward_model = data_parallel(self.model, world, device, seed)
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.optimizer = make_optimizer(
            method, params, lr=cfg["lr"][method], num_data=self.num_train, seed=seed,
            temperature=classify_config.temperature(cfg["temperature"], self.num_train),
            weight_decay=cfg["weight_decay"], alpha=cfg["alpha"], eps=cfg["eps"], impl=cfg["step_impl"],
        )  # fmt: skip
        self.optimizer.nan_policy = cfg["nan_policy"]
        self.data_rng = torch.Generator().manual_seed(seed)
        self.averagers = {"test": PredictiveAverager(len(data.test))}
        if data.valid is not None:
            self.averagers["valid"] = PredictiveAverager(len(data.valid))
        self.test_samples: list[torch.Tensor] = []  # per collected sample: test class probabilities [N, C]
        self.epoch_test_probs: list[torch.Tensor] = []  # per epoch end: the last weights' test probabilities
        # Position and per-epoch accumulators.
        self.epoch = 0
        self.batch_in_epoch = 0
        self.step = 0
        self.epoch_rng_state = self.data_rng.get_state()
        self.loss_sum = 0.0
        self.errors = 0
        self.seen = 0
        self.train_time = 0.0
        self.eval_time = 0.0
        self.history: list[dict[str, Any]] = []
        self.curve: list[dict[str, Any]] = []
        self.checkpoint_path = run_dir / "checkpoint.pt"
        if self.checkpoint_path.exists():
            self._restore(load_checkpoint(self.checkpoint_path, CHECKPOINT_FORMAT))

    @property
    def name(self) -> str:
        return f"{self.method} fold {self.fold}" if self.fold else self.method

    # -- training ------------------------------------------------------------------------------------

    def train(self, stop_after: int | None = None, interrupted=False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Train to the configured number of epochs (from wherever the checkpoint left off).

        Returns the fold row (FOLD_COLUMNS) and the per-sentence prediction rows. Raises Stop after
        checkpointing when `stop_after` steps are reached or `interrupted` becomes true.
        """
        cfg = self.cfg
        resume_hint = f"--resume {self.run_dir.parent.parent if self.fold else self.run_dir.parent}"
        if self.epoch < cfg["epochs"] and (self.step or self.batch_in_epoch):
            self.say(f"{self.name}: resuming at epoch {self.epoch + 1}, step {self.step}")
        while self.epoch < cfg["epochs"]:
            if stop_after is not None and self.step >= stop_after:
                raise Stop(f"{self.name}: stopped after step {self.step} (--stop-after-steps); continue with "
                            f"{resume_hint}", 0)  # fmt: skip
            if any_rank(bool(interrupted), self.world, self.device):
                raise Stop(f"{self.name}: interrupted at step {self.step}; checkpoint saved, continue with "
                            f"{resume_hint}", 130)  # fmt: skip
            self._train_epoch(stop_after, interrupted)
        return self._final_result()

    def _train_epoch(self, stop_after, interrupted) -> None:
        cfg, model, opt, data, world = self.cfg, self.model, self.optimizer, self.data, self.world
        self.data_rng.set_state(self.epoch_rng_state)
        order = torch.randperm(self.num_train, generator=self.data_rng)
        batches = torch.split(order, cfg["batch_size"])
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        errors = torch.zeros((), dtype=torch.long, device=self.device)
        seen = 0
        desc = f"{self.name} epoch {self.epoch + 1}/{cfg['epochs']}"
        bar = tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch, disable=not self.progress, leave=False,
                   desc=desc, unit="step", dynamic_ncols=True)  # fmt: skip
        model.train()
        t0 = time.perf_counter()
        eval_before = self.eval_time
        stopped = False
        try:
            for idx in batches[self.batch_in_epoch :]:
                step = self.step + 1
                noise = self.sampler and step > self.burn_in
                if noise != bool(opt.param_groups[0]["add_noise"]):
                    set_noise(opt, noise)
                batch_size = len(idx)
                share = 1.0
                if world.distributed:
                    mine = idx[shard(batch_size, world)]
                    # DDP averages the ranks' gradients: weight each rank's mean loss by its share of the
                    # batch. A rank left without a sentence (a last batch smaller than the process count)
                    # still runs forward and backward, on one sentence with weight 0, as DDP requires.
                    share = world.size * len(mine) / batch_size
                    idx = mine if len(mine) else idx[:1]
                tokens, lengths = pad_batch([data.train[i] for i in idx.tolist()], self.device)
                y = self.train_labels[idx].to(self.device, non_blocking=True)
                opt.zero_grad(set_to_none=True)
                logits = self.forward_model(tokens, lengths)
                loss = F.cross_entropy(logits, y)
                (loss * share if world.distributed else loss).backward()
                if cfg["clip"] > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
                opt.step()
                if share:  # this rank's sentences; summed over ranks below
                    loss_sum += loss.detach().double() * len(idx)
                    errors += (logits.detach().argmax(1) != y).sum()
                seen += batch_size
                self.step, self.batch_in_epoch = step, self.batch_in_epoch + 1
                if self.collects and step >= self.burn_in + self.thin and (step - self.burn_in) % self.thin == 0:
                    self._evaluate_sample()
                bar.update(1)
                if self.progress and step % 20 == 0 and not world.distributed:
                    bar.set_postfix(loss=f"{(self.loss_sum + float(loss_sum)) / (self.seen + seen):.4f}")
                stop_now = any_rank(bool(interrupted), world, self.device)  # all ranks stop at the same step
                stop = (stop_after is not None and step >= stop_after) or stop_now
                if stop and self.batch_in_epoch < self.steps_per_epoch:
                    stopped = True
                    break
        finally:
            bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.train_time += time.perf_counter() - t0 - (self.eval_time - eval_before)
        self.loss_sum += float(sum_ranks(loss_sum, world))
        self.errors += int(sum_ranks(errors, world))
        self.seen += seen
        if stopped:
            self.save_checkpoint()
            hint = f"--resume {self.run_dir.parent.parent if self.fold else self.run_dir.parent}"
            if stop_now:
                raise Stop(f"{self.name}: interrupted at step {self.step}; checkpoint saved, continue with {hint}",
                            130)  # fmt: skip
            raise Stop(f"{self.name}: stopped after step {self.step} (--stop-after-steps); continue with {hint}", 0)
        self._end_epoch()

    def _probabilities(self, sentences: list[torch.Tensor]) -> torch.Tensor:
        """Class probabilities [N, C] (float64, CPU) of the current weights; data parallel, each rank
        computes its share of the sentences and all ranks receive the whole result."""
        if not self.world.distributed:
            return class_probabilities(self.model, sentences, self.cfg["eval_batch_size"], self.device)
        mine = sentences[shard(len(sentences), self.world)]
        local = class_probabilities(self.model, mine, self.cfg["eval_batch_size"], self.device)
        return gather_dim(local.to(self.device), 0, self.world).cpu()

    def _evaluate_sample(self) -> None:
        """Class probabilities of the sample just taken on valid and test, folded into the averages."""
        t0 = time.perf_counter()
        row: dict[str, Any] = {"method": self.method, "fold": self.fold, "step": self.step,
                               "epoch": round(self.step / self.steps_per_epoch, 4)}  # fmt: skip
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
        row["sample"] = self.averagers["test"].num_samples
        self.curve.append(row)
        self.eval_time += time.perf_counter() - t0

    def _end_epoch(self) -> None:
        t0 = time.perf_counter()
        test = self._probabilities(self.data.test)
        valid = None if self.data.valid is None else self._probabilities(self.data.valid)
        self.eval_time += time.perf_counter() - t0
        self.epoch_test_probs.append(test)
        n = self.averagers["test"].num_samples
        has_valid = valid is not None
        row = {
            "method": self.method, "fold": self.fold, "epoch": self.epoch + 1, "step": self.step,
            "lr": self.cfg["lr"][self.method], "noise": bool(self.optimizer.param_groups[0]["add_noise"]),
            "train_loss": self.loss_sum / max(self.seen, 1), "train_error": self.errors / max(self.seen, 1),
            "valid_error": error_rate(valid, self.valid_labels) if has_valid else None,
            "valid_avg_error": error_rate(self.averagers["valid"].mean, self.valid_labels) if has_valid and n else None,
            "test_error": error_rate(test, self.test_labels),
            "test_avg_error": error_rate(self.averagers["test"].mean, self.test_labels) if n else None,
            "num_samples": n, "epoch_time_s": round(self.train_time, 4), "eval_time_s": round(self.eval_time, 4),
            "skipped_steps": self.optimizer.skipped_steps,
        }  # fmt: skip
        self.history.append(row)
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_rng_state = self.data_rng.get_state()
        self.loss_sum, self.errors, self.seen, self.train_time, self.eval_time = 0.0, 0, 0, 0.0, 0.0
        self.save_checkpoint()

        def pct(v):
            return "-" if v is None else f"{100 * v:.2f}%"

        avg = f"  valid avg {pct(row['valid_avg_error'])} ({n} samples)" if n else ""
        self.say(
            f"{self.name:>8} epoch {row['epoch']:>3}/{self.cfg['epochs']}  train loss {row['train_loss']:.4f} "
            f"error {pct(row['train_error'])}  valid {pct(row['valid_error'])}{avg}  {row['epoch_time_s']:.1f} s"
        )

    # -- results -------------------------------------------------------------------------------------

    def selected_epoch(self) -> int:
        """The epoch (1-based) whose predictions are reported: the last, or the best on validation."""
        if self.cfg["select"] == "last" or not self.history:
            return len(self.history)

        def key(row):
            v = row["valid_avg_error"] if row["valid_avg_error"] is not None else row["valid_error"]
            return (v, row["epoch"])

        return min(self.history, key=key)["epoch"]

    def _final_result(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        e = self.selected_epoch()
        row = self.history[e - 1]
        last = self.epoch_test_probs[e - 1]
        s = row["num_samples"]
        if self.collects and not s:
            self.say(f"{self.name}: no sample by epoch {e} (burn-in {self.burn_in} + thin {self.thin} steps, "
                     f"{self.step} steps taken): reporting the last weights")  # fmt: skip
        # The model average of the samples taken by the end of the selected epoch, or the last weights.
        stack = torch.stack(self.test_samples[:s]) if s else last[None]
        mean = stack.mean(0)
        std = predictive_std(stack)
        entropy = predictive_entropy(mean)
        mi = mutual_information(stack)
        labels = self.test_labels
        pred = mean.argmax(1)
        times = [r["epoch_time_s"] for r in self.history]
        counts = torch.bincount(self.train_labels, minlength=self.num_classes)
        result = {
            "method": self.method, "fold": self.fold, "lr": self.cfg["lr"][self.method], "epochs": self.epoch,
            "steps": self.step, "selected_epoch": e, "num_train": self.num_train,
            "num_valid": 0 if self.data.valid is None else len(self.data.valid), "num_test": len(self.data.test),
            "error": error_rate(mean, labels), "last_error": error_rate(last, labels),
            "ece": expected_calibration_error(mean, labels),
            "nll": float(-torch.log(mean.gather(1, labels[:, None])).mean()),
            "mean_entropy": float(entropy.mean()), "mean_mutual_information": float(mi.mean()),
            "mean_std": float(std.gather(1, pred[:, None]).mean()),
            "valid_error": row["valid_avg_error"] if row["valid_avg_error"] is not None else row["valid_error"],
            "num_samples": s,
            "majority_error": float((labels != counts.argmax()).double().mean()),
            "sec_per_epoch": statistics.median(times) if times else 0.0,
        }  # fmt: skip
        index = self.data.split.test.index.tolist()
        rows = []
        for n in range(len(index)):
            r = {"fold": self.fold, "index": index[n], "label": int(labels[n]), "prediction": int(pred[n])}
            r.update({f"mean_{c}": float(mean[n, c]) for c in range(self.num_classes)})
            r.update({f"std_{c}": float(std[n, c]) for c in range(self.num_classes)})
            r.update(entropy=float(entropy[n]), mutual_information=float(mi[n]))
            rows.append(r)
        self._write_logs(result)
        return result, rows

    def _write_logs(self, result: dict[str, Any] | None = None) -> None:
        if not self.world.is_main:
            return
        write_run_logs(self.run_dir, EPOCH_COLUMNS, self.history, SAMPLE_COLUMNS, self.curve, {
            "method": self.method, "fold": self.fold, "config": self.cfg, "burn_in_steps": self.burn_in,
            "thin_steps": self.thin, "steps_per_epoch": self.steps_per_epoch, "vocab_size": len(self.data.vocab),
            "unknown_test_tokens": self.data.unknown_test_tokens, "epochs": self.history, "samples": self.curve,
            "result": result,
        })  # fmt: skip

    # -- checkpoints ---------------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` atomically, then the logs (derived from the same state).

        Data parallel, every rank calls it: the ranks check that their parameters are bitwise equal and
        send rank 0 their RNG states; rank 0 writes.
        """
        world = self.world
        replica = replica_checkpoint_state(list(self.model.parameters()), world, f"{self.name}: the parameters")
        if not world.is_main:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "method": self.method,
            "fold": self.fold,
            "config": self.cfg,
            "data_fingerprint": self.data.fingerprint,
            **capture_training_state(
                epoch=self.epoch,
                batch_in_epoch=self.batch_in_epoch,
                step=self.step,
                model=self.model,
                optimizer=self.optimizer,
                device=self.device,
                epoch_rng=self.epoch_rng_state,
            ),  # fmt: skip
            "loss_sum": self.loss_sum,
            "errors": self.errors,
            "seen": self.seen,
            "train_time": self.train_time,
            "eval_time": self.eval_time,
            "averagers": {k: v.state_dict() for k, v in self.averagers.items()},
            "test_samples": torch.stack(self.test_samples) if self.test_samples else None,
            "epoch_test_probs": torch.stack(self.epoch_test_probs) if self.epoch_test_probs else None,
            "history": self.history,
            "curve": self.curve,
            **replica,
        }
        write_checkpoint(state, self.checkpoint_path)
        self._write_logs()

    def _restore(self, ck: dict[str, Any]) -> None:
        if ck["method"] != self.method or ck["fold"] != self.fold:
            raise CheckpointError(
                f"{self.checkpoint_path} is a checkpoint of {ck['method']!r} fold {ck['fold']}, not {self.name!r}"
            )
        if ck["data_fingerprint"] != self.data.fingerprint:
            raise ConfigError(f"{self.checkpoint_path}: the data differ from the data this run was trained on")
        check_same_config(self.checkpoint_path, ck["config"], self.cfg, classify_config.RESUMABLE_OVERRIDES)
        self.epoch, self.batch_in_epoch, self.step, self.epoch_rng_state = restore_training_state(
            ck, model=self.model, optimizer=self.optimizer, device=self.device, nan_policy=self.cfg["nan_policy"]
        )
        restore_replica_state(ck, self.world, self.device, self.checkpoint_path)
        if self.epoch < self.cfg["epochs"]:  # a finished method computes nothing more
            warn_if_threads_changed(ck, self.device, self.name)
        self.loss_sum, self.errors, self.seen = float(ck["loss_sum"]), int(ck["errors"]), int(ck["seen"])
        self.train_time, self.eval_time = float(ck["train_time"]), float(ck["eval_time"])
        for k, v in self.averagers.items():
            v.load_state_dict(ck["averagers"][k])
        self.test_samples = [] if ck["test_samples"] is None else list(ck["test_samples"])
        self.epoch_test_probs = [] if ck["epoch_test_probs"] is None else list(ck["epoch_test_probs"])
        self.history, self.curve = list(ck["history"]), list(ck["curve"])
        if self.epoch > self.cfg["epochs"]:
            raise ConfigError(f"{self.checkpoint_path} is at epoch {self.epoch}, past --epochs {self.cfg['epochs']}")


def error_rate(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax (the first on ties) is not the label: probs [N, C], labels [N]."""
    return float((probs.argmax(1) != labels.to(probs.device)).double().mean())
