"""Language-model trainer: ``python -m sgmcmc_fused.train lm [options]``.

Trains embedding → DropConnectLSTM → dropout → softmax language models with one or more methods
(sgd, rmsprop, sgld, psgld; `sgmcmc_fused.train.methods`), one after another from the same
initialisation and data order, and prints their test perplexities: of the last weights and of the model
average (docs/spec.md#posterior-averaging: after burn-in a sample every `thin` steps; the per-token probabilities of the
samples are averaged online over the valid and test sets, uniformly or, with --sample-weights lr,
weighted by the learning rate each sample was drawn at).

    python -m sgmcmc_fused.train lm                      # embedded default: synthetic HMM corpus, tiny
                                                         # model, rmsprop vs psgld, about a minute
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..chains import check_chains_world, train_chains
from ..command import Session, Task
from ..distributed import World
from ..methods import format_lr
from ..options import RUN_CONTROL, ConfigError
from ..run_folder import claim_samples_dir
from ..runlog import write_csv, write_json
from . import config
from .chains import pool_chains
from .config import LMConfig
from .data import LMData, check_splits, load_lm_data, reference_perplexities
from .plots import plot_lm_runs
from .trainer import LMTrainer

RESULT_COLUMNS = [
    "method", "lr", "epochs", "steps", "test_ppl", "test_avg_ppl", "valid_ppl", "valid_avg_ppl", "num_samples",
    "sec_per_epoch", "chains", "split_rhat",
]  # fmt: skip


class LanguageModelTask(Task):
    name = "lm"
    help = "LSTM language models with SG-MCMC and model averaging"
    description = __doc__
    config_type = LMConfig
    run_control = RUN_CONTROL | {"plot"}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        config.add_arguments(parser)

    def new_config(self, args: argparse.Namespace) -> LMConfig:
        return config.resolve_config(args)

    def run_name(self, cfg: LMConfig) -> str:
        return f"lm-{cfg.data['kind']}-{cfg.preset}"

    def claim(self, cfg: LMConfig, out: Path, resumed: bool) -> Callable[[], None] | None:
        return claim_samples_dir(Path(cfg.samples_dir), out, resumed) if cfg.samples_dir else None

    def load_data(self, cfg: LMConfig, args: argparse.Namespace, world: World) -> tuple[LMConfig, LMData]:
        _check_world(cfg, world)
        data = load_lm_data(cfg.data)
        check_splits(data, cfg.batch_size, cfg.bptt, cfg.eval_batch_size, cfg.minibatch)
        return cfg, data

    def train(self, session: Session, data: LMData) -> int:
        cfg, world, say = session.cfg, session.world, session.say
        say(f"data: {data.description}")
        say(
            f"model: {cfg.preset} preset, {cfg.layers}x{cfg.hidden} LSTM, batch {cfg.batch_size}, bptt {cfg.bptt}, "
            f"{cfg.epochs} epochs, {cfg.minibatch} minibatches, {cfg.precision}; device {session.device}, "
            f"{torch.get_num_threads()} threads; output {session.out}"
            + (f"; {world.size} processes" + (" (data parallel)" if cfg.chains == 1 else " (one chain each)")
               if world.distributed else "")
            + (f"; {cfg.chains} chains per method" if cfg.chains > 1 else "")
        )  # fmt: skip
        # The unigram and Bayes-optimal perplexities of the tokens the trainer scores (forward algorithm:
        # a second or so), for the plot and the table.
        references = {split: reference_perplexities(data, split, cfg.eval_batch_size) for split in ("valid", "test")}
        results, histories, curves = [], {}, {}
        for method in cfg.methods:
            if cfg.chains == 1:
                trainer = LMTrainer(method, cfg, data, session.out / method, session.device,
                                    **session.trainer_options())  # fmt: skip
                result = trainer.train(**session.train_options())
            else:
                trainer, result = _run_chains(method, session, data)
            if not world.is_main:
                continue
            results.append(result)
            histories[method], curves[method] = trainer.history, trainer.curve
            if session.args.plot:
                _plot(session.out, histories, curves, data, cfg, references)
        if not world.is_main:
            return 0
        out = session.out
        unigram, bayes = references["test"]
        write_json(out / "results.json", {"data": data.description, "bayes_optimal_test_ppl": bayes,
                                          "unigram_test_ppl": unigram, "methods": results})  # fmt: skip
        write_csv(out / "results.csv", RESULT_COLUMNS, results)
        print(format_table(results, data, cfg, unigram, bayes))
        return 0


def _run_chains(method: str, session: Session, data: LMData) -> tuple[LMTrainer | None, dict[str, Any] | None]:
    """Train chains 0..K-1 of `method` (this rank's share: k = rank mod world size), then on rank 0 pool
    them. Returns (chain 0's trainer, for the plot; the pooled result row) on rank 0, (None, None) on
    the others."""
    cfg, world, out = session.cfg, session.world, session.out
    first = train_chains(method, session, lambda chain_cfg, run_dir, **options: LMTrainer(
        method, chain_cfg, data, run_dir, session.device, **options))  # fmt: skip
    if not world.is_main:
        return None, None
    result = pool_chains(method, cfg, out, LMTrainer.CHECKPOINT_FORMAT)
    write_json(out / method / "pooled.json", result)
    session.say(
        f"{method}: {cfg.chains} chains, {result['num_samples']} samples pooled; test perplexity of the pooled "
        f"average {_fmt(result['test_avg_ppl'])}, split-R-hat of the validation log-likelihood "
        f"{_fmt(result['split_rhat'])}"
    )
    return first, result


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _check_world(cfg: LMConfig, world: World) -> None:
    """Clear errors for a process count the run cannot use."""
    check_chains_world(cfg.chains, world)
    if not world.distributed or cfg.chains > 1:
        return
    for option, n in (("--batch-size", cfg.batch_size), ("--eval-batch-size", cfg.eval_batch_size)):
        if n < world.size:
            raise ConfigError(f"{option} {n} is smaller than the {world.size} processes that share its columns")


def format_table(
    results: list[dict[str, Any]], data: LMData, cfg: LMConfig, unigram: float, bayes: float | None
) -> str:
    """The final stdout table: test perplexity of the last weights and of the model average per method
    (s/epoch: the median training time of an epoch, evaluations excluded), then the unigram and
    Bayes-optimal test perplexities (`reference_perplexities`) for reference."""
    lines = [
        "",
        f"Test perplexity: {data.description}",
        f"{cfg.preset} preset ({cfg.layers}x{cfg.hidden} LSTM), {cfg.epochs} epochs, {cfg.precision}",
        "",
        f"{'method':<10} {'lr':>8} {'last sample':>12} {'model average':>14} {'samples':>8} {'s/epoch':>8}",
    ]
    for r in results:
        avg = "-" if r["test_avg_ppl"] is None else f"{r['test_avg_ppl']:.3f}"
        lines.append(
            f"{r['method']:<10} {format_lr(r['lr']):>8} {r['test_ppl']:>12.3f} {avg:>14} {r['num_samples']:>8d} "
            f"{r['sec_per_epoch']:>8.2f}"
        )
    lines.append(f"{'unigram (training counts)':<32} {unigram:>12.3f}")
    if bayes is not None:
        lines.append(f"{'Bayes-optimal (the source)':<32} {bayes:>12.3f}")
    for r in results:
        if r.get("chains", 1) > 1:
            own = ", ".join(_fmt(x) for x in r["chain_test_avg_ppl"])
            lines.append(
                f"{r['method']}: {r['chains']} chains pooled (last sample: mean over chains); split-R-hat of the "
                f"validation log-likelihood {_fmt(r['split_rhat'])}; each chain's own model average: {own}"
                + ("" if r["lr"] is not None else "; each chain's lr: " + ", ".join(f"{x:g}" for x in r["chain_lr"]))
            )
    for r in results:
        curve = r.get("test_avg_ppl_by_samples") or []
        if len(curve) > 1:
            marks = sorted({1, 2, 5, 10, 20, 50, 100, 200, 500, len(curve)} & set(range(1, len(curve) + 1)))
            shown = ", ".join(f"{n}: {curve[n - 1]:.3f}" for n in marks)
            lines.append(f"{r['method']} test perplexity of the average of n samples: {shown}")
    return "\n".join(lines)


def _plot(out: Path, histories, curves, data: LMData, cfg, references) -> None:
    plot_lm_runs(
        out / "perplexity.png", histories, curves,
        floors={split: bayes for split, (_, bayes) in references.items() if bayes is not None},
        title=f"{data.description}\n{cfg.preset} preset, {cfg.layers}x{cfg.hidden}",
    )  # fmt: skip
