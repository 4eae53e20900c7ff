"""Posterior sample collection, model averaging and uncertainty metrics
(docs/spec.md#posterior-averaging, docs/spec.md#uncertainty-metrics).

References are independent: explicit loops and stacked means, hand-computed ECE, safetensors
files read back with safetensors' own loader.
"""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from sgmcmc_fused.bayes import (
    PredictiveAverager,
    SampleCollector,
    expected_calibration_error,
    mutual_information,
    perplexity_by_num_samples,
    predictive_entropy,
    predictive_mean,
    predictive_std,
    split_rhat,
)


class Tiny(nn.Module):
    """Parameters of several dtypes and a buffer; `set(v)` fills everything from one number."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.low = nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("wide", torch.zeros(2, 2, dtype=torch.float64).t())  # non-contiguous

    @torch.no_grad()
    def set(self, v: float) -> Tiny:
        self.lin.weight.fill_(v)
        self.lin.bias.fill_(-v)
        self.low.fill_(v / 8)
        self.count.fill_(int(v))
        self.wide.fill_(v + 0.1)
        return self


def _run(collector: SampleCollector, steps, module=None) -> list[bool]:
    module = module or Tiny()
    return [collector.maybe_collect(t, module.set(float(t))) for t in steps]


def test_collector_keeps_the_right_steps_in_memory():
    c = SampleCollector(burn_in=3, thin=2, max_samples=3)
    took = _run(c, range(13))
    assert took == [t >= 3 and (t - 3) % 2 == 0 for t in range(13)]  # steps 3, 5, 7, 9, 11
    assert len(c) == 3 and c.steps == [7, 9, 11]  # the two oldest were dropped
    assert [s["lin.weight"][0, 0].item() for s in c] == [7.0, 9.0, 11.0]
    m = c.load(0, Tiny())
    assert m.lin.weight[0, 0].item() == 7.0 and m.count.item() == 7 and m.low.dtype == torch.bfloat16
    assert c[-1]["wide"].dtype == torch.float64 and c[-1]["count"].device.type == "cpu"
    # the samples are copies: changing the module afterwards leaves them alone
    mod = Tiny().set(100.0)
    c2 = SampleCollector(burn_in=0, thin=1)
    c2.maybe_collect(0, mod)
    mod.set(-1.0)
    assert c2[0]["lin.weight"][0, 0].item() == 100.0
    assert _run(SampleCollector(burn_in=0, thin=1), range(5)) == [True] * 5


def test_collector_keeping_none_counts_the_schedule_only():
    c = SampleCollector(burn_in=2, thin=3, max_samples=0)
    took = _run(c, range(12))
    assert took == [t >= 2 and (t - 2) % 3 == 0 for t in range(12)]  # steps 2, 5, 8, 11
    assert len(c) == 0 and c.num_taken == 4 and list(c) == []
    state = c.state_dict()
    assert state["records"] == [] and state["next_index"] == 4
    resumed = SampleCollector(burn_in=2, thin=3, max_samples=0)
    resumed.load_state_dict(state)
    assert resumed.num_taken == 4
    with pytest.raises(ValueError, match="max_samples must be >= 0 or None, got -1"):
        SampleCollector(burn_in=0, thin=1, max_samples=-1)
    with pytest.raises(ValueError, match="max_samples=0 keeps no sample"):
        SampleCollector(burn_in=0, thin=1, max_samples=0, directory="unused")


def test_collector_on_disk_safetensors_round_trip(tmp_path):
    d = tmp_path / "samples"
    c = SampleCollector(burn_in=2, thin=3, max_samples=2, directory=d)
    module = Tiny()
    _run(c, range(12), module)  # taken at 2, 5, 8, 11; 2 and 5 dropped
    assert c.steps == [8, 11]
    assert sorted(p.name for p in d.iterdir()) == ["sample_00000002.safetensors", "sample_00000003.safetensors"]
    ref = Tiny().set(11.0).state_dict()
    on_disk = load_file(d / "sample_00000003.safetensors")  # safetensors' own reader
    got = c[1]
    assert list(got) == list(ref)
    for k, v in ref.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
        assert torch.equal(on_disk[k], v), k
    m = c.load(0, Tiny())
    assert m.lin.bias[0].item() == -8.0 and m.low[0].item() == 1.0


def test_collector_checkpoint_round_trip_in_memory():
    ref = SampleCollector(burn_in=1, thin=2, max_samples=4)
    _run(ref, range(20))
    c = SampleCollector(burn_in=1, thin=2, max_samples=4)
    _run(c, range(9))
    buf = io.BytesIO()
    torch.save(c.state_dict(), buf)
    buf.seek(0)
    resumed = SampleCollector(burn_in=1, thin=2, max_samples=4)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    _run(resumed, range(9, 20))
    assert resumed.steps == ref.steps == [13, 15, 17, 19]
    for a, b in zip(resumed, ref, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in b)


def test_collector_resume_after_crash_on_disk(tmp_path):
    ref = SampleCollector(burn_in=0, thin=2, max_samples=3, directory=tmp_path / "ref")
    _run(ref, range(30))
    d = tmp_path / "run"
    c = SampleCollector(burn_in=0, thin=2, max_samples=3, directory=d)
    _run(c, range(11))  # samples at 0..10; kept 6, 8, 10
    buf = io.BytesIO()
    torch.save(c.state_dict(), buf)
    _run(c, range(11, 17))  # after the checkpoint: 12, 14, 16 taken, 6, 8, 10 deleted; then a crash
    (d / ".sample_00000009.safetensors.123.tmp").write_bytes(b"half a file")  # interrupted write
    buf.seek(0)
    resumed = SampleCollector(burn_in=0, thin=2, max_samples=3, directory=d)
    with pytest.warns(UserWarning, match="3 sample file"):
        resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert resumed.steps == [6, 8, 10] and not any(d.glob("*.tmp")) and not any(d.glob(".*"))
    assert sorted(p.name for p in d.iterdir()) == []  # 12..16 were after the checkpoint: removed
    with pytest.raises(FileNotFoundError, match="step 6"):
        resumed[0]
    _run(resumed, range(11, 30))  # the replay drops the missing ones before anything reads them
    assert resumed.steps == ref.steps == [24, 26, 28]
    assert sorted(p.name for p in d.iterdir()) == sorted(p.name for p in (tmp_path / "ref").iterdir())
    for a, b in zip(resumed, ref, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in b)
    with pytest.raises(ValueError, match="in memory"):
        SampleCollector(0, 1).load_state_dict(resumed.state_dict())


def test_averager_equals_stacked_mean_and_perplexity():
    g = torch.Generator().manual_seed(0)
    s, n, c = 7, 50, 4
    logits = torch.randn(s, n, c, generator=g) * 2
    probs = logits.softmax(-1)
    labels = torch.randint(0, c, (n,), generator=g)
    avg = PredictiveAverager(n)
    avg_lp = PredictiveAverager(n)
    for i in range(s):
        avg.update(probs[i])
        avg_lp.update(log_probs=logits[i].log_softmax(-1))
    stacked = probs.double().mean(0)
    assert avg.num_samples == s and avg.mean.dtype == torch.float64
    assert torch.allclose(avg.mean, stacked, rtol=1e-12, atol=1e-15)
    assert torch.allclose(avg_lp.mean, stacked, rtol=1e-6)
    ppl = math.exp(-sum(math.log(stacked[j, labels[j]].item()) for j in range(n)) / n)
    assert avg.perplexity(labels) == pytest.approx(ppl, rel=1e-12)
    # per-item target probabilities [N]
    target = probs[:, torch.arange(n), labels]  # [S, N]
    avg1 = PredictiveAverager(n)
    for i in range(s):
        avg1.update(target[i])
    assert avg1.perplexity() == pytest.approx(ppl, rel=1e-6)
    assert avg1.perplexity(target_probs=target[-1]) == pytest.approx(
        math.exp(-target[-1].double().log().mean().item()), rel=1e-12
    )
    # log-space averaging: geometric mean, and by Jensen a worse perplexity than averaging probabilities
    geo = PredictiveAverager(n, log_space=True)
    for i in range(s):
        geo.update(target[i])
    assert torch.allclose(geo.mean, target.double().log().mean(0).exp(), rtol=1e-12)
    assert geo.perplexity() > avg1.perplexity()
    assert perplexity_by_num_samples(target)[-1].item() == pytest.approx(avg1.perplexity(), rel=1e-12)
    with pytest.raises(ValueError, match="shape"):
        avg1.update(probs[0])
    with pytest.raises(ValueError, match="targets"):
        avg.perplexity()
    state = avg.state_dict()
    again = PredictiveAverager(n)
    again.load_state_dict(state)
    assert again.perplexity(labels) == avg.perplexity(labels)


def test_log_space_average_of_a_zero_probability_is_minus_inf():
    # mean_s log p = -inf as soon as one sample gives p = 0 (perplexity inf, as bayes.perplexity says),
    # in whichever order the samples come.
    for first, second in (([0.0, 0.5], [0.0, 0.5]), ([0.0, 0.5], [0.3, 0.5]), ([0.3, 0.5], [0.0, 0.5])):
        avg = PredictiveAverager(2, log_space=True)
        avg.update(torch.tensor(first))
        avg.update(torch.tensor(second))
        lp = avg.mean_log_prob()
        assert lp[0].item() == -math.inf and lp[1].item() == pytest.approx(math.log(0.5), rel=1e-15)
        assert avg.perplexity() == math.inf
    avg = PredictiveAverager(1, log_space=True)
    avg.update(log_probs=torch.tensor([-math.inf]))
    avg.update(log_probs=torch.tensor([-1.0]), weight=3.0)
    assert avg.mean_log_prob().item() == -math.inf


def test_averager_state_dict_is_a_snapshot():
    avg = PredictiveAverager(3)
    avg.update(torch.tensor([0.2, 0.4, 0.6]))
    snap = avg.state_dict()
    avg.update(torch.tensor([0.6, 0.8, 1.0]))  # must not reach the snapshot
    assert snap["num_samples"] == 1 and snap["acc"].tolist() == pytest.approx([0.2, 0.4, 0.6], rel=1e-7)
    loaded, other = PredictiveAverager(3), PredictiveAverager(3)
    loaded.load_state_dict(snap)
    loaded.update(torch.tensor([1.0, 1.0, 1.0]))  # must not reach the dict it was loaded from
    other.load_state_dict(snap)
    assert other.mean.tolist() == pytest.approx([0.2, 0.4, 0.6], rel=1e-7)


def test_averager_refuses_targets_of_the_wrong_length():
    avg = PredictiveAverager(4)
    avg.update(torch.full((4, 3), 1 / 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"targets must be \[4\] class indices, got shape \(2,\)"):
        avg.perplexity(torch.tensor([0, 0]))
    assert avg.perplexity(torch.tensor([0, 1, 2, 0])) == pytest.approx(3.0, rel=1e-12)


def test_weighted_averager_equals_the_weighted_mean():
    g = torch.Generator().manual_seed(5)
    s, n = 6, 40
    probs = torch.rand(s, n, 3, generator=g, dtype=torch.float64).softmax(-1)
    weights = [3e-3, 1.5e-3, 7.5e-4, 3.75e-4, 1e-4, 2.0]  # a decaying step size, then one large weight
    avg, geo = PredictiveAverager(n), PredictiveAverager(n, log_space=True)
    for p, w in zip(probs, weights, strict=True):
        avg.update(p, weight=w)
        geo.update(p, weight=w)
    w = torch.tensor(weights, dtype=torch.float64).view(-1, 1, 1)
    torch.testing.assert_close(avg.mean, (w * probs).sum(0) / w.sum(), rtol=1e-13, atol=0)
    torch.testing.assert_close(geo.mean, ((w * probs.log()).sum(0) / w.sum()).exp(), rtol=1e-13, atol=0)
    assert avg.num_samples == s and avg.total_weight == pytest.approx(sum(weights), rel=1e-15)
    # equal weights of any size give the plain mean
    same = PredictiveAverager(n)
    for p in probs:
        same.update(p, weight=0.25)
    torch.testing.assert_close(same.mean, probs.mean(0), rtol=1e-13, atol=0)
    # the weight survives a checkpoint; a state from before weights existed counts its samples
    again = PredictiveAverager(n)
    again.load_state_dict(copy.deepcopy(avg.state_dict()))  # a copy, as torch.load would give
    assert again.total_weight == avg.total_weight
    again.update(probs[0], weight=1.0)
    w1 = torch.cat([w.view(-1), torch.ones(1, dtype=torch.float64)]).view(-1, 1, 1)
    expected = (w1 * torch.cat([probs, probs[:1]])).sum(0) / w1.sum()
    torch.testing.assert_close(again.mean, expected, rtol=1e-13, atol=0)
    avg.update(probs[0], weight=1.0)
    old = {k: v for k, v in same.state_dict().items() if k != "total_weight"}
    legacy = PredictiveAverager(n)
    legacy.load_state_dict(old)
    assert legacy.total_weight == s
    before = (avg.num_samples, avg.total_weight, avg.mean)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="weight must be a finite number > 0"):
            avg.update(probs[0], weight=bad)
    # the refused updates changed nothing
    assert (avg.num_samples, avg.total_weight) == before[:2]
    torch.testing.assert_close(avg.mean, before[2], rtol=0, atol=0)


def test_unit_weights_are_bitwise_the_plain_running_mean():
    """Runs that do not weigh their samples keep their numbers bit for bit: (v - acc) * 1 / n."""
    g = torch.Generator().manual_seed(7)
    probs = torch.rand(36, 10_000, generator=g, dtype=torch.float64)
    avg, acc = PredictiveAverager(10_000), torch.zeros(10_000, dtype=torch.float64)
    for n, p in enumerate(probs, start=1):
        avg.update(p)
        acc += (p - acc) / n
    assert torch.equal(avg.mean, acc)


def test_pooled_weighted_averagers_weigh_chains_by_total_weight():
    g = torch.Generator().manual_seed(6)
    probs = torch.rand(5, 30, generator=g, dtype=torch.float64)
    weights = [1.0, 0.5, 0.25, 2.0, 0.1]
    a, b = PredictiveAverager(30), PredictiveAverager(30)
    for i, (p, w) in enumerate(zip(probs, weights, strict=True)):
        (a if i < 3 else b).update(p, weight=w)
    pooled = PredictiveAverager.pooled([a, b])
    w = torch.tensor(weights, dtype=torch.float64).view(-1, 1)
    torch.testing.assert_close(pooled.mean, (w * probs).sum(0) / w.sum(), rtol=1e-13, atol=0)
    assert pooled.num_samples == 5 and pooled.total_weight == pytest.approx(sum(weights))


def test_perplexity_by_num_samples_against_a_loop():
    g = torch.Generator().manual_seed(1)
    target = torch.rand(5, 30, generator=g, dtype=torch.float64) * 0.9 + 0.05
    curve = perplexity_by_num_samples(target)
    assert curve.shape == (5,) and curve.dtype == torch.float64
    for s in range(1, 6):
        p_bar = [sum(target[r, j].item() for r in range(s)) / s for j in range(30)]
        assert curve[s - 1].item() == pytest.approx(math.exp(-sum(map(math.log, p_bar)) / 30), rel=1e-12)


def test_predictive_moments_and_entropy():
    probs = torch.tensor(
        [
            [[0.9, 0.1], [0.5, 0.5], [1.0, 0.0]],
            [[0.7, 0.3], [0.5, 0.5], [0.0, 1.0]],
        ],
        dtype=torch.float64,
    )  # S=2, N=3, C=2
    mean = predictive_mean(probs)
    assert torch.allclose(mean, torch.tensor([[0.8, 0.2], [0.5, 0.5], [0.5, 0.5]], dtype=torch.float64))
    std = predictive_std(probs)  # population std across the 2 samples = |a - b| / 2
    assert torch.allclose(std, torch.tensor([[0.1, 0.1], [0.0, 0.0], [0.5, 0.5]], dtype=torch.float64))
    assert torch.allclose(predictive_std(probs, correction=1), std * math.sqrt(2))
    h = predictive_entropy(mean)
    h0 = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    assert torch.allclose(h, torch.tensor([h0, math.log(2), math.log(2)], dtype=torch.float64))
    mi = mutual_information(probs)
    h_09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    h_07 = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
    # item 1: samples agree -> 0; item 2: two confident opposite samples -> all entropy is epistemic
    expected = torch.tensor([h0 - (h_09 + h_07) / 2, 0.0, math.log(2)], dtype=torch.float64)
    assert torch.allclose(mi, expected, atol=1e-15)
    agree = probs[:1].expand(6, -1, -1)
    assert torch.allclose(mutual_information(agree), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-15)
    assert predictive_entropy(torch.tensor([[1.0, 0.0, 0.0]])).item() == 0.0  # 0 log 0 = 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_uncertainty_of_low_precision_probabilities_is_computed_in_float64(dtype):
    # The mutual information is a small difference of two entropies near log C: computed in bf16 it
    # is mostly rounding error. The reference is the same (rounded) inputs taken to float64 first.
    g = torch.Generator().manual_seed(3)
    probs = (torch.randn(20, 200, 5, generator=g) * 0.3).softmax(-1).to(dtype)
    exact = probs.double()
    mi, h = mutual_information(probs), predictive_entropy(predictive_mean(probs))
    assert mi.dtype == h.dtype == torch.float64
    assert torch.allclose(mi, mutual_information(exact), rtol=1e-12, atol=1e-15)
    assert torch.allclose(h, predictive_entropy(exact.mean(0)), rtol=1e-3)  # the mean itself is in `dtype`


def test_expected_calibration_error_hand_computed():
    mean = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.55, 0.45], [0.35, 0.65]])
    labels = torch.tensor([0, 1, 1, 0, 0])
    # 5 bins of 0.2: (0.8, 1]: conf .9, .9, acc 1/2 -> |.5 - .9| * 2/5 = 0.16
    #                (0.6, 0.8]: conf .7, .65, acc 1/2 -> |.5 - .675| * 2/5 = 0.07
    #                (0.4, 0.6]: conf .55, acc 1 -> .45 * 1/5 = 0.09
    assert expected_calibration_error(mean, labels, num_bins=5) == pytest.approx(0.32, abs=1e-7)
    # perfectly calibrated: confidence 0.8 and 8 of 10 right
    mean = torch.tensor([[0.8, 0.2]] * 10)
    labels = torch.tensor([0] * 8 + [1] * 2)
    assert expected_calibration_error(mean, labels) == pytest.approx(0.0, abs=1e-7)
    # always right with confidence 0.6 -> ECE 0.4
    assert expected_calibration_error(torch.tensor([[0.4, 0.6]] * 3), torch.tensor([1, 1, 1])) == pytest.approx(0.4)


# -- pooling chains and split-R-hat -------------------------------------------------------------------


def test_pooled_averager_equals_averaging_all_samples_at_once():
    g = torch.Generator().manual_seed(3)
    chains = [torch.rand(n, 50, 4, generator=g, dtype=torch.float64) for n in (3, 7, 1)]
    averagers = []
    for samples in chains:
        a = PredictiveAverager(50)
        for p in samples:
            a.update(p)
        averagers.append(a)
    empty = PredictiveAverager(50)
    pooled = PredictiveAverager.pooled([*averagers, empty])
    everything = torch.cat(chains)
    assert pooled.num_samples == 11
    torch.testing.assert_close(pooled.mean, everything.mean(0), rtol=1e-13, atol=0)
    targets = torch.randint(0, 4, (50,), generator=g)
    direct = math.exp(-everything.mean(0).gather(1, targets.view(-1, 1)).log().mean().item())
    assert pooled.perplexity(targets) == pytest.approx(direct, rel=1e-12)
    assert PredictiveAverager.pooled([empty]).num_samples == 0


def test_pooled_averager_refuses_mismatches():
    a, b = PredictiveAverager(5), PredictiveAverager(6)
    a.update(torch.rand(5))
    b.update(torch.rand(6))
    with pytest.raises(ValueError, match="cannot pool averagers over 6 items"):
        PredictiveAverager.pooled([a, b])
    c = PredictiveAverager(5)
    c.update(torch.rand(5, 3))
    with pytest.raises(ValueError, match="different update shapes"):
        PredictiveAverager.pooled([a, c])
    with pytest.raises(ValueError, match="at least one"):
        PredictiveAverager.pooled([])


def _split_rhat_numpy(chains: list[list[float]]) -> float:
    """BDA3 split-R-hat written out in numpy, as an independent reference."""
    n2 = min(len(c) for c in chains) // 2 * 2
    seqs = []
    for c in chains:
        c = np.asarray(c[len(c) - n2 :], dtype=np.float64)
        seqs += [c[: n2 // 2], c[n2 // 2 :]]
    n = n2 // 2
    means = np.array([s.mean() for s in seqs])
    w = np.mean([s.var(ddof=1) for s in seqs])
    b = n * means.var(ddof=1)
    return float(np.sqrt(((n - 1) / n * w + b / n) / w))


def test_split_rhat_matches_the_formula_and_flags_disagreement():
    rng = np.random.default_rng(0)
    mixed = [list(rng.normal(size=n)) for n in (400, 401, 399, 400)]
    r = split_rhat(mixed)
    assert r == pytest.approx(_split_rhat_numpy(mixed), rel=1e-12)
    assert 0.99 < r < 1.01  # independent draws of one distribution
    shifted = [list(rng.normal(loc=mu, size=200)) for mu in (0.0, 0.0, 3.0)]
    assert split_rhat(shifted) == pytest.approx(_split_rhat_numpy(shifted), rel=1e-12)
    assert split_rhat(shifted) > 1.5  # one chain elsewhere
    drifting = [list(np.linspace(0, 5, 100) + rng.normal(scale=0.1, size=100))]
    assert split_rhat(drifting) > 2  # a single chain still on its way: the split catches it


def test_split_rhat_hand_computed_and_edge_cases():
    # One chain [1, 2, 3, 4] -> halves [1, 2], [3, 4]: n = 2, W = 0.5, B/n = var(1.5, 3.5) = 2,
    # var+ = 0.5 * 0.5 + 2 = 2.25, R-hat = sqrt(2.25 / 0.5) = sqrt(4.5).
    assert split_rhat([[1.0, 2.0, 3.0, 4.0]]) == pytest.approx(math.sqrt(4.5), rel=1e-15)
    # The earliest draw is dropped when the length is odd.
    assert split_rhat([[100.0, 1.0, 2.0, 3.0, 4.0]]) == pytest.approx(math.sqrt(4.5), rel=1e-15)
    assert math.isnan(split_rhat([[1.0] * 6, [1.0] * 6]))
    # Chains stuck at different values (W = 0 < B): the worst disagreement, R-hat = inf, not nan.
    assert split_rhat([[1.0] * 6, [2.0] * 6]) == math.inf
    with pytest.raises(ValueError, match="at least 4 draws per chain, the shortest has 3"):
        split_rhat([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="at least one chain"):
        split_rhat([])
