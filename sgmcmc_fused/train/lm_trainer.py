"""One method of a language-model run: `MethodTrainer` trains it, scores its samples, checkpoints and resumes."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..bayes import PredictiveAverager, SampleCollector
from ..data import batchify
from . import lm_config
from .checkpoint import (
    CheckpointError,
    capture_training_state,
    check_same_config,
    load_checkpoint,
    restore_training_state,
    warn_if_threads_changed,
    write_checkpoint,
)
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
from .language_model import LanguageModel, detach_hidden, perplexity, target_probabilities
from .lm_config import ConfigError
from .lm_data import LMData, epoch_batches, prepare_train, steps_per_epoch
from .methods import SAMPLERS, make_optimizer, set_lr, set_noise
from .options import parse_steps, temperature
from .run_control import Stop
from .runlog import write_run_logs

#: Format tag of the checkpoints written here.
CHECKPOINT_FORMAT = "sgmcmc_fused.train.lm/1"
EPOCH_COLUMNS = [
    "method", "epoch", "step", "lr", "noise", "train_ppl", "valid_ppl", "valid_avg_ppl", "num_samples",
    "epoch_time_s", "eval_time_s", "skipped_steps",
]  # fmt: skip
SAMPLE_COLUMNS = [
    "method", "sample", "step", "epoch", "weight", "valid_ppl", "valid_avg_ppl", "test_ppl", "test_avg_ppl",
]  # fmt: skip


class MethodTrainer:
    """Trains one method from the run's initialisation, or resumes it from ``run_dir/checkpoint.pt``.

    Step numbering: step t (1-based) is the t-th parameter update. The samplers' noise is on for the
    steps t > burn_in; a sample is collected after step t = burn_in + k * thin, k >= 1 (the first after
    `thin` noisy steps), and evaluated on valid and test at once, so the running averages need no
    stored samples (the collector keeps the last --max-samples, none by default, for later use).

    With a distributed `world` it is one of the data-parallel replicas (see the docstring of
    `sgmcmc_fused.train.lm`): every rank calls every method, the collective ones (evaluation,
    checkpoint) at the same steps.
    """

    def __init__(self, method: str, cfg: dict[str, Any], data: LMData, run_dir: Path, device: torch.device,
                 *, world: World = SINGLE, say=print, progress: bool = False, label: str | None = None,
                 samples_subdir: str | None = None, run_root: Path | None = None):  # fmt: skip
        self.method, self.cfg, self.data, self.run_dir, self.device = method, cfg, data, run_dir, device
        self.world, self.label = world, label or method
        self.run_root = run_root or run_dir.parent  # the folder --resume takes
        self.say, self.progress = say, progress
        # This rank's columns of the training batch and of the evaluation streams (all when alone).
        self.columns = shard(cfg["batch_size"], world)
        self.eval_columns = shard(cfg["eval_batch_size"], world)
        self.sampler = method in SAMPLERS
        self.collects = self.sampler or cfg["average_optimizers"]
        self.steps_per_epoch = steps_per_epoch(data, cfg["batch_size"], cfg["bptt"], cfg["minibatch"])
        self.burn_in = parse_steps(cfg["burn_in"], self.steps_per_epoch, "--burn-in", minimum=0)
        self.thin = parse_steps(cfg["thin"], self.steps_per_epoch, "--thin", minimum=1)

        # Same initialisation, dropout stream and data order for every method: all from cfg["seed"].
        # The optimizer noise and the DropConnect masks share the seed as key; docs/spec.md#stream-words gives them
        # disjoint Philox stream ids, so they never collide.
        torch.manual_seed(cfg["seed"])
        self.model = LanguageModel(
            data.vocab_size, cfg["hidden"], cfg["layers"], dropout=cfg["dropout"], dropconnect=cfg["dropconnect"],
            mask=cfg["mask"], masked=cfg["masked"], init_scale=cfg["init_scale"], lstm_seed=cfg["seed"],
            lstm_impl=cfg["lstm_impl"],
        ).to(device)  # fmt: skip
        self.forward_model = data_parallel(self.model, world, device, cfg["seed"])
        self.optimizer = make_optimizer(
            method, list(self.model.named_parameters()), lr=cfg["lr"][method], num_data=data.num_train_tokens,
            seed=cfg["seed"], temperature=temperature(cfg["temperature"], data.num_train_tokens),
            weight_decay=cfg["weight_decay"], alpha=cfg["alpha"], eps=cfg["eps"], impl=cfg["step_impl"],
        )  # fmt: skip
        self.optimizer.nan_policy = cfg["nan_policy"]
        self.data_rng = torch.Generator().manual_seed(cfg["seed"])
        samples_dir = Path(cfg["samples_dir"]) / (samples_subdir or method) if cfg["samples_dir"] else None
        if world.is_main:
            self.collector = SampleCollector(self.burn_in + self.thin, self.thin, cfg["max_samples"], samples_dir)
        else:  # only rank 0 keeps samples; the others use the collector's schedule alone
            self.collector = SampleCollector(self.burn_in + self.thin, self.thin, 0)
        self.train_data = prepare_train(data, cfg["batch_size"], cfg["minibatch"], device)
        self.valid_tb = batchify(data.corpus.valid, cfg["eval_batch_size"])
        self.test_tb = batchify(data.corpus.test, cfg["eval_batch_size"])
        self.averagers = {
            "valid": PredictiveAverager((self.valid_tb.shape[0] - 1) * self.valid_tb.shape[1]),
            "test": PredictiveAverager((self.test_tb.shape[0] - 1) * self.test_tb.shape[1]),
        }
        # Position and per-epoch accumulators.
        self.epoch = 0  # completed epochs
        self.batch_in_epoch = 0  # minibatches of the current epoch done
        self.step = 0
        self.epoch_rng_state = self.data_rng.get_state()  # data-order RNG at the start of the current epoch
        self.hidden = None
        self.loss_sum = 0.0  # sum over the epoch's minibatches of mean loss × tokens (nats)
        self.tokens = 0
        self.train_time = 0.0
        self.eval_time = 0.0
        self.history: list[dict[str, Any]] = []  # one row per epoch
        self.curve: list[dict[str, Any]] = []  # one row per collected sample
        self.checkpoint_path = run_dir / "checkpoint.pt"
        if self.checkpoint_path.exists():
            self._restore(load_checkpoint(self.checkpoint_path, CHECKPOINT_FORMAT))

    # -- schedule ------------------------------------------------------------------------------------

    def lr_at(self, epoch: int) -> float:
        """Learning rate of (0-based) epoch `epoch`: lr / lr_decay^max(0, epoch + 1 - decay_after)."""
        cfg = self.cfg
        return cfg["lr"][self.method] / cfg["lr_decay"] ** max(0, epoch + 1 - cfg["decay_after"])

    # -- training ------------------------------------------------------------------------------------

    def train(self, stop_after: int | None = None, checkpoint_every: int = 0, interrupted=False) -> dict[str, Any]:
        """Train to the configured number of epochs (from wherever the checkpoint left off).

        Returns the result row (see `sgmcmc_fused.train.lm.RESULT_COLUMNS`). Raises Stop after
        checkpointing when `stop_after` steps are reached or `interrupted` becomes true.
        """
        cfg = self.cfg
        if self.epoch < cfg["epochs"] and (self.step or self.batch_in_epoch):
            self.say(f"{self.label}: resuming at epoch {self.epoch + 1}, step {self.step}")
        while self.epoch < cfg["epochs"]:
            if stop_after is not None and self.step >= stop_after:
                break
            if any_rank(bool(interrupted), self.world, self.device):  # the last epoch end was checkpointed
                raise Stop(f"{self.label}: interrupted at step {self.step}; checkpoint saved, continue with "
                            f"--resume {self.run_root}", 130)  # fmt: skip
            self._train_epoch(stop_after, checkpoint_every, interrupted)
        if stop_after is not None and self.step >= stop_after and self.epoch < cfg["epochs"]:
            raise Stop(
                f"{self.label}: stopped after step {self.step} (--stop-after-steps); continue with "
                f"--resume {self.run_root}",
                0,
            )
        return self._final_result()

    def _train_epoch(self, stop_after, checkpoint_every, interrupted) -> None:
        cfg, model, opt = self.cfg, self.model, self.optimizer
        lr = self.lr_at(self.epoch)
        set_lr(opt, lr)
        # Replay the epoch's data order from its start, skipping what a checkpoint already covered.
        self.data_rng.set_state(self.epoch_rng_state)
        batches = epoch_batches(self.train_data, cfg["batch_size"], cfg["bptt"], cfg["minibatch"], self.data_rng)
        for _ in range(self.batch_in_epoch):
            next(batches)
        successive = cfg["minibatch"] == "successive"
        hidden = self.hidden if successive else None
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        desc = f"{self.label} epoch {self.epoch + 1}/{cfg['epochs']}"
        bar = tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch, disable=not self.progress, leave=False,
                   desc=desc, unit="step", dynamic_ncols=True)  # fmt: skip
        model.train()
        world = self.world
        t0 = time.perf_counter()
        eval_before = self.eval_time
        try:
            for x, y in batches:
                step = self.step + 1
                noise = self.sampler and step > self.burn_in
                if noise != bool(opt.param_groups[0]["add_noise"]):
                    set_noise(opt, noise)
                batch_tokens = y.numel()
                if world.distributed:
                    x, y = x[:, self.columns], y[:, self.columns]
                opt.zero_grad(set_to_none=True)
                logits, new_hidden = self.forward_model(x, hidden if successive else None)
                loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
                if world.distributed:
                    # DDP averages the ranks' gradients; weighting each rank's mean loss by its share of
                    # the batch makes that average the gradient of the whole batch's mean loss.
                    (loss * (world.size * y.numel() / batch_tokens)).backward()
                else:
                    loss.backward()
                if cfg["clip"] > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
                opt.step()
                if successive:
                    hidden = detach_hidden(new_hidden)
                loss_sum += loss.detach().double() * y.numel()  # this rank's tokens; summed in _pause
                self.tokens += batch_tokens
                self.step, self.batch_in_epoch = step, self.batch_in_epoch + 1
                if self.collects and (
                    self.collector.maybe_collect(step, model) if world.is_main else self.collector.should_collect(step)
                ):
                    self._evaluate_sample()
                bar.update(1)
                if self.progress and step % 50 == 0 and not world.distributed:
                    bar.set_postfix(
                        ppl=f"{math.exp((self.loss_sum + float(loss_sum)) / self.tokens):.2f}", lr=f"{lr:.3g}"
                    )
                stop_now = any_rank(bool(interrupted), world, self.device)  # all ranks stop at the same step
                stop = (stop_after is not None and step >= stop_after) or stop_now
                periodic = checkpoint_every and step % checkpoint_every == 0
                if (stop or periodic) and self.batch_in_epoch < self.steps_per_epoch:
                    self._pause(hidden, loss_sum, t0, eval_before)
                    self.save_checkpoint()
                    loss_sum.zero_()
                    t0, eval_before = time.perf_counter(), self.eval_time
                    if stop_now:
                        raise Stop(f"{self.label}: interrupted at step {step}; checkpoint saved, continue with "
                                    f"--resume {self.run_root}", 130)  # fmt: skip
                    if stop:
                        return
        finally:
            bar.close()
        self._pause(None, loss_sum, t0, eval_before)
        self._end_epoch(lr)

    def _pause(self, hidden, loss_sum: torch.Tensor, t0: float, eval_before: float) -> None:
        """Fold the running accumulators into the saved state (before a checkpoint or the epoch end)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.train_time += time.perf_counter() - t0 - (self.eval_time - eval_before)
        self.loss_sum += float(sum_ranks(loss_sum, self.world))
        self.hidden = hidden

    def _target_probabilities(self, data_tb: torch.Tensor) -> torch.Tensor:
        """`target_probabilities` of the current weights on a batchified split [T, B]; data parallel,
        each rank evaluates its share of the B streams and all ranks receive the whole result."""
        if not self.world.distributed:
            return target_probabilities(self.model, data_tb, self.cfg["bptt"], self.device)
        local = target_probabilities(self.model, data_tb[:, self.eval_columns], self.cfg["bptt"], self.device)
        local = local.view(data_tb.shape[0] - 1, -1).to(self.device)  # [T - 1, this rank's streams]
        return gather_dim(local, 1, self.world).reshape(-1).cpu()

    def _evaluate_sample(self) -> None:
        """Evaluate the sample just collected on valid and test and fold it into the running averages."""
        t0 = time.perf_counter()
        row: dict[str, Any] = {
            "method": self.method,
            "step": self.step,
            "epoch": round(self.step / self.steps_per_epoch, 4),
        }
        weight = self.lr_at(self.epoch) if self.cfg["sample_weights"] == "lr" else 1.0
        row["weight"] = weight
        for split, data_tb in (("valid", self.valid_tb), ("test", self.test_tb)):
            probs = self._target_probabilities(data_tb)
            avg = self.averagers[split]
            avg.update(probs, weight=weight)
            row[f"{split}_ppl"] = perplexity(probs)
            row[f"{split}_avg_ppl"] = avg.perplexity()
        row["sample"] = self.averagers["valid"].num_samples
        self.curve.append(row)
        self.eval_time += time.perf_counter() - t0

    def _end_epoch(self, lr: float) -> None:
        t0 = time.perf_counter()
        valid = self._target_probabilities(self.valid_tb)
        self.eval_time += time.perf_counter() - t0
        avg = self.averagers["valid"]
        row = {
            "method": self.method, "epoch": self.epoch + 1, "step": self.step, "lr": lr,
            "noise": bool(self.optimizer.param_groups[0]["add_noise"]),
            "train_ppl": math.exp(self.loss_sum / max(self.tokens, 1)), "valid_ppl": perplexity(valid),
            "valid_avg_ppl": avg.perplexity() if avg.num_samples else None, "num_samples": avg.num_samples,
            "epoch_time_s": round(self.train_time, 4), "eval_time_s": round(self.eval_time, 4),
            "skipped_steps": self.optimizer.skipped_steps,
        }  # fmt: skip
        self.history.append(row)
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_rng_state = self.data_rng.get_state()
        self.hidden = None
        self.loss_sum, self.tokens, self.train_time, self.eval_time = 0.0, 0, 0.0, 0.0
        self.save_checkpoint()
        avg_text = (
            f"  valid avg {row['valid_avg_ppl']:.3f} ({row['num_samples']} samples)" if row["num_samples"] else ""
        )
        self.say(
            f"{self.label:>8} epoch {row['epoch']:>3}/{self.cfg['epochs']}  lr {lr:.3g}  train {row['train_ppl']:.3f}"
            f"  valid {row['valid_ppl']:.3f}{avg_text}  {row['epoch_time_s']:.1f} s"
        )

    # -- results -------------------------------------------------------------------------------------

    def _final_result(self) -> dict[str, Any]:
        test = self._target_probabilities(self.test_tb)
        valid = self._target_probabilities(self.valid_tb)
        has_avg = self.averagers["test"].num_samples > 0
        times = [r["epoch_time_s"] for r in self.history]
        result = {
            "method": self.method, "lr": self.cfg["lr"][self.method], "epochs": self.epoch, "steps": self.step,
            "test_ppl": perplexity(test), "test_avg_ppl": self.averagers["test"].perplexity() if has_avg else None,
            "valid_ppl": perplexity(valid),
            "valid_avg_ppl": self.averagers["valid"].perplexity() if has_avg else None,
            "num_samples": self.averagers["test"].num_samples,
            # The median is robust to an epoch slowed by other work on the machine.
            "sec_per_epoch": statistics.median(times) if times else 0.0,
            "test_avg_ppl_by_samples": [r["test_avg_ppl"] for r in self.curve],
            "chains": 1, "split_rhat": None,
        }  # fmt: skip
        self._write_logs(result)
        return result

    def _write_logs(self, result: dict[str, Any] | None = None) -> None:
        if not self.world.is_main:
            return
        write_run_logs(self.run_dir, EPOCH_COLUMNS, self.history, SAMPLE_COLUMNS, self.curve, {
            "method": self.method, "config": self.cfg, "burn_in_steps": self.burn_in, "thin_steps": self.thin,
            "steps_per_epoch": self.steps_per_epoch, "epochs": self.history, "samples": self.curve, "result": result,
        })  # fmt: skip

    # -- checkpoints ---------------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` atomically, then the logs (derived from the same state).

        Data parallel, every rank calls it: the ranks check that their parameters are bitwise equal and
        send rank 0 their share of the hidden state and their RNG states; rank 0 writes.
        """
        world, hidden = self.world, self.hidden
        replica = replica_checkpoint_state(list(self.model.parameters()), world, f"{self.label}: the parameters")
        if world.distributed and hidden is not None:
            hidden = tuple(gather_dim(t, 1, world) for t in hidden)  # [L, B, H]: the whole batch
        if not world.is_main:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "method": self.method,
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
            "hidden": None if hidden is None else [t.cpu() for t in hidden],
            "loss_sum": self.loss_sum,
            "tokens": self.tokens,
            "train_time": self.train_time,
            "eval_time": self.eval_time,
            "collector": self.collector.state_dict(),
            "averagers": {k: v.state_dict() for k, v in self.averagers.items()},
            "history": self.history,
            "curve": self.curve,
            **replica,
        }
        write_checkpoint(state, self.checkpoint_path)
        self._write_logs()

    def _restore(self, ck: dict[str, Any]) -> None:
        if ck["method"] != self.method:
            raise CheckpointError(f"{self.checkpoint_path} is a checkpoint of {ck['method']!r}, not {self.method!r}")
        if ck["data_fingerprint"] != self.data.fingerprint:
            raise ConfigError(
                f"{self.checkpoint_path}: the data differ from the data this run was trained on "
                f"({ck['data_fingerprint']} vs {self.data.fingerprint})"
            )
        saved_cfg = lm_config.with_added_fields(ck["config"])
        check_same_config(self.checkpoint_path, saved_cfg, self.cfg, lm_config.RESUMABLE_OVERRIDES)
        self.epoch, self.batch_in_epoch, self.step, self.epoch_rng_state = restore_training_state(
            ck, model=self.model, optimizer=self.optimizer, device=self.device, nan_policy=self.cfg["nan_policy"]
        )
        restore_replica_state(ck, self.world, self.device, self.checkpoint_path)
        if self.epoch < self.cfg["epochs"]:  # a finished method computes nothing more
            warn_if_threads_changed(ck, self.device, self.label)
        if ck["hidden"] is None:
            self.hidden = None
        else:  # the whole batch's [L, B, H]: this rank's columns
            self.hidden = tuple(t[:, self.columns].contiguous().to(self.device) for t in ck["hidden"])
        self.loss_sum, self.tokens = float(ck["loss_sum"]), int(ck["tokens"])
        self.train_time, self.eval_time = float(ck["train_time"]), float(ck["eval_time"])
        if self.world.is_main:
            self.collector.load_state_dict(ck["collector"])
        for k, v in self.averagers.items():
            v.load_state_dict(ck["averagers"][k])
        self.history, self.curve = list(ck["history"]), list(ck["curve"])
        for row in self.curve:  # samples of a run saved before --sample-weights counted once each
            row.setdefault("weight", 1.0)
