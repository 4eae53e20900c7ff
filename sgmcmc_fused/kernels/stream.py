"""Seeds and stream words of the counter-based noise stream (docs/spec.md#noise-stream,
docs/spec.md#stream-words), shared by the optimizers and the DropConnect layers."""

from __future__ import annotations

import torch

#: Optimizer stream ids index the optimizer's parameters; bit 31 belongs to DropConnect masks.
MAX_STREAM_ID = 2**31 - 1


def draw_seed() -> int:
    """A 63-bit seed from torch's default generator, so torch.manual_seed fixes it."""
    return int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64).item())
