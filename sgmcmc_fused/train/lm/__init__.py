"""The ``lm`` task: LSTM language models (word or character level) with SG-MCMC and model averaging.

`command` (the options, the run, the table) over `config`, `data`, `model`, `trainer`, `chains`
(``--chains K``: seeds, folders, pooling) and `plots`.
"""

from .command import LanguageModelTask

#: Adds ``python -m sgmcmc_fused.train lm`` (`sgmcmc_fused.train.cli`).
register = LanguageModelTask().register

__all__ = ["LanguageModelTask", "register"]
