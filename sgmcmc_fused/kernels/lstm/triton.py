"""Triton backend of the DropConnect LSTM (docs/spec.md#dropconnect-masks, docs/spec.md#cell-and-gradients).

Symbols as in :mod:`sgmcmc_fused.kernels.lstm.reference` (the oracle): T time steps, B batch, I input size,
H hidden size; gate order i, f, g, o and the weight layout of ``torch.nn.LSTM``.

Three custom operators, with the schemas of their C++ counterparts in csrc/ops.cpp under
``triton_`` names (they share the CUDA dispatch key with the CUDA kernels), registered like those
of :mod:`sgmcmc_fused.kernels.langevin.triton` (``triton_op``; an opaque ``custom_op`` under the
interpreter, see ``triton_common.register_op``):

- ``torch.ops.sgmcmc_fused.triton_dropconnect_weight(weight, seed, weight_id, call, p, kind)``:
  ``weight * M`` with the mask drawn in the same pass (no mask tensor is ever made),
- ``torch.ops.sgmcmc_fused.triton_lstm_cell_forward(gates, bias, c_prev) -> (h, c, activations)``,
- ``torch.ops.sgmcmc_fused.triton_lstm_cell_backward(grad_h, grad_c, activations, c_prev, c)
  -> (grad_gates, grad_c_prev)``.

The first two have autograd formulas (the mask op is linear in ``weight``; the cell forward's
backward is the cell backward op); the cell backward has none (no double backward).

:func:`dropconnect_lstm_layer` is one direction of one layer, differentiable: masked weights from the
mask op, one input-projection GEMM over all T, then per step one recurrent GEMM (``addmm`` onto the
projection) and one fused cell kernel; the Python time loop runs the kernels directly (not through
the ops) so that they write into the layer's output buffers and handle variable lengths in the same
pass. The backward regenerates the masked weights from the seed, runs the reverse loop (one cell
backward kernel and one GEMM per step) and finishes with one GEMM each for the input and both
weight gradients.

Mask numbers (exactly those of lstm_reference.dropconnect_mask): element e of the flat weight takes
lane e % 4 of ``tl.philox(seed, e // 4 lo, e // 4 hi, 0x80000000 | weight_id, call)``;
Bernoulli ``M = 1[u >= fp32(p)] * fp32(1 / (1 - p))``, Gaussian
``M = 1 + fp32(sqrt(p / (1 - p))) * n``, computed in fp32 for every weight dtype (the reference
does), then ``weight * M`` in the math type (fp64 for fp64, else fp32) rounded to the weight dtype.
So p and the two scales travel to the kernel as fp32 on purpose; no fp64 splitting is needed here.

Cell math runs in fp32 (fp64 for fp64), outputs in the input dtype (bf16 rounded to nearest even,
as in triton_common.to_storage_dtype). tanh is not a core Triton op (libdevice's is not available under the
interpreter), see :func:`_tanh`.

Limitations:

- The time loop is Python: two launches (GEMM + cell) per step forward and backward; for small
  B * H the launch latency dominates (the C++/CUDA layer op has the same structure without Python).
- Not torch.compile-traceable as a whole (autograd.Function with a data-independent Python loop
  and direct launches); the three ops are.
- Block sizes were chosen without GPU measurements (no GPU was available when this was written).
- The launches compile without contracting ``a * b + c`` into FMAs
  (`triton_common.compile_options`; a launch traced by torch.compile is compiled by Inductor, which
  contracts), so each operation rounds on its own as in the eager reference. Compiled kernels use
  the hardware exp (ex2.approx) for fp32, so they can differ from the reference in the last bits
  (docs/spec.md#agreement-between-backends allows 1e-6 relative).

Interpreter mode is decided when the Triton modules are imported (this one and
:mod:`sgmcmc_fused.kernels.triton_common`, whose device helpers it uses): set ``TRITON_INTERPRET=1`` before
importing any of them to run on CPU tensors.
"""

from __future__ import annotations

import math
import operator

import torch
from torch.autograd.function import once_differentiable
from torch.library import wrap_triton

from ..triton_common import (
    INT64_LIMIT,
    SUPPORTED_DTYPES,
    TRITON_IMPORT_ERROR,
    UINT32_LIMIT,
    check_device,
    compile_options,
    device_guard,
    div_rn,
    is_interpreted,
    jit,
    launches_skipped,
    num_quads,
    philox_normal_tile,
    philox_quad_words,
    quad_tile,
    quads_per_program,
    register_op,
    require_triton,
    tl,
    to_math_dtype,
    to_storage_dtype,
    triton,
    uint32_to_open_uniform,
)
from ..triton_common import not_supported_reasons as _triton_not_supported_reasons
from .autograd import first_order_only
from .reference import BERNOULLI, GAUSSIAN, MASK_STREAM_BIT, check_lengths

__all__ = [
    "dropconnect_lstm_layer",
    "dropconnect_weight",
    "lstm_cell_backward",
    "lstm_cell_forward",
    "not_supported_reasons",
]

#: weight ids live below the DropConnect bit of the stream word (docs/spec.md#stream-words).
_WEIGHT_ID_LIMIT = 1 << 31
#: Elements of a cell-kernel tile. GPU: 512 = 4 per thread with 4 warps (the backward keeps ~20 fp32
#: values per element live; not tuned on hardware). Interpreter: every program is a sequence of numpy
#: calls over its tile, so fewer, larger programs are much faster there.
_CELL_TILE_GPU = 512
_CELL_TILE_INTERPRETER = 1 << 14

# --------------------------------------------------------------------------------------------------
# Device code
# --------------------------------------------------------------------------------------------------


@jit()
def _philox_uniform_tile(seed, quad, stream_id, step, BLOCK_QUADS: tl.constexpr):
    """The open uniforms of the quads ``quad`` of stream (seed, stream_id, step), docs/spec.md#noise-stream.

    Args:
        quad: int64 block [BLOCK_QUADS], quad indices q (elements 4q .. 4q + 3).
    Returns:
        fp32 [BLOCK_QUADS, 4]: row i holds the uniforms of elements 4 * quad[i] + (0, 1, 2, 3).
    """
    x0, x1, x2, x3 = philox_quad_words(seed, quad, stream_id, step)
    u0 = uint32_to_open_uniform(x0)
    u1 = uint32_to_open_uniform(x1)
    u2 = uint32_to_open_uniform(x2)
    u3 = uint32_to_open_uniform(x3)
    # Same interleave as triton_common.philox_normal_tile: row-major reshape gives lanes 0..3.
    return tl.reshape(tl.join(tl.join(u0, u2), tl.join(u1, u3)), (BLOCK_QUADS, 4))


# seed / stream_id / call change between calls: specialising on their values would only compile more
# variants.
@jit(do_not_specialize=["seed", "stream_id", "call"])
def _dropconnect_weight_kernel(
    weight_ptr, out_ptr, numel, seed, stream_id, call, p, scale, KIND: tl.constexpr, BLOCK_QUADS: tl.constexpr
):
    """out = weight * M, M the DropConnect mask of (seed, stream_id, call), drawn in this pass.

    Args:
        weight_ptr: [numel] contiguous, fp32 / fp64 / fp16 / bf16.
        out_ptr: [numel], the dtype of weight; written.
        stream_id: 0x80000000 | weight_id (uint32).
        p: fp32 drop probability (Bernoulli threshold). scale: fp32 1 / (1 - p) (Bernoulli) or
            sqrt(p / (1 - p)) (Gaussian). Both rounded to fp32 by the launch, as the reference
            rounds them when it multiplies fp32 tensors by Python floats.
        KIND: 0 Bernoulli, 1 Gaussian.
    """
    IS_FP64: tl.constexpr = weight_ptr.dtype.element_ty == tl.float64
    quad, local, in_bounds = quad_tile(0, numel, BLOCK_QUADS)
    if KIND == 0:
        u = _philox_uniform_tile(seed, quad, stream_id, call, BLOCK_QUADS)
        mask = tl.where(u >= p, scale, 0.0)
    else:
        mask = 1.0 + scale * philox_normal_tile(seed, quad, stream_id, call, BLOCK_QUADS)
    weight = to_math_dtype(tl.load(weight_ptr + local, mask=in_bounds), IS_FP64)
    out = weight * mask.to(weight.dtype)
    tl.store(out_ptr + local, to_storage_dtype(out, out_ptr.dtype.element_ty), mask=in_bounds)


@jit()
def _sigmoid(x):
    """1 / (1 + exp(-x)) with an IEEE division (tl.sigmoid divides approximately in fp32)."""
    return div_rn(1.0, 1.0 + tl.exp(-x))


@jit()
def _tanh(x):
    """tanh in the dtype of x (fp32 or fp64), to a few ulp.

    Why not one formula: (1 - e) / (1 + e) with e = exp(-2|x|) cancels for small |x| (relative
    error ~ ulp / |x|). Below |x| = 0.4 the [7/6] Padé approximant (a convergent of Lambert's
    continued fraction) is used instead: its truncation error there is < 9e-18 relative, below
    fp64 rounding, and its integer coefficients are exact in either dtype. Above 0.4 the
    exponential form loses at most e / (1 - e) < 0.82 of exp's relative error. NaN propagates;
    +-inf gives +-1.
    """
    ax = tl.abs(x)
    x2 = ax * ax
    pade = div_rn(
        ax * (135135.0 + x2 * (17325.0 + x2 * (378.0 + x2))),
        135135.0 + x2 * (62370.0 + x2 * (3150.0 + x2 * 28.0)),
    )
    e = tl.exp(-2.0 * ax)
    expo = div_rn(1.0 - e, 1.0 + e)
    t = tl.where(ax < 0.4, pade, expo)
    return tl.where(x < 0, -t, t)


@jit()
def _cell_tile(batch, hidden, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """This program's [BLOCK_B, BLOCK_H] tile of the [B, H] state.

    Returns:
        rows: int64 [BLOCK_B] batch indices; state: int64 [BLOCK_B, BLOCK_H] offsets into a
        contiguous [B, H] tensor; gate: offsets of gate i into a contiguous [B, 4H] tensor (gate k
        is at gate + k * hidden); cols: int64 [BLOCK_H]; in_bounds: bool [BLOCK_B, BLOCK_H].
    """
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H).to(tl.int64)
    in_bounds = (rows < batch)[:, None] & (cols < hidden)[None, :]
    state = rows[:, None] * hidden + cols[None, :]
    gate = rows[:, None] * (4 * hidden) + cols[None, :]
    return rows, cols, state, gate, in_bounds


@jit()
def _row_active(lengths_ptr, rows, batch, step):
    """bool [BLOCK_B, 1]: row b is active at time `step` iff step < lengths[b]."""
    length = tl.load(lengths_ptr + rows, mask=rows < batch, other=0)
    return (length > step)[:, None]


# step changes every launch of the time loop; hidden / batch stay specialised (divisibility helps
# vectorise the loads).
@jit(do_not_specialize=["step"])
def _lstm_cell_forward_kernel(
    gates_ptr,
    bias_ptr,
    c_prev_ptr,
    h_prev_ptr,
    lengths_ptr,
    h_ptr,
    c_ptr,
    act_ptr,
    batch,
    hidden,
    step,
    HAS_BIAS: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """One step's pointwise LSTM part, mirroring lstm_reference.lstm_cell_forward operation by operation.

    Args:
        gates_ptr: [B, 4H] pre-activations without bias. bias_ptr: [4H] (b_ih + b_hh), or None
            (HAS_BIAS false). c_prev_ptr: [B, H].
        h_prev_ptr, lengths_ptr: [B, H] and [B] int64, only with HAS_LENGTHS: rows with
            lengths[b] <= step keep their state (h = h_prev, c = c_prev), as lstm_reference.lstm_layer.
        h_ptr, c_ptr: [B, H]; act_ptr: [B, 4H] = (sigmoid i, sigmoid f, tanh g, sigmoid o); written.
    All tensors contiguous, one dtype (fp32 / fp64 / fp16 / bf16); math in fp32 (fp64 for fp64).
    """
    IS_FP64: tl.constexpr = gates_ptr.dtype.element_ty == tl.float64
    storage: tl.constexpr = h_ptr.dtype.element_ty
    rows, cols, state, gate, in_bounds = _cell_tile(batch, hidden, BLOCK_B, BLOCK_H)
    pre_i = to_math_dtype(tl.load(gates_ptr + gate, mask=in_bounds), IS_FP64)
    pre_f = to_math_dtype(tl.load(gates_ptr + gate + hidden, mask=in_bounds), IS_FP64)
    pre_g = to_math_dtype(tl.load(gates_ptr + gate + 2 * hidden, mask=in_bounds), IS_FP64)
    pre_o = to_math_dtype(tl.load(gates_ptr + gate + 3 * hidden, mask=in_bounds), IS_FP64)
    if HAS_BIAS:
        col_ok = cols < hidden
        pre_i = pre_i + to_math_dtype(tl.load(bias_ptr + cols, mask=col_ok), IS_FP64)[None, :]
        pre_f = pre_f + to_math_dtype(tl.load(bias_ptr + hidden + cols, mask=col_ok), IS_FP64)[None, :]
        pre_g = pre_g + to_math_dtype(tl.load(bias_ptr + 2 * hidden + cols, mask=col_ok), IS_FP64)[None, :]
        pre_o = pre_o + to_math_dtype(tl.load(bias_ptr + 3 * hidden + cols, mask=col_ok), IS_FP64)[None, :]
    i = _sigmoid(pre_i)
    f = _sigmoid(pre_f)
    g = _tanh(pre_g)
    o = _sigmoid(pre_o)
    c_prev_stored = tl.load(c_prev_ptr + state, mask=in_bounds)
    c = f * to_math_dtype(c_prev_stored, IS_FP64) + i * g
    # h from the unrounded c, as the reference; the next step reads the rounded c back.
    h_out = to_storage_dtype(o * _tanh(c), storage)
    c_out = to_storage_dtype(c, storage)
    if HAS_LENGTHS:
        active = _row_active(lengths_ptr, rows, batch, step)
        h_out = tl.where(active, h_out, tl.load(h_prev_ptr + state, mask=in_bounds))
        c_out = tl.where(active, c_out, c_prev_stored)
    tl.store(h_ptr + state, h_out, mask=in_bounds)
    tl.store(c_ptr + state, c_out, mask=in_bounds)
    tl.store(act_ptr + gate, to_storage_dtype(i, storage), mask=in_bounds)
    tl.store(act_ptr + gate + hidden, to_storage_dtype(f, storage), mask=in_bounds)
    tl.store(act_ptr + gate + 2 * hidden, to_storage_dtype(g, storage), mask=in_bounds)
    tl.store(act_ptr + gate + 3 * hidden, to_storage_dtype(o, storage), mask=in_bounds)


@jit(do_not_specialize=["step"])
def _lstm_cell_backward_kernel(
    grad_h_ptr,
    grad_out_ptr,
    grad_c_ptr,
    act_ptr,
    c_prev_ptr,
    c_ptr,
    lengths_ptr,
    grad_gates_ptr,
    grad_c_prev_ptr,
    grad_h_pass_ptr,
    batch,
    hidden,
    step,
    HAS_GRAD_OUT: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Backward of one cell step, mirroring lstm_reference.lstm_cell_backward operation by operation.

    Args:
        grad_h_ptr: [B, H] gradient reaching h of this step (in the layer: from the later steps).
        grad_out_ptr: [B, H] gradient of the layer output at this step, added to grad_h in the math
            type; None unless HAS_GRAD_OUT.
        grad_c_ptr: [B, H]. act_ptr: [B, 4H] activations of the forward. c_prev_ptr, c_ptr: [B, H].
        lengths_ptr: [B] int64, only with HAS_LENGTHS: inactive rows (lengths[b] <= step) get zero
            grad_gates, pass grad_c through to grad_c_prev and grad_h (+ grad_out) to grad_h_pass.
        grad_gates_ptr: [B, 4H], grad_c_prev_ptr: [B, H], written. grad_h_pass_ptr: [B, H], written
            only with HAS_LENGTHS (zero on active rows): the part of dL/dh_prev that skips the cell.
    All tensors contiguous, one dtype; math in fp32 (fp64 for fp64).
    """
    IS_FP64: tl.constexpr = act_ptr.dtype.element_ty == tl.float64
    storage: tl.constexpr = grad_gates_ptr.dtype.element_ty
    rows, cols, state, gate, in_bounds = _cell_tile(batch, hidden, BLOCK_B, BLOCK_H)
    dh = to_math_dtype(tl.load(grad_h_ptr + state, mask=in_bounds), IS_FP64)
    if HAS_GRAD_OUT:
        dh = dh + to_math_dtype(tl.load(grad_out_ptr + state, mask=in_bounds), IS_FP64)
    dc = to_math_dtype(tl.load(grad_c_ptr + state, mask=in_bounds), IS_FP64)
    i = to_math_dtype(tl.load(act_ptr + gate, mask=in_bounds), IS_FP64)
    f = to_math_dtype(tl.load(act_ptr + gate + hidden, mask=in_bounds), IS_FP64)
    g = to_math_dtype(tl.load(act_ptr + gate + 2 * hidden, mask=in_bounds), IS_FP64)
    o = to_math_dtype(tl.load(act_ptr + gate + 3 * hidden, mask=in_bounds), IS_FP64)
    c_prev = to_math_dtype(tl.load(c_prev_ptr + state, mask=in_bounds), IS_FP64)
    c = to_math_dtype(tl.load(c_ptr + state, mask=in_bounds), IS_FP64)

    tanh_c = _tanh(c)
    dc_total = dc + dh * o * (1 - tanh_c * tanh_c)
    di = dc_total * g * i * (1 - i)
    df = dc_total * c_prev * f * (1 - f)
    dg = dc_total * i * (1 - g * g)
    do = dh * tanh_c * o * (1 - o)
    dc_prev = dc_total * f
    if HAS_LENGTHS:
        # Select rather than zero the incoming gradients: inactive rows' outputs then never depend on
        # the (meaningless) cell values of those rows.
        active = _row_active(lengths_ptr, rows, batch, step)
        di = tl.where(active, di, 0.0)
        df = tl.where(active, df, 0.0)
        dg = tl.where(active, dg, 0.0)
        do = tl.where(active, do, 0.0)
        dc_prev = tl.where(active, dc_prev, dc)
        tl.store(grad_h_pass_ptr + state, to_storage_dtype(tl.where(active, 0.0, dh), storage), mask=in_bounds)
    tl.store(grad_gates_ptr + gate, to_storage_dtype(di, storage), mask=in_bounds)
    tl.store(grad_gates_ptr + gate + hidden, to_storage_dtype(df, storage), mask=in_bounds)
    tl.store(grad_gates_ptr + gate + 2 * hidden, to_storage_dtype(dg, storage), mask=in_bounds)
    tl.store(grad_gates_ptr + gate + 3 * hidden, to_storage_dtype(do, storage), mask=in_bounds)
    tl.store(grad_c_prev_ptr + state, to_storage_dtype(dc_prev, storage), mask=in_bounds)


# --------------------------------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------------------------------


def not_supported_reasons(device: torch.device | str) -> list[str]:
    """Why the Triton LSTM kernels cannot run on tensors of ``device`` (empty list: they can).

    CUDA tensors need triton; CPU tensors need the Triton interpreter (TRITON_INTERPRET=1 set before
    sgmcmc_fused.kernels.triton_common was imported). Same rules as triton_common.not_supported_reasons.
    """
    return _triton_not_supported_reasons(device)


# --------------------------------------------------------------------------------------------------
# Host side: validation and launches
# --------------------------------------------------------------------------------------------------


def _check_float_tensor(op: str, name: str, t: object, shape: tuple[int, ...] | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op}: {name} has dtype {t.dtype}; supported are float32, float64, float16 and bfloat16")
    if t.layout != torch.strided:
        raise ValueError(f"{op}: {name} must be a dense (strided) tensor, got layout {t.layout}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected {shape}")


def _check_same(op: str, tensors: dict[str, torch.Tensor]) -> None:
    """All of `tensors` share the first one's dtype and device, a device the kernels can run on."""
    (first_name, first), *rest = tensors.items()
    check_device(op, first_name, first.device)
    for name, t in rest:
        if t.device != first.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {first_name} is on {first.device}")
        if t.dtype != first.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but {first_name} has dtype {first.dtype}")


def _check_mask_args(op: str, seed: int, weight_id: int, call: int, p: float, kind: int) -> None:
    if not 0 <= seed < INT64_LIMIT:
        raise ValueError(f"{op}: seed must be in [0, 2^63), got {seed}")
    if not 0 <= weight_id < _WEIGHT_ID_LIMIT:
        raise ValueError(f"{op}: weight_id = {weight_id} is outside [0, 2^31) (bit 31 marks the mask streams)")
    if not 0 <= call < UINT32_LIMIT:
        raise ValueError(f"{op}: call = {call} is outside [0, 2^32)")
    if not 0.0 <= p < 1.0:  # also rejects NaN
        raise ValueError(f"{op}: dropconnect probability p must be in [0, 1), got {p}")
    if kind not in (BERNOULLI, GAUSSIAN):
        raise ValueError(f"{op}: unknown mask kind {kind}; use {BERNOULLI} (Bernoulli) or {GAUSSIAN} (Gaussian)")


def _mask_scale(p: float, kind: int) -> float:
    """The mask's scale as a double (the launch rounds it to fp32, as the reference does)."""
    return 1.0 / (1.0 - p) if kind == BERNOULLI else math.sqrt(p / (1.0 - p))


def _launch_dropconnect_weight(
    weight: torch.Tensor, out: torch.Tensor, seed: int, weight_id: int, call: int, p: float, kind: int
) -> None:
    """out = weight * M; both contiguous, same shape and dtype, inputs already validated."""
    numel = weight.numel()
    if numel == 0:
        return
    block_quads = quads_per_program()
    grid = (triton.cdiv(num_quads(numel, 0), block_quads),)
    with device_guard(weight):
        wrap_triton(_dropconnect_weight_kernel)[grid](
            weight,
            out,
            numel,
            seed,
            MASK_STREAM_BIT | weight_id,
            call,
            p,
            _mask_scale(p, kind),
            KIND=kind,
            BLOCK_QUADS=block_quads,
            **compile_options(),
        )


def _cell_grid(batch: int, hidden: int) -> tuple[tuple[int, int], int, int]:
    """(grid, BLOCK_B, BLOCK_H) of the cell kernels: rows on grid axis 0 (no 65535 limit there)."""
    tile = _CELL_TILE_INTERPRETER if is_interpreted() else _CELL_TILE_GPU
    block_h = min(triton.next_power_of_2(hidden), tile)
    block_b = min(triton.next_power_of_2(batch), max(1, tile // block_h))
    return (triton.cdiv(batch, block_b), triton.cdiv(hidden, block_h)), block_b, block_h


def _launch_cell_forward(
    gates: torch.Tensor,
    bias: torch.Tensor | None,
    c_prev: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    activations: torch.Tensor,
    *,
    h_prev: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    step: int = 0,
) -> None:
    """Writes h, c [B, H] and activations [B, 4H]; every tensor contiguous, validated by the caller."""
    batch, hidden = c_prev.shape
    if batch == 0 or hidden == 0:
        return
    grid, block_b, block_h = _cell_grid(batch, hidden)
    with device_guard(gates):
        wrap_triton(_lstm_cell_forward_kernel)[grid](
            gates,
            bias,
            c_prev,
            h_prev if lengths is not None else None,  # only read for inactive rows
            lengths,
            h,
            c,
            activations,
            batch,
            hidden,
            step,
            HAS_BIAS=bias is not None,
            HAS_LENGTHS=lengths is not None,
            BLOCK_B=block_b,
            BLOCK_H=block_h,
            **compile_options(),
        )


def _launch_cell_backward(
    grad_h: torch.Tensor,
    grad_c: torch.Tensor,
    activations: torch.Tensor,
    c_prev: torch.Tensor,
    c: torch.Tensor,
    grad_gates: torch.Tensor,
    grad_c_prev: torch.Tensor,
    *,
    grad_out: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    grad_h_pass: torch.Tensor | None = None,
    step: int = 0,
) -> None:
    """Writes grad_gates [B, 4H], grad_c_prev [B, H] (and grad_h_pass with lengths); contiguous, validated."""
    batch, hidden = c_prev.shape
    if batch == 0 or hidden == 0:
        return
    grid, block_b, block_h = _cell_grid(batch, hidden)
    with device_guard(grad_h):
        wrap_triton(_lstm_cell_backward_kernel)[grid](
            grad_h,
            grad_out,
            grad_c,
            activations,
            c_prev,
            c,
            lengths,
            grad_gates,
            grad_c_prev,
            grad_h_pass,
            batch,
            hidden,
            step,
            HAS_GRAD_OUT=grad_out is not None,
            HAS_LENGTHS=lengths is not None,
            BLOCK_B=block_b,
            BLOCK_H=block_h,
            **compile_options(),
        )


# --------------------------------------------------------------------------------------------------
# Custom operators (schemas mirror csrc/ops.cpp)
# --------------------------------------------------------------------------------------------------


def _dropconnect_weight_op(weight: torch.Tensor, seed: int, weight_id: int, call: int, p: float, kind: int):
    op = "triton_dropconnect_weight"
    _check_float_tensor(op, "weight", weight)
    _check_same(op, {"weight": weight})
    _check_mask_args(op, seed, weight_id, call, p, kind)
    # The mask is indexed by the flat row-major element index, so the kernel reads a contiguous copy.
    weight = weight.contiguous()
    out = torch.empty_like(weight)
    if not launches_skipped([weight]):
        _launch_dropconnect_weight(weight, out, seed, weight_id, call, p, kind)
    return out


def _lstm_cell_forward_op(gates: torch.Tensor, bias: torch.Tensor, c_prev: torch.Tensor):
    op = "triton_lstm_cell_forward"
    _check_float_tensor(op, "c_prev", c_prev)
    if c_prev.dim() != 2:
        raise ValueError(f"{op}: c_prev must be [B, H], got shape {tuple(c_prev.shape)}")
    batch, hidden = c_prev.shape
    _check_float_tensor(op, "gates", gates, (batch, 4 * hidden))
    _check_float_tensor(op, "bias", bias, (4 * hidden,))
    _check_same(op, {"gates": gates, "bias": bias, "c_prev": c_prev})
    gates, bias, c_prev = gates.contiguous(), bias.contiguous(), c_prev.contiguous()
    h, c, activations = torch.empty_like(c_prev), torch.empty_like(c_prev), torch.empty_like(gates)
    if not launches_skipped([gates]):
        _launch_cell_forward(gates, bias, c_prev, h, c, activations)
    return h, c, activations


def _lstm_cell_backward_op(
    grad_h: torch.Tensor, grad_c: torch.Tensor, activations: torch.Tensor, c_prev: torch.Tensor, c: torch.Tensor
):
    op = "triton_lstm_cell_backward"
    _check_float_tensor(op, "c_prev", c_prev)
    if c_prev.dim() != 2:
        raise ValueError(f"{op}: c_prev must be [B, H], got shape {tuple(c_prev.shape)}")
    batch, hidden = c_prev.shape
    for name, t in (("grad_h", grad_h), ("grad_c", grad_c), ("c", c)):
        _check_float_tensor(op, name, t, (batch, hidden))
    _check_float_tensor(op, "activations", activations, (batch, 4 * hidden))
    tensors = {"grad_h": grad_h, "grad_c": grad_c, "activations": activations, "c_prev": c_prev, "c": c}
    _check_same(op, tensors)
    grad_h, grad_c, activations, c_prev, c = (t.contiguous() for t in tensors.values())
    grad_gates, grad_c_prev = torch.empty_like(activations), torch.empty_like(c_prev)
    if not launches_skipped([grad_h]):
        _launch_cell_backward(grad_h, grad_c, activations, c_prev, c, grad_gates, grad_c_prev)
    return grad_gates, grad_c_prev


_DROPCONNECT_WEIGHT_SCHEMA = "(Tensor weight, int seed, int weight_id, int call, float p, int kind) -> Tensor"
_CELL_FORWARD_SCHEMA = "(Tensor gates, Tensor bias, Tensor c_prev) -> (Tensor h, Tensor c, Tensor activations)"
_CELL_BACKWARD_SCHEMA = (
    "(Tensor grad_h, Tensor grad_c, Tensor activations, Tensor c_prev, Tensor c) -> "
    "(Tensor grad_gates, Tensor grad_c_prev)"
)


def _dropconnect_weight_setup_context(ctx, inputs, output) -> None:
    _, ctx.seed, ctx.weight_id, ctx.call, ctx.p, ctx.kind = inputs


def _dropconnect_weight_backward(ctx, grad):
    # weight * M is linear in weight: d/dweight = grad * M, the same op on the gradient.
    grad_weight = torch.ops.sgmcmc_fused.triton_dropconnect_weight(
        grad, ctx.seed, ctx.weight_id, ctx.call, ctx.p, ctx.kind
    )
    return grad_weight, None, None, None, None, None


def _cell_forward_setup_context(ctx, inputs, output) -> None:
    _, bias, c_prev = inputs
    _, c, activations = output
    ctx.save_for_backward(activations, c_prev, c)
    ctx.bias_dtype = bias.dtype


def _cell_forward_backward(ctx, grad_h, grad_c, grad_activations):
    activations, c_prev, c = ctx.saved_tensors
    grad_h = torch.zeros_like(c) if grad_h is None else grad_h
    grad_c = torch.zeros_like(c) if grad_c is None else grad_c
    grad_gates, grad_c_prev = torch.ops.sgmcmc_fused.triton_lstm_cell_backward(grad_h, grad_c, activations, c_prev, c)
    if grad_activations is not None:
        # Rare (the activations are saved for the backward, not used downstream): eager, in the math type.
        opmath = torch.float64 if activations.dtype == torch.float64 else torch.float32
        i, f, g, o = activations.to(opmath).chunk(4, dim=1)
        slope = torch.cat([i * (1 - i), f * (1 - f), 1 - g * g, o * (1 - o)], dim=1)
        grad_gates = (grad_gates.to(opmath) + grad_activations.to(opmath) * slope).to(grad_gates.dtype)
    return grad_gates, grad_gates.sum(0).to(ctx.bias_dtype), grad_c_prev


if TRITON_IMPORT_ERROR is None:
    register_op(
        "sgmcmc_fused::triton_dropconnect_weight", _dropconnect_weight_op, set(), _DROPCONNECT_WEIGHT_SCHEMA
    ).register_autograd(_dropconnect_weight_backward, setup_context=_dropconnect_weight_setup_context)
    register_op(
        "sgmcmc_fused::triton_lstm_cell_forward", _lstm_cell_forward_op, set(), _CELL_FORWARD_SCHEMA
    ).register_autograd(_cell_forward_backward, setup_context=_cell_forward_setup_context)
    register_op("sgmcmc_fused::triton_lstm_cell_backward", _lstm_cell_backward_op, set(), _CELL_BACKWARD_SCHEMA)


# --------------------------------------------------------------------------------------------------
# Public helpers (the signatures of sgmcmc_fused.kernels.lstm.reference)
# --------------------------------------------------------------------------------------------------


def dropconnect_weight(weight: torch.Tensor, seed: int, weight_id: int, call: int, p: float, kind: int) -> torch.Tensor:
    """weight * M for the DropConnect mask of (seed, weight_id, call), drawn by the Triton kernel.

    Args:
        weight: any shape, fp32 / fp64 / fp16 / bf16 (element e = flat row-major index).
        seed: in [0, 2^63). weight_id: in [0, 2^31). call: in [0, 2^32).
        p: in [0, 1). kind: lstm_reference.BERNOULLI (0) or GAUSSIAN (1).
    Returns:
        A new contiguous tensor, shape and dtype of weight. Differentiable in weight.
    """
    require_triton()
    return torch.ops.sgmcmc_fused.triton_dropconnect_weight(
        weight, operator.index(seed), operator.index(weight_id), operator.index(call), float(p), operator.index(kind)
    )


def lstm_cell_forward(
    gates: torch.Tensor, bias: torch.Tensor, c_prev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One LSTM step's pointwise part (lstm_reference.lstm_cell_forward) with the Triton kernel.

    Args:
        gates: [B, 4H] pre-activations without bias. bias: [4H] (b_ih + b_hh). c_prev: [B, H].
            One dtype (fp32 / fp64 / fp16 / bf16), one device.
    Returns:
        h [B, H], c [B, H], activations [B, 4H] (sigmoid i, sigmoid f, tanh g, sigmoid o), in the input
        dtype, computed in fp32 (fp64 for fp64). Differentiable in gates, bias and c_prev.
    """
    require_triton()
    return torch.ops.sgmcmc_fused.triton_lstm_cell_forward(gates, bias, c_prev)


def lstm_cell_backward(
    grad_h: torch.Tensor, grad_c: torch.Tensor, activations: torch.Tensor, c_prev: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of :func:`lstm_cell_forward` (lstm_reference.lstm_cell_backward) with the Triton kernel.

    Args:
        grad_h, grad_c: [B, H]. activations: [B, 4H] from the forward. c_prev, c: [B, H].
    Returns:
        grad_gates [B, 4H] (also the bias gradient per row) and grad_c_prev [B, H], in the input dtype.
    """
    require_triton()
    return torch.ops.sgmcmc_fused.triton_lstm_cell_backward(grad_h, grad_c, activations, c_prev, c)


# --------------------------------------------------------------------------------------------------
# The layer
# --------------------------------------------------------------------------------------------------


def _masked_weights(w_ih: torch.Tensor, w_hh: torch.Tensor, masks) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_ih', W_hh'): each matrix masked if `masks` says so, else itself."""
    if masks is None or not masks.active():
        return w_ih, w_hh
    op = torch.ops.sgmcmc_fused.triton_dropconnect_weight
    if masks.mask_ih:
        w_ih = op(w_ih, masks.seed, masks.ih_weight_id, masks.call, float(masks.p), masks.kind)
    if masks.mask_hh:
        w_hh = op(w_hh, masks.seed, masks.hh_weight_id, masks.call, float(masks.p), masks.kind)
    return w_ih, w_hh


def _unmask_grad(grad: torch.Tensor, masks, weight_id_attr: str, masked: bool) -> torch.Tensor:
    """dW = dW' * M (docs/spec.md#cell-and-gradients), M regenerated from the seed; dW' itself if unmasked."""
    if masks is None or not masks.active() or not masked:
        return grad
    weight_id = getattr(masks, weight_id_attr)
    return torch.ops.sgmcmc_fused.triton_dropconnect_weight(
        grad, masks.seed, weight_id, masks.call, float(masks.p), masks.kind
    )


def _time_order(steps: int, reverse: bool) -> range:
    return range(steps - 1, -1, -1) if reverse else range(steps)


class _DropConnectLSTMLayer(torch.autograd.Function):
    """The layer as one autograd node. Saves input, h0, c0, the unmasked weights, output, the
    activations [T, B, 4H] and cell states [T, B, H] (the state after each step, in time order);
    never a mask or a masked weight."""

    @staticmethod
    def forward(ctx, input, h0, c0, w_ih, w_hh, bias, lengths, reverse, masks):
        steps, batch, _ = input.shape
        hidden = h0.shape[1]
        w_ih_m, w_hh_m = _masked_weights(w_ih, w_hh, masks)
        output = input.new_empty(steps, batch, hidden)
        cells = input.new_empty(steps, batch, hidden)
        activations = input.new_empty(steps, batch, 4 * hidden)
        # One GEMM for the input projection of every step; the recurrent GEMM of each step adds onto it.
        xproj = torch.matmul(input, w_ih_m.t())
        w_hh_t = w_hh_m.t()
        h, c = h0, c0
        for t in _time_order(steps, reverse):
            gates = torch.addmm(xproj[t], h, w_hh_t)
            _launch_cell_forward(gates, bias, c, output[t], cells[t], activations[t], h_prev=h, lengths=lengths, step=t)
            h, c = output[t], cells[t]
        # Copies: an autograd.Function output must not be a view of another output (or an input).
        h_n, c_n = h.clone(), c.clone()
        ctx.save_for_backward(input, h0, c0, w_ih, w_hh, output, activations, cells, lengths)
        ctx.reverse, ctx.masks, ctx.has_bias = reverse, masks, bias is not None
        return output, h_n, c_n

    @staticmethod
    @first_order_only("triton")  # the kernels are not differentiable: no double backward
    @once_differentiable
    def backward(ctx, grad_output, grad_h_n, grad_c_n):
        input, h0, c0, w_ih, w_hh, output, activations, cells, lengths = ctx.saved_tensors
        reverse, masks = ctx.reverse, ctx.masks
        steps, batch, input_size = input.shape
        hidden = h0.shape[1]
        w_ih_m, w_hh_m = _masked_weights(w_ih, w_hh, masks)

        dh = torch.zeros_like(h0) if grad_h_n is None else grad_h_n.contiguous()
        dc = torch.zeros_like(c0) if grad_c_n is None else grad_c_n.contiguous()
        grad_output = None if grad_output is None else grad_output.contiguous()
        grad_gates = input.new_empty(steps, batch, 4 * hidden)
        # Reverse of the forward's processing order; `prev` is the step processed before t.
        for t in reversed(_time_order(steps, reverse)):
            prev = t + 1 if reverse else t - 1
            c_prev = cells[prev] if 0 <= prev < steps else c0
            dc_prev = torch.empty_like(dc)
            dh_pass = torch.empty_like(dh) if lengths is not None else None
            _launch_cell_backward(
                dh,
                dc,
                activations[t],
                c_prev,
                cells[t],  # on active rows the cell's c; inactive rows get zero gradients anyway
                grad_gates[t],
                dc_prev,
                grad_out=None if grad_output is None else grad_output[t],
                lengths=lengths,
                grad_h_pass=dh_pass,
                step=t,
            )
            dh = torch.mm(grad_gates[t], w_hh_m) if dh_pass is None else torch.addmm(dh_pass, grad_gates[t], w_hh_m)
            dc = dc_prev
        needs = ctx.needs_input_grad
        flat = grad_gates.view(steps * batch, 4 * hidden)
        grad_input = grad_w_ih = grad_w_hh = grad_bias = None
        if needs[0]:
            grad_input = torch.matmul(grad_gates, w_ih_m)
        if needs[3]:
            grad_w_ih = torch.mm(flat.t(), input.reshape(steps * batch, input_size))
            grad_w_ih = _unmask_grad(grad_w_ih, masks, "ih_weight_id", masks is not None and masks.mask_ih)
        if needs[4]:
            # h entering step t: the state of the step processed before it, h0 for the first.
            if steps == 0:
                h_prev = output
            elif reverse:
                h_prev = torch.cat([output[1:], h0.unsqueeze(0)])
            else:
                h_prev = torch.cat([h0.unsqueeze(0), output[:-1]])
            grad_w_hh = torch.mm(flat.t(), h_prev.reshape(steps * batch, hidden))
            grad_w_hh = _unmask_grad(grad_w_hh, masks, "hh_weight_id", masks is not None and masks.mask_hh)
        if needs[5] and ctx.has_bias:
            grad_bias = flat.sum(0)
        return grad_input, dh, dc, grad_w_ih, grad_w_hh, grad_bias, None, None, None


def dropconnect_lstm_layer(
    input: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    bias: torch.Tensor | None,
    lengths: torch.Tensor | None = None,
    reverse: bool = False,
    masks=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One direction of one DropConnect LSTM layer with the Triton kernels, differentiable.

    Same semantics as lstm_reference.lstm_layer applied to the masked weights.

    Args:
        input: [T, B, I]. h0, c0: [B, H]. w_ih: [4H, I]. w_hh: [4H, H] (unmasked). bias: [4H]
            (b_ih + b_hh) or None. All one float dtype (fp32 / fp64 / fp16 / bf16) and one device
            (CUDA; CPU under the interpreter).
        lengths: [B] integer tensor (any device) or None: row b is active at time t iff t < lengths[b];
            inactive rows keep h and c, and output positions t >= lengths[b] hold the frozen state.
        reverse: run t = T-1 .. 0.
        masks: a sgmcmc_fused.nn.functional.DropConnect (p, kind, seed, call, ih_weight_id,
            hh_weight_id, mask_ih, mask_hh) or None for no masking.
    Returns:
        output [T, B, H], h_n [B, H], c_n [B, H], in the input dtype. Gradients flow to input, h0, c0,
        w_ih, w_hh (dW = dW' * M) and bias.
    """
    op = "dropconnect_lstm_layer"
    require_triton()
    device_type = input.device.type if isinstance(input, torch.Tensor) else "cpu"
    if torch.is_autocast_enabled(device_type):
        # The layer is a composite of Triton ops and GEMMs (an autograd Function, not one op), so it
        # takes autocast as torch.amp.custom_fwd(cast_inputs=...) does, in the region's own dtype:
        # the floating inputs cast (differentiably: gradients reach fp32 master weights), the layer
        # run with autocast off, its outputs in that dtype, like the compiled op's Autocast kernel.
        dtype = torch.get_autocast_dtype(device_type)
        cast = [t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                for t in (input, h0, c0, w_ih, w_hh, bias)]  # fmt: skip
        with torch.autocast(device_type, enabled=False):
            return dropconnect_lstm_layer(*cast, lengths, reverse, masks)
    _check_float_tensor(op, "input", input)
    if input.dim() != 3:
        raise ValueError(f"{op}: input must be [T, B, I], got shape {tuple(input.shape)}")
    _check_float_tensor(op, "w_hh", w_hh)
    if w_hh.dim() != 2 or w_hh.shape[0] != 4 * w_hh.shape[1]:
        raise ValueError(f"{op}: w_hh must be [4H, H], got shape {tuple(w_hh.shape)}")
    steps, batch, input_size = input.shape
    hidden = w_hh.shape[1]
    _check_float_tensor(op, "h0", h0, (batch, hidden))
    _check_float_tensor(op, "c0", c0, (batch, hidden))
    _check_float_tensor(op, "w_ih", w_ih, (4 * hidden, input_size))
    tensors = {"input": input, "h0": h0, "c0": c0, "w_ih": w_ih, "w_hh": w_hh}
    if bias is not None:
        _check_float_tensor(op, "bias", bias, (4 * hidden,))
        tensors["bias"] = bias
    _check_same(op, tensors)
    if lengths is not None:
        if not isinstance(lengths, torch.Tensor):
            raise TypeError(f"{op}: lengths must be a tensor or None, got {type(lengths).__name__}")
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise TypeError(f"{op}: lengths must be an integer tensor, got {lengths.dtype}")
        if tuple(lengths.shape) != (batch,):
            raise ValueError(f"{op}: lengths has shape {tuple(lengths.shape)}, expected ({batch},)")
        if not torch.compiler.is_compiling():  # traced, the check would break the graph
            check_lengths(op, lengths, steps)  # before the copy: lengths usually come on the CPU
        lengths = lengths.to(device=input.device, dtype=torch.int64).contiguous()
    if masks is not None and masks.active():
        _check_mask_args(op, masks.seed, masks.ih_weight_id, masks.call, masks.p, masks.kind)
        _check_mask_args(op, masks.seed, masks.hh_weight_id, masks.call, masks.p, masks.kind)
    else:
        masks = None
    output, h_n, c_n = _DropConnectLSTMLayer.apply(
        input.contiguous(),
        h0.contiguous(),
        c0.contiguous(),
        w_ih.contiguous(),
        w_hh.contiguous(),
        None if bias is None else bias.contiguous(),
        lengths,
        bool(reverse),
        masks,
    )
    return output, h_n, c_n
