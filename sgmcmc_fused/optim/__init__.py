"""Langevin optimizers with fused steps: PSGLD (RMSprop-preconditioned) and SGLD."""

from .psgld import PSGLD
from .sgld import SGLD

__all__ = ["PSGLD", "SGLD"]
