"""Trainers: ``python -m sgmcmc_fused.train COMMAND ...``.

Commands (each a module of this package with a ``register(subparsers)`` function, listed in
`sgmcmc_fused.train.cli.SUBCOMMANDS`):

- ``lm``: LSTM language models (word or character level) trained with sgd, rmsprop, sgld or psgld,
  with model averaging over posterior samples (`sgmcmc_fused.train.lm`). With no data arguments it runs
  the embedded default: a synthetic corpus from a hidden Markov model of known entropy rate.

Shared pieces: `methods` (the optimizer factory), `checkpoint` (atomic saves, weights_only loads),
`runlog` (CSV/JSON logs), `plots`.
"""

from .cli import main

__all__ = ["main"]
