"""The CUDA Langevin step kernel (csrc/cuda/langevin_step_kernels.cuh), executed on
the host under emulation with AddressSanitizer and UBSan, through the product's own
multi-tensor-apply packing, against the eager oracle
(docs/spec.md#langevin-step, docs/spec.md#agreement-between-backends).

The ``small`` variant shrinks the work split (2 threads a block, 3 quads a chunk,
4 rows and 5 blocks a table), so that a thread loops within its chunk, tables fill
up, and a tensor continues across tables, on inputs the tests can afford.

What emulation does not cover: device code generation (nvcc's FMA contraction, the
real sqrtf/logf/sincosf, vector instructions), races and ordering that sequential
threads hide (apart from the forward/reverse comparison), and the launch statements
of the .cu files (stream, device guard); those need a GPU (bench/gpu_check.sh runs
the same comparisons there, and compute-sanitizer). bench/device_code_report.py
compiles the kernels for sm_80/sm_90 and checks their resources.
"""

from __future__ import annotations

import pytest
import torch
from emulated.client import FORWARD, REVERSE
from step_cases import grad_sequence
from tolerances import assert_close, assert_low_precision_close

from sgmcmc_fused.kernels.langevin import reference

pytestmark = pytest.mark.emulated

SIZES = (0, 1, 3, 4, 5, 1023, 278011)
HYPER = dict(lr=2e-3, weight_decay=1e-3, temperature=0.7, num_data=5000, seed=20240517)
PSGLD_ONLY = dict(alpha=0.95, eps=1e-5)
STEPS = 3
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


class StepCase:
    """Parameters, state and a gradient sequence for one step call, with the call's
    per-tensor lists. Tensors are made at a storage offset of 1 element when
    `misaligned`, so their data pointers miss the 8/16-byte alignment of a quad."""

    def __init__(self, sizes, dtype, *, offsets=None, misaligned=False, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.sizes = list(sizes)
        self.offsets = list(offsets) if offsets is not None else [0] * len(self.sizes)
        self.dtype = dtype
        self.misaligned = misaligned
        self.initial = [torch.randn(n, generator=g).to(dtype) for n in self.sizes]
        self.grads = grad_sequence(self.sizes, dtype, "cpu", steps=STEPS, seed=seed + 1)

    def _placed(self, t: torch.Tensor) -> torch.Tensor:
        if not self.misaligned:
            return t.clone()
        base = torch.zeros(t.numel() + 1, dtype=t.dtype)
        view = base[1:]
        view.copy_(t)
        return view

    def fresh(self, dtype=None):
        """Params and square_avgs (zeros, in the math dtype) in the case's placement."""
        dtype = dtype or self.dtype
        params = [self._placed(p.to(dtype)) for p in self.initial]
        state = [self._placed(torch.zeros(n, dtype=reference.opmath_dtype(dtype))) for n in self.sizes]
        return params, state

    def grads_at(self, step, dtype=None):
        return [self._placed(g.to(dtype or self.dtype)) for g in self.grads[step]]

    def lists(self, step):
        return dict(
            stream_ids=list(range(len(self.sizes))), element_offsets=self.offsets, steps=[step] * len(self.sizes)
        )


def run_emulated(kernels, variant, method, case, *, add_noise, order):
    params, state = case.fresh()
    for t in range(STEPS):
        lists = case.lists(t)
        if method == "psgld":
            kernels.call(
                variant,
                "psgld_step_",
                params,
                case.grads_at(t),
                state,
                lists["stream_ids"],
                lists["element_offsets"],
                lists["steps"],
                add_noise=add_noise,
                order=order,
                **PSGLD_ONLY,
                **HYPER,
            )
        else:
            kernels.call(
                variant,
                "sgld_step_",
                params,
                case.grads_at(t),
                lists["stream_ids"],
                lists["element_offsets"],
                lists["steps"],
                add_noise=add_noise,
                order=order,
                **HYPER,
            )
    return params, state


def run_eager(method, case, *, add_noise, dtype=None):
    params, state = case.fresh(dtype)
    for t in range(STEPS):
        lists = case.lists(t)
        grads = case.grads_at(t, dtype)
        if method == "psgld":
            reference.psgld_step_(params, grads, state, **lists, add_noise=add_noise, **PSGLD_ONLY, **HYPER)
        else:
            reference.sgld_step_(params, grads, **lists, add_noise=add_noise, **HYPER)
    return params, state


def assert_matches_eager(kernels, variant, method, case, *, add_noise=True):
    """Emulated forward and reverse runs are bit-identical and match the oracle."""
    params, state = run_emulated(kernels, variant, method, case, add_noise=add_noise, order=FORWARD)
    params_rev, state_rev = run_emulated(kernels, variant, method, case, add_noise=add_noise, order=REVERSE)
    for i, (a, b) in enumerate(zip(params + state, params_rev + state_rev, strict=True)):
        assert torch.equal(a, b), f"{variant} {method}: tensor {i} differs between forward and reverse thread order"
    eager_params, eager_state = run_eager(method, case, add_noise=add_noise)
    low_precision = case.dtype in (torch.float16, torch.bfloat16)
    if low_precision:
        ref32_params, _ = run_eager(method, case, add_noise=add_noise, dtype=torch.float32)
    for i, (p, e) in enumerate(zip(params, eager_params, strict=True)):
        what = f"{variant} {method} {case.dtype} param[{i}] (numel {p.numel()}, offset {case.offsets[i]})"
        if low_precision:
            assert_low_precision_close(p, e, ref32_params[i], what=what)
        else:
            assert_close(p, e, what=what)
    if method == "psgld":
        for i, (v, e) in enumerate(zip(state, eager_state, strict=True)):
            tol = {} if not low_precision else dict(rtol=2e-3, atol=1e-6)  # V of fp16/bf16 grads of rounded params
            assert_close(v, e, what=f"{variant} {method} {case.dtype} square_avg[{i}]", **tol)
    return params


@pytest.mark.parametrize("add_noise", [True, False], ids=["noise", "no_noise"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method", ["psgld", "sgld"])
def test_step_matches_eager_for_every_dtype_and_size(emulated_kernels, method, dtype, add_noise):
    case = StepCase(SIZES, dtype)
    params = assert_matches_eager(emulated_kernels, "product", method, case, add_noise=add_noise)
    if add_noise:  # the noise did move the parameters, by about sqrt(2 lr G T / N) per step
        quiet, _ = run_eager(method, case, add_noise=False)
        assert (params[5].double() - quiet[5].double()).abs().max() > 1e-4


@pytest.mark.parametrize("misaligned", [False, True], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("method", ["psgld", "sgld"])
def test_odd_element_offsets_and_misaligned_pointers(emulated_kernels, method, dtype, misaligned):
    """Partial leading and trailing quads (offset % 4 != 0), a quad index past 2^32
    (counter word 1), and data pointers off the vector alignment."""
    sizes = (1, 3, 4, 5, 1023, 9001, 17)
    offsets = (1, 2, 3, 5, 4097, 2**34 + 3, 4)
    assert_matches_eager(
        emulated_kernels, "product", method, StepCase(sizes, dtype, offsets=offsets, misaligned=misaligned)
    )


@pytest.mark.parametrize("method", ["psgld", "sgld"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_table_overflow_and_tensors_across_tables(emulated_kernels, method, dtype):
    """With the work split shrunk (4 rows, 5 blocks a table), 56 tensors fill tables
    by rows (runs of one-chunk tensors) and by blocks, and the large ones continue from
    one table into the next."""
    assert emulated_kernels.call("small", "work_split")[:4] == [2, 3, 4, 5]
    g = torch.Generator().manual_seed(7)
    sizes = [int(s) for s in torch.randint(0, 60, (40,), generator=g)]
    sizes[3], sizes[17], sizes[18] = 1000, 241, 0  # 84 and 21 chunks; an empty tensor between
    offsets = [int(o) for o in torch.randint(0, 9, (40,), generator=g)]
    sizes += [1, 2, 3, 4] * 4  # one chunk each at offset 0: four fill a table's rows before its blocks
    offsets += [0] * 16
    case = StepCase(sizes, dtype, offsets=offsets, misaligned=True, seed=5)
    assert_matches_eager(emulated_kernels, "small", method, case)


def test_mixed_dtypes_in_one_call_are_grouped(emulated_kernels):
    """One call over tensors of all four dtypes: each dtype's series of tables updates
    exactly its own tensors (compared with per-dtype eager steps)."""
    dtypes = [torch.float16, torch.float32, torch.float64, torch.bfloat16] * 3
    g = torch.Generator().manual_seed(11)
    sizes = [int(s) for s in torch.randint(1, 50, (len(dtypes),), generator=g)]
    params = [torch.randn(n, generator=g).to(d) for n, d in zip(sizes, dtypes, strict=True)]
    grads = [torch.randn(n, generator=g).to(d) for n, d in zip(sizes, dtypes, strict=True)]
    state = [torch.zeros(n, dtype=reference.opmath_dtype(d)) for n, d in zip(sizes, dtypes, strict=True)]
    lists = dict(stream_ids=list(range(len(sizes))), element_offsets=[0] * len(sizes), steps=[2] * len(sizes))
    eager_params, eager_state = [p.clone() for p in params], [v.clone() for v in state]
    emulated_kernels.call(
        "small",
        "psgld_step_",
        params,
        grads,
        state,
        *lists.values(),
        add_noise=True,
        order=FORWARD,
        **PSGLD_ONLY,
        **HYPER,
    )
    reference.psgld_step_(eager_params, grads, eager_state, **lists, add_noise=True, **PSGLD_ONLY, **HYPER)
    for i, (p, e) in enumerate(zip(params, eager_params, strict=True)):
        assert p.dtype == dtypes[i]
        # one step from the same inputs: fp16/bf16 may round the other way (one ulp)
        ulp = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}.get(p.dtype)
        assert_close(p, e, **(dict(rtol=ulp, atol=1e-6) if ulp else {}), what=f"{p.dtype} param[{i}]")
    for i, (v, e) in enumerate(zip(state, eager_state, strict=True)):
        assert_close(v, e, what=f"square_avg[{i}]")


def test_shards_with_element_offsets_equal_the_whole(emulated_kernels):
    """Two shards stepped with their element offsets (4097: mid-quad) equal the whole tensor."""
    case = StepCase([10_001], torch.float32, seed=3)
    whole, whole_state = case.fresh()
    lo, hi = whole[0][:4097].clone(), whole[0][4097:].clone()
    lo_state, hi_state = torch.zeros_like(lo), torch.zeros_like(hi)
    for t in range(STEPS):
        g = case.grads_at(t)[0]
        common = dict(add_noise=True, order=FORWARD, **PSGLD_ONLY, **HYPER)
        emulated_kernels.call("product", "psgld_step_", whole, [g], whole_state, [0], [0], [t], **common)
        emulated_kernels.call(
            "small",
            "psgld_step_",
            [lo, hi],
            [g[:4097], g[4097:]],
            [lo_state, hi_state],
            [0, 0],
            [0, 4097],
            [t, t],
            **common,
        )
    assert torch.equal(torch.cat([lo, hi]), whole[0])
    assert torch.equal(torch.cat([lo_state, hi_state]), whole_state[0])


def test_bad_inputs_are_refused_by_the_shared_checks(emulated_kernels):
    """The emulated glue runs the same checks as the CUDA op: a mismatch raises, and
    nothing is written."""
    p = torch.zeros(5)
    with pytest.raises(RuntimeError, match=r"grads\[0\] has shape"):
        emulated_kernels.call(
            "product", "sgld_step_", [p], [torch.ones(4)], [0], [0], [0], add_noise=True, order=FORWARD, **HYPER
        )
    with pytest.raises(RuntimeError, match="overflows int64"):
        emulated_kernels.call(
            "product",
            "sgld_step_",
            [p],
            [torch.ones(5)],
            [0],
            [2**63 - 3],
            [0],
            add_noise=True,
            order=FORWARD,
            **HYPER,
        )
    assert torch.equal(p, torch.zeros(5))
