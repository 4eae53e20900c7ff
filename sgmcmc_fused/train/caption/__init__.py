"""The ``caption`` task: an image-conditioned DropConnect-LSTM caption generator trained with SG-MCMC,
decoding with the model average of the posterior samples, scored with the COCO caption metrics.

`command` (the options, the run, the table) over `config`, `sources` (files or synthetic scenes),
`data` (Karpathy split JSON, features, vocabulary), `features` (residual-network image features),
`model`, `decode` (batched posterior decoding: greedy and beam search), `scores` (BLEU, METEOR,
ROUGE-L, CIDEr-D) and `trainer`.
"""

from .command import CaptionTask

#: Adds ``python -m sgmcmc_fused.train caption`` (`sgmcmc_fused.train.cli`).
register = CaptionTask().register

__all__ = ["CaptionTask", "register"]
