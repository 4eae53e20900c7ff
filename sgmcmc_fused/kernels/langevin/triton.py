"""Triton backend: the pSGLD / SGLD step and the noise draw as Triton kernels
(docs/spec.md#langevin-step, docs/spec.md#noise-stream).

Three custom operators, registered with ``torch.library.triton_op`` so that ``torch.compile`` traces
into them and sees the kernels (each launch goes through ``torch.library.wrap_triton``); under the
Triton interpreter they are registered as opaque custom ops instead (see ``triton_common.register_op``):

- ``torch.ops.sgmcmc_fused.triton_psgld_step_`` (mutates ``params`` and ``square_avgs``),
- ``torch.ops.sgmcmc_fused.triton_sgld_step_`` (mutates ``params``),
- ``torch.ops.sgmcmc_fused.triton_philox_normal_`` (mutates ``out``).

Their arguments are those of the C++ schemas in csrc/ops.cpp, and the Python helpers below
(:func:`psgld_step_`, :func:`sgld_step_`, :func:`philox_normal`) take exactly the arguments of their
counterparts in :mod:`sgmcmc_fused.kernels.langevin.reference`, the oracle they are tested against.

Layout. A program handles ``BLOCK_QUADS`` consecutive *quads* of the whole (unsharded) parameter:
quad ``q`` holds the elements ``4q .. 4q + 3`` and one Philox4x32-10 call gives its four normals
(docs/spec.md#noise-stream), so every random word is drawn once. The four normals are interleaved into a
``[BLOCK_QUADS, 4]`` tile that lines up with the memory of those elements; a mask drops the elements
of the first and last quad that lie outside this tensor (any ``element_offset``, not only multiples
of 4). Element indices are int64, so tensors beyond 2^31 elements are fine.

Limitations:

- One kernel launch per (non-empty) tensor, no multi-tensor apply: a model with many small
  parameters pays one launch each, every step.
- Float scalars: Triton passes Python floats to kernels as fp32 (the interpreter too), so each
  hyperparameter travels as three fp32 numbers whose fp64 sum is the exact double (see
  :func:`_split_fp64`); fp32 kernels use the first, which is the double rounded to fp32 exactly as
  the C++ kernels round it. Hyperparameters must lie within the fp32 range (|x| < 3.4e38).
- Every operation rounds on its own, as in the eager reference: the launches compile without
  contracting ``a * b + c`` into fused multiply-adds (`triton_common.compile_options`), and the
  interpreter rounds each numpy operation. A launch traced by torch.compile is compiled by Inductor
  with its own options, where contraction is on. Division, square roots and the bf16 rounding
  are IEEE round-to-nearest in both (div.rn / sqrt.rn; tl.sqrt and fp32 `/` are approximate).

The device helpers, the Philox stream and the launch and registration code this module shares with
:mod:`sgmcmc_fused.kernels.lstm.triton` are in :mod:`sgmcmc_fused.kernels.triton_common`. Interpreter mode is decided
when the Triton modules are imported: set ``TRITON_INTERPRET=1`` before importing any of them to run
the kernels on CPU tensors (slow; a test tool).
"""

from __future__ import annotations

import math
import operator
import struct

import torch
from torch.library import wrap_triton

from ..triton_common import (
    INT64_LIMIT,
    TRITON_IMPORT_ERROR,
    UINT32_LIMIT,
    check_device,
    compile_options,
    device_guard,
    div_rn,
    jit,
    launches_skipped,
    not_supported_reasons,
    num_quads,
    philox_normal_tile,
    quad_tile,
    quads_per_program,
    register_op,
    require_triton,
    sqrt_rn,
    tl,
    to_math_dtype,
    to_storage_dtype,
    triton,
    unavailable_reason,
)
from .contract import StepHyper, StepLists, psgld_step_entry, sgld_step_entry

__all__ = ["not_supported_reasons", "philox_normal", "psgld_step_", "sgld_step_", "unavailable_reason"]

# --------------------------------------------------------------------------------------------------
# Device code
# --------------------------------------------------------------------------------------------------


@jit()
def _hyperparameter(hi, mid, lo, IS_FP64: tl.constexpr):
    """A hyperparameter in the math type from its three fp32 parts (host side: _split_fp64).

    fp32: ``hi`` is the double rounded to fp32. fp64: ``(lo + mid) + hi`` is the double exactly
    (``lo + mid`` is the exact fp64 remainder, then adding ``hi`` restores the value).
    """
    if IS_FP64:
        return (tl.cast(lo, tl.float64) + tl.cast(mid, tl.float64)) + tl.cast(hi, tl.float64)
    else:
        return tl.cast(hi, tl.float32)


# seed / stream_id / step change every call: specialising on their value (== 1, divisible by 16)
# would only compile more variants. element_offset stays specialised: knowing it is a multiple of
# 16 lets the compiler vectorise the tile's loads and stores.
@jit(do_not_specialize=["seed", "stream_id", "step"])
def _langevin_step_kernel(
    param_ptr,
    grad_ptr,
    square_avg_ptr,
    numel,
    element_offset,
    seed,
    stream_id,
    step,
    lr_hi,
    lr_mid,
    lr_lo,
    alpha_hi,
    alpha_mid,
    alpha_lo,
    one_minus_alpha_hi,
    one_minus_alpha_mid,
    one_minus_alpha_lo,
    eps_hi,
    eps_mid,
    eps_lo,
    weight_decay_hi,
    weight_decay_mid,
    weight_decay_lo,
    noise_hi,
    noise_mid,
    noise_lo,
    PRECONDITIONED: tl.constexpr,
    HAS_WEIGHT_DECAY: tl.constexpr,
    ADD_NOISE: tl.constexpr,
    BLOCK_QUADS: tl.constexpr,
):
    """One pSGLD (PRECONDITIONED) or SGLD step on one contiguous tensor, in place.

    Mirrors csrc/include/sgmcmc_fused/langevin_math.h operation by operation:
        g' = g + wd * theta                              (only if HAS_WEIGHT_DECAY)
        pSGLD: V = alpha * V + (1 - alpha) * (g' * g');  G = 1 / (eps + sqrt(V))
               theta = theta - (lr * G) * g' + sqrt(noise * G) * xi      (noise = 2 lr T / N)
        SGLD:  theta = theta - lr * g' + noise * xi                      (noise = sqrt(2 lr T / N))

    Args:
        param_ptr: [numel] fp32 / fp64 / fp16 / bf16, updated in place.
        grad_ptr: [numel], the dtype of param.
        square_avg_ptr: [numel] fp32 (fp64 for fp64 params), updated in place; None for SGLD.
        numel, element_offset: this tensor's size and its first element's index in the whole
            parameter (the noise of element i is that of element element_offset + i).
        seed, stream_id, step: the noise stream (docs/spec.md#noise-stream).
        *_hi, *_mid, *_lo: the hyperparameters, split by _split_fp64.
    Math runs in fp32, fp64 for fp64 params.
    """
    IS_FP64: tl.constexpr = param_ptr.dtype.element_ty == tl.float64
    quad, local, in_bounds = quad_tile(element_offset, numel, BLOCK_QUADS)

    theta = to_math_dtype(tl.load(param_ptr + local, mask=in_bounds), IS_FP64)
    grad = to_math_dtype(tl.load(grad_ptr + local, mask=in_bounds), IS_FP64)

    lr = _hyperparameter(lr_hi, lr_mid, lr_lo, IS_FP64)
    if HAS_WEIGHT_DECAY:
        grad = grad + _hyperparameter(weight_decay_hi, weight_decay_mid, weight_decay_lo, IS_FP64) * theta

    if PRECONDITIONED:
        alpha = _hyperparameter(alpha_hi, alpha_mid, alpha_lo, IS_FP64)
        one_minus_alpha = _hyperparameter(one_minus_alpha_hi, one_minus_alpha_mid, one_minus_alpha_lo, IS_FP64)
        eps = _hyperparameter(eps_hi, eps_mid, eps_lo, IS_FP64)
        square_avg = tl.load(square_avg_ptr + local, mask=in_bounds)
        square_avg = alpha * square_avg + one_minus_alpha * (grad * grad)
        precond = div_rn(1.0, eps + sqrt_rn(square_avg))
        theta = theta - (lr * precond) * grad
        if ADD_NOISE:
            noise_variance = _hyperparameter(noise_hi, noise_mid, noise_lo, IS_FP64)  # 2 lr T / N
            xi = philox_normal_tile(seed, quad, stream_id, step, BLOCK_QUADS).to(theta.dtype)
            theta = theta + sqrt_rn(noise_variance * precond) * xi
        tl.store(square_avg_ptr + local, square_avg, mask=in_bounds)
    else:
        theta = theta - lr * grad
        if ADD_NOISE:
            noise_std = _hyperparameter(noise_hi, noise_mid, noise_lo, IS_FP64)
            xi = philox_normal_tile(seed, quad, stream_id, step, BLOCK_QUADS).to(theta.dtype)
            theta = theta + noise_std * xi

    tl.store(param_ptr + local, to_storage_dtype(theta, param_ptr.dtype.element_ty), mask=in_bounds)


@jit(do_not_specialize=["seed", "stream_id", "step"])
def _philox_normal_kernel(out_ptr, numel, element_offset, seed, stream_id, step, BLOCK_QUADS: tl.constexpr):
    """out[i] = N(0, 1) draw of element element_offset + i of stream (seed, stream_id, step).

    Args:
        out_ptr: [numel] fp32, written.
    """
    quad, local, in_bounds = quad_tile(element_offset, numel, BLOCK_QUADS)
    tl.store(out_ptr + local, philox_normal_tile(seed, quad, stream_id, step, BLOCK_QUADS), mask=in_bounds)


# --------------------------------------------------------------------------------------------------
# Host side: validation, scalar handling, launches
# --------------------------------------------------------------------------------------------------


def _split_fp64(op: str, name: str, value: float, exact: bool) -> tuple[float, float, float]:
    """Three fp32 numbers (hi, mid, lo) with hi = value rounded to fp32 and (lo + mid) + hi == value in fp64.

    Why: Triton passes Python floats to a kernel as fp32 (the interpreter rounds them to fp32 too), so
    an fp64 kernel would otherwise see fp32-rounded hyperparameters. Each part is exactly representable
    in fp32 (value - hi and the next remainder are exact in fp64 and, with a 53-bit significand, the
    last remainder has at most a few bits), so however the launcher types the argument, the kernel
    receives these numbers exactly and rebuilds the double (_hyperparameter). Exact for 0 and for
    2^-78 (about 3e-24) <= |value| < 2^128; below that ``lo`` is an fp32 subnormal and the rebuilt
    value is off by at most 2^-149.

    Raises:
        ValueError: `value` is outside the fp32 range, or, with `exact` (the call updates fp64
            tensors), so small (|value| below about 1e-29) that the rebuilt double is off by more
            than an fp64 ulp: the fp64 contract could not be kept.
    """
    hi = _round_to_fp32(value)
    if not math.isfinite(hi):
        raise ValueError(f"{op}: {name} = {value} is outside the float32 range the kernels accept")
    rest = value - hi
    mid = _round_to_fp32(rest)
    lo = _round_to_fp32(rest - mid)
    if exact and abs((lo + mid) + hi - value) > abs(value) * 2.0**-52:
        raise ValueError(
            f"{op}: {name} = {value!r} is too small for the Triton kernel to carry in fp64 (it takes 0 or "
            "|value| above about 1e-29); the cuda, cpu and eager backends take it"
        )
    return hi, mid, lo


def _round_to_fp32(value: float) -> float:
    """value rounded to the nearest fp32 (ties to even), as a Python float; +-inf beyond the fp32 range."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _launch_langevin_steps(op: str, lists: StepLists, hyper: StepHyper) -> None:
    """Check that Triton runs on the tensors' device (the entry made the shared checks), then launch
    one kernel per non-empty tensor."""
    params, grads, square_avgs, stream_ids, element_offsets, steps = lists
    if params:
        check_device(op, "params[0]", params[0].device)
    nvs = hyper.noise_var_scale
    if hyper.preconditioned:
        alpha, eps, noise = hyper.alpha, hyper.eps, nvs  # the kernel scales nvs by G, then takes the root
    else:  # alpha / eps unused; 0.0 keeps their (ignored) arguments valid
        alpha, eps, noise = 0.0, 0.0, math.sqrt(nvs)
    fp64 = any(p.dtype == torch.float64 for p in params)
    lr_parts = _split_fp64(op, "lr", hyper.lr, fp64)
    alpha_parts = _split_fp64(op, "alpha", alpha, fp64)
    one_minus_alpha_parts = _split_fp64(op, "1 - alpha", 1.0 - alpha, fp64)
    eps_parts = _split_fp64(op, "eps", eps, fp64)
    weight_decay_parts = _split_fp64(op, "weight_decay", hyper.weight_decay, fp64)
    noise_parts = _split_fp64(op, "the noise scale 2 * lr * temperature / num_data", noise, fp64)
    if launches_skipped(params):
        return
    block_quads = quads_per_program()
    for i, param in enumerate(params):
        numel = param.numel()
        if numel == 0:
            continue
        grid = (triton.cdiv(num_quads(numel, element_offsets[i]), block_quads),)
        with device_guard(param):
            wrap_triton(_langevin_step_kernel)[grid](
                param,
                grads[i],
                square_avgs[i] if square_avgs is not None else None,
                numel,
                element_offsets[i],
                hyper.seed,
                stream_ids[i],
                steps[i],
                *lr_parts,
                *alpha_parts,
                *one_minus_alpha_parts,
                *eps_parts,
                *weight_decay_parts,
                *noise_parts,
                PRECONDITIONED=square_avgs is not None,
                HAS_WEIGHT_DECAY=hyper.weight_decay != 0.0,
                ADD_NOISE=nvs != 0.0,
                BLOCK_QUADS=block_quads,
                **compile_options(),
            )


# --------------------------------------------------------------------------------------------------
# Custom operators (schemas mirror csrc/ops.cpp)
# --------------------------------------------------------------------------------------------------


def _psgld_step_op(lists: StepLists, hyper: StepHyper) -> None:
    """The op triton_psgld_step_ (after the entry's checks)."""
    _launch_langevin_steps("triton_psgld_step_", lists, hyper)


def _sgld_step_op(lists: StepLists, hyper: StepHyper) -> None:
    """The op triton_sgld_step_ (after the entry's checks)."""
    _launch_langevin_steps("triton_sgld_step_", lists, hyper)


def _philox_normal_op(out: torch.Tensor, seed: int, stream_id: int, step: int, element_offset: int) -> None:
    op = "triton_philox_normal_"
    check_device(op, "out", out.device)
    if out.dtype != torch.float32:
        raise TypeError(f"{op}: out must be float32, got {out.dtype}")
    if not out.is_contiguous():
        raise ValueError(f"{op}: out must be contiguous")
    if not 0 <= seed < INT64_LIMIT:
        raise ValueError(f"{op}: seed must be in [0, 2^63), got {seed}")
    if not 0 <= stream_id < UINT32_LIMIT:
        raise ValueError(f"{op}: stream_id = {stream_id} is outside [0, 2^32)")
    if not 0 <= step < UINT32_LIMIT:
        raise ValueError(f"{op}: step = {step} is outside [0, 2^32)")
    if element_offset < 0:
        raise ValueError(f"{op}: element_offset = {element_offset} is negative")
    numel = out.numel()
    if numel == 0 or launches_skipped([out]):
        return
    block_quads = quads_per_program()
    grid = (triton.cdiv(num_quads(numel, element_offset), block_quads),)
    with device_guard(out):
        wrap_triton(_philox_normal_kernel)[grid](
            out, numel, element_offset, seed, stream_id, step, BLOCK_QUADS=block_quads, **compile_options()
        )


# The schemas of csrc/ops.cpp under the triton_ names (so int stays int, not SymInt).
_PSGLD_SCHEMA = (
    "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] square_avgs, int[] stream_ids, int[] element_offsets, "
    "int[] steps, *, float lr, float alpha, float eps, float weight_decay, float temperature, int num_data, "
    "bool add_noise, int seed) -> ()"
)
_SGLD_SCHEMA = (
    "(Tensor(a!)[] params, Tensor[] grads, int[] stream_ids, int[] element_offsets, int[] steps, *, float lr, "
    "float weight_decay, float temperature, int num_data, bool add_noise, int seed) -> ()"
)
_PHILOX_NORMAL_SCHEMA = "(Tensor(a!) out, int seed, int stream_id, int step, int element_offset) -> ()"


if TRITON_IMPORT_ERROR is None:
    register_op(
        "sgmcmc_fused::triton_psgld_step_",
        psgld_step_entry(_psgld_step_op, op="triton_psgld_step_"),
        {"params", "square_avgs"},
        _PSGLD_SCHEMA,
    )
    register_op(
        "sgmcmc_fused::triton_sgld_step_",
        sgld_step_entry(_sgld_step_op, op="triton_sgld_step_"),
        {"params"},
        _SGLD_SCHEMA,
    )
    register_op("sgmcmc_fused::triton_philox_normal_", _philox_normal_op, {"out"}, _PHILOX_NORMAL_SCHEMA)


# --------------------------------------------------------------------------------------------------
# Public helpers (the signatures of sgmcmc_fused.kernels.langevin.reference)
# --------------------------------------------------------------------------------------------------


def _psgld_step(lists: StepLists, hyper: StepHyper) -> None:
    """pSGLD step (docs/spec.md#langevin-step) in place on ``params`` and ``square_avgs``, with the Triton
    kernels (arguments as contract.psgld_step_entry). The op checks the inputs."""
    require_triton()
    with torch.no_grad():
        torch.ops.sgmcmc_fused.triton_psgld_step_(*lists.op_args(), **hyper.op_kwargs())


def _sgld_step(lists: StepLists, hyper: StepHyper) -> None:
    """SGLD step (docs/spec.md#langevin-step, G = 1) in place on ``params``, with the Triton kernels
    (arguments as contract.sgld_step_entry). The op checks the inputs."""
    require_triton()
    with torch.no_grad():
        torch.ops.sgmcmc_fused.triton_sgld_step_(*lists.op_args(), **hyper.op_kwargs())


psgld_step_ = psgld_step_entry(_psgld_step, check=False)
sgld_step_ = sgld_step_entry(_sgld_step, check=False)


def philox_normal(
    numel: int,
    seed: int,
    stream_id: int,
    step: int,
    element_offset: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """N(0, 1) draws (fp32, shape [numel]) of elements element_offset .. element_offset + numel - 1
    of the stream (seed, stream_id, step), docs/spec.md#noise-stream, drawn by the Triton kernel on ``device``."""
    require_triton()
    numel = operator.index(numel)
    if numel < 0:
        raise ValueError(f"philox_normal: numel must be >= 0, got {numel}")
    out = torch.empty(numel, dtype=torch.float32, device=device)
    torch.ops.sgmcmc_fused.triton_philox_normal_(
        out, operator.index(seed), operator.index(stream_id), operator.index(step), operator.index(element_offset)
    )
    return out
