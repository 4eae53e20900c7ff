"""The compiled extension as a user meets it: every CPU kernel variant on this
machine, and a package that still imports when _C is missing."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from sgmcmc_fused.kernels import _library

pytestmark = pytest.mark.usefixtures("extension_loaded")


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


def cpu_supports(isa: str) -> bool:
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    need = {"avx2": ["avx2", "fma"], "avx512": ["avx512f", "avx512dq", "avx512bw", "avx512vl"]}[isa]
    return all(f" {flag}" in flags for flag in need)


VARIANT_CHECK = """
    import torch
    from sgmcmc_fused.kernels.langevin import reference
    from sgmcmc_fused.optim import PSGLD
    assert torch.ops.sgmcmc_fused.cpu_isa() == "{isa}", torch.ops.sgmcmc_fused.cpu_isa()
    # The noise alone, at awkward offsets and across the 2^32 quad boundary.
    for offset, numel in [(0, 4), (3, 1023), (5, 100_003), (4 * (2**32) - 6, 64)]:
        got = torch.empty(numel)
        torch.ops.sgmcmc_fused.philox_normal_(got, 12345678901234, 3, 7, offset)
        want = reference.philox_normal(numel, 12345678901234, 3, 7, offset)
        assert (got - want).abs().max().item() <= 1e-6, (offset, (got - want).abs().max().item())
    # A few steps of every dtype against the eager optimizer.
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        g = torch.Generator().manual_seed(0)
        start = [torch.randn(n, generator=g).to(dtype) for n in (1, 5, 4099)]
        grads = [[torch.randn(n, generator=g).to(dtype) for n in (1, 5, 4099)] for _ in range(3)]
        runs = []
        for impl in ("cpu", "eager"):
            params = [torch.nn.Parameter(p.clone()) for p in start]
            opt = PSGLD(params, lr=1e-3, num_data=100, weight_decay=1e-2, seed=5, impl=impl)
            for step in grads:
                for p, gr in zip(params, step):
                    p.grad = gr
                opt.step()
            runs.append(params)
        tol = {{torch.float16: 2e-3, torch.bfloat16: 1.6e-2}}.get(dtype, 1e-6)
        for a, b in zip(*runs):
            err = ((a.double() - b.double()).abs() / (1 + b.double().abs())).max().item()
            assert err <= tol, (dtype, err)
    print("ok")
"""


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_cpu_kernel_variant_matches_reference(isa):
    if isa != "baseline" and not cpu_supports(isa):
        pytest.skip(f"this CPU has no {isa}")
    result = run_python(VARIANT_CHECK.format(isa=isa), SGMCMC_FUSED_CPU_ISA=isa)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_unknown_cpu_variant_is_refused_clearly():
    result = run_python(
        "import torch, sgmcmc_fused; torch.ops.sgmcmc_fused.philox_normal_(torch.empty(4), 1, 0, 0, 0)",
        SGMCMC_FUSED_CPU_ISA="sse9",
    )
    assert result.returncode != 0
    assert "SGMCMC_FUSED_CPU_ISA must be one of baseline, avx2, avx512; got 'sse9'" in result.stderr


def test_package_imports_without_the_extension_and_says_why():
    code = """
        import sys, warnings
        sys.modules["sgmcmc_fused._C"] = None  # as if it had never been built
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import sgmcmc_fused
        assert any("could not be loaded" in str(w.message) for w in caught), [str(w.message) for w in caught]
        status = sgmcmc_fused.availability()
        assert "could not be loaded" in status["cpu"] and status["eager"] == "available", status
        import torch
        from sgmcmc_fused.optim import PSGLD
        p = torch.nn.Parameter(torch.ones(3))
        p.grad = torch.ones(3)
        PSGLD([p], lr=0.01, num_data=10, add_noise=False).step()  # auto falls back to the eager reference
        assert torch.allclose(p.detach(), torch.full((3,), 1 - 0.01 / (1e-5 + 0.1))), p
        try:
            PSGLD([p], lr=0.1, num_data=10, impl="cpu").step()
        except ValueError as exc:
            assert "impl='cpu' cannot serve cpu tensors" in str(exc) and "could not be loaded" in str(exc), exc
        else:
            raise AssertionError("impl='cpu' without _C did not raise")
        print("ok")
    """
    result = run_python(code)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_build_info_matches_the_running_torch():
    info = __import__("sgmcmc_fused._build_info", fromlist=["TORCH_VERSION"])
    assert info.TORCH_VERSION == torch.__version__
    assert _library.STALE_REASON is None, _library.STALE_REASON
