"""Language-model trainer: ``python -m sgmcmc_fused.train lm [options]``.

Trains embedding → DropConnectLSTM → dropout → softmax language models with one or more methods
(sgd, rmsprop, sgld, psgld; `sgmcmc_fused.train.methods`), one after another from the same
initialisation and data order, and prints their test perplexities: of the last weights and of the model
average (SPEC §4: after burn-in a sample every `thin` steps; the per-token probabilities of the
samples are averaged online over the valid and test sets, uniformly or, with --sample-weights lr,
weighted by the learning rate each sample was drawn at).

    python -m sgmcmc_fused.train lm                      # embedded default: synthetic HMM corpus, tiny
                                                         # model, rmsprop vs psgld, a few CPU minutes
    python -m sgmcmc_fused.train lm --word-corpus ../shared/data/ptb --preset small \\
        --method sgd rmsprop sgld psgld --device cuda
    python -m sgmcmc_fused.train lm --char-corpus ../shared/data/tinyshakespeare/input.txt
    python -m sgmcmc_fused.train lm --resume runs/lm-...  # continue exactly where a run stopped
    torchrun --nproc_per_node=2 -m sgmcmc_fused.train lm  # data parallel (DDP; gloo on CPU, NCCL on GPU)
    python -m sgmcmc_fused.train lm --chains 4           # 4 chains per method, samples pooled

Units: `lr` is the step size of the mean loss per token (SPEC §1); num_data = training tokens.

Outputs in --out DIR: config.json; per method METHOD/log.csv (one row per epoch: epoch, step, lr,
train/valid perplexity, averaged valid perplexity, samples, seconds), METHOD/samples.csv (one row per
collected sample: its weight in the average, and the perplexity of that sample and of the running
average on valid and test), METHOD/log.json (all of it, and the final result), METHOD/checkpoint.pt;
results.json, results.csv and perplexity.png for all methods.

Checkpoints (each epoch end, every --checkpoint-every steps, at --stop-after-steps and on Ctrl-C) hold
everything the rest of the run depends on (parameters, optimizer state with its noise seed and counters,
the DropConnect seed and call counter, torch's RNG, the data-order RNG, the carried hidden state, the
sample collector and the running averages), so a resumed run computes bit for bit what the
uninterrupted run would have. The checkpoint they replace is kept as checkpoint.pt.prev.

Under torchrun (WORLD_SIZE > 1) with --chains 1 the run is data parallel: each rank takes a contiguous
share of the batch's columns (of --batch-size in all) and of the evaluation streams, DDP averages the
gradients, and the samplers' counter-based noise is the same on every rank, so the parameters stay
bitwise equal (checked at every checkpoint). Rank 0 prints and writes; a checkpoint holds the whole
batch's hidden state and every rank's RNG, and resumes under the same number of processes. With
--chains K > 1 the ranks instead run the chains (chain k on rank k mod WORLD_SIZE) and rank 0 pools them.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import sys
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
    barrier,
    data_parallel,
    gather_dim,
    gather_objects,
    replica_checkpoint_state,
    restore_replica_state,
    run_in_world,
    shard,
    sum_ranks,
)
from .language_model import LanguageModel, detach_hidden, perplexity, target_probabilities
from .lm_chains import chain_config, chain_dir, pool_chains
from .lm_config import ConfigError
from .lm_data import LMData, check_splits, epoch_batches, load_lm_data, prepare_train, steps_per_epoch
from .methods import SAMPLERS, make_optimizer, set_lr, set_noise
from .options import cpu_threads, parse_steps, temperature
from .plots import plot_lm_runs
from .runlog import write_csv, write_json, write_run_logs

#: Format tag of the checkpoints written here.
CHECKPOINT_FORMAT = "sgmcmc_fused.train.lm/1"
EPOCH_COLUMNS = [
    "method", "epoch", "step", "lr", "noise", "train_ppl", "valid_ppl", "valid_avg_ppl", "num_samples",
    "epoch_time_s", "eval_time_s", "skipped_steps",
]  # fmt: skip
SAMPLE_COLUMNS = [
    "method", "sample", "step", "epoch", "weight", "valid_ppl", "valid_avg_ppl", "test_ppl", "test_avg_ppl",
]  # fmt: skip
RESULT_COLUMNS = [
    "method", "lr", "epochs", "steps", "test_ppl", "test_avg_ppl", "valid_ppl", "valid_avg_ppl", "num_samples",
    "sec_per_epoch", "chains", "split_rhat",
]  # fmt: skip
#: Options that only steer how a run executes; --resume accepts them (plus RESUMABLE_OVERRIDES).
_RUN_CONTROL = {
    "out", "resume", "device", "threads", "checkpoint_every", "stop_after_steps", "progress", "quiet", "plot",
    "func", "parser", "command",
}  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``lm`` subcommand."""
    p = subparsers.add_parser(
        "lm", help="LSTM language models with SG-MCMC and model averaging",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    lm_config.add_arguments(p)
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; bad options and data become a usage error (exit status 2)."""
    try:
        return _run(args)
    except (ConfigError, CheckpointError) as e:
        args.parser.error(str(e))
    return 2  # not reached: parser.error exits


class _Stop(Exception):
    """Training stopped before the end (--stop-after-steps or Ctrl-C), after a checkpoint."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------------
# the run: configuration, data, every method, the table


def _run(args: argparse.Namespace) -> int:
    if args.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    if args.stop_after_steps is not None and args.stop_after_steps < 1:
        raise ConfigError(f"--stop-after-steps must be >= 1, got {args.stop_after_steps}")
    with cpu_threads(args.threads):
        return run_in_world(_device(args.device), lambda world, device: _run_in_world(args, world, device))


def _run_in_world(args: argparse.Namespace, world: World, device: torch.device) -> int:
    if args.resume:
        out = Path(args.resume)
        cfg = _resumed_config(args, out)
    else:
        cfg = lm_config.resolve_config(args)
        default = Path("runs") / f"lm-{cfg['data']['kind']}-{cfg['preset']}-{time.strftime('%Y%m%d-%H%M%S')}"
        # Every rank must write to rank 0's folder (the clock may pass a second between ranks).
        out = Path(args.out) if args.out else Path(gather_objects(str(default), world)[0])
        if (out / "config.json").exists():
            raise ConfigError(
                f"--out {out} already holds a run: continue it with --resume {out}, or choose another --out"
            )
    chains = cfg.get("chains", 1)
    _check_world(cfg, world, chains)
    data = load_lm_data(cfg["data"])
    check_splits(data, cfg["batch_size"], cfg["bptt"], cfg["eval_batch_size"], cfg["minibatch"])
    barrier(world)  # every rank has checked --out before rank 0 writes into it
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", cfg)
    barrier(world)
    say = _Printer(args.quiet, silent=not world.is_main)
    say(f"data: {data.description}")
    say(
        f"model: {cfg['preset']} preset, {cfg['layers']}x{cfg['hidden']} LSTM, batch {cfg['batch_size']}, bptt "
        f"{cfg['bptt']}, {cfg['epochs']} epochs, {cfg['minibatch']} minibatches; device {device}, "
        f"{torch.get_num_threads()} threads; output {out}"
        + (f"; {world.size} processes" + (" (data parallel)" if chains == 1 else " (one chain each)")
           if world.distributed else "")
        + (f"; {chains} chains per method" if chains > 1 else "")
    )  # fmt: skip
    progress = args.progress if args.progress is not None else (sys.stderr.isatty() and not args.quiet)
    progress = progress and world.is_main
    results, histories, curves = [], {}, {}
    train_kwargs = dict(stop_after=args.stop_after_steps, checkpoint_every=args.checkpoint_every)
    with _InterruptFlag() as interrupted:
        for method in cfg["methods"]:
            try:
                if chains == 1:
                    trainer = MethodTrainer(method, cfg, data, out / method, device, world=world, say=say,
                                            progress=progress)  # fmt: skip
                    result = trainer.train(**train_kwargs, interrupted=interrupted)
                else:
                    trainer, result = _run_chains(method, cfg, data, out, device, world, say, progress,
                                                  train_kwargs, interrupted)  # fmt: skip
            except _Stop as stop:
                say(str(stop), force=True)
                return stop.status
            if not world.is_main:
                continue
            results.append(result)
            histories[method], curves[method] = trainer.history, trainer.curve
            if args.plot:
                _plot(out, histories, curves, data, cfg)
    if not world.is_main:
        return 0
    write_json(out / "results.json", {"data": data.description, "bayes_optimal_test_ppl": data.bayes_perplexity,
                                      "unigram_test_ppl": data.unigram_perplexity, "methods": results})  # fmt: skip
    write_csv(out / "results.csv", RESULT_COLUMNS, results)
    print(format_table(results, data, cfg))
    return 0


def _run_chains(method, cfg, data, out, device, world, say, progress, train_kwargs, interrupted):
    """Train chains 0..K-1 of `method` (this rank's share: k = rank mod world size), then on rank 0 pool
    them. Returns (chain 0's trainer, for the plot; the pooled result row) on rank 0, (None, None) on
    the others."""
    chains = cfg["chains"]
    first = None
    for k in range(world.rank, chains, world.size):
        trainer = MethodTrainer(method, chain_config(cfg, k), data, chain_dir(out, method, k), device, say=say,
                                progress=progress, label=f"{method} chain {k}",
                                samples_subdir=str(chain_dir(Path(), method, k)), run_root=out)  # fmt: skip
        trainer.train(**train_kwargs, interrupted=interrupted)
        first = first or trainer
    barrier(world)  # all chains done and checkpointed
    if not world.is_main:
        return None, None
    result = pool_chains(method, cfg, out, CHECKPOINT_FORMAT)
    write_json(out / method / "pooled.json", result)
    say(
        f"{method}: {chains} chains, {result['num_samples']} samples pooled; test perplexity of the pooled "
        f"average {_fmt(result['test_avg_ppl'])}, split-R-hat of the validation log-likelihood "
        f"{_fmt(result['split_rhat'])}"
    )
    return first, result


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _check_world(cfg: dict[str, Any], world: World, chains: int) -> None:
    """Clear errors for a process count the run cannot use."""
    if not world.distributed:
        return
    if chains > 1:
        if chains < world.size:
            raise ConfigError(
                f"--chains {chains} with {world.size} processes: every process runs whole chains, so start at most "
                f"{chains} processes (or use --chains 1 for data parallelism)"
            )
        return
    for option, n in (("--batch-size", cfg["batch_size"]), ("--eval-batch-size", cfg["eval_batch_size"])):
        if n < world.size:
            raise ConfigError(f"{option} {n} is smaller than the {world.size} processes that share its columns")


def _device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"--device {spec!r}: expected cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}: CUDA is not available here")
    return device


def _resumed_config(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The saved configuration of the run in `out`, with --epochs changed if given.

    Raises:
        ConfigError: no run in `out`, or options that would change what the run computes.
    """
    path = out / "config.json"
    if not path.is_file():
        raise ConfigError(f"--resume {out}: no run there (no config.json)")
    cfg = lm_config.with_added_fields(json.loads(path.read_text()))
    parser: argparse.ArgumentParser = args.parser
    changed = sorted(
        k for k, v in vars(args).items()
        if k not in _RUN_CONTROL and k not in lm_config.RESUMABLE_OVERRIDES and v != parser.get_default(k)
    )  # fmt: skip
    if changed:
        names = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise ConfigError(
            f"--resume continues the run with its saved configuration; {names} cannot be changed "
            "(only --epochs and the run options --device, --threads, --checkpoint-every, --stop-after-steps, "
            "--progress, --quiet, --no-plot)"
        )
    if args.epochs is not None:
        cfg["epochs"] = args.epochs
        lm_config.check_config(cfg)
    return cfg


class _Printer:
    """Progress messages to stdout: all of them, or with `quiet` only the forced ones; none at all on
    a rank other than 0 of a distributed run (`silent`)."""

    def __init__(self, quiet: bool, silent: bool = False):
        self.quiet, self.silent = quiet, silent

    def __call__(self, message: str, force: bool = False) -> None:
        if not self.silent and (force or not self.quiet):
            tqdm.write(message, file=sys.stdout)


class _InterruptFlag:
    """Within the block, the first Ctrl-C sets a flag (the training loop checkpoints at the next step
    boundary and stops); a second one interrupts at once. A no-op outside the main thread."""

    def __init__(self):
        self.set = False
        self._previous = None

    def __bool__(self) -> bool:
        return self.set

    def _handler(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def format_table(results: list[dict[str, Any]], data: LMData, cfg: dict[str, Any]) -> str:
    """The final stdout table: test perplexity of the last weights and of the model average per method
    (s/epoch: the median training time of an epoch, evaluations excluded)."""
    lines = [
        "",
        f"Test perplexity: {data.description}",
        f"{cfg['preset']} preset ({cfg['layers']}x{cfg['hidden']} LSTM), {cfg['epochs']} epochs",
        "",
        f"{'method':<10} {'lr':>8} {'last sample':>12} {'model average':>14} {'samples':>8} {'s/epoch':>8}",
    ]
    for r in results:
        avg = "-" if r["test_avg_ppl"] is None else f"{r['test_avg_ppl']:.3f}"
        lines.append(
            f"{r['method']:<10} {r['lr']:>8.3g} {r['test_ppl']:>12.3f} {avg:>14} {r['num_samples']:>8d} "
            f"{r['sec_per_epoch']:>8.2f}"
        )
    lines.append(f"{'unigram (training counts)':<32} {data.unigram_perplexity:>12.3f}")
    if data.bayes_perplexity is not None:
        lines.append(f"{'Bayes-optimal (the source)':<32} {data.bayes_perplexity:>12.3f}")
    for r in results:
        if r.get("chains", 1) > 1:
            own = ", ".join(_fmt(x) for x in r["chain_test_avg_ppl"])
            lines.append(
                f"{r['method']}: {r['chains']} chains pooled (last sample: mean over chains); split-R-hat of the "
                f"validation log-likelihood {_fmt(r['split_rhat'])}; each chain's own model average: {own}"
            )
    for r in results:
        curve = r.get("test_avg_ppl_by_samples") or []
        if len(curve) > 1:
            marks = sorted({1, 2, 5, 10, 20, 50, 100, 200, 500, len(curve)} & set(range(1, len(curve) + 1)))
            shown = ", ".join(f"{n}: {curve[n - 1]:.3f}" for n in marks)
            lines.append(f"{r['method']} test perplexity of the average of n samples: {shown}")
    return "\n".join(lines)


def _plot(out: Path, histories, curves, data: LMData, cfg) -> None:
    plot_lm_runs(
        out / "perplexity.png", histories, curves, floor=data.bayes_perplexity,
        title=f"{data.description}\n{cfg['preset']} preset, {cfg['layers']}x{cfg['hidden']}",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# one method


class MethodTrainer:
    """Trains one method from the run's initialisation, or resumes it from ``run_dir/checkpoint.pt``.

    Step numbering: step t (1-based) is the t-th parameter update. The samplers' noise is on for the
    steps t > burn_in; a sample is collected after step t = burn_in + k * thin, k >= 1 (the first after
    `thin` noisy steps), and evaluated on valid and test at once, so the running averages need no
    stored samples (the collector keeps the last --max-samples, none by default, for later use).

    With a distributed `world` it is one of the data-parallel replicas (see the module docstring):
    every rank calls every method, the collective ones (evaluation, checkpoint) at the same steps.
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
        # The optimizer noise and the DropConnect masks share the seed as key; SPEC §2 gives them
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

        Returns the result row (see RESULT_COLUMNS). Raises _Stop after checkpointing when `stop_after`
        steps are reached or `interrupted` becomes true.
        """
        cfg = self.cfg
        if self.epoch < cfg["epochs"] and (self.step or self.batch_in_epoch):
            self.say(f"{self.label}: resuming at epoch {self.epoch + 1}, step {self.step}")
        while self.epoch < cfg["epochs"]:
            if stop_after is not None and self.step >= stop_after:
                break
            if any_rank(bool(interrupted), self.world, self.device):  # the last epoch end was checkpointed
                raise _Stop(f"{self.label}: interrupted at step {self.step}; checkpoint saved, continue with "
                            f"--resume {self.run_root}", 130)  # fmt: skip
            self._train_epoch(stop_after, checkpoint_every, interrupted)
        if stop_after is not None and self.step >= stop_after and self.epoch < cfg["epochs"]:
            raise _Stop(
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
                        raise _Stop(f"{self.label}: interrupted at step {step}; checkpoint saved, continue with "
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
