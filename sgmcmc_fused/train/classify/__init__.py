"""The ``classify`` task: bidirectional DropConnect LSTM sentence classifiers with SG-MCMC, model
averaging and predictive uncertainty.

`command` (the options, folds, the run, the table) over `config`, `data`, `model` and `trainer`.
"""

from .command import ClassifyTask

#: Adds ``python -m sgmcmc_fused.train classify`` (`sgmcmc_fused.train.cli`).
register = ClassifyTask().register

__all__ = ["ClassifyTask", "register"]
