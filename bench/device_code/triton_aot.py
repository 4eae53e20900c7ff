"""Compiles the Triton kernels ahead of time for real GPU targets (triton.compile with
a GPUTarget; no GPU, no driver) in the specialisations the launches use, and reads
their resources from the cubins. The process must not have TRITON_INTERPRET set when
the kernels are defined (device_code_report.py unsets it before importing them).

Each case gives the kernel's arguments as a launch would: tensors for their dtype,
Python numbers for their Triton type (triton.runtime.jit.mangle_type decides, as at a
launch), None for an absent pointer, and the constexpr values the launch code picks
for the GPU (block sizes from the same helpers), compiled with the launches' options
(triton_common.compile_options).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .resources import KernelResources, combine, read_binary, spills_from_ptxas_log

#: A paper-sized LSTM step (medium PTB: batch 20, 650 units) for the cell kernels' tiles.
CELL_SHAPE = (20, 650)


@dataclass
class TritonCase:
    label: str
    kernel: object  # triton.runtime.jit.JITFunction
    args: dict[str, object]

    def source(self):
        from triton.compiler import ASTSource
        from triton.runtime.jit import mangle_type

        signature, constexprs, attrs = {}, {}, {}
        for index, param in enumerate(self.kernel.params):
            value = self.args[param.name]
            if param.is_constexpr or value is None:
                signature[param.name] = "constexpr"
                constexprs[param.name] = value
            else:
                signature[param.name] = mangle_type(value)
                if isinstance(value, torch.Tensor):  # allocations are 16-byte aligned, as at run time
                    attrs[(index,)] = [["tt.divisibility", 16]]
        return ASTSource(fn=self.kernel, signature=signature, constexprs=constexprs, attrs=attrs)


def _tensor(dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(4, dtype=dtype)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def step_cases() -> list[TritonCase]:
    from sgmcmc_fused.kernels import triton_common as common
    from sgmcmc_fused.kernels.langevin import triton as step

    def case(dtype, preconditioned, weight_decay, noise):
        args = {name: 0.5 for name in step._langevin_step_kernel.arg_names if name.endswith(("_hi", "_mid", "_lo"))}
        state = torch.float64 if dtype == torch.float64 else torch.float32
        args.update(
            param_ptr=_tensor(dtype),
            grad_ptr=_tensor(dtype),
            square_avg_ptr=_tensor(state) if preconditioned else None,
            numel=1 << 20,
            element_offset=0,
            seed=2**40 + 1,
            stream_id=3,
            step=7,
            PRECONDITIONED=preconditioned,
            HAS_WEIGHT_DECAY=weight_decay,
            ADD_NOISE=noise,
            BLOCK_QUADS=common.quads_per_program(),
        )
        flags = ", ".join(f for f, on in (("weight decay", weight_decay), ("noise", noise)) if on) or "plain"
        label = f"{'psgld' if preconditioned else 'sgld'} step {_dtype_name(dtype)} ({flags})"
        return TritonCase(label, step._langevin_step_kernel, args)

    normal = TritonCase(
        "philox_normal float32",
        step._philox_normal_kernel,
        dict(
            out_ptr=_tensor(torch.float32),
            numel=1 << 20,
            element_offset=0,
            seed=2**40 + 1,
            stream_id=3,
            step=7,
            BLOCK_QUADS=common.quads_per_program(),
        ),
    )
    return [
        *(case(dtype, True, True, True) for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)),
        case(torch.float32, True, False, False),
        case(torch.float32, False, True, True),
        normal,
    ]


def lstm_cases() -> list[TritonCase]:
    from sgmcmc_fused.kernels import triton_common as common
    from sgmcmc_fused.kernels.lstm import triton as lstm

    batch, hidden = CELL_SHAPE
    _, block_b, block_h = lstm._cell_grid(batch, hidden)
    tiles = dict(batch=batch, hidden=hidden, step=3, BLOCK_B=block_b, BLOCK_H=block_h)

    def mask(dtype, kind):
        args = dict(
            weight_ptr=_tensor(dtype),
            out_ptr=_tensor(dtype),
            numel=4 * hidden * hidden,
            seed=2**40 + 1,
            stream_id=lstm.MASK_STREAM_BIT | 3,
            call=5,
            p=0.3,
            scale=1.25,
            KIND=kind,
            BLOCK_QUADS=common.quads_per_program(),
        )
        kind_name = "bernoulli" if kind == lstm.BERNOULLI else "gaussian"
        return TritonCase(
            f"dropconnect_weight {_dtype_name(dtype)} {kind_name}",
            lstm._dropconnect_weight_kernel,
            args,
        )

    def forward(dtype, lengths):
        t = _tensor(dtype)
        args = dict(
            gates_ptr=t,
            bias_ptr=t,
            c_prev_ptr=t,
            h_prev_ptr=t if lengths else None,
            lengths_ptr=_tensor(torch.int64) if lengths else None,
            h_ptr=t,
            c_ptr=t,
            act_ptr=t,
            HAS_BIAS=True,
            HAS_LENGTHS=lengths,
            **tiles,
        )
        label = f"lstm_cell_forward {_dtype_name(dtype)}{' (lengths)' if lengths else ''}"
        return TritonCase(label, lstm._lstm_cell_forward_kernel, args)

    def backward(dtype, lengths):
        t = _tensor(dtype)
        args = dict(
            grad_h_ptr=t,
            grad_out_ptr=t if lengths else None,
            grad_c_ptr=t,
            act_ptr=t,
            c_prev_ptr=t,
            c_ptr=t,
            lengths_ptr=_tensor(torch.int64) if lengths else None,
            grad_gates_ptr=t,
            grad_c_prev_ptr=t,
            grad_h_pass_ptr=t if lengths else None,
            HAS_GRAD_OUT=lengths,
            HAS_LENGTHS=lengths,
            **tiles,
        )
        label = f"lstm_cell_backward {_dtype_name(dtype)}{' (output grad, lengths)' if lengths else ''}"
        return TritonCase(label, lstm._lstm_cell_backward_kernel, args)

    return [
        mask(torch.float32, lstm.BERNOULLI),
        mask(torch.float32, lstm.GAUSSIAN),
        mask(torch.bfloat16, lstm.BERNOULLI),
        mask(torch.float64, lstm.GAUSSIAN),
        *(forward(dtype, False) for dtype in (torch.float32, torch.bfloat16, torch.float64)),
        forward(torch.float32, True),
        *(backward(dtype, False) for dtype in (torch.float32, torch.bfloat16, torch.float64)),
        backward(torch.float32, True),
    ]


def compile_case(case: TritonCase, arch: int, cubin: Path) -> tuple[list[KernelResources], str | None]:
    import triton
    from triton.backends.compiler import GPUTarget

    from sgmcmc_fused.kernels.triton_common import compile_options

    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):  # TRITON_DUMP_PTXAS_LOG prints ptxas -v here
            compiled = triton.compile(case.source(), target=GPUTarget("cuda", arch, 32), options=compile_options())
    except Exception as e:  # noqa: BLE001 - any failure to lower is what the report is for
        return [], f"{case.label} for sm_{arch}: {type(e).__name__}: {e}"
    cubin.write_bytes(compiled.asm["cubin"])
    rows = combine(read_binary(cubin, default_arch=f"sm_{arch}"), spills_from_ptxas_log(log.getvalue()), "triton")
    for row in rows:
        row.kernel = case.label
    return rows, None


def compile_all(archs: list[int]) -> tuple[list[KernelResources], list[str]]:
    """Resources of every case on every arch, and the failures. Uses a fresh Triton
    cache so that ptxas runs (and logs) for every case."""
    rows, errors = [], []
    with tempfile.TemporaryDirectory(prefix="triton_aot_") as tmp:
        os.environ["TRITON_CACHE_DIR"] = str(Path(tmp) / "cache")
        os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
        try:
            cases = step_cases() + lstm_cases()
        except Exception as e:  # noqa: BLE001
            return [], [f"defining the Triton cases failed: {type(e).__name__}: {e}"]
        for index, case in enumerate(cases):
            for arch in archs:
                found, error = compile_case(case, arch, Path(tmp) / f"case{index}_sm{arch}.cubin")
                rows += found
                errors += [error] if error else []
    return rows, errors
