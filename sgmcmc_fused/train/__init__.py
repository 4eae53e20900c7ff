"""Trainers: ``python -m sgmcmc_fused.train COMMAND ...``.

Commands (each a module of this package with a ``register(subparsers)`` function, listed in
`sgmcmc_fused.train.cli.SUBCOMMANDS`):

- ``lm``: LSTM language models (word or character level) trained with sgd, rmsprop, sgld or psgld,
  with model averaging over posterior samples (`sgmcmc_fused.train.lm`). With no data arguments it runs
  the embedded default: a synthetic corpus from a hidden Markov model of known entropy rate.
- ``classify``: bidirectional DropConnect LSTM sentence classifiers on ``LABEL sentence`` files, with
  k-fold cross-validation or a fixed split, model averaging, predictive mean/std per sentence and ECE
  (`sgmcmc_fused.train.classify`). With no files it runs a seeded synthetic task of known Bayes error.
- ``download``: fetches the public corpora (PTB, Tiny Shakespeare, TREC, SST-2, ...) for users with a
  network (`sgmcmc_fused.data.download`).

Each trainer is a command module (options, the run, the final table) over its parts: ``lm`` over
`lm_config`, `lm_data`, `language_model`, `lm_trainer` (one method) and `lm_chains`; ``classify`` over
`classify_config`, `classify_data`, `sentence_model` and `classify_trainer`.

Shared pieces: `methods` (the optimizer factory), `options` (shared options and checks), `run_control`
(device, messages, Ctrl-C), `checkpoint` (atomic saves, weights_only loads), `distributed` (DDP),
`runlog` (CSV/JSON logs), `plots`.
"""

from .cli import main

__all__ = ["main"]
