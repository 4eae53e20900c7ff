"""Langevin optimizers with fused steps: PSGLD (RMSprop-preconditioned) and SGLD."""

from ._langevin import NonFiniteGradientError, prior_weight_decay
from .psgld import PSGLD
from .sgld import SGLD

__all__ = ["PSGLD", "SGLD", "NonFiniteGradientError", "prior_weight_decay"]
