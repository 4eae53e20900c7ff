"""`SamplerTrainer`: one method of one run, trained step by step with burn-in, thinning and sample
collection, checkpointed so that a resumed run computes bit for bit what the uninterrupted run would
have. A task subclasses it with its model, batches, loss and evaluation.

Step numbering: step t (1-based) is the t-th parameter update. The samplers' noise is on for the
steps t > burn_in; a sample is collected after step t = burn_in + k * thin, k >= 1 (the first after
`thin` noisy steps), and the task evaluates it at once (`evaluate_sample`), folding its predictions
into running averages, so that no parameters need be kept (docs/spec.md#posterior-averaging).
sgd/rmsprop collect too with ``average_optimizers``. Under ``schedule="cyclical"`` (`schedule`) the
learning rate is set every step, the noise is on in each cycle's sampling stage, and the samples are
taken there; the optimisers follow the same learning rates and sample steps without noise.

With a distributed `world` the trainer is one of the data-parallel replicas: every rank calls every
method, the collective ones (evaluation, checkpoint) at the same steps, and the parameters stay
bitwise equal across ranks (checked at every checkpoint).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from tqdm.auto import tqdm

from ..bayes import SampleCollector
from ..optim import NonFiniteGradientError
from .checkpoint import (
    CheckpointError,
    capture_training_state,
    check_same_config,
    load_checkpoint,
    previous_path,
    remove_stale_temporaries,
    restore_training_state,
    warn_if_threads_changed,
    write_checkpoint,
)
from .config import RunConfig
from .distributed import SINGLE, World, any_rank, replica_checkpoint_state, restore_replica_state, sum_ranks
from .methods import SAMPLERS, make_optimizer, set_lr, set_noise
from .options import PRECISIONS, ConfigError
from .priors import prior_param_groups
from .run_control import Printer, Stop
from .runlog import write_run_logs
from .schedule import CyclicalSchedule


class StepLoss(NamedTuple):
    """What `SamplerTrainer.train_step` returns for one minibatch.

    Attributes:
        loss: the scalar to backpropagate (data parallel: weighted so that DDP's average of the ranks'
            gradients is the gradient of the whole batch's mean loss).
        sums: this rank's contribution to each of RANK_SUMS (0-d tensors on the device).
        counts: the minibatch's contribution to each of COUNTS.
    """

    loss: torch.Tensor
    sums: dict[str, torch.Tensor]
    counts: dict[str, float]


class SamplerTrainer(ABC):
    """Trains `method` from the run's initialisation, or resumes it from ``run_dir/checkpoint.pt``.

    A subclass sets what its hooks need (data, sizes) and then calls ``super().__init__``, which seeds
    torch, builds the model (`build_model`) and the optimizer, and restores the checkpoint if there is
    one. Running sums of an epoch (`RANK_SUMS`: this rank's share, summed over ranks when the epoch
    pauses; `COUNTS`: the same on every rank) live in ``self.totals`` and in the checkpoints.

    Args:
        steps_per_epoch: parameter updates in an epoch.
        num_data: N of the posterior (training tokens, sentences).
        seed: the seed of the initialisation, the data order, the DropConnect masks and the noise.
        label: the name in messages (default: the method).
        run_root: the folder --resume takes (default: run_dir's parent).
        max_samples, samples_dir: the parameter samples to keep (`SampleCollector`); none by default.
    """

    #: Format tag of the checkpoints (a task's own).
    CHECKPOINT_FORMAT: ClassVar[str]
    #: Columns of log.csv (one row per epoch) and samples.csv (one row per collected sample).
    EPOCH_COLUMNS: ClassVar[list[str]]
    SAMPLE_COLUMNS: ClassVar[list[str]]
    RANK_SUMS: ClassVar[tuple[str, ...]] = ()
    COUNTS: ClassVar[tuple[str, ...]] = ()
    #: Steps between updates of the progress bar's figures.
    PROGRESS_EVERY: ClassVar[int] = 50

    # Set by the task before ``super().__init__``: what identifies its data (checked on resume), and
    # the running predictive averages by split (`sgmcmc_fused.bayes.PredictiveAverager`).
    data_fingerprint: Any
    averagers: dict[str, Any]

    def __init__(
        self, method: str, cfg: RunConfig, run_dir: Path, device: torch.device, *, steps_per_epoch: int,
        num_data: int, seed: int, world: World = SINGLE, say: Printer | None = None, progress: bool = False,
        label: str | None = None, run_root: Path | None = None, max_samples: int = 0,
        samples_dir: Path | None = None,
    ):  # fmt: skip
        self.method, self.cfg, self.run_dir, self.device = method, cfg, run_dir, device
        self.world, self.say, self.progress = world, say or Printer(quiet=False), progress
        self.label = label or method
        self.run_root = run_root or run_dir.parent
        self.sampler = method in SAMPLERS
        self.collects = self.sampler or cfg.average_optimizers
        self.steps_per_epoch = steps_per_epoch
        self.burn_in = cfg.burn_in.steps(steps_per_epoch)
        self.thin = cfg.thin.steps(steps_per_epoch)
        self.cyclical = _cyclical_schedule(cfg, steps_per_epoch, self.thin)

        # Same initialisation, dropout stream and data order for every method: all from `seed`. The
        # optimizer noise and the DropConnect masks share the seed as key; docs/spec.md#stream-words
        # gives them disjoint Philox stream ids, so they never collide.
        torch.manual_seed(seed)
        self.model = self.build_model(seed).to(device)
        params: list[Any] = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if cfg.prior_std:
            params = prior_param_groups(self.model, cfg.prior_std)
        self.optimizer = make_optimizer(
            method, params, lr=cfg.lr[method], num_data=num_data, seed=seed,
            temperature=cfg.temperature.at(num_data), weight_decay=cfg.weight_decay, alpha=cfg.alpha,
            eps=cfg.eps, impl=cfg.step_impl,
        )  # fmt: skip
        self.optimizer.nan_policy = cfg.nan_policy
        # Mixed precision: autocast for every forward pass; fp16 scales the loss (a step whose scaled
        # gradients overflow is skipped by the scaler and the scale lowered: not a divergence).
        self.autocast_dtype = PRECISIONS[cfg.precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.data_rng = torch.Generator().manual_seed(seed)
        # Only rank 0 keeps samples; the others use the collector's schedule alone.
        keep = max_samples if world.is_main else 0
        self.collector = SampleCollector(
            self.burn_in + self.thin, self.thin, keep, samples_dir if world.is_main and keep else None
        )
        # Position and per-epoch accumulators.
        self.epoch = 0  # completed epochs
        self.batch_in_epoch = 0  # minibatches of the current epoch done
        self.step = 0
        self.epoch_rng_state = self.data_rng.get_state()  # data-order RNG at the start of the current epoch
        self.totals: dict[str, float] = dict.fromkeys(self.RANK_SUMS + self.COUNTS, 0.0)
        self.sums: dict[str, torch.Tensor] = {}  # this rank's RANK_SUMS since the last pause
        self.train_time = 0.0  # seconds of the epoch's steps, evaluations excluded
        self.eval_time = 0.0
        self.history: list[dict[str, Any]] = []  # one row per epoch
        self.curve: list[dict[str, Any]] = []  # one row per collected sample
        self.checkpoint_path = run_dir / "checkpoint.pt"
        if world.is_main:  # the only writer of checkpoints, holding the run's folder
            remove_stale_temporaries(self.checkpoint_path)
        if self.checkpoint_path.exists():
            self._restore(load_checkpoint(self.checkpoint_path, self.CHECKPOINT_FORMAT))
        elif (run_dir / "log.json").exists():  # written with every checkpoint: this one has gone
            prev = previous_path(self.checkpoint_path)
            hint = f" (the previous one is there: mv {prev} {self.checkpoint_path})" if prev.exists() else ""
            raise ConfigError(
                f"{run_dir} holds the logs of {self.label} but not its checkpoint.pt{hint}: resuming would train "
                f"it again from step 0. Restore the checkpoint, or delete {run_dir} to train it anew"
            )

    # -- what a task provides ------------------------------------------------------------------------

    @abstractmethod
    def build_model(self, seed: int) -> torch.nn.Module:
        """The model, initialised from torch's RNG (seeded); it has a DropConnect LSTM as ``.lstm``."""

    @abstractmethod
    def epoch_batches(self) -> Iterator[Any]:
        """The current epoch's minibatches from ``self.batch_in_epoch`` on, drawn from ``self.data_rng``
        (set to the epoch's start)."""

    @abstractmethod
    def train_step(self, batch: Any) -> StepLoss:
        """Forward one minibatch: its loss and what it adds to the running sums (added only if the
        loss is finite)."""

    @abstractmethod
    def evaluate_sample(self, row: dict[str, Any]) -> None:
        """Evaluate the sample just collected, fold it into the running averages, fill its `row`."""

    @abstractmethod
    def epoch_row(self, lr: float) -> dict[str, Any]:
        """The epoch's row of log.csv (evaluations inside `evaluating`), before the epoch advances."""

    @abstractmethod
    def epoch_message(self, row: dict[str, Any]) -> str:
        """The line printed at the end of an epoch."""

    @abstractmethod
    def final_result(self) -> Any:
        """The method's result, once every epoch is done (logs written by the task)."""

    def lr_at(self, epoch: int) -> float:
        """The learning rate of (0-based) `epoch` under the "decay" schedule; constant unless a task
        decays it."""
        return self.cfg.lr[self.method]

    def step_lr(self, step: int) -> float:
        """The learning rate of (1-based) `step`: the epoch's, or the cyclical schedule's."""
        if self.cyclical is not None:
            return self.cfg.lr[self.method] * self.cyclical.lr_factor(step)
        return self.lr_at((step - 1) // self.steps_per_epoch)

    def noise_at(self, step: int) -> bool:
        """Whether `step` adds the Langevin noise: a sampler past burn-in, or in a cycle's sampling stage."""
        if not self.sampler:
            return False
        return not self.cyclical.explores(step) if self.cyclical is not None else step > self.burn_in

    def collects_at(self, step: int) -> bool:
        """Whether a sample (a snapshot, for the optimisers) is taken after `step`."""
        if not self.collects:
            return False
        return self.cyclical.collects(step) if self.cyclical is not None else self.collector.should_collect(step)

    def progress_figures(self) -> dict[str, str]:
        """Figures shown on the progress bar every PROGRESS_EVERY steps."""
        return {}

    def log_fields(self) -> dict[str, Any]:
        """Entries of log.json besides the common ones."""
        return {}

    def checkpoint_fields(self) -> dict[str, Any]:
        """Entries of the checkpoint besides the common ones."""
        return {}

    def restore_fields(self, ck: dict[str, Any]) -> None:
        """Restore what `checkpoint_fields` saved (by default: nothing)."""
        return None

    def check_checkpoint_owner(self, ck: dict[str, Any]) -> None:
        """Raise CheckpointError if `ck` is another method's (or another part's of the run)."""
        if ck["method"] != self.method:
            raise CheckpointError(f"{self.checkpoint_path} is a checkpoint of {ck['method']!r}, not {self.method!r}")

    def step_skipped(self) -> None:
        """Forget what the minibatch of a skipped step left behind (a carried state, say)."""
        return None

    def end_epoch(self) -> None:
        """Reset what the task carries across the steps of an epoch (after its row is taken; by default
        nothing)."""
        return None

    # -- training ------------------------------------------------------------------------------------

    def train(self, stop_after: int | None = None, checkpoint_every: int = 0, interrupted=False) -> Any:
        """Train to the configured number of epochs (from wherever the checkpoint left off).

        Returns `final_result`. Raises Stop after checkpointing when `stop_after` steps are reached or
        `interrupted` becomes true.
        """
        epochs = self.cfg.epochs
        if self.epoch < epochs and (self.step or self.batch_in_epoch):
            self.say(f"{self.label}: resuming at epoch {self.epoch + 1}, step {self.step}")
        total = epochs * self.steps_per_epoch
        if self.collects and self.step == 0 and self.cyclical is None and self.burn_in + self.thin > total:
            what = (
                "no noise and no sample: the sampler is its optimiser"
                if self.sampler and self.burn_in >= total
                else "no sample"
            )
            self.say(
                f"{self.label}: warning: burn-in {self.burn_in} + thin {self.thin} steps exceed the {total} steps of "
                f"training: {what} (shorten --burn-in or --thin, or train longer)",
                force=True,
            )
        if self.collects and self.step == 0 and self.cyclical is not None and not self.cyclical.every_cycle_samples():
            shortest = total // self.cyclical.cycles
            self.say(
                f"{self.label}: warning: cycles of {shortest} steps explore to their end with --explore-fraction "
                f"{self.cyclical.explore_fraction}: they add no noise and no sample (use fewer --cycles, or train "
                "longer)",
                force=True,
            )
        while self.epoch < epochs:
            if stop_after is not None and self.step >= stop_after:
                raise self._stop("stopped after step {step} (--stop-after-steps);", 0)
            if any_rank(bool(interrupted), self.world, self.device):  # the last epoch end was checkpointed
                raise self._interrupted(interrupted)
            self._train_epoch(stop_after, checkpoint_every, interrupted)
        with self.autocast():
            return self.final_result()

    def _interrupted(self, interrupted) -> Stop:
        """The Stop of a run interrupted by a signal (on another rank, perhaps: then as by SIGINT)."""
        name, status = getattr(interrupted, "name", "SIGINT"), getattr(interrupted, "status", 130)
        if self.step == 0 and not self.checkpoint_path.exists():  # interrupted before this method began
            return self._stop(f"interrupted ({name}) before its first step; nothing to save,", status)
        return self._stop(f"interrupted ({name}) at step {{step}}; checkpoint saved,", status)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The run's precision for a forward pass (no-op in fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _stop(self, what: str, status: int, resume_options: str = "") -> Stop:
        return Stop(
            f"{self.label}: {what.format(step=self.step)} continue with --resume {self.run_root}{resume_options}",
            status,
        )

    def _step(self, batch: Any, step: int) -> str | None:
        """One parameter update on `batch`. A non-finite loss or gradient skips it (the optimizer then
        updates nothing) and is counted in the optimizer's ``skipped_steps``; with nan_policy "raise"
        the return value then says what diverged, for the caller to checkpoint and stop."""
        model, opt, world, scaler = self.model, self.optimizer, self.world, self.scaler
        opt.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.train_step(batch)
        # One host sync a step; every rank takes the same decision (DDP needs every backward).
        loss_finite = not any_rank(not bool(torch.isfinite(out.loss.detach())), world, self.device)
        scaler.scale(out.loss).backward()
        diverged = None
        if loss_finite:
            for k, v in out.sums.items():
                self.sums[k] += v
            for k, v in out.counts.items():
                self.totals[k] += v
            if self.cfg.clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.clip)
            try:
                scaler.step(opt)  # opt.step() unless fp16 gradients overflowed
            except NonFiniteGradientError as e:
                opt.skipped_steps += 1
                diverged = f"the gradient of {e.parameter} holds NaN or inf"
            scaler.update()
        else:
            opt.skipped_steps += 1
            if self.cfg.nan_policy == "raise":
                diverged = f"the loss is {float(out.loss.detach()):g}"
        if not loss_finite or diverged:
            self.step_skipped()
        return diverged

    def _train_epoch(self, stop_after: int | None, checkpoint_every: int, interrupted) -> None:
        model, opt, world = self.model, self.optimizer, self.world
        lr = self.step_lr(self.step + 1) if self.cyclical is not None else self.lr_at(self.epoch)
        set_lr(opt, lr)
        # Replay the epoch's data order from its start; the task skips what a checkpoint covered.
        self.data_rng.set_state(self.epoch_rng_state)
        self._start_sums()
        desc = f"{self.label} epoch {self.epoch + 1}/{self.cfg.epochs}"
        bar = tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch, disable=not self.progress, leave=False,
                   desc=desc, unit="step", dynamic_ncols=True)  # fmt: skip
        model.train()
        t0, eval_before = time.perf_counter(), self.eval_time
        try:
            for batch in self.epoch_batches():
                step = self.step + 1
                if self.cyclical is not None:
                    lr = self.step_lr(step)
                    set_lr(opt, lr)
                noise = self.noise_at(step)
                if noise != bool(opt.param_groups[0]["add_noise"]):
                    set_noise(opt, noise)
                diverged = self._step(batch, step)
                self.step, self.batch_in_epoch = step, self.batch_in_epoch + 1
                if self.collects_at(step):
                    if world.is_main:  # the only rank that keeps samples
                        self.collector.collect(step, model)
                    self._evaluate_sample()
                bar.update(1)
                if self.progress and step % self.PROGRESS_EVERY == 0 and not world.distributed:
                    bar.set_postfix(self.progress_figures())
                if diverged:  # the step was skipped: checkpoint, so that a resume can lower the lr
                    self._pause(t0, eval_before)
                    self.save_checkpoint()
                    raise self._stop(
                        f"{diverged} at step {{step}} (the run diverged); the step was skipped and a checkpoint saved,",
                        1,
                        resume_options=f" and a smaller --lr {self.method}=LR, or with --nan-policy skip to skip "
                        "such steps",
                    )
                stop_now = any_rank(bool(interrupted), world, self.device)  # all ranks stop at the same step
                stop = (stop_after is not None and step >= stop_after) or stop_now
                periodic = checkpoint_every and step % checkpoint_every == 0
                if (stop or periodic) and self.batch_in_epoch < self.steps_per_epoch:
                    self._pause(t0, eval_before)
                    self.save_checkpoint()
                    self._start_sums()
                    t0, eval_before = time.perf_counter(), self.eval_time
                    if stop_now:
                        raise self._interrupted(interrupted)
                    if stop:
                        return
        finally:
            bar.close()
        self._pause(t0, eval_before)
        self._end_epoch(lr)

    def _start_sums(self) -> None:
        self.sums = {k: torch.zeros((), dtype=torch.float64, device=self.device) for k in self.RANK_SUMS}

    def _pause(self, t0: float, eval_before: float) -> None:
        """Fold the running sums into the saved state (before a checkpoint or the epoch end)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.train_time += time.perf_counter() - t0 - (self.eval_time - eval_before)
        for k, t in self.sums.items():
            self.totals[k] += float(sum_ranks(t, self.world))
            t.zero_()

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Count the body's time as evaluation, not training."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.eval_time += time.perf_counter() - t0

    def _evaluate_sample(self) -> None:
        row: dict[str, Any] = {"method": self.method, "step": self.step,
                               "epoch": round(self.step / self.steps_per_epoch, 4)}  # fmt: skip
        with self.evaluating(), self.autocast():
            self.evaluate_sample(row)
        self.curve.append(row)

    def _end_epoch(self, lr: float) -> None:
        with self.autocast():
            row = self.epoch_row(lr)
        self.history.append(row)
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_rng_state = self.data_rng.get_state()
        self.end_epoch()
        self.totals = dict.fromkeys(self.totals, 0.0)
        self.train_time, self.eval_time = 0.0, 0.0
        self.save_checkpoint()
        self.say(self.epoch_message(row))

    def sec_per_epoch(self) -> float:
        """The median training time of an epoch (robust to an epoch slowed by other work)."""
        times = [r["epoch_time_s"] for r in self.history]
        return statistics.median(times) if times else 0.0

    # -- logs and checkpoints ------------------------------------------------------------------------

    def write_logs(self, result: Any = None) -> None:
        """log.csv, samples.csv and log.json of the state so far (rank 0)."""
        if not self.world.is_main:
            return
        write_run_logs(self.run_dir, self.EPOCH_COLUMNS, self.history, self.SAMPLE_COLUMNS, self.curve, {
            "method": self.method, **self.log_fields(), "config": self.cfg.to_json(), "burn_in_steps": self.burn_in,
            "thin_steps": self.thin, "steps_per_epoch": self.steps_per_epoch, "epochs": self.history,
            "samples": self.curve, "result": result,
        })  # fmt: skip

    def save_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` atomically, then the logs (derived from the same state).

        Data parallel, every rank calls it: the ranks check that their parameters are bitwise equal and
        send rank 0 their RNG states (and what `checkpoint_fields` gathers); rank 0 writes.
        """
        replica = replica_checkpoint_state(list(self.model.parameters()), self.world, f"{self.label}: the parameters")
        fields = self.checkpoint_fields()  # collective for some tasks: every rank computes it
        if not self.world.is_main:
            return
        state = {
            "format": self.CHECKPOINT_FORMAT,
            "method": self.method,
            "config": self.cfg.to_json(),
            "data_fingerprint": self.data_fingerprint,
            **capture_training_state(
                epoch=self.epoch,
                batch_in_epoch=self.batch_in_epoch,
                step=self.step,
                model=self.model,
                optimizer=self.optimizer,
                device=self.device,
                epoch_rng=self.epoch_rng_state,
            ),
            **self.totals,
            "train_time": self.train_time,
            "eval_time": self.eval_time,
            "collector": self.collector.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "averagers": {k: v.state_dict() for k, v in self.averagers.items()},
            "history": self.history,
            "curve": self.curve,
            **fields,
            **replica,
        }
        write_checkpoint(state, self.checkpoint_path)
        self.write_logs()

    def _restore(self, ck: dict[str, Any]) -> None:
        self.check_checkpoint_owner(ck)
        if ck["data_fingerprint"] != self.data_fingerprint:
            raise ConfigError(
                f"{self.checkpoint_path}: the data differ from the data this run was trained on "
                f"({ck['data_fingerprint']} vs {self.data_fingerprint})"
            )
        saved = type(self.cfg).from_json(ck["config"])
        check_same_config(self.checkpoint_path, saved.to_json(), self.cfg.to_json(), saved.resumable_fields())
        self.epoch, self.batch_in_epoch, self.step, self.epoch_rng_state = restore_training_state(
            ck, model=self.model, optimizer=self.optimizer, device=self.device, nan_policy=self.cfg.nan_policy
        )
        if self.epoch > self.cfg.epochs or (self.epoch == self.cfg.epochs and self.batch_in_epoch > 0):
            where = f"{self.batch_in_epoch} steps into epoch {self.epoch + 1}" if self.batch_in_epoch else (
                f"at the end of epoch {self.epoch}")  # fmt: skip
            least = self.epoch + (1 if self.batch_in_epoch else 0)
            raise ConfigError(
                f"{self.checkpoint_path} is {where}, past --epochs {self.cfg.epochs}: give --epochs {least} or more"
            )
        trained_lr, lr = saved.lr.get(self.method), self.cfg.lr[self.method]
        if self.epoch == self.cfg.epochs and trained_lr is not None and trained_lr != lr:
            # A finished run trains no more: its logs and result keep the lr it trained with. (A method whose
            # runs have all finished keeps its lr in config.json too: Task._lrs_for_unfinished.)
            self.say(f"{self.label}: finished its {self.epoch} epochs at lr {trained_lr:g}, and keeps it (the run's "
                     f"lr {lr:g} is for its chains or folds still training)", force=True)  # fmt: skip
            self.cfg = self.cfg.replace(lr={**self.cfg.lr, self.method: trained_lr})
        restore_replica_state(ck, self.world, self.device, self.checkpoint_path)
        if self.epoch < self.cfg.epochs:  # a finished method computes nothing more
            warn_if_threads_changed(ck, self.device, self.label)
        self.totals = {k: float(ck[k]) for k in self.totals}
        self.train_time, self.eval_time = float(ck["train_time"]), float(ck["eval_time"])
        # Checkpoints of tasks that kept no samples before they had a collector hold none; such a
        # collector only counts, and nothing reads its count.
        if ck.get("grad_scaler"):  # absent before --precision; empty for a disabled scaler
            self.scaler.load_state_dict(ck["grad_scaler"])
        if self.world.is_main and "collector" in ck:
            self.collector.load_state_dict(ck["collector"])
        for k, v in self.averagers.items():
            v.load_state_dict(ck["averagers"][k])
        self.history, self.curve = list(ck["history"]), list(ck["curve"])
        self.restore_fields(ck)


def _cyclical_schedule(cfg: RunConfig, steps_per_epoch: int, thin: int) -> CyclicalSchedule | None:
    """The run's cyclical schedule (None for "decay").

    Raises:
        ConfigError: more cycles than training steps.
    """
    if cfg.schedule != "cyclical":
        return None
    total = cfg.epochs * steps_per_epoch
    if cfg.cycles > total:
        raise ConfigError(f"--cycles {cfg.cycles} exceeds the {total} training steps: each cycle needs a step")
    return CyclicalSchedule(total, cfg.cycles, cfg.explore_fraction, thin)
