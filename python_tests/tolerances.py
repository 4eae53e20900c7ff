"""Agreement rules of docs/spec.md#agreement-between-backends as assertions that print the first mismatches."""

from __future__ import annotations

import torch

#: fp32/fp64 results equal the eager reference to this relative tolerance; the
#: absolute floor covers values near 0 and the last-bit differences of
#: transcendentals in the fp32 noise draw.
RTOL = 1e-6
ATOL = 1e-6


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, *, rtol: float = RTOL, atol: float = ATOL, what: str = ""
):
    """Elementwise |actual - expected| <= atol + rtol * |expected|, in fp64, with a report."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    a = actual.detach().double().cpu().flatten()
    e = expected.detach().double().cpu().flatten()
    bad = ((a - e).abs() > atol + rtol * e.abs()) | (a.isnan() != e.isnan())
    if bad.any():
        idx = bad.nonzero().flatten()[:5].tolist()
        rows = ", ".join(f"[{i}] {a[i].item():.9g} vs {e[i].item():.9g}" for i in idx)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.numel()} elements differ beyond atol={atol} rtol={rtol}; "
            f"max abs diff {(a - e).abs().max().item():.3g}; first: {rows}"
        )


def _mantissa_bits(dtype: torch.dtype) -> int:
    return {torch.float16: 10, torch.bfloat16: 7, torch.float32: 23, torch.float64: 52}[dtype]


def assert_low_precision_close(
    fused: torch.Tensor, eager_low: torch.Tensor, reference_fp32: torch.Tensor, *, what: str = ""
) -> None:
    """Low-precision rule of docs/spec.md#agreement-between-backends:
    |fused - ref32| <= 2 * max|eager_low - ref32| + 1 ulp (elementwise ulp)."""
    f = fused.detach().double().cpu().flatten()
    e = eager_low.detach().double().cpu().flatten()
    r = reference_fp32.detach().double().cpu().flatten()
    eager_err = (e - r).abs().max().item() if r.numel() else 0.0
    bound = 2.0 * eager_err + 2.0 ** -_mantissa_bits(fused.dtype) * r.abs().clamp_min(1e-30)
    err = (f - r).abs()
    bad = err > bound
    if bad.any():
        i = bad.nonzero().flatten()[0].item()
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {f.numel()} elements beyond 2*eager error ({eager_err:.3g}) + 1 ulp; "
            f"first [{i}] fused {f[i].item():.6g}, eager {e[i].item():.6g}, fp32 reference {r[i].item():.6g}"
        )
