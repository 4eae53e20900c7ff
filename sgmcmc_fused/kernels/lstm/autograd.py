"""What the autograd rules of the LSTM kernel backends (compiled, Triton) share: their backward
kernels are not themselves differentiable, so a double backward is refused with a message that names
the backend that has one."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch


def first_order_only(impl: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate the backward of the `impl` layer to refuse a double backward before it runs.

    Autograd runs a backward with grad mode on only for ``create_graph=True``, so that is the case
    refused. Put it above ``once_differentiable``, which runs the backward without grad mode."""

    def decorate(backward: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(backward)
        def checked(ctx: Any, *grads: Any) -> Any:
            if torch.is_grad_enabled():
                raise RuntimeError(
                    f"the {impl} DropConnect LSTM layer has no double backward (its backward kernel is not "
                    "itself differentiable), so backward(create_graph=True) and gradient penalties cannot go "
                    "through it: build the module with impl='eager', whose layer is made of differentiable "
                    "torch ops"
                )
            return backward(ctx, *grads)

        return checked

    return decorate
