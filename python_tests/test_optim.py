"""PSGLD / SGLD as torch optimizers: equivalences, checkpoints, schedulers, input errors."""

import copy
import io

import pytest
import torch
from conftest import DEVICES
from step_cases import grad_sequence, make_params, run_optimizer
from tolerances import assert_close

from sgmcmc_fused.optim import PSGLD, SGLD, prior_weight_decay


def small_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(13, 17), torch.nn.Tanh(), torch.nn.Linear(17, 3)).to(dtype)


def train(model, opt, steps, seed=5, sched=None):
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    for _ in range(steps):
        x = torch.randn(8, 13, generator=g).to(dtype)
        y = torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x).float(), y).backward()
        opt.step()
        if sched is not None:
            sched.step()


@pytest.mark.parametrize("impl", ["cpu", "eager", "foreach"])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_psgld_without_noise_is_rmsprop(impl, weight_decay):
    a, b = small_model(), small_model()
    opt = PSGLD(a.parameters(), lr=1e-2, num_data=100, alpha=0.9, eps=1e-5, weight_decay=weight_decay,
                add_noise=False, impl=impl)  # fmt: skip
    rms = torch.optim.RMSprop(b.parameters(), lr=1e-2, alpha=0.9, eps=1e-5, weight_decay=weight_decay)
    train(a, opt, 10)
    train(b, rms, 10)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=False):
        assert_close(p, q, rtol=1e-5, atol=1e-6, what=name)
        assert_close(opt.state[p]["square_avg"], rms.state[q]["square_avg"], rtol=1e-5, atol=1e-9, what=name)
        assert opt.state[p]["step"] == 0  # noisy steps only


@pytest.mark.parametrize("impl", ["cpu", "eager", "foreach"])
def test_sgld_without_noise_is_sgd(impl):
    a, b = small_model(), small_model()
    opt = SGLD(a.parameters(), lr=0.1, num_data=100, weight_decay=1e-3, add_noise=False, impl=impl)
    sgd = torch.optim.SGD(b.parameters(), lr=0.1, weight_decay=1e-3)
    train(a, opt, 10)
    train(b, sgd, 10)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=False):
        assert_close(p, q, rtol=1e-5, atol=1e-7, what=name)


def test_per_group_prior_std_is_rmsprop_with_that_groups_weight_decay():
    """prior_std σ in a group is the Gaussian prior N(0, σ²): weight decay 1/(N σ²) in mean-loss units.
    Checked against torch.optim.RMSprop with that weight decay per group (sigma 0.1 and 0.5, N = 40:
    2.5 and 0.1), and a group without a prior."""
    a, b = small_model(), small_model()
    first, second = list(a[0].parameters()), list(a[2].parameters())
    opt = PSGLD([{"params": first, "prior_std": 0.1}, {"params": second[:1], "prior_std": 0.5},
                 {"params": second[1:]}], lr=1e-2, num_data=40, alpha=0.9, add_noise=False)  # fmt: skip
    assert [g["weight_decay"] for g in opt.param_groups] == pytest.approx([2.5, 0.1, 0.0], rel=1e-12)
    assert prior_weight_decay(0.1, 40) == pytest.approx(2.5, rel=1e-12)
    b_first, b_second = list(b[0].parameters()), list(b[2].parameters())
    rms = torch.optim.RMSprop([{"params": b_first, "weight_decay": 2.5}, {"params": b_second[:1], "weight_decay": 0.1},
                               {"params": b_second[1:]}], lr=1e-2, alpha=0.9, eps=1e-5)  # fmt: skip
    train(a, opt, 10)
    train(b, rms, 10)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert_close(p, q, rtol=1e-5, atol=1e-6, what=name)
    # The prior reaches a loaded copy through the groups' weight_decay.
    again = PSGLD(small_model().parameters(), lr=1e-2, num_data=40)
    with pytest.raises(ValueError):  # three groups saved, one here
        again.load_state_dict(opt.state_dict())
    # With the constructor's default: every group.
    opt = SGLD(small_model().parameters(), lr=0.1, num_data=10, prior_std=2.0)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(1 / (10 * 4.0), rel=1e-12)


@pytest.mark.parametrize(
    "groups, kwargs, match",
    [
        ([{"prior_std": 0.1, "weight_decay": 1e-3}], {}, "both are a Gaussian prior"),
        ([{"prior_std": 0.0}], {}, "prior_std must be > 0"),
        ([{"prior_std": float("nan")}], {}, "prior_std must be a finite number"),
    ],
)
def test_bad_priors_are_refused(groups, kwargs, match):
    params = list(small_model().parameters())
    with pytest.raises(ValueError, match=match):
        PSGLD([{"params": params, **g} for g in groups], lr=1e-3, num_data=10, **kwargs)


def test_a_groups_own_prior_overrides_the_defaults():
    """As torch's group keys override its defaults: a group's prior_std replaces a default weight_decay,
    a group's weight_decay a default prior_std; N = 10."""
    params = list(small_model().parameters())
    opt = PSGLD([{"params": params[:2], "prior_std": 0.1}, {"params": params[2:]}], lr=1e-3, num_data=10,
                weight_decay=1e-4)  # fmt: skip
    assert [g["weight_decay"] for g in opt.param_groups] == pytest.approx([10.0, 1e-4], rel=1e-12)
    opt = SGLD([{"params": params[:2], "weight_decay": 3e-3}, {"params": params[2:]}], lr=1e-3, num_data=10,
               prior_std=0.5)  # fmt: skip
    assert [(g["prior_std"], g["weight_decay"]) for g in opt.param_groups] == [(None, 3e-3), (0.5, pytest.approx(0.4))]


def test_a_changed_prior_std_or_num_data_takes_effect_at_the_next_step():
    """Like lr, a group's prior_std and num_data may change between steps (by hand or a scheduler): the
    step then decays with 1/(N σ²) of the new values. SGD with weight decay is the reference: a zero
    gradient leaves theta (1 - lr / (N σ²)) per step."""
    theta = torch.nn.Parameter(torch.ones(4))
    opt = SGLD([theta], lr=0.1, num_data=10, prior_std=1.0, add_noise=False)
    theta.grad = torch.zeros(4)
    opt.step()
    expected = 1 - 0.1 / 10
    assert torch.allclose(theta.detach(), torch.full((4,), expected), rtol=1e-6)
    opt.param_groups[0].update(prior_std=0.5, num_data=1000)
    opt.step()
    expected *= 1 - 0.1 / (1000 * 0.25)
    assert torch.allclose(theta.detach(), torch.full((4,), expected), rtol=1e-6)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(1 / (1000 * 0.25), rel=1e-12)
    # A prior set later on a group without one, and without a weight_decay of its own, applies too.
    plain = torch.nn.Parameter(torch.ones(2))
    opt = SGLD([plain], lr=0.1, num_data=10, add_noise=False)
    opt.param_groups[0]["prior_std"] = 1.0
    plain.grad = torch.zeros(2)
    opt.step()
    assert torch.allclose(plain.detach(), torch.full((2,), 1 - 0.1 / 10), rtol=1e-6)


def test_a_prior_removed_takes_its_weight_decay_along_and_a_new_one_applies():
    """prior_std set to None: the group steps with its own weight_decay (0) again, as SGD without weight
    decay does (a zero gradient leaves theta where it is); a prior set afterwards applies 1/(N σ²)."""
    theta = torch.nn.Parameter(torch.ones(3))
    opt = SGLD([theta], lr=0.1, num_data=10, prior_std=1.0, add_noise=False)
    theta.grad = torch.zeros(3)
    opt.step()
    assert torch.allclose(theta.detach(), torch.full((3,), 0.99), rtol=1e-6)
    opt.param_groups[0]["prior_std"] = None
    opt.step()
    assert torch.allclose(theta.detach(), torch.full((3,), 0.99), rtol=1e-6)
    assert opt.param_groups[0]["weight_decay"] == 0.0
    opt.param_groups[0]["prior_std"] = 0.5
    opt.step()
    assert torch.allclose(theta.detach(), torch.full((3,), 0.99 * (1 - 0.1 / (10 * 0.25))), rtol=1e-6)
    # Removed together with a weight_decay of the user's: that one stays.
    opt.param_groups[0].update(prior_std=None, weight_decay=0.05)
    opt.step()
    assert opt.param_groups[0]["weight_decay"] == 0.05


@pytest.mark.parametrize("change", ["weight_decay beside a prior", "prior beside a weight_decay"])
def test_two_priors_made_after_construction_are_refused_at_the_step(change):
    theta = torch.nn.Parameter(torch.ones(3))
    if change == "weight_decay beside a prior":
        opt = PSGLD([theta], lr=0.1, num_data=10, prior_std=1.0)
        opt.param_groups[0]["weight_decay"] = 0.3
    else:
        opt = PSGLD([theta], lr=0.1, num_data=10, weight_decay=0.2)
        opt.param_groups[0]["prior_std"] = 1.0
    theta.grad = torch.ones(3)
    with pytest.raises(ValueError, match=r"parameter group 0: prior_std=1.0 beside weight_decay=0\.[23]: both are"):
        opt.step()
    assert torch.equal(theta.detach(), torch.ones(3)) and not opt.state


def test_a_second_prior_set_by_hand_is_refused_after_a_copy_or_a_new_group_too():
    """The record of each group's last prior survives add_param_group, deepcopy and pickling, so a
    weight_decay set by hand beside a prior is still refused; switching a group from its own weight decay
    to a prior (weight_decay 0) is taken."""
    import copy
    import pickle

    theta = torch.nn.Parameter(torch.ones(3))
    opt = SGLD([theta], lr=0.1, num_data=10, prior_std=1.0, add_noise=False)
    opt.param_groups[0]["weight_decay"] = 0.3
    opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))]})
    for copied in (opt, copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        for p in copied.param_groups[0]["params"]:
            p.grad = torch.zeros_like(p)
        with pytest.raises(ValueError, match=r"parameter group 0: prior_std=1.0 beside weight_decay=0.3"):
            copied.step()
    own = torch.nn.Parameter(torch.ones(3))
    opt = SGLD([own], lr=0.1, num_data=10, weight_decay=0.2, add_noise=False)
    opt.param_groups[0].update(prior_std=1.0, weight_decay=0.0)
    own.grad = torch.zeros(3)
    opt.step()
    assert torch.allclose(own.detach(), torch.full((3,), 1 - 0.1 / 10), rtol=1e-6)


def test_a_loaded_state_keeps_its_weight_decay_until_its_prior_changes():
    """A state saved with a weight_decay other than its prior's 1/(N σ²) (by an earlier version, after
    num_data was changed) steps with the weight_decay it was saved with: resuming does not change the
    posterior; a change of prior_std or num_data afterwards recomputes it."""
    theta = torch.nn.Parameter(torch.ones(3))
    opt = SGLD([theta], lr=0.1, num_data=10, prior_std=1.0, add_noise=False)
    saved = opt.state_dict()
    saved["param_groups"][0]["num_data"] = 1000  # weight_decay stays 0.1, as an earlier version left it
    opt.load_state_dict(saved)
    theta.grad = torch.zeros(3)
    opt.step()
    assert opt.param_groups[0]["weight_decay"] == 0.1
    assert torch.allclose(theta.detach(), torch.full((3,), 0.99), rtol=1e-6)
    opt.param_groups[0]["num_data"] = 100
    opt.step()
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.01, rel=1e-12)


def test_num_data_and_element_offsets_past_int64_are_named():
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match=r"num_data must be an int in \[1, 2\^63\)"):
        PSGLD([p], lr=1e-3, num_data=2**63)
    opt = PSGLD([p], lr=1e-3, num_data=10)
    for bad in (2**63, -1, True):
        with pytest.raises(ValueError, match=r"element_offset must be an int in \[0, 2\^63\)"):
            opt.set_element_offset(p, bad)


def test_numpy_hyperparameters_are_taken_and_stored_as_python_numbers():
    np = pytest.importorskip("numpy")
    params = list(small_model().parameters())
    opt = PSGLD(params[:2], lr=np.float32(0.01), num_data=np.int64(100), seed=np.uint32(4), alpha=np.float64(0.9))
    opt.add_param_group({"params": params[2:], "prior_std": np.float32(0.5)})
    for group in opt.param_groups:
        for key in ("lr", "alpha", "eps", "weight_decay", "temperature", "num_data", "seed"):
            assert type(group[key]) in (float, int), (key, type(group[key]))
    assert (opt.param_groups[0]["num_data"], opt.param_groups[0]["seed"]) == (100, 4)
    assert opt.param_groups[1]["weight_decay"] == pytest.approx(1 / (100 * 0.25), rel=1e-6)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)  # NumPy scalars would make this fail


def test_an_sgld_state_without_steps_is_refused_by_psgld():
    """Without steps the SGLD state has no per-parameter entry to lack a square_avg: its groups, which
    lack alpha and eps, are what PSGLD refuses (else step() would fail later on a missing alpha)."""
    params = list(small_model().parameters())
    opt = PSGLD(params, lr=1e-3, num_data=10)
    with pytest.raises(ValueError, match=r"is an SGLD state \(its groups have no alpha and eps"):
        opt.load_state_dict(SGLD(params, lr=0.1, num_data=10).state_dict())
    assert "alpha" in opt.param_groups[0]


def test_a_parameter_appended_to_a_group_list_is_named_not_a_key_error():
    params = list(small_model().parameters())
    opt = PSGLD(params[:2], lr=1e-3, num_data=10)
    opt.param_groups[0]["params"].append(params[2])
    params[2].grad = torch.ones_like(params[2])
    with pytest.raises(ValueError, match=r"put into a parameter group's list directly.*add_param_group"):
        opt.step()


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_psgld_continues_a_torch_rmsprop_state(weight_decay):
    """Burn in with torch.optim.RMSprop, load its state into PSGLD: with the noise off, PSGLD goes on
    exactly as RMSprop would (its square_avg is V; lr, alpha, eps and weight_decay come with the state)."""
    a, b = small_model(), small_model()
    rms_a = torch.optim.RMSprop(a.parameters(), lr=1e-2, alpha=0.9, eps=1e-5, weight_decay=weight_decay)
    rms_b = torch.optim.RMSprop(b.parameters(), lr=1e-2, alpha=0.9, eps=1e-5, weight_decay=weight_decay)
    train(a, rms_a, 5)
    train(b, rms_b, 5)
    opt = PSGLD(a.parameters(), lr=0.5, alpha=0.5, eps=1e-3, num_data=100, add_noise=False, seed=3)
    opt.load_state_dict(rms_a.state_dict())
    group = opt.param_groups[0]
    assert (group["lr"], group["alpha"], group["eps"], group["weight_decay"]) == (1e-2, 0.9, 1e-5, weight_decay)
    assert (group["num_data"], group["seed"], group["add_noise"]) == (100, 3, False)  # PSGLD's own
    train(a, opt, 5, seed=6)
    train(b, rms_b, 5, seed=6)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert_close(p, q, rtol=1e-5, atol=1e-6, what=name)
        assert_close(opt.state[p]["square_avg"], rms_b.state[q]["square_avg"], rtol=1e-5, atol=1e-9, what=name)
    assert [opt.state[p]["stream_id"] for p in a.parameters()] == [0, 1, 2, 3]


@pytest.mark.parametrize("rmsprop_weight_decay", [0.0, 1e-2])
def test_a_group_with_a_prior_keeps_it_when_continuing_a_torch_rmsprop_state(rmsprop_weight_decay):
    """The prior is the sampler's: loading RMSprop's state carries lr and V over, not its weight decay."""
    model = small_model()
    params = list(model.parameters())
    groups = [{"params": params[:2]}, {"params": params[2:]}]
    rms = torch.optim.RMSprop(groups, lr=1e-2, weight_decay=rmsprop_weight_decay)
    train(model, rms, 2)
    opt = PSGLD([{"params": params[:2], "prior_std": 0.1}, {"params": params[2:]}], lr=1e-3, num_data=100)
    opt.load_state_dict(rms.state_dict())
    with_prior, without = opt.param_groups
    assert (with_prior["lr"], with_prior["prior_std"], with_prior["weight_decay"]) == (1e-2, 0.1, 1 / (100 * 0.1**2))
    assert (without["lr"], without["weight_decay"]) == (1e-2, rmsprop_weight_decay)


def test_sgld_continues_a_torch_sgd_state():
    a, b = small_model(), small_model()
    sgd_a, sgd_b = (torch.optim.SGD(m.parameters(), lr=0.1, weight_decay=1e-3) for m in (a, b))
    train(a, sgd_a, 3)
    train(b, sgd_b, 3)
    opt = SGLD(a.parameters(), lr=7.0, num_data=100, add_noise=False)
    opt.load_state_dict(sgd_a.state_dict())
    assert (opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]) == (0.1, 1e-3)
    train(a, opt, 4, seed=6)
    train(b, sgd_b, 4, seed=6)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert_close(p, q, rtol=1e-5, atol=1e-7, what=name)


def test_states_that_cannot_carry_over_are_refused_at_load_time():
    model = small_model()
    foreign = {
        "momentum RMSprop": (PSGLD, torch.optim.RMSprop(model.parameters(), lr=1e-2, momentum=0.9),
                             r"torch.optim.RMSprop state uses momentum=0.9, which PSGLD does not have"),
        "centered RMSprop": (PSGLD, torch.optim.RMSprop(model.parameters(), lr=1e-2, centered=True),
                             r"uses momentum=0, centered=True"),
        "momentum SGD": (SGLD, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5), r"momentum=0.5"),
        "Adam": (PSGLD, torch.optim.Adam(model.parameters()), r"neither a PSGLD state nor a torch.optim.RMSprop"),
        "SGD into PSGLD": (PSGLD, torch.optim.SGD(model.parameters(), lr=0.1), r"neither a PSGLD state"),
        "maximize RMSprop": (PSGLD, torch.optim.RMSprop(model.parameters(), lr=1e-2, maximize=True),
                             r"RMSprop state has maximize=True"),
        "maximize SGD": (SGLD, torch.optim.SGD(model.parameters(), lr=0.1, maximize=True), r"maximize=True"),
        "more groups": (PSGLD, torch.optim.RMSprop([{"params": list(model.parameters())[:2]},
                                                    {"params": list(model.parameters())[2:]}], lr=1e-2),
                        r"the state_dict has 2 parameter groups, the optimizer 1"),
        "SGLD into PSGLD": (PSGLD, SGLD(model.parameters(), lr=0.1, num_data=10), r"is an SGLD state"),
    }  # fmt: skip
    for what, (cls, other, message) in foreign.items():
        train(model, other, 1)
        opt = cls(model.parameters(), lr=1e-3, num_data=10, add_noise=False)
        before = copy.deepcopy(opt.state_dict())
        with pytest.raises(ValueError, match=message):
            opt.load_state_dict(other.state_dict())
        assert opt.state_dict() == before, what  # untouched, and it still steps
        train(model, opt, 1)


def test_a_parameter_twice_in_a_group_is_refused():
    model = small_model()
    w = model[0].weight
    with pytest.raises(ValueError, match=r"listed twice in a parameter group \(entries 0 and 2\)"):
        PSGLD([w, model[0].bias, w], lr=1e-3, num_data=10)
    with pytest.raises(ValueError, match=r"parameter '0.weight' is listed twice"):
        SGLD([*model.named_parameters(), ("0.weight", w)], lr=1e-3, num_data=10)


def test_parameters_on_the_meta_device_are_refused_with_a_clear_error():
    with torch.device("meta"):
        model = small_model()
    opt = PSGLD(model.parameters(), lr=1e-3, num_data=10)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    with pytest.raises(ValueError, match=r"stream id 0 \(shape \(17, 13\)\) is on the meta device"):
        opt.step()


def test_noise_has_the_langevin_scale():
    """One step from zero gradient: theta moves by sqrt(2 lr G T / N) * xi with G = 1/eps."""
    p = torch.nn.Parameter(torch.zeros(200_000))
    p.grad = torch.zeros_like(p)
    opt = PSGLD([p], lr=1e-3, num_data=1000, eps=1e-2, temperature=0.5, seed=1)
    opt.step()
    want_std = (2 * 1e-3 * (1 / 1e-2) * 0.5 / 1000) ** 0.5
    assert p.detach().std().item() == pytest.approx(want_std, rel=0.01)


def test_manual_seed_makes_runs_reproducible():
    def seeded_run(torch_seed):
        model = small_model()  # same initial weights every time
        torch.manual_seed(torch_seed)
        opt = PSGLD(model.parameters(), lr=1e-3, num_data=50)
        train(model, opt, 3)
        return opt.param_groups[0]["seed"], [p.detach().clone() for p in model.parameters()]

    seed_a, run_a = seeded_run(123)
    seed_b, run_b = seeded_run(123)
    seed_c, run_c = seeded_run(124)
    assert seed_a == seed_b != seed_c
    assert all(torch.equal(x, y) for x, y in zip(run_a, run_b, strict=False))
    assert not any(torch.equal(x, y) for x, y in zip(run_a, run_c, strict=False))


@pytest.mark.parametrize("cls", [PSGLD, SGLD])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_continues_bit_for_bit(cls, dtype):
    model = small_model(dtype=dtype)
    opt = cls(model.parameters(), lr=1e-3, num_data=50, seed=77)
    train(model, opt, 4)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    train(model, opt, 5, seed=9)  # the uninterrupted run

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = small_model(seed=1, dtype=dtype)
    resumed.load_state_dict(saved["model"])
    opt2 = cls(resumed.parameters(), lr=1.0, num_data=1, seed=1)  # overwritten by the checkpoint
    opt2.load_state_dict(saved["opt"])
    if cls is PSGLD:
        assert all(opt2.state[p]["square_avg"].dtype == torch.float32 for p in resumed.parameters())
    train(resumed, opt2, 5, seed=9)
    for p, q in zip(model.parameters(), resumed.parameters(), strict=False):
        assert torch.equal(p, q)
    for p, q in zip(model.parameters(), resumed.parameters(), strict=False):
        assert opt.state[p]["step"] == opt2.state[q]["step"] == 9


def test_load_state_dict_rejects_mismatches():
    model = small_model()
    opt = PSGLD(model.parameters(), lr=1e-3, num_data=50)
    train(model, opt, 1)
    sd = opt.state_dict()
    other = PSGLD(list(model.parameters())[:2], lr=1e-3, num_data=50)
    with pytest.raises(ValueError, match="has 2 parameters, the state_dict 4"):
        other.load_state_dict(sd)
    bad = copy.deepcopy(sd)
    bad["state"][0]["square_avg"] = torch.zeros(3)
    with pytest.raises(ValueError, match="square_avg of parameter id 0 has shape"):
        PSGLD(model.parameters(), lr=1e-3, num_data=50).load_state_dict(bad)


def test_lr_scheduler_changes_the_step():
    a, b = small_model(), small_model()
    opt_a = SGLD(a.parameters(), lr=0.1, num_data=10, add_noise=False)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    train(a, opt_a, 6, sched=torch.optim.lr_scheduler.StepLR(opt_a, step_size=2, gamma=0.5))
    train(b, opt_b, 6, sched=torch.optim.lr_scheduler.StepLR(opt_b, step_size=2, gamma=0.5))
    assert opt_a.param_groups[0]["lr"] == pytest.approx(0.0125)
    for p, q in zip(a.parameters(), b.parameters(), strict=False):
        assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_closure_and_parameters_without_grad():
    model = small_model()
    frozen = torch.nn.Parameter(torch.ones(5))
    opt = PSGLD([*model.parameters(), frozen], lr=1e-3, num_data=50)
    x, y = torch.randn(4, 13), torch.randint(0, 3, (4,))

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() > 0
    assert torch.equal(frozen.detach(), torch.ones(5))
    assert frozen not in opt.state


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_dtypes_are_grouped(device):
    sizes = [10, 20, 30]
    params = [
        make_params([n], dt, device)[0]
        for n, dt in zip(sizes, (torch.float32, torch.float64, torch.float16), strict=False)
    ]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in params]
    grads = [
        [grad_sequence([n], p.dtype, device, steps=1)[0][0] for n, p in zip(sizes, params, strict=False)]
        for _ in range(3)
    ]
    run_optimizer(PSGLD, params, grads, lr=1e-3, num_data=10, seed=4)
    run_optimizer(PSGLD, ref, grads, lr=1e-3, num_data=10, seed=4, impl="eager")
    for p, q in zip(params, ref, strict=False):
        assert p.dtype == q.dtype
        assert_close(p, q, rtol=1e-6, atol=1e-6 if p.dtype != torch.float16 else 1e-3)


def test_sparse_gradients_are_refused():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = PSGLD(emb.parameters(), lr=1e-3, num_data=10)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(lr=1e-3), TypeError, "num_data is required"),
        (dict(lr=1e-3, num_data=0), ValueError, "num_data must be an int in \\[1, 2\\^63\\)"),
        (dict(lr=-1.0, num_data=1), ValueError, "lr must be >= 0"),
        (dict(lr=float("nan"), num_data=1), ValueError, "lr must be a finite number"),
        (dict(lr=1e-3, num_data=1, alpha=1.0), ValueError, "alpha must be < 1"),
        (dict(lr=1e-3, num_data=1, eps=0.0), ValueError, "eps must be > 0"),
        (dict(lr=1e-3, num_data=1, seed=-3), ValueError, "seed must be an int"),
        (dict(lr=1e-3, num_data=1, impl="fast"), ValueError, "unknown impl 'fast'"),
    ],
)
def test_bad_hyperparameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        PSGLD(small_model().parameters(), **kwargs)


def _step_with_zero_grads(opt):
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()


def test_backend_that_cannot_serve_lists_reasons():
    opt = PSGLD(small_model(dtype=torch.float16).parameters(), lr=1e-3, num_data=10, impl="foreach")
    with pytest.raises(
        ValueError, match=r"impl='foreach' cannot serve cpu tensors: unsupported dtype\(s\) torch.float16"
    ):
        _step_with_zero_grads(opt)
    opt = PSGLD(small_model().parameters(), lr=1e-3, num_data=10, impl="cuda")
    with pytest.raises(ValueError, match="the CUDA kernel needs cuda tensors, got cpu"):
        _step_with_zero_grads(opt)


def test_grad_fixture_changes_between_steps():
    """The gradient fixture changes between steps (otherwise step tests would be weak)."""
    seq = grad_sequence([100], torch.float32, "cpu", steps=2)
    assert not torch.equal(seq[0][0], seq[1][0])


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_gradient_raises_naming_the_parameter_and_updates_nothing(bad_value):
    model = small_model()
    opt = PSGLD(model.named_parameters(), lr=1e-3, num_data=50, seed=1)
    train(model, opt, 2)
    before = copy.deepcopy((model.state_dict(), opt.state_dict()))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model[2].weight.grad[1, 4] = bad_value
    with pytest.raises(FloatingPointError, match=r"parameter '2.weight' \(shape \(3, 17\)\) holds NaN or inf"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before[0].values(), model.state_dict().values(), strict=False))
    after = opt.state_dict()
    for i, s in before[1]["state"].items():
        assert s["step"] == after["state"][i]["step"]
        assert torch.equal(s["square_avg"], after["state"][i]["square_avg"])


def _two_groups():
    torch.manual_seed(0)
    body, head = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
    opt = PSGLD([{"params": body.parameters()}, {"params": head.parameters()}], lr=1e-2, num_data=100, seed=0)
    return body, head, opt


def test_a_parameter_whose_dtype_changed_keeps_stepping_with_its_square_avg():
    """After head.double() the step goes on, as torch's RMSprop does: the group's V follows its parameter
    to float64 (exactly, an fp32 value being an fp64 one), and both groups step once more. The
    reference is a second optimizer whose state was loaded after the change (load_state_dict casts)."""
    x = torch.randn(8, 3)
    body, head, opt = _two_groups()
    head(body(x)).sum().backward()
    opt.step()
    head.double()
    twin_body, twin_head = copy.deepcopy(body), copy.deepcopy(head)
    twin = PSGLD([{"params": twin_body.parameters()}, {"params": twin_head.parameters()}], lr=1e-2, num_data=100)
    twin.load_state_dict(opt.state_dict())
    for b, h, o in ((body, head, opt), (twin_body, twin_head, twin)):
        o.zero_grad()
        h(b(x).double()).sum().backward()
        o.step()
    assert opt.state[head.weight]["square_avg"].dtype == torch.float64
    for a, b in zip(
        [*body.parameters(), *head.parameters()], [*twin_body.parameters(), *twin_head.parameters()], strict=True
    ):
        assert torch.equal(a, b)
    assert [opt.state[p]["step"] for p in (body.weight, head.weight)] == [2, 2]


def _snapshot(params, opt):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict()["state"])


def _unchanged(params, opt, before) -> bool:
    values, state = before
    now = opt.state_dict()["state"]
    return all(torch.equal(a, p) for a, p in zip(values, params, strict=True)) and all(
        now[i]["step"] == s["step"] and torch.equal(now[i]["square_avg"], s["square_avg"]) for i, s in state.items()
    )


def test_a_step_refused_by_a_later_call_updates_no_earlier_one():
    """Two leaves over one memory in the second group: its fused call refuses them. The first group,
    stepped by an earlier call, must not have moved (nor its noise counter, which would then draw the
    same noise twice)."""
    torch.manual_seed(0)
    body, head = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
    alias = torch.nn.Parameter(head.weight.data)  # a leaf of its own over head.weight's memory
    opt = PSGLD([{"params": body.parameters()}, {"params": [head.weight, alias]}], lr=1e-2, num_data=100, seed=0)
    params = [*body.parameters(), head.weight]
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()  # alias has no gradient yet, so it is left out
    alias.grad = torch.ones_like(alias)
    before = _snapshot(params, opt)
    with pytest.raises(ValueError, match=r"psgld_step_: params\[0\] and params\[1\] share memory"):
        opt.step()
    assert _unchanged(params, opt, before)


def test_an_expanded_parameter_is_refused_before_any_update():
    ok = torch.nn.Parameter(torch.randn(3))
    expanded = torch.randn(1, 3).expand(2, 3).detach().requires_grad_()
    opt = PSGLD([ok, expanded], lr=0.1, num_data=10, seed=0)
    ok.grad, expanded.grad = torch.ones(3), torch.ones(2, 3)
    before = ok.detach().clone()
    with pytest.raises(ValueError, match=r"stream id 1 \(shape \(2, 3\), strides \(0, 1\)\) is an expanded tensor"):
        opt.step()
    assert torch.equal(ok.detach(), before) and not opt.state


def test_a_resized_parameter_is_refused_before_any_update():
    body, head, opt = _two_groups()
    head(body(torch.randn(8, 3))).sum().backward()
    opt.step()
    params = [*body.parameters(), *head.parameters()]
    head.bias.data = torch.zeros(2)
    head.bias.grad = torch.zeros(2)
    before = _snapshot(params, opt)
    with pytest.raises(ValueError, match=r"has shape \(2,\), but its square_avg \(1,\): a parameter resized"):
        opt.step()
    assert _unchanged(params, opt, before)


def test_nan_policy_skip_counts_and_leaves_state_untouched():
    model = small_model()
    opt = SGLD(model.parameters(), lr=1e-3, num_data=50, nan_policy="skip")
    train(model, opt, 1)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model[0].bias.grad[0] = float("nan")
    opt.step()
    assert opt.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=False))
    assert opt.state_dict()["skipped_steps"] == 1
    with pytest.raises(ValueError, match="nan_policy must be"):
        SGLD(model.parameters(), lr=1e-3, num_data=50, nan_policy="ignore")


def test_huge_but_finite_gradients_are_not_reported_as_nan():
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.full((4,), 3e19)  # its squares overflow fp32, the values do not
    SGLD([p], lr=1e-20, num_data=10, add_noise=False).step()
    assert torch.allclose(p.detach(), torch.full((4,), -0.3))


def _params_and_state(model, opt):
    """A comparable snapshot: the parameters, and each parameter's step count and V."""
    return [
        (p.detach().clone(), opt.state[p].get("step"), opt.state[p].get("square_avg", torch.zeros(0)).clone())
        for p in model.parameters()
    ]


def _assert_same(a, b):
    for (p, step, v), (q, step2, v2) in zip(a, b, strict=True):
        assert torch.equal(p, q) and step == step2 and torch.equal(v, v2)


@pytest.mark.parametrize("cls", [PSGLD, SGLD])
def test_deepcopy_and_pickle_give_an_optimizer_that_continues_bit_for_bit(cls):
    model = small_model()
    opt = cls(model.parameters(), lr=1e-3, num_data=50, seed=3, nan_policy="skip")
    train(model, opt, 3)
    opt.skipped_steps = 2
    buffer = io.BytesIO()
    torch.save((model, opt), buffer)  # pickles the optimizer whole
    buffer.seek(0)
    copies = [copy.deepcopy((model, opt)), torch.load(buffer, weights_only=False)]
    train(model, opt, 4, seed=8)
    for model_copy, opt_copy in copies:
        assert (opt_copy.nan_policy, opt_copy.skipped_steps) == ("skip", 2)
        train(model_copy, opt_copy, 4, seed=8)
        _assert_same(_params_and_state(model, opt), _params_and_state(model_copy, opt_copy))


@pytest.mark.parametrize(
    "group,error,match",
    [
        (dict(prior_std=0.1, weight_decay=1e-3), ValueError, "both are a Gaussian prior"),
        (dict(lr=-1e-3), ValueError, r"parameter group 1: lr must be >= 0"),
        (dict(temperature=float("nan")), ValueError, r"parameter group 1: temperature must be a finite number"),
        (dict(alpha=1.5), ValueError, r"parameter group 1: alpha must be < 1"),
        (dict(eps=0.0), ValueError, r"parameter group 1: eps must be > 0"),
        (dict(num_data=0), ValueError, r"parameter group 1: num_data must be an int in \[1, 2\^63\)"),
        (dict(lr=torch.tensor(1e-3)), TypeError, r"parameter group 1: lr must be a Python number"),
    ],
)
def test_a_refused_parameter_group_leaves_the_optimizer_as_it_was(group, error, match):
    model, reference = small_model(), small_model()
    extra = torch.nn.Parameter(torch.ones(3))
    opt = PSGLD(model.parameters(), lr=1e-3, num_data=50, seed=2)
    with pytest.raises(error, match=match):
        opt.add_param_group({"params": [extra], **group})
    assert len(opt.param_groups) == 1
    train(model, opt, 2)  # steps as if the group had never been offered
    ref_opt = PSGLD(reference.parameters(), lr=1e-3, num_data=50, seed=2)
    train(reference, ref_opt, 2)
    _assert_same(_params_and_state(model, opt), _params_and_state(reference, ref_opt))


def test_a_sparse_parameter_group_is_refused_before_it_is_registered():
    opt = SGLD(small_model().parameters(), lr=1e-3, num_data=50)
    sparse = torch.nn.Parameter(torch.eye(3).to_sparse())
    with pytest.raises(ValueError, match=r"parameter group 1: sparse parameters are not supported"):
        opt.add_param_group({"params": [sparse]})
    assert len(opt.param_groups) == 1 and sparse not in opt._stream_ids


@pytest.mark.parametrize("cls", [PSGLD, SGLD])
def test_a_bad_hyperparameter_set_after_construction_fails_the_step_before_any_update(cls):
    model, reference = small_model(), small_model()
    params = list(model.parameters())
    opt = cls([{"params": params[:2]}, {"params": params[2:]}], lr=1e-3, num_data=50, seed=4)
    ref_params = list(reference.parameters())
    ref_opt = cls([{"params": ref_params[:2]}, {"params": ref_params[2:]}], lr=1e-3, num_data=50, seed=4)
    train(model, opt, 2)
    train(reference, ref_opt, 2)
    opt.param_groups[1]["lr"] = float("nan")  # e.g. a scheduler gone wrong
    with pytest.raises(ValueError, match=r"parameter group 1: lr must be a finite number, got nan"):
        train(model, opt, 1, seed=8)
    _assert_same(_params_and_state(model, opt), _params_and_state(reference, ref_opt))  # group 0 untouched too
    opt.param_groups[1]["lr"] = 1e-3
    train(model, opt, 3, seed=9)
    train(reference, ref_opt, 3, seed=9)
    _assert_same(_params_and_state(model, opt), _params_and_state(reference, ref_opt))


def test_sets_of_parameters_are_refused_as_their_order_changes_between_runs():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    for make in (
        lambda: PSGLD({a, b}, lr=1e-3, num_data=10),
        lambda: SGLD([{"params": {a, b}}], lr=1e-3, num_data=10),
        lambda: SGLD([a], lr=1e-3, num_data=10).add_param_group({"params": frozenset([b])}),
    ):
        with pytest.raises(TypeError, match="not a set: the order gives each parameter its noise stream"):
            make()


def test_load_state_dict_runs_the_registered_hooks():
    model = small_model()
    opt = PSGLD(model.parameters(), lr=1e-3, num_data=50)
    train(model, opt, 1)
    saved = opt.state_dict()
    fresh = PSGLD(model.parameters(), lr=1e-3, num_data=50)
    calls = []

    def pre_hook(optimizer, state_dict):
        calls.append("pre")
        state_dict = copy.deepcopy(state_dict)
        state_dict["param_groups"][0]["lr"] = 5e-4
        return state_dict

    fresh.register_load_state_dict_pre_hook(pre_hook)
    fresh.register_load_state_dict_post_hook(lambda optimizer: calls.append(optimizer.param_groups[0]["lr"]))
    fresh.load_state_dict(saved)
    assert calls == ["pre", 5e-4]
    assert saved["param_groups"][0]["lr"] == 1e-3


def test_a_psgld_state_is_refused_by_sgld():
    model = small_model()
    psgld = PSGLD(model.parameters(), lr=1e-3, num_data=50)
    train(model, psgld, 1)
    sgld = SGLD(model.parameters(), lr=1e-3, num_data=50)
    with pytest.raises(ValueError, match="is a PSGLD state"):
        sgld.load_state_dict(psgld.state_dict())
    assert not sgld.state and "alpha" not in sgld.param_groups[0]
