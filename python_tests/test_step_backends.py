"""Every fused backend against the eager reference (docs/spec.md#agreement-between-backends): parameters and every
state entry after 7 steps, all dtypes, awkward sizes, many tensors."""

import pytest
import torch
from conftest import BACKEND_DEVICE_PAIRS, _needs_gpu, require_backend
from step_cases import SIZES, SMALL_SIZES, grad_sequence, make_params, run_optimizer
from tolerances import assert_close, assert_low_precision_close

from sgmcmc_fused.optim import PSGLD, SGLD

HYPER = dict(lr=2e-3, num_data=5000, weight_decay=1e-3, temperature=0.7, seed=20240517)
OPTIMIZERS = {"psgld": (PSGLD, dict(alpha=0.95, eps=1e-5)), "sgld": (SGLD, {})}


def sizes_for(backend, device):
    return SMALL_SIZES if (backend == "triton" and device == "cpu") else SIZES


def assert_states_equal_reference(opt, ref, *, what):
    for i, (p, q) in enumerate(zip(opt.param_groups[0]["params"], ref.param_groups[0]["params"], strict=False)):
        s, r = opt.state[p], ref.state[q]
        assert s.keys() == r.keys(), what
        for key in ("step", "stream_id", "element_offset"):
            assert s[key] == r[key], f"{what}: state[{i}][{key}]"
        if "square_avg" in s:
            assert_close(s["square_avg"], r["square_avg"], what=f"{what}: square_avg[{i}]")


@pytest.mark.parametrize("method", OPTIMIZERS)
@pytest.mark.parametrize("add_noise", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend,device", BACKEND_DEVICE_PAIRS)
def test_full_precision_matches_eager(backend, device, dtype, add_noise, method):
    require_backend(backend, device, [dtype])
    cls, extra = OPTIMIZERS[method]
    sizes = sizes_for(backend, device)
    grads = grad_sequence(sizes, dtype, device)
    fused = run_optimizer(
        cls, make_params(sizes, dtype, device), grads, impl=backend, add_noise=add_noise, **extra, **HYPER
    )
    eager = run_optimizer(
        cls, make_params(sizes, dtype, device), grads, impl="eager", add_noise=add_noise, **extra, **HYPER
    )
    for i, (p, q) in enumerate(zip(fused.param_groups[0]["params"], eager.param_groups[0]["params"], strict=False)):
        assert_close(p, q, what=f"{backend} {method} param[{i}] (numel {p.numel()})")
    assert_states_equal_reference(fused, eager, what=f"{backend} {method}")
    # The noise did move the parameters (and by the right amount): a run without
    # it differs by about sqrt(2 lr G T / N) per step.
    if add_noise:
        quiet = run_optimizer(
            cls, make_params(sizes, dtype, device), grads, impl="eager", add_noise=False, **extra, **HYPER
        )
        moved = fused.param_groups[0]["params"][4] - quiet.param_groups[0]["params"][4]
        assert moved.abs().max() > 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend,device", [("eager", "cpu"), *BACKEND_DEVICE_PAIRS])
def test_each_operation_is_rounded_on_its_own(backend, device, dtype):
    """g' = g + wd * theta rounded twice is exactly 0 here (fl(0.1 * 10) = 1 in fp32 and fp64), so the
    first pSGLD step leaves theta = 10. Contracted into one FMA, g' would keep the rounding residue of
    0.1 (1.5e-8 in fp32), which the step multiplies by lr / (eps + sqrt(V)) ~ 1e5: theta 9.9985. A GPU
    kernel that lets the compiler fuse multiply and add fails here (on the CPU the builds forbid it)."""
    require_backend(backend, device, [dtype])
    theta = torch.nn.Parameter(torch.full((8,), 10.0, dtype=dtype, device=device))
    theta.grad = torch.full((8,), -1.0, dtype=dtype, device=device)
    opt = PSGLD([theta], lr=1.0, alpha=0.99, eps=1e-5, weight_decay=0.1, num_data=1, add_noise=False, impl=backend)
    opt.step()
    assert torch.equal(theta.detach().cpu(), torch.full((8,), 10.0, dtype=dtype))
    sgld = torch.nn.Parameter(torch.full((8,), 10.0, dtype=dtype, device=device))
    sgld.grad = torch.full((8,), -1.0, dtype=dtype, device=device)
    SGLD([sgld], lr=1e5, weight_decay=0.1, num_data=1, add_noise=False, impl=backend).step()
    assert torch.equal(sgld.detach().cpu(), torch.full((8,), 10.0, dtype=dtype))


@pytest.mark.parametrize("method", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend,device", BACKEND_DEVICE_PAIRS)
def test_low_precision_within_twice_eager_error(backend, device, dtype, method):
    require_backend(backend, device, [dtype])
    cls, extra = OPTIMIZERS[method]
    sizes = sizes_for(backend, device)
    grads_low = grad_sequence(sizes, dtype, device)
    grads_fp32 = [[g.float() for g in step] for step in grads_low]
    params_low = make_params(sizes, dtype, device)
    fp32_start = [torch.nn.Parameter(p.detach().float()) for p in params_low]
    fused = run_optimizer(cls, params_low, grads_low, impl=backend, **extra, **HYPER)
    eager = run_optimizer(cls, make_params(sizes, dtype, device), grads_low, impl="eager", **extra, **HYPER)
    ref32 = run_optimizer(cls, fp32_start, grads_fp32, impl="eager", **extra, **HYPER)
    for i, (f, e, r) in enumerate(
        zip(
            fused.param_groups[0]["params"],
            eager.param_groups[0]["params"],
            ref32.param_groups[0]["params"],
            strict=False,
        )
    ):
        assert f.dtype == dtype
        assert_low_precision_close(f, e, r, what=f"{backend} {method} {dtype} param[{i}]")
        if method == "psgld":
            assert fused.state[f]["square_avg"].dtype == torch.float32


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE_PAIRS)
def test_many_tensors_in_one_call(backend, device):
    """More tensors (and blocks) than one CUDA launch table holds, mixed sizes."""
    require_backend(backend, device)
    g = torch.Generator().manual_seed(3)
    count = 300 if not (backend == "triton" and device == "cpu") else 60
    sizes = [int(s) for s in torch.randint(0, 3000, (count,), generator=g)]
    sizes[7] = 200_000 if device == "cuda" else sizes[7]  # a tensor spanning several chunks
    grads = grad_sequence(sizes, torch.float32, device, steps=3)
    fused = run_optimizer(PSGLD, make_params(sizes, torch.float32, device), grads, impl=backend, **HYPER)
    eager = run_optimizer(PSGLD, make_params(sizes, torch.float32, device), grads, impl="eager", **HYPER)
    for i, (p, q) in enumerate(zip(fused.param_groups[0]["params"], eager.param_groups[0]["params"], strict=False)):
        assert_close(p, q, what=f"{backend} param[{i}] of {count}")
    assert_states_equal_reference(fused, eager, what=backend)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE_PAIRS)
def test_non_contiguous_parameters_are_stepped_in_logical_order(backend, device):
    require_backend(backend, device)
    base = torch.randn(37, 29, device=device)
    fused_p = torch.nn.Parameter(base.clone().t())  # non-contiguous view
    eager_p = torch.nn.Parameter(base.clone().t().contiguous())
    grad = torch.randn(29, 37, device=device)
    assert not fused_p.is_contiguous()
    grads = [[grad.t().contiguous().t()] for _ in range(3)]  # non-contiguous grads as well
    run_optimizer(PSGLD, [fused_p], grads, impl=backend, **HYPER)
    run_optimizer(PSGLD, [eager_p], [[grad.contiguous()]] * 3, impl="eager", **HYPER)
    assert not fused_p.is_contiguous()  # updated in place, layout kept
    assert_close(fused_p.detach().contiguous(), eager_p.detach(), what="non-contiguous param")


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE_PAIRS)
def test_sharded_parameter_equals_whole(backend, device):
    """Two shards with their element offsets take exactly the whole tensor's step."""
    require_backend(backend, device)
    whole = torch.nn.Parameter(torch.randn(10_001, device=device))
    shards = [torch.nn.Parameter(whole.detach()[:4097].clone()), torch.nn.Parameter(whole.detach()[4097:].clone())]
    grads = grad_sequence([10_001], torch.float32, device, steps=4)
    opt_whole = PSGLD([whole], impl=backend, **HYPER)
    opt_shards = [PSGLD([s], impl=backend, **HYPER) for s in shards]
    opt_shards[1].set_element_offset(shards[1], 4097)
    for (g,) in grads:
        whole.grad = g.clone()
        shards[0].grad, shards[1].grad = g[:4097].clone(), g[4097:].clone()
        opt_whole.step()
        for o in opt_shards:
            o.step()
    assert torch.equal(torch.cat([s.detach() for s in shards]), whole.detach())


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE_PAIRS)
def test_bf16_subnormal_parameters_are_stepped_exactly(backend, device):
    """bf16 subnormals (below 1.2e-38) widen to fp32 exactly: SGD steps of lr 1 on them give eager's bits,
    and a zero gradient leaves them as they were."""
    step = require_backend(backend, device, [torch.bfloat16]).sgld_step_
    params = torch.tensor([0.0, 1e-39, 5e-39, -3e-39, 1e-40, 1.0], dtype=torch.bfloat16)
    grads = torch.tensor([-1e-40, 0.0, 0.0, 2e-39, 0.0, 0.0], dtype=torch.bfloat16)
    stepped, expected = params.clone().to(device), params.clone()
    hyper = dict(lr=1.0, weight_decay=0.0, temperature=1.0, num_data=1, add_noise=False, seed=0)
    step([stepped], [grads.to(device)], [0], [0], [0], **hyper)
    require_backend("eager", "cpu").sgld_step_([expected], [grads], [0], [0], [0], **hyper)
    assert torch.equal(stepped.cpu().view(torch.int16), expected.view(torch.int16)), (stepped, expected)
    assert torch.equal(stepped.cpu()[1:3], params[1:3]) and torch.equal(stepped.cpu()[4:], params[4:])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=_needs_gpu)])
def test_triton_refuses_fp64_hyperparameters_it_cannot_carry_exactly(device):
    """The Triton kernel gets an fp64 hyperparameter as three fp32 parts; below about 1e-29 they lose bits
    (eps = 1e-50 became 0, and the parameter NaN), so such a value is refused for fp64 tensors, while one
    above it (1e-20) steps as eager does."""
    step = require_backend("triton", device, [torch.float64]).psgld_step_
    hyper = dict(lr=1e-3, alpha=0.99, weight_decay=0.0, temperature=1.0, num_data=1, add_noise=True, seed=3)

    def call(backend_step, eps, dev):
        p = torch.tensor([1.0, 2.0], dtype=torch.float64, device=dev)
        g = torch.tensor([0.0, 1.0], dtype=torch.float64, device=dev)
        backend_step([p], [g], [torch.zeros_like(p)], [0], [0], [0], eps=eps, **hyper)
        return p.cpu()

    with pytest.raises(ValueError, match=r"eps = 1e-50 is too small for the Triton kernel to carry in fp64"):
        call(step, 1e-50, device)
    eager = require_backend("eager", "cpu").psgld_step_
    assert_close(call(step, 1e-20, device), call(eager, 1e-20, "cpu"), what="eps 1e-20")
