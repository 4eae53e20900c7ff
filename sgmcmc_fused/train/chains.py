"""Independent chains of one method (``--chains K``): their folders, which process trains which, and
the process count they can use. What a task pools from its finished chains is its own (`lm.chains`,
`caption.chains`).

Chain k is the run's configuration with seed SEED + k: its own initialisation, data order, dropout,
DropConnect masks and noise. It trains in ``OUT/METHOD/chain-k`` like a single run, so pooling reads
what the chains left on disk and works the same whether they ran one after another in this process,
on different ranks, or across a resume.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..bayes import split_rhat
from .checkpoint import load_checkpoint
from .distributed import SINGLE, World, announce_stop, wait_for_ranks
from .options import ConfigError
from .run_control import Stop
from .run_folder import chain_dir

if TYPE_CHECKING:
    from .command import Session

T = TypeVar("T")


def add_chains_argument(group: argparse._ArgumentGroup) -> None:
    """The --chains option (an int field ``chains`` of the task's configuration)."""
    group.add_argument(
        "--chains",
        type=int,
        default=1,
        metavar="K",
        help="run K independent chains per sampler (seeds SEED..SEED+K-1; one after another, or one per "
        "process under torchrun) and pool their samples for model averaging, reporting the split-R-hat of "
        "the validation log-likelihood (default 1)",
    )


def check_chains_world(chains: int, world: World) -> None:
    """Raise ConfigError if `world`'s processes cannot share `chains` chains (every process runs whole
    chains, so each needs at least one)."""
    if world.distributed and 1 < chains < world.size:
        raise ConfigError(
            f"--chains {chains} with {world.size} processes: every process runs whole chains, so start at "
            f"most {chains} processes (or use --chains 1 for data parallelism)"
        )


def train_chains(method: str, session: Session, make_trainer: Callable[..., T]) -> T | None:
    """Train `method`'s chains k = rank, rank + size, ... < --chains of this rank, each with
    ``make_trainer(cfg.chain(k), run_dir, label=..., samples_subdir=..., **session options)`` (every
    rank trains whole chains alone), then wait until every rank has finished (each chain trained and
    checkpointed). Returns this rank's first chain's trainer (None if the rank had none)."""
    cfg, world = session.cfg, session.world
    options = {**session.trainer_options(), "world": SINGLE}
    first = None
    try:
        for k in range(world.rank, cfg.chains, world.size):
            trainer = make_trainer(cfg.chain(k), chain_dir(session.out, method, k), label=f"{method} chain {k}",
                                   samples_subdir=str(chain_dir(Path(), method, k)), **options)  # fmt: skip
            trainer.train(**session.train_options())
            if first is None:
                first = trainer
    except Stop as stop:
        announce_stop(world, stop.status)  # the ranks waiting for this one's chains stop too
        raise
    try:
        wait_for_ranks(world, f"the end of {method}'s chains", session.interrupted)
    except Stop as stop:
        raise Stop(f"{stop}; the chains are checkpointed: continue with --resume {session.out}", stop.status) from None
    return first


def finished_chains(out: Path, method: str, chains: int, checkpoint_format: str) -> list[tuple[Any, dict[str, Any]]]:
    """(the result in log.json, the final checkpoint) of each of `method`'s chains 0..chains-1.

    Raises:
        CheckpointError: a chain's checkpoint is missing or damaged.
        ValueError: a chain has not finished (its log holds no result).
    """
    finished = []
    for k in range(chains):
        run_dir = chain_dir(out, method, k)
        result = json.loads((run_dir / "log.json").read_text(encoding="utf-8")).get("result")
        if result is None:
            raise ValueError(f"chain {k} of {method} in {run_dir} has not finished")
        finished.append((result, load_checkpoint(run_dir / "checkpoint.pt", checkpoint_format)))
    return finished


def validation_rhat(checkpoints: list[dict[str, Any]]) -> float | None:
    """Split-R-hat (`sgmcmc_fused.bayes.split_rhat`) across chains of the per-sample mean validation
    log-likelihood per token, -log(valid perplexity), from the checkpoints' sample curves; None with
    fewer than 4 samples a chain."""
    traces = [[-math.log(row["valid_ppl"]) for row in ck["curve"]] for ck in checkpoints]
    return split_rhat(traces) if min(len(t) for t in traces) >= 4 else None
