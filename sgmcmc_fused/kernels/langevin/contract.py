"""The contract of every step backend (docs/spec.md#langevin-step).

Each backend provides ``psgld_step_`` and ``sgld_step_`` with the arguments of the ops
``torch.ops.sgmcmc_fused.psgld_step_`` / ``sgld_step_`` (schemas in csrc/ops.cpp): the
per-tensor lists, then the scalars as keywords. That signature is written here once:
a backend implements ``impl(lists: StepLists, hyper: StepHyper)`` and exposes it with
`psgld_step_entry` / `sgld_step_entry`. `StepHyper` is the scalars as one typed object
(the optimizer builds one per parameter group and passes ``**hyper.op_kwargs()``), and
`check_step_inputs` is the one input check of the Python backends (eager, foreach,
Triton), with the messages and order of csrc/langevin/step_inputs.cpp, which the
C++/CUDA ops run.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch._subclasses.fake_tensor import is_fake

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
#: Optimizer stream ids stay below bit 31, which marks DropConnect masks (docs/spec.md#stream-words).
STEP_STREAM_ID_LIMIT = 1 << 31
UINT32_LIMIT = 1 << 32
INT64_LIMIT = 1 << 63


def _finite_at_least(op: str, name: str, value: float, low: float, strict: bool = False) -> None:
    ok = math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        raise ValueError(f"{op}: {name} must be a finite number {'>' if strict else '>='} {low}, got {value}")


@dataclass(frozen=True)
class StepHyper:
    """The scalar arguments of one step call.

    Attributes:
        lr: step size of the mean loss per datum (>= 0).
        weight_decay: Gaussian prior in mean-loss units (>= 0).
        temperature: T (>= 0); 1 samples the posterior.
        num_data: N, training-set size (>= 1).
        add_noise: False makes pSGLD RMSprop and SGLD SGD.
        seed: Philox key, in [0, 2^63).
        alpha, eps: RMS decay in [0, 1) and eps > 0 (pSGLD); None for SGLD.
    """

    lr: float
    weight_decay: float
    temperature: float
    num_data: int
    add_noise: bool
    seed: int
    alpha: float | None = None
    eps: float | None = None

    @property
    def preconditioned(self) -> bool:
        return self.alpha is not None

    @property
    def noise_var_scale(self) -> float:
        """2 · lr · T / N, the noise variance per unit preconditioner (0 with the noise off)."""
        return 2.0 * self.lr * self.temperature / self.num_data if self.add_noise else 0.0

    def op_kwargs(self) -> dict[str, float | int | bool]:
        """The keyword arguments of psgld_step_ (with alpha, eps) or sgld_step_."""
        kwargs = dict(
            lr=float(self.lr),
            weight_decay=float(self.weight_decay),
            temperature=float(self.temperature),
            num_data=operator.index(self.num_data),
            add_noise=bool(self.add_noise),
            seed=operator.index(self.seed),
        )
        if self.preconditioned:
            kwargs.update(alpha=float(self.alpha), eps=float(self.eps))
        return kwargs

    def check(self, op: str) -> None:
        """Raises ValueError naming `op` and the first value out of range."""
        _finite_at_least(op, "lr", self.lr, 0.0)
        _finite_at_least(op, "weight_decay", self.weight_decay, 0.0)
        _finite_at_least(op, "temperature", self.temperature, 0.0)
        # The ops take 64-bit ints; past 2^63 the dispatcher's own message would not say why.
        if not 1 <= self.num_data < INT64_LIMIT:
            raise ValueError(f"{op}: num_data must be in [1, 2^63), got {self.num_data}")
        if not 0 <= self.seed < INT64_LIMIT:
            raise ValueError(f"{op}: seed must be in [0, 2^63), got {self.seed}")
        if self.preconditioned:
            if not 0.0 <= self.alpha < 1.0:
                raise ValueError(f"{op}: alpha must be in [0, 1), got {self.alpha}")
            _finite_at_least(op, "eps", self.eps, 0.0, strict=True)


def tensor_list(op: str, name: str, tensors: object) -> list[torch.Tensor]:
    """`tensors` as a list, or TypeError naming the first entry that is not a tensor."""
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, Sequence):
        raise TypeError(f"{op}: {name} must be a list of tensors, got {type(tensors).__name__}")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name}[{i}] has type {type(t).__name__}, expected a torch.Tensor")
    return list(tensors)


def int_list(op: str, name: str, values: object) -> list[int]:
    """`values` as a list of ints, or TypeError naming the first entry that is not one."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{op}: {name} must be a list of ints, got {type(values).__name__}")
    checked = []
    for i, v in enumerate(values):
        if isinstance(v, bool):
            raise TypeError(f"{op}: {name}[{i}] has type bool, expected an int")
        try:
            checked.append(operator.index(v))
        except TypeError:
            raise TypeError(f"{op}: {name}[{i}] has type {type(v).__name__}, expected an int") from None
    return checked


def _check_tensor(op: str, i: int, p: torch.Tensor, g: torch.Tensor, v: torch.Tensor | None) -> None:
    if p.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op}: params[{i}] has dtype {p.dtype}; supported are float32, float64, float16 and bfloat16")
    if p.layout != torch.strided or g.layout != torch.strided:
        raise ValueError(f"{op}: params[{i}] or its grad is sparse; sparse gradients are not supported")
    if g.device != p.device:
        raise ValueError(f"{op}: grads[{i}] is on {g.device} but params[{i}] is on {p.device}")
    if g.dtype != p.dtype:
        raise TypeError(f"{op}: grads[{i}] has dtype {g.dtype} but params[{i}] has dtype {p.dtype}")
    if g.shape != p.shape:
        raise ValueError(f"{op}: grads[{i}] has shape {tuple(g.shape)} but params[{i}] has shape {tuple(p.shape)}")
    if not p.is_contiguous():
        raise ValueError(
            f"{op}: params[{i}] is not contiguous; pass a contiguous tensor "
            "(the optimizer copies non-contiguous parameters for you)"
        )
    if not g.is_contiguous():
        raise ValueError(f"{op}: grads[{i}] is not contiguous")
    if v is None:
        return
    want = torch.float64 if p.dtype == torch.float64 else torch.float32
    if v.device != p.device:
        raise ValueError(f"{op}: square_avgs[{i}] is on {v.device} but params[{i}] is on {p.device}")
    if v.dtype != want:
        raise TypeError(f"{op}: square_avgs[{i}] has dtype {v.dtype}, expected {want} for {p.dtype} params")
    if v.shape != p.shape:
        raise ValueError(
            f"{op}: square_avgs[{i}] has shape {tuple(v.shape)} but params[{i}] has shape {tuple(p.shape)}"
        )
    if not v.is_contiguous():
        raise ValueError(f"{op}: square_avgs[{i}] is not contiguous")


class StepLists(NamedTuple):
    """The per-tensor arguments of one step call, as lists (square_avgs None for SGLD)."""

    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    square_avgs: list[torch.Tensor] | None
    stream_ids: list[int]
    element_offsets: list[int]
    steps: list[int]

    def op_args(self) -> tuple[list, ...]:
        """The positional arguments of psgld_step_ (with square_avgs) or sgld_step_."""
        return tuple(values for values in self if values is not None)


def step_lists(
    op: str,
    params: object,
    grads: object,
    square_avgs: object | None,
    stream_ids: object,
    element_offsets: object,
    steps: object,
) -> StepLists:
    """The lists of one step call, or TypeError naming the first argument that is not a list of
    tensors / ints (square_avgs None for SGLD)."""
    return StepLists(
        tensor_list(op, "params", params),
        tensor_list(op, "grads", grads),
        None if square_avgs is None else tensor_list(op, "square_avgs", square_avgs),
        int_list(op, "stream_ids", stream_ids),
        int_list(op, "element_offsets", element_offsets),
        int_list(op, "steps", steps),
    )


def check_step_inputs(op: str, lists: StepLists, hyper: StepHyper) -> None:
    """Checks one step call (square_avgs None for SGLD).

    Raises TypeError (dtypes) or ValueError (everything else) naming `op`, the list index and
    the problem; nothing is updated by a call that raises.
    """
    params, grads, square_avgs, stream_ids, element_offsets, steps = lists
    n = len(params)
    lists = [("grads", grads), ("stream_ids", stream_ids), ("element_offsets", element_offsets), ("steps", steps)]
    if square_avgs is not None:
        lists.insert(1, ("square_avgs", square_avgs))
    for name, values in lists:
        if len(values) != n:
            raise ValueError(f"{op}: got {n} params but {len(values)} {name}")
    hyper.check(op)
    for i, p in enumerate(params):
        if p.device != params[0].device:
            raise ValueError(
                f"{op}: params[{i}] is on {p.device} but params[0] is on {params[0].device}; "
                "one call updates tensors of one device"
            )
        _check_tensor(op, i, p, grads[i], None if square_avgs is None else square_avgs[i])
        if not 0 <= stream_ids[i] < STEP_STREAM_ID_LIMIT:
            raise ValueError(
                f"{op}: stream_ids[{i}] = {stream_ids[i]} is outside [0, 2^31) (the upper half of the "
                "stream space belongs to DropConnect masks)"
            )
        if element_offsets[i] < 0:
            raise ValueError(f"{op}: element_offsets[{i}] = {element_offsets[i]} is negative")
        if element_offsets[i] >= INT64_LIMIT:
            raise ValueError(f"{op}: element_offsets[{i}] = {element_offsets[i]} is not below 2^63")
        if not 0 <= steps[i] < UINT32_LIMIT:
            raise ValueError(f"{op}: steps[{i}] = {steps[i]} is outside [0, 2^32)")
    # Traced calls (torch.compile, opcheck's fake-tensor pass) hold fake tensors, which have no memory.
    if not torch.compiler.is_compiling() and not any(is_fake(p) for p in params):
        check_no_overlap(op, params, grads, square_avgs)


def check_no_overlap(
    op: str, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], square_avgs: Sequence[torch.Tensor] | None
) -> None:
    """Raise ValueError if a tensor the step writes (a param, a square_avg) shares memory with any other
    tensor of the call: its result would depend on the order the backend visits the elements in. The
    sorted sweep of csrc/langevin/step_inputs.cpp, vectorised (a call may hold thousands of tensors),
    so that the pair named is the same: spans sorted by start, then list (params, grads, square_avgs),
    then index; a span overlaps when it starts before the furthest end of the written spans before it,
    or, written itself, before the furthest end of all the spans before it."""
    named = [("params", params, True), ("grads", grads, False)]
    if square_avgs is not None:
        named.append(("square_avgs", square_avgs, True))
    kept = [
        (rank, i, t)
        for rank, (_, tensors, _) in enumerate(named)
        for i, t in enumerate(tensors)
        if t.numel() and t.device.type != "meta"  # the tensors are contiguous (checked before)
    ]
    if len(kept) < 2:
        return
    # Disjoint spans, the rule, are confirmed in a few microseconds: sorted by start, two spans overlap
    # only if some span overlaps the one after it. The sweep below names the pair otherwise (and lets
    # grads share memory with each other: they are only read).
    spans = sorted((t.data_ptr(), t.data_ptr() + t.nbytes) for _, _, t in kept)
    if all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:], strict=False)):
        return
    rank = np.fromiter((k[0] for k in kept), dtype=np.int64, count=len(kept))
    index = np.fromiter((k[1] for k in kept), dtype=np.int64, count=len(kept))
    begin = np.fromiter((k[2].data_ptr() for k in kept), dtype=np.uint64, count=len(kept))
    end = begin + np.fromiter((k[2].numel() * k[2].element_size() for k in kept), dtype=np.uint64, count=len(kept))
    order = np.lexsort((index, rank, begin))
    rank, index, begin, end = rank[order], index[order], begin[order], end[order]
    written = np.array([named[r][2] for r in range(len(named))])[rank]
    zero = np.zeros(1, dtype=np.uint64)
    reach = np.concatenate([zero, np.maximum.accumulate(end)[:-1]])  # furthest end before each span
    reach_written = np.concatenate([zero, np.maximum.accumulate(np.where(written, end, 0))[:-1]])
    bad = (begin < reach_written) | (written & (begin < reach))
    if not bad.any():
        return
    k = int(np.argmax(bad))
    # The span the C++ sweep names: the first of the earlier (written) spans that reach furthest.
    if begin[k] < reach_written[k]:
        other = int(np.argmax(np.where(written[:k], end[:k], 0)))
    else:
        other = int(np.argmax(end[:k]))
    raise ValueError(
        f"{op}: {named[rank[other]][0]}[{index[other]}] and {named[rank[k]][0]}[{index[k]}] share memory; every "
        "tensor the step updates must have memory of its own"
    )


#: A backend's step: updates the tensors of `StepLists` in place with the scalars of `StepHyper`.
StepImpl = Callable[[StepLists, StepHyper], None]


def psgld_step_entry(impl: StepImpl, *, op: str = "psgld_step_", check: bool = True) -> Callable[..., None]:
    """`impl` behind the signature of ``torch.ops.sgmcmc_fused.psgld_step_``.

    Args:
        impl: the backend's step; its docstring becomes the entry's.
        op: the name errors carry.
        check: run `check_step_inputs` first (False: only make the lists, for a backend whose op
            checks its inputs itself).

    The entry's arguments: params (contiguous tensors of one device, fp32 / fp64 / fp16 / bf16);
    grads (gradients of the minibatch-mean loss, shapes and dtypes of params); square_avgs (V, fp32,
    fp64 for fp64 params); stream_ids (noise stream of each tensor, in [0, 2^31)); element_offsets
    (index of each tensor's first element in the whole, unsharded parameter); steps (noise counter of
    each tensor, in [0, 2^32)); then the scalars of `StepHyper` as keywords.
    """

    def psgld_step_(
        params: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor],
        square_avgs: Sequence[torch.Tensor],
        stream_ids: Sequence[int],
        element_offsets: Sequence[int],
        steps: Sequence[int],
        *,
        lr: float,
        alpha: float,
        eps: float,
        weight_decay: float,
        temperature: float,
        num_data: int,
        add_noise: bool,
        seed: int,
    ) -> None:
        hyper = StepHyper(lr, weight_decay, temperature, num_data, add_noise, seed, alpha, eps)
        if check:
            lists = step_lists(op, params, grads, square_avgs, stream_ids, element_offsets, steps)
            check_step_inputs(op, lists, hyper)
        else:
            lists = _plain_lists(op, params, grads, square_avgs, stream_ids, element_offsets, steps)
        if torch.is_grad_enabled():
            refuse_written_tensors_requiring_grad(op, lists)
        _call(impl, op, lists, hyper, checked=check)

    return _named_after(psgld_step_, impl)


def sgld_step_entry(impl: StepImpl, *, op: str = "sgld_step_", check: bool = True) -> Callable[..., None]:
    """`impl` behind the signature of ``torch.ops.sgmcmc_fused.sgld_step_`` (that of
    `psgld_step_entry` without square_avgs, alpha and eps)."""

    def sgld_step_(
        params: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor],
        stream_ids: Sequence[int],
        element_offsets: Sequence[int],
        steps: Sequence[int],
        *,
        lr: float,
        weight_decay: float,
        temperature: float,
        num_data: int,
        add_noise: bool,
        seed: int,
    ) -> None:
        hyper = StepHyper(lr, weight_decay, temperature, num_data, add_noise, seed)
        if check:
            lists = step_lists(op, params, grads, None, stream_ids, element_offsets, steps)
            check_step_inputs(op, lists, hyper)
        else:
            lists = _plain_lists(op, params, grads, None, stream_ids, element_offsets, steps)
        if torch.is_grad_enabled():
            refuse_written_tensors_requiring_grad(op, lists)
        _call(impl, op, lists, hyper, checked=check)

    return _named_after(sgld_step_, impl)


def refuse_written_tensors_requiring_grad(op: str, lists: StepLists) -> None:
    """Raise RuntimeError if the call, made with grad mode on, writes a tensor that requires grad: the
    step has no derivative, so autograd would see a leaf changed under it. The message of the ops'
    Autograd kernel (csrc/langevin/version_counters.cpp), so that every backend refuses alike."""
    written = [("params", lists.params)] + ([("square_avgs", lists.square_avgs)] if lists.square_avgs else [])
    for name, tensors in written:
        for i, t in enumerate(tensors):
            if isinstance(t, torch.Tensor) and t.requires_grad:
                raise RuntimeError(
                    f"{op}: {name}[{i}] requires grad; the op writes it in place and has no derivative, so call it "
                    "under torch.no_grad() (as the optimizers do)"
                )


def _call(impl: StepImpl, op: str, lists: StepLists, hyper: StepHyper, *, checked: bool) -> None:
    """impl(lists, hyper). An op that checks its inputs itself (`checked` False) is reached through the
    dispatcher, which refuses an int beyond 64 bits or an entry of the wrong type before the op's checks
    run, with a message that names neither: that failure is named by the checks of the Python backends."""
    if checked:
        impl(lists, hyper)
        return
    try:
        impl(lists, hyper)
    except (RuntimeError, TypeError):
        check_step_inputs(op, step_lists(op, *lists), hyper)
        raise


def _plain_lists(op: str, *values: object) -> StepLists:
    """The lists as lists, unchecked (the op checks them; this path stays within a few microseconds a
    call). A single tensor would be split into rows by list(): refused here."""
    for name, v in zip(StepLists._fields, values, strict=True):
        if isinstance(v, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a list, got a Tensor")
    return StepLists(*(None if v is None else list(v) for v in values))


def _named_after(entry: Callable[..., None], impl: StepImpl) -> Callable[..., None]:
    """`entry`, documented by `impl` and placed in its module (for help() and tracebacks)."""
    entry.__doc__ = impl.__doc__
    entry.__module__ = impl.__module__
    entry.__qualname__ = entry.__name__
    return entry
