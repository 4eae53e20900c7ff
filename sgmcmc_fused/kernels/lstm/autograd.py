"""What the autograd rules of the LSTM kernel backends (compiled, Triton) share: their backward
kernels are not themselves differentiable, so a double backward is refused with a message that names
the backend that has one."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch


def refuse_double_backward(impl: str) -> None:
    """Raise the error of a double backward (``create_graph=True``) through the `impl` layer.

    Autograd runs a backward with grad mode on only for ``create_graph=True``: call this first in a
    backward when ``torch.is_grad_enabled()``."""
    raise RuntimeError(
        f"the {impl} DropConnect LSTM layer has no double backward (its backward kernel is not itself "
        "differentiable), so backward(create_graph=True) and gradient penalties cannot go through it: "
        "build the module with impl='eager', whose layer is made of differentiable torch ops"
    )


def first_order_only(impl: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate an autograd.Function's backward to refuse a double backward (`refuse_double_backward`)
    before it runs; put it above ``once_differentiable``, which runs the backward without grad mode."""

    def decorate(backward: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(backward)
        def checked(ctx: Any, *grads: Any) -> Any:
            if torch.is_grad_enabled():
                refuse_double_backward(impl)
            return backward(ctx, *grads)

        return checked

    return decorate
