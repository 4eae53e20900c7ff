"""What the Triton kernels of :mod:`sgmcmc_fused.kernels.langevin.triton` (the Langevin step) and
:mod:`sgmcmc_fused.kernels.lstm.triton` (the DropConnect LSTM) share.

Device side: IEEE-rounded square root and division, the math and storage dtype conversions (bf16
rounded to nearest even, as the C++ kernels round it), and the counter-based Philox stream of docs/spec.md#noise-stream
laid out in *quads* (quad ``q`` holds elements ``4q .. 4q + 3``; one Philox4x32-10 call gives its
four numbers). Host side: whether Triton can run here and on which devices, the launch helpers
(block size, current device, skipping launches while tracing under the interpreter) and the op
registration.

Interpreter mode is decided when ``@triton.jit`` runs, that is when each Triton module (this one,
triton_kernels, triton_lstm) is imported; :func:`is_interpreted` reports this module's. Set
``TRITON_INTERPRET=1`` before importing any of them to run the kernels on CPU tensors (slow; a test
tool).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch.library import triton_op

from .langevin.reference import TWO_PI_F32

try:
    import triton
    import triton.language as tl
except ImportError as _exc:  # the module still imports: every entry point reports the reason
    triton = None
    tl = None
    TRITON_IMPORT_ERROR: str | None = f"triton is not installed ({_exc})"
else:
    TRITON_IMPORT_ERROR = None

#: The parameter dtypes the kernels update (math in fp32, fp64 for fp64).
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
UINT32_LIMIT = 1 << 32
INT64_LIMIT = 1 << 63


def jit(**options):
    """``triton.jit(**options)`` when triton is importable, else a no-op decorator (the plain functions
    are then never called: no op is registered and the public helpers raise first)."""
    if triton is None:
        return lambda fn: fn
    return triton.jit(**options)


def constexpr(value):
    """A global a Triton kernel may read (kernels may only read constexpr globals)."""
    return value if tl is None else tl.constexpr(value)


# --------------------------------------------------------------------------------------------------
# Device code
# --------------------------------------------------------------------------------------------------

_TWO_PI = constexpr(TWO_PI_F32)
#: 2^-23: ((x >> 9) + 0.5) * 2^-23 maps a uint32 to the open interval (0, 1), exactly in fp32.
_UNIFORM_SCALE = constexpr(2.0**-23)

#: Quads per program on the GPU: 1024 elements, 8 per thread with the 4 warps of NUM_WARPS.
_BLOCK_QUADS_GPU = 256
#: The interpreter runs every program as a sequence of numpy calls over the block, so fewer, larger
#: programs are much faster there (the noise does not depend on the block size).
_BLOCK_QUADS_INTERPRETER = 4096


@jit()
def sqrt_rn(x):
    """IEEE square root. tl.sqrt is the approximate one for fp32; fp64 has no approximate variant."""
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@jit()
def div_rn(x, y):
    """IEEE division x / y (y a block; x a block or a scalar). Triton's `/` on fp32 is a 2-ulp
    approximation; on fp64 it is IEEE."""
    if y.dtype == tl.float64:
        return x / y
    else:
        return tl.div_rn(x, y)


@jit()
def to_math_dtype(x, IS_FP64: tl.constexpr):
    """fp16 / bf16 / fp32 -> fp32; fp64 stays fp64.

    bf16 is the top half of an fp32, so it is widened by moving its bits: exact for every value,
    subnormals included (the interpreter's float conversion renormalises bf16 subnormals wrongly)."""
    if IS_FP64:
        return x.to(tl.float64)
    elif x.dtype == tl.bfloat16:
        return (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        return x.to(tl.float32)


@jit()
def to_storage_dtype(x, storage_dtype: tl.constexpr):
    """Math-type block -> the parameter's storage dtype, rounding to nearest even.

    bf16 is rounded with integer ops rather than ``x.to(tl.bfloat16)``: the Triton interpreter
    truncates that cast, and this way the interpreter (what CI without a GPU tests) and the
    compiled kernel round alike. The fp32 bit pattern plus 0x7FFF plus the lowest kept bit, shifted
    right by 16, is round-to-nearest-even (overflowing to inf as it should); NaN stays a quiet NaN.
    """
    if storage_dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x != x, 0x7FC0, rounded)
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(storage_dtype)


@jit()
def uint32_to_open_uniform(x):
    """uint32 block -> fp32 uniforms in (0, 1): ((x >> 9) + 0.5) * 2^-23 (exact in fp32)."""
    return ((x >> 9).to(tl.float32) + 0.5) * _UNIFORM_SCALE


@jit()
def philox_quad_words(seed, quad, stream_id, step):
    """The four uint32 words of Philox4x32-10 for the quads ``quad`` of stream (seed, stream_id, step),
    docs/spec.md#noise-stream: counter (quad low 32 bits, quad high 32 bits, stream_id, step).

    Args:
        quad: int64 block, quad indices q (elements 4q .. 4q + 3).
    Returns:
        four uint32 blocks shaped like ``quad``: lane 0..3 of each quad.
    """
    quad_lo = quad.to(tl.uint32)  # truncation keeps the low 32 bits
    quad_hi = (quad >> 32).to(tl.uint32)
    zeros = tl.zeros_like(quad_lo)
    # All four counter words must be uint32 blocks; stream_id / step may arrive as int32, int64 or
    # (specialised to 1) constexpr, hence tl.cast.
    return tl.philox(seed, quad_lo, quad_hi, zeros + tl.cast(stream_id, tl.uint32), zeros + tl.cast(step, tl.uint32))


@jit()
def philox_normal_tile(seed, quad, stream_id, step, BLOCK_QUADS: tl.constexpr):
    """The N(0, 1) draws of the quads ``quad`` of stream (seed, stream_id, step), docs/spec.md#noise-stream.

    Args:
        quad: int64 block [BLOCK_QUADS], quad indices q (elements 4q .. 4q + 3).
    Returns:
        fp32 [BLOCK_QUADS, 4]: row i holds the normals of elements 4 * quad[i] + (0, 1, 2, 3).
    """
    x0, x1, x2, x3 = philox_quad_words(seed, quad, stream_id, step)
    radius01 = tl.sqrt_rn(-2.0 * tl.log(uint32_to_open_uniform(x0)))
    radius23 = tl.sqrt_rn(-2.0 * tl.log(uint32_to_open_uniform(x2)))
    angle1 = uint32_to_open_uniform(x1) * _TWO_PI
    angle3 = uint32_to_open_uniform(x3) * _TWO_PI
    n0 = radius01 * tl.cos(angle1)
    n1 = radius01 * tl.sin(angle1)
    n2 = radius23 * tl.cos(angle3)
    n3 = radius23 * tl.sin(angle3)
    # join(join(n0, n2), join(n1, n3))[q, i, j] is n[2 i + j], so the row-major reshape gives lanes 0..3.
    return tl.reshape(tl.join(tl.join(n0, n2), tl.join(n1, n3)), (BLOCK_QUADS, 4))


@jit()
def quad_tile(element_offset, numel, BLOCK_QUADS: tl.constexpr):
    """This program's quads and the local element index / mask of each (quad, lane).

    Returns:
        quad: int64 [BLOCK_QUADS], global quad indices.
        local: int64 [BLOCK_QUADS, 4], index into this tensor of element 4 * quad + lane.
        in_bounds: bool [BLOCK_QUADS, 4], 0 <= local < numel.
    """
    offset = tl.cast(element_offset, tl.int64)
    quad = offset // 4 + tl.program_id(0).to(tl.int64) * BLOCK_QUADS + tl.arange(0, BLOCK_QUADS).to(tl.int64)
    local = (quad * 4 - offset)[:, None] + tl.arange(0, 4).to(tl.int64)[None, :]
    in_bounds = (local >= 0) & (local < numel)
    return quad, local, in_bounds


# --------------------------------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------------------------------


def is_interpreted() -> bool:
    """Whether the kernels were created in interpreter mode (TRITON_INTERPRET=1 at import time)."""
    if triton is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(uint32_to_open_uniform, InterpretedFunction)


def not_supported_reasons(device: torch.device | str) -> list[str]:
    """Why the Triton backend cannot update tensors on ``device`` (empty list: it can).

    CUDA tensors need triton; CPU tensors need triton in interpreter mode, i.e. TRITON_INTERPRET=1
    set before this module was imported.
    """
    if TRITON_IMPORT_ERROR is not None:
        return [TRITON_IMPORT_ERROR]
    device = torch.device(device)
    if device.type == "cuda":
        return []
    if device.type == "cpu":
        if is_interpreted():
            return []
        return [
            "CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before importing "
            "sgmcmc_fused (Triton reads it when the kernels are defined)"
        ]
    return [f"the Triton backend runs on CUDA tensors (CPU tensors under TRITON_INTERPRET=1), not on {device.type}"]


def unavailable_reason(device: torch.device | str | None = None) -> str | None:
    """None when the Triton backend is usable, else why not.

    With ``device`` None: usable on some device here (triton importable, and a CUDA GPU present or
    the interpreter on); otherwise: usable for tensors on ``device``.
    """
    if device is not None:
        reasons = not_supported_reasons(device)
        return "; ".join(reasons) if reasons else None
    if TRITON_IMPORT_ERROR is not None:
        return TRITON_IMPORT_ERROR
    if torch.cuda.is_available() or is_interpreted():
        return None
    return "no CUDA GPU, and the Triton interpreter is off (set TRITON_INTERPRET=1 before importing sgmcmc_fused)"


def require_triton() -> None:
    if TRITON_IMPORT_ERROR is not None:
        raise RuntimeError(f"sgmcmc_fused Triton backend unavailable: {TRITON_IMPORT_ERROR}")


# --------------------------------------------------------------------------------------------------
# Launches and registration
# --------------------------------------------------------------------------------------------------


def check_device(op: str, what: str, device: torch.device) -> None:
    reasons = not_supported_reasons(device)
    if reasons:
        raise ValueError(f"{op}: {what} is on {device}, where the Triton backend cannot run: {'; '.join(reasons)}")


def launches_skipped(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether to skip the kernels because the call only traces (fake tensors) under the interpreter.

    Why: compiled kernels go through wrap_triton, which records them into the graph when tracing; in
    interpreter mode wrap_triton hands back the bare kernel, which cannot run on fake tensors. These
    ops return nothing, so skipping is the exact fake implementation and lets torch.compile and
    opcheck exercise the ops on CPU.
    """
    if not is_interpreted():
        return False
    from torch._subclasses.fake_tensor import is_fake

    return any(is_fake(t) for t in tensors)


def device_guard(tensor: torch.Tensor):
    """Makes the tensor's CUDA device current for a launch: Triton launches on the *current* device,
    whatever device the pointers belong to. A no-op on CPU and for fake tensors (tracing launches
    nothing; the compiled graph guards devices itself)."""
    from torch._subclasses.fake_tensor import is_fake

    if tensor.device.type != "cuda" or is_fake(tensor):
        return contextlib.nullcontext()
    return torch.cuda.device(tensor.device)


#: Warps per program of every kernel here.
NUM_WARPS = 4


def compile_options() -> dict[str, object]:
    """The compile options of every launch: NUM_WARPS, and no contraction of ``a * b + c`` into a
    fused multiply-add (``enable_fp_fusion=False``, nvcc's --fmad=false), so that each operation is
    rounded on its own as docs/spec.md requires, as in the eager reference and the C++/CUDA kernels.
    (One FMA can move a result far: in pSGLD, ``g + wd * theta`` that cancels to 0 when rounded twice
    leaves a residue that the first step multiplies by lr / eps.) Under torch.compile the launch is
    traced, and Inductor compiles the kernel with its own options: those kernels may contract."""
    if torch.compiler.is_compiling():
        return {"num_warps": NUM_WARPS}
    return {"num_warps": NUM_WARPS, "enable_fp_fusion": False}


def quads_per_program() -> int:
    return _BLOCK_QUADS_INTERPRETER if is_interpreted() else _BLOCK_QUADS_GPU


def num_quads(numel: int, element_offset: int) -> int:
    """How many quads elements element_offset .. element_offset + numel - 1 touch (numel > 0)."""
    return (element_offset + numel - 1) // 4 - element_offset // 4 + 1


def register_op(name: str, fn, mutates_args: set[str], schema: str):
    """Registers ``fn`` as the operator ``name``.

    Compiled kernels: ``triton_op``, so torch.compile traces into ``fn`` and sees the kernels.
    Interpreter: wrap_triton cannot capture interpreted kernels, so a traced ``fn`` would record
    nothing and a compiled graph would silently skip the update; the op is registered opaque
    instead (``custom_op``; the fake implementation is ``fn``, which validates and skips the
    launches on fake tensors), so torch.compile calls it like any built-in operator.
    """
    if is_interpreted():
        op = torch.library.custom_op(name, fn, mutates_args=mutates_args, schema=schema)
        op.register_fake(fn)
        return op
    return triton_op(name, fn, mutates_args=mutates_args, schema=schema)
