"""The registered ops themselves: schemas (opcheck), torch.compile, the build's
dispatch registrations, and clear errors for bad input."""

import importlib

import pytest
import torch
from conftest import DEVICES, require_backend
from tolerances import assert_close

from sgmcmc_fused.kernels import _library
from sgmcmc_fused.kernels.langevin import reference
from sgmcmc_fused.optim import PSGLD

pytestmark = pytest.mark.usefixtures("extension_loaded")

SCALARS = dict(lr=1e-3, alpha=0.99, eps=1e-5, weight_decay=1e-4, temperature=1.0, num_data=100, add_noise=True, seed=7)
SGLD_SCALARS = {k: v for k, v in SCALARS.items() if k not in ("alpha", "eps")}


def psgld_args(device="cpu", dtype=torch.float32, sizes=(5, 17)):
    """pSGLD op arguments: params, grads, square_avgs, stream_ids, element_offsets, steps."""
    params = [torch.randn(n, device=device, dtype=dtype) for n in sizes]
    grads = [torch.randn_like(p) for p in params]
    state = reference.opmath_dtype(dtype)
    square_avgs = [torch.rand(n, device=device, dtype=state) for n in sizes]
    ids = list(range(len(sizes)))
    return params, grads, square_avgs, ids, [0] * len(sizes), [3] * len(sizes)


def _opcheck_all(prefix: str, device: str) -> None:
    ops = torch.ops.sgmcmc_fused
    torch.library.opcheck(getattr(ops, f"{prefix}psgld_step_").default, psgld_args(device), SCALARS)
    params, grads, _, ids, offs, steps = psgld_args(device)
    torch.library.opcheck(getattr(ops, f"{prefix}sgld_step_").default, (params, grads, ids, offs, steps), SGLD_SCALARS)
    torch.library.opcheck(getattr(ops, f"{prefix}philox_normal_").default, (torch.empty(9, device=device), 5, 1, 2, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_compiled_ops(device):
    require_backend("cuda" if device == "cuda" else "cpu", device)
    _opcheck_all("", device)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_triton_ops(device):
    require_backend("triton", device)
    _opcheck_all("triton_", device)


def test_cuda_kernels_registered_when_built_with_cuda():
    info = importlib.import_module("sgmcmc_fused._build_info")
    for op in ("psgld_step_", "sgld_step_", "philox_normal_"):
        assert _library.has_kernel(op, "CPU"), op
        assert _library.has_kernel(op, "CUDA") == info.WITH_CUDA, (op, info.CUDA_REASON)


@pytest.mark.parametrize(
    "impl,device",
    [
        ("cpu", "cpu"),
        pytest.param("cuda", "cuda", marks=pytest.mark.cuda),
        pytest.param("triton", "cuda", marks=pytest.mark.cuda),
    ],
)
def test_compiled_training_step_matches_eager(impl, device):
    require_backend(impl, device)

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).to(device)
        return model, PSGLD(model.parameters(), lr=1e-3, num_data=64, seed=3, impl=impl)

    def train_step(model, opt, x, y):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 8, generator=g).to(device), torch.randn(4, 1, generator=g).to(device)) for _ in range(4)]
    eager_model, eager_opt = make()
    compiled_model, compiled_opt = make()
    # Inductor on CPU would compile C++ for minutes on this machine; the graph
    # capture (dynamo + the ops' fake kernels) is what is under test there.
    compiled_step = torch.compile(train_step, backend="inductor" if device == "cuda" else "aot_eager")
    for x, y in batches:
        train_step(eager_model, eager_opt, x, y)
        compiled_step(compiled_model, compiled_opt, x, y)
    for p, q in zip(eager_model.parameters(), compiled_model.parameters(), strict=False):
        assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_a_compiled_training_step_does_not_recompile_as_the_step_counters_grow():
    """The optimizer step runs outside the graph, so its int step counters are no guards: twelve
    steps compile the model's frames once (each step would recompile them, up to the limit of 8)."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    model = torch.nn.Linear(4, 3)
    opt = PSGLD(model.parameters(), lr=1e-3, num_data=10, seed=0)
    counter = CompileCounter()

    def train_step(x):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()

    compiled = torch.compile(train_step, backend=counter)
    g = torch.Generator().manual_seed(2)
    compiled(torch.randn(5, 4, generator=g))
    frames = counter.frame_count
    for _ in range(11):
        compiled(torch.randn(5, 4, generator=g))
    assert counter.frame_count == frames and opt.state[model.weight]["step"] == 12


def test_compiled_function_calling_the_op_traces_it():
    """fullgraph=True: the fused op (with its fake kernel) lives inside the graph."""

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(params, grads, square_avgs):
        torch.ops.sgmcmc_fused.psgld_step_(params, grads, square_avgs, [0, 1], [0, 0], [0, 0], **SCALARS)

    args = psgld_args()
    expected = [t.clone() for t in args[0]], [t.clone() for t in args[2]]
    reference.psgld_step_(expected[0], args[1], expected[1], [0, 1], [0, 0], [0, 0], **SCALARS)
    step(args[0], args[1], args[2])
    for got, want in zip(args[0] + args[2], expected[0] + expected[1], strict=False):
        assert_close(got, want)


def _call_psgld(**overrides):
    params, grads, square_avgs, ids, offs, steps = psgld_args()
    args = dict(params=params, grads=grads, square_avgs=square_avgs, stream_ids=ids, element_offsets=offs, steps=steps)
    args.update(overrides)
    scalars = {**SCALARS, **{k: v for k, v in overrides.items() if k in SCALARS}}
    positional = [args[k] for k in ("params", "grads", "square_avgs", "stream_ids", "element_offsets", "steps")]
    torch.ops.sgmcmc_fused.psgld_step_(*positional, **scalars)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(grads=[torch.randn(5)]), "got 2 params but 1 grads"),
        (dict(square_avgs=[torch.zeros(5)]), "got 2 params but 1 square_avgs"),
        (dict(stream_ids=[0]), "got 2 params but 1 stream_ids"),
        (
            dict(grads=[torch.randn(5), torch.randn(16)]),
            r"grads\[1\] has shape \[16\] but params\[1\] has shape \[17\]",
        ),
        (dict(grads=[torch.randn(5), torch.randn(17, dtype=torch.float64)]), r"grads\[1\] has dtype Double"),
        (
            dict(square_avgs=[torch.zeros(5), torch.zeros(17, dtype=torch.float16)]),
            r"square_avgs\[1\] has dtype Half, expected Float",
        ),
        (dict(params=[torch.randn(5), torch.randn(34)[::2]]), r"params\[1\] is not contiguous"),
        (dict(params=[torch.randn(5), torch.randint(0, 3, (17,))]), r"params\[1\] has dtype Long"),
        (dict(stream_ids=[0, 2**31]), r"stream_ids\[1\] = 2147483648 is outside \[0, 2\^31\)"),
        (dict(element_offsets=[0, -1]), r"element_offsets\[1\] = -1 is negative"),
        (dict(steps=[0, 2**32]), r"steps\[1\] = 4294967296 is outside"),
        (dict(num_data=0), "num_data must be >= 1"),
        (dict(alpha=1.0), r"alpha must be in \[0, 1\)"),
        (dict(seed=-1), r"seed must be in \[0, 2\^63\)"),
    ],
)
def test_bad_input_is_named(overrides, match):
    with pytest.raises(RuntimeError, match=match):
        _call_psgld(**overrides)


def test_bad_input_leaves_tensors_untouched():
    params, grads, square_avgs, ids, offs, steps = psgld_args()
    before = [t.clone() for t in params + square_avgs]
    with pytest.raises(RuntimeError):
        torch.ops.sgmcmc_fused.psgld_step_(params, grads, square_avgs, ids, offs, [0, -5], **SCALARS)
    assert all(torch.equal(a, b) for a, b in zip(before, params + square_avgs, strict=False))


def _overlap_case(case: str):
    """pSGLD arguments (sizes 5 and 17) in which some tensors share memory, and the pair the error names."""
    params, grads, square_avgs, ids, offs, steps = psgld_args()
    if case == "a param twice":
        params, grads = [params[0], params[0]], [grads[0], grads[0].clone()]
        square_avgs = [square_avgs[0], square_avgs[0].clone()]
        pair = r"params\[0\] and params\[1\]"
    elif case == "a grad one element past its param":
        buf = torch.randn(18)
        params[1], grads[1] = buf[:17], buf[1:]
        pair = r"params\[1\] and grads\[1\]"
    elif case == "a param as its own square_avg":
        square_avgs[1] = params[1]
        pair = r"params\[1\] and square_avgs\[1\]"
    elif case == "overlapping params":
        buf = torch.randn(20)
        params = [buf[:5], buf[3:]]
        pair = r"params\[0\] and params\[1\]"
    return (params, grads, square_avgs, ids, offs, steps), pair


@pytest.mark.parametrize("backend", ["cpu", "triton", "eager", "foreach"])
@pytest.mark.parametrize(
    "case",
    ["a param twice", "a grad one element past its param", "a param as its own square_avg", "overlapping params"],
)
def test_tensors_the_step_writes_must_have_memory_of_their_own(backend, case):
    # The kernels read and write in parallel chunks: an update of shared memory would depend on the
    # thread count. Every backend refuses it with the same message, before it changes anything.
    step = require_backend(backend, "cpu").psgld_step_
    args, pair = _overlap_case(case)
    before = [t.clone() for t in args[0] + args[2]]
    with pytest.raises((RuntimeError, ValueError), match=pair + " share memory; every tensor the step updates"):
        step(*args, **SCALARS)
    assert all(torch.equal(a, b) for a, b in zip(before, args[0] + args[2], strict=True))


@pytest.mark.parametrize("backend", ["cpu", "triton", "eager", "foreach"])
def test_empty_lists_are_nothing_to_do_and_mismatched_ones_are_refused(backend):
    step = require_backend(backend, "cpu").psgld_step_
    step([], [], [], [], [], [], **SCALARS)  # a bucket without tensors, as for any other backend
    with pytest.raises((RuntimeError, ValueError), match="got 0 params but 1 grads"):
        step([], [torch.randn(3)], [], [], [], [], **SCALARS)


def test_every_backend_names_the_same_overlapping_pair():
    # Random views of one buffer as params, grads and square_avgs: the C++ check and the Python one
    # (eager, foreach, Triton) sort and sweep alike, so they refuse the same calls naming the same pair.
    rng = torch.Generator().manual_seed(11)
    refused = 0
    for _ in range(40):
        buf = torch.zeros(400)
        sizes = torch.randint(1, 40, (3,), generator=rng).tolist()
        starts = [int(torch.randint(0, 400 - 40, (1,), generator=rng)) for _ in range(9)]
        params = [buf[starts[i] : starts[i] + sizes[i]] for i in range(3)]
        grads = [buf[starts[3 + i] : starts[3 + i] + sizes[i]] for i in range(3)]
        square_avgs = [buf[starts[6 + i] : starts[6 + i] + sizes[i]] for i in range(3)]
        args = (params, grads, square_avgs, [0, 1, 2], [0] * 3, [1] * 3)
        messages = []
        for backend in ("cpu", "eager"):
            try:
                require_backend(backend, "cpu").psgld_step_(*args, **{**SCALARS, "lr": 0.0, "add_noise": False})
                messages.append(None)
            except (RuntimeError, ValueError) as e:
                messages.append(str(e).split("psgld_step_: ")[-1].splitlines()[0])
        assert messages[0] == messages[1], messages
        refused += messages[0] is not None
    assert 0 < refused < 40  # the cases cover both outcomes


def test_grads_may_share_memory_with_each_other():
    params, grads, square_avgs, ids, offs, steps = psgld_args(sizes=(5, 5))
    expected = [t.clone() for t in params + square_avgs]
    reference.psgld_step_(expected[:2], [grads[0], grads[0].clone()], expected[2:], ids, offs, steps, **SCALARS)
    torch.ops.sgmcmc_fused.psgld_step_(params, [grads[0], grads[0]], square_avgs, ids, offs, steps, **SCALARS)
    for got, want in zip(params + square_avgs, expected, strict=True):
        assert_close(got, want)


def test_the_step_bumps_version_counters_as_in_place_ops_do():
    params, grads, square_avgs, ids, offs, steps = psgld_args()
    versions = [t._version for t in params + square_avgs]
    torch.ops.sgmcmc_fused.psgld_step_(params, grads, square_avgs, ids, offs, steps, **SCALARS)
    assert [t._version for t in params + square_avgs] == [v + 1 for v in versions]
    # So autograd refuses a backward through a value the step has changed since...
    x, w = torch.randn(5, requires_grad=True), torch.randn(5, requires_grad=True)
    y = (x * w).sum()
    with torch.no_grad():
        torch.ops.sgmcmc_fused.sgld_step_([w], [torch.randn(5)], [0], [0], [1], **SGLD_SCALARS)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
    # ...and refuses to write a tensor that requires grad outside no_grad (the op has no derivative).
    with pytest.raises(RuntimeError, match=r"sgld_step_: params\[0\] requires grad; .* under torch.no_grad\(\)"):
        torch.ops.sgmcmc_fused.sgld_step_([w], [torch.randn(5)], [0], [0], [1], **SGLD_SCALARS)


def test_a_meta_tensor_among_cpu_tensors_is_refused():
    # The Meta key wins the dispatch of a mixed call: the fake kernel used to return, updating nothing.
    params, grads, square_avgs, ids, offs, steps = psgld_args()
    before = [t.clone() for t in params]
    grads[1] = grads[1].to("meta")
    with pytest.raises(ValueError, match=r"grads\[1\] is on meta but params\[0\] is on cpu"):
        torch.ops.sgmcmc_fused.psgld_step_(params, grads, square_avgs, ids, offs, steps, **SCALARS)
    assert all(torch.equal(a, b) for a, b in zip(before, params, strict=True))
    with pytest.raises(ValueError, match=r"params\[1\] is on meta but params\[0\] is on cpu"):
        torch.ops.sgmcmc_fused.sgld_step_([params[0], params[1].to("meta")], grads, ids, offs, steps, **SGLD_SCALARS)


@pytest.mark.cuda
def test_cuda_tensors_to_cpu_kernel_are_refused_by_device():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    params, grads, square_avgs, ids, offs, steps = psgld_args()
    with pytest.raises(RuntimeError, match=r"grads\[0\] is on cuda"):
        torch.ops.sgmcmc_fused.psgld_step_(params, [g.cuda() for g in grads], square_avgs, ids, offs, steps, **SCALARS)
