"""Trainers: ``python -m sgmcmc_fused.train COMMAND ...``.

Commands (each a module of this package with a ``register(subparsers)`` function, listed in
`sgmcmc_fused.train.cli.SUBCOMMANDS`):

- ``lm``: LSTM language models (word or character level) trained with sgd, rmsprop, sgld or psgld,
  with model averaging over posterior samples (`sgmcmc_fused.train.lm`). With no data arguments it runs
  the embedded default: a synthetic corpus from a hidden Markov model of known entropy rate.
- ``classify``: bidirectional DropConnect LSTM sentence classifiers on ``LABEL sentence`` files, with
  k-fold cross-validation or a fixed split, model averaging, predictive mean/std per sentence and ECE
  (`sgmcmc_fused.train.classify`). With no files it runs a seeded synthetic task of known Bayes error.
- ``caption``: image-caption generators (image features -> DropConnect LSTM) whose samples caption
  together: every decoding step averages the samples' word distributions, all samples in one batched
  forward; scored with BLEU, METEOR, ROUGE-L and CIDEr-D (`sgmcmc_fused.train.caption`). With no files
  it runs seeded synthetic scenes of coloured shapes with five grammar-made captions each.
- ``caption-features``: residual-network features of a captioning set's images, one row per image of
  its Karpathy split JSON (`sgmcmc_fused.train.caption_features`).
- ``download``: fetches the public corpora (PTB, Tiny Shakespeare, TREC, SST-2, ...) for users with a
  network (`sgmcmc_fused.data.download`).

Layout: a folder per task, each with ``command`` (a `command.Task`: its options, its run, its table),
``config`` (a `config.RunConfig` dataclass, saved as config.json), ``data``, ``model`` and ``trainer``
(a `sampler_trainer.SamplerTrainer`). What the tasks share is written once beside them: `command`
(output folder, resumed configuration, torchrun, messages, Ctrl-C), `sampler_trainer` (burn-in,
thinning, sample collection, checkpoint save and restore), `config` and `options` (the shared fields
and option groups), `methods` (the optimizer factory), `checkpoint` (atomic saves, weights_only
loads), `distributed` (DDP), `run_control` (device, messages, Ctrl-C, SIGTERM), `run_folder` (a run
owns its folder), `runlog` (CSV/JSON logs). A new task is its folder of those five modules and a
line in `cli.SUBCOMMANDS`.
"""

from .cli import main

__all__ = ["main"]
