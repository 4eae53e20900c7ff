"""One contract for every step backend (sgmcmc_fused/kernels/langevin/contract.py): the
Python backends (eager, foreach, Triton) refuse bad input with the messages of the
compiled op's checks (csrc/langevin/step_inputs.cpp), before touching anything."""

from __future__ import annotations

import pytest
import torch
from conftest import require_backend

from sgmcmc_fused.kernels import _library
from sgmcmc_fused.kernels.langevin.contract import StepHyper

HYPER = dict(lr=1e-3, alpha=0.99, eps=1e-5, weight_decay=0.0, temperature=1.0, num_data=10, add_noise=True, seed=1)


def good_call():
    p = [torch.zeros(6), torch.zeros(3)]
    return dict(
        params=p,
        grads=[torch.ones(6), torch.ones(3)],
        square_avgs=[torch.zeros(6), torch.zeros(3)],
        stream_ids=[0, 1],
        element_offsets=[0, 0],
        steps=[0, 0],
    )


def spoil(call: dict, what: str) -> tuple[dict, dict]:
    """A call with one thing wrong, and the hyperparameters to go with it."""
    hyper = dict(HYPER)
    if what == "length":
        call["grads"] = call["grads"][:1]
    elif what == "shape":
        call["grads"][1] = torch.ones(4)
    elif what == "dtype":
        call["grads"][1] = torch.ones(3, dtype=torch.float64)
    elif what == "state_dtype":
        call["square_avgs"][0] = torch.zeros(6, dtype=torch.float16)
    elif what == "contiguity":
        call["params"][0] = torch.zeros(6, 2).t()[0]
        call["grads"][0] = torch.ones(6)
    elif what == "stream_id":
        call["stream_ids"][1] = 2**31
    elif what == "offset":
        call["element_offsets"][0] = -1
    elif what == "step":
        call["steps"][0] = 2**32
    elif what == "lr":
        hyper["lr"] = float("nan")
    elif what == "alpha":
        hyper["alpha"] = 1.0
    elif what == "seed":
        hyper["seed"] = -3
    elif what == "num_data":
        hyper["num_data"] = 2**64  # past the ops' int64: named, not the dispatcher's "found type 'int'"
    return call, hyper


MESSAGES = {
    "length": "got 2 params but 1 grads",
    "shape": r"grads\[1\] has shape",
    "dtype": r"grads\[1\] has dtype",
    "state_dtype": r"square_avgs\[0\] has dtype",
    "contiguity": r"params\[0\] is not contiguous",
    "stream_id": r"stream_ids\[1\] = 2147483648 is outside \[0, 2\^31\)",
    "offset": r"element_offsets\[0\] = -1 is negative",
    "step": r"steps\[0\] = 4294967296 is outside \[0, 2\^32\)",
    "lr": "lr must be a finite number >= 0",
    "alpha": r"alpha must be in \[0, 1\)",
    "seed": r"seed must be in \[0, 2\^63\)",
    "num_data": r"num_data must be in \[1, 2\^63\), got 18446744073709551616",
}


@pytest.mark.parametrize("what", MESSAGES)
@pytest.mark.parametrize("backend", ["cpu", "eager", "foreach", "triton"])
def test_every_backend_refuses_bad_input_alike(backend, what):
    step = require_backend(backend, "cpu").psgld_step_
    call, hyper = spoil(good_call(), what)
    before = [p.clone() for p in call["params"]]
    with pytest.raises((ValueError, TypeError, RuntimeError), match=MESSAGES[what]):
        step(*call.values(), **hyper)
    for p, b in zip(call["params"], before, strict=True):
        assert torch.equal(p, b), "a refused call changed a parameter"


def test_step_hyper_is_the_ops_keyword_arguments():
    psgld = StepHyper(lr=0.5, weight_decay=0.0, temperature=2.0, num_data=4, add_noise=True, seed=3, alpha=0.9, eps=1)
    sgld = StepHyper(lr=0.5, weight_decay=0.0, temperature=2.0, num_data=4, add_noise=False, seed=3)
    schema = torch.ops.sgmcmc_fused.psgld_step_.default._schema if _library.LOADED else None
    assert psgld.op_kwargs() == dict(
        lr=0.5, weight_decay=0.0, temperature=2.0, num_data=4, add_noise=True, seed=3, alpha=0.9, eps=1.0
    )
    assert set(sgld.op_kwargs()) == {"lr", "weight_decay", "temperature", "num_data", "add_noise", "seed"}
    assert psgld.noise_var_scale == 2 * 0.5 * 2.0 / 4 and sgld.noise_var_scale == 0.0
    if schema is not None:  # the op's keyword-only arguments are exactly these
        kwonly = {a.name for a in schema.arguments if a.kwarg_only}
        assert kwonly == set(psgld.op_kwargs())


@pytest.mark.parametrize("backend", ["cpu", "eager", "foreach", "triton"])
def test_every_backend_names_an_element_offset_past_int64(backend):
    """The ops' dispatcher refuses an int beyond 64 bits before their own checks, naming neither the list
    nor the entry: every backend names it as the Python backends do."""
    step = require_backend(backend, "cpu").psgld_step_
    call = good_call()
    call["element_offsets"][1] = 2**63
    with pytest.raises(ValueError, match=r"element_offsets\[1\] = 9223372036854775808 is not below 2\^63"):
        step(*call.values(), **HYPER)


@pytest.mark.parametrize("backend", ["cpu", "eager", "foreach", "triton"])
def test_every_backend_names_the_same_first_problem(backend):
    """A call with two problems (a missing grad and lr < 0): every backend names the first in the order of
    csrc/langevin/step_inputs.cpp, the list lengths."""
    step = require_backend(backend, "cpu").psgld_step_
    call = good_call()
    call["grads"] = call["grads"][:1]
    with pytest.raises((ValueError, RuntimeError), match="got 2 params but 1 grads"):
        step(*call.values(), **{**HYPER, "lr": -1.0})


@pytest.mark.parametrize("backend", ["cpu", "eager", "foreach", "triton"])
def test_every_backend_refuses_to_write_a_tensor_that_requires_grad_with_grad_mode_on(backend):
    """The step has no derivative: with grad mode on, every backend refuses (the C++ op's Autograd kernel
    did, the Python backends wrote the leaf in place); under no_grad, as the optimizers call it, it steps."""
    step = require_backend(backend, "cpu").psgld_step_
    call = good_call()
    call["params"][1].requires_grad_()
    with pytest.raises(RuntimeError, match=r"params\[1\] requires grad; the op writes it in place"):
        step(*call.values(), **HYPER)
    assert not call["params"][0].any() and not call["params"][1].any(), "a refused call changed a parameter"
    with torch.no_grad():
        step(*call.values(), **HYPER)
    assert call["params"][1].abs().sum() > 0
