"""Language-model trainer: ``python -m sgmcmc_fused.train lm [options]``.

Trains embedding → DropConnectLSTM → dropout → softmax language models with one or more methods
(sgd, rmsprop, sgld, psgld; `sgmcmc_fused.train.methods`), one after another from the same
initialisation and data order, and prints their test perplexities: of the last weights and of the model
average (docs/spec.md#posterior-averaging: after burn-in a sample every `thin` steps; the per-token probabilities of the
samples are averaged online over the valid and test sets, uniformly or, with --sample-weights lr,
weighted by the learning rate each sample was drawn at).

    python -m sgmcmc_fused.train lm                      # embedded default: synthetic HMM corpus, tiny
                                                         # model, rmsprop vs psgld, a few CPU minutes
    python -m sgmcmc_fused.train lm --word-corpus data/ptb --preset small \\
        --method sgd rmsprop sgld psgld --device cuda
    python -m sgmcmc_fused.train lm --char-corpus data/tinyshakespeare/input.txt
    python -m sgmcmc_fused.train lm --resume runs/lm-...  # continue exactly where a run stopped
    torchrun --nproc_per_node=2 -m sgmcmc_fused.train lm  # data parallel (DDP; gloo on CPU, NCCL on GPU)
    python -m sgmcmc_fused.train lm --chains 4           # 4 chains per method, samples pooled

Units: `lr` is the step size of the mean loss per token (docs/spec.md#langevin-step); num_data = training tokens.

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
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import lm_config
from .checkpoint import CheckpointError
from .distributed import World, barrier, gather_objects, run_in_world
from .lm_chains import chain_config, chain_dir, pool_chains
from .lm_config import ConfigError
from .lm_data import LMData, check_splits, load_lm_data
from .lm_trainer import CHECKPOINT_FORMAT, MethodTrainer
from .options import cpu_threads
from .plots import plot_lm_runs
from .run_control import InterruptFlag, Printer, Stop, resolve_device
from .runlog import write_csv, write_json

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


# ---------------------------------------------------------------------------------------------------
# the run: configuration, data, every method, the table


def _run(args: argparse.Namespace) -> int:
    if args.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    if args.stop_after_steps is not None and args.stop_after_steps < 1:
        raise ConfigError(f"--stop-after-steps must be >= 1, got {args.stop_after_steps}")
    with cpu_threads(args.threads):
        return run_in_world(resolve_device(args.device), lambda world, device: _run_in_world(args, world, device))


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
    say = Printer(args.quiet, silent=not world.is_main)
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
    with InterruptFlag() as interrupted:
        for method in cfg["methods"]:
            try:
                if chains == 1:
                    trainer = MethodTrainer(method, cfg, data, out / method, device, world=world, say=say,
                                            progress=progress)  # fmt: skip
                    result = trainer.train(**train_kwargs, interrupted=interrupted)
                else:
                    trainer, result = _run_chains(method, cfg, data, out, device, world, say, progress,
                                                  train_kwargs, interrupted)  # fmt: skip
            except Stop as stop:
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
