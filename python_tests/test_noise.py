"""The counter-based noise stream (docs/spec.md#noise-stream) on every backend."""

import math

import pytest
import torch
from conftest import BACKEND_DEVICE_PAIRS, max_numel_for, require_backend
from scipy import stats
from tolerances import assert_close

from sgmcmc_fused.kernels.langevin import reference

SEED = 12345678901234
# known answer of docs/spec.md#noise-stream for counter (0, 0, 3, 7).
KNOWN_WORDS = (3750204141, 2949066374, 1046415480, 2556911004)
KNOWN_UNIFORMS = (0.87316245, 0.68663305, 0.24363762, 0.59532720)
KNOWN_NORMALS = (-0.201932, -0.480094, -1.387980, -0.947448)


def test_reference_philox_known_answer():
    words = reference.philox4x32_10((torch.tensor(0), torch.tensor(0), torch.tensor(3), torch.tensor(7)), SEED)
    assert tuple(int(w) for w in words) == KNOWN_WORDS
    uniforms = [reference.uint32_to_open_uniform(w).item() for w in words]
    assert uniforms == pytest.approx(KNOWN_UNIFORMS, abs=1e-8)


def test_reference_philox_random123_known_answers():
    # Known-answer vectors of the Random123 reference implementation
    # (kat_vectors, philox4x32 10): counter, key -> output.
    assert tuple(int(w) for w in reference.philox4x32_10([torch.tensor(0)] * 4, 0)) == (
        0x6627E8D5,
        0xE169C58D,
        0xBC57AC4C,
        0x9B00DBD8,
    )
    ones = torch.tensor(0xFFFFFFFF)
    assert tuple(int(w) for w in reference.philox4x32_10([ones] * 4, 0xFFFFFFFFFFFFFFFF)) == (
        0x408F276D,
        0x41C83B0E,
        0xA20BC7C6,
        0x6D5451FD,
    )
    pi_words = [torch.tensor(w) for w in (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344)]
    assert tuple(int(w) for w in reference.philox4x32_10(pi_words, 0x299F31D0_A4093822)) == (
        0xD16CFE09,
        0x94FDCCEB,
        0x5001E420,
        0x24126EA1,
    )


def test_reference_normals_known_answer():
    n = reference.philox_normal(4, SEED, stream_id=3, step=7)
    assert n.tolist() == pytest.approx(KNOWN_NORMALS, abs=1e-6)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE_PAIRS)
def test_backend_normals_known_answer(backend, device):
    impl = require_backend(backend, device)
    n = impl.philox_normal(4, SEED, 3, 7, 0, device)
    assert n.cpu().tolist() == pytest.approx(KNOWN_NORMALS, abs=1e-6)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE_PAIRS)
@pytest.mark.parametrize("offset", [0, 1, 3, 5, 2**32 + 2])
@pytest.mark.parametrize("numel", [1, 3, 4, 5, 1023, 278011])
def test_backend_noise_equals_reference(backend, device, offset, numel):
    if numel > max_numel_for(backend, device):
        pytest.skip("too large for the Triton interpreter")
    impl = require_backend(backend, device)
    got = impl.philox_normal(numel, SEED, 11, 5, offset, device)
    want = reference.philox_normal(numel, SEED, 11, 5, offset, device)
    assert_close(got, want, rtol=0.0, atol=1e-6, what=f"{backend} noise")


@pytest.mark.parametrize("backend,device", [("cpu", "cpu"), ("triton", "cpu")])
def test_elements_past_2_63_draw_the_reference_noise(backend, device):
    """An element offset below 2^63 (the limit) whose elements pass it: element indices are unsigned
    64-bit in the spec, so the CPU kernel's chunks beyond 2^63 must not overflow a signed index."""
    impl = require_backend(backend, device)
    offset = 2**63 - 5
    got = impl.philox_normal(40000, SEED, 11, 5, offset, device)
    want = reference.philox_normal(40000, SEED, 11, 5, offset, device)
    assert_close(got, want, rtol=0.0, atol=1e-6, what=f"{backend} noise past 2^63")


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE_PAIRS)
def test_shard_draws_its_slice_of_the_whole(backend, device):
    impl = require_backend(backend, device)
    whole = impl.philox_normal(10007, SEED, 2, 9, 0, device)
    for start, stop in [(0, 4), (1, 2), (3, 4099), (5000, 10007)]:
        shard = impl.philox_normal(stop - start, SEED, 2, 9, start, device)
        assert torch.equal(shard, whole[start:stop]), (start, stop)


def test_streams_steps_and_seeds_are_independent():
    a = reference.philox_normal(4096, SEED, 0, 0)
    for other in (
        reference.philox_normal(4096, SEED, 1, 0),
        reference.philox_normal(4096, SEED, 0, 1),
        reference.philox_normal(4096, SEED + 1, 0, 0),
        reference.philox_normal(4096, SEED, 0x80000000, 0),  # DropConnect mask space
    ):
        assert abs(torch.corrcoef(torch.stack([a, other]))[0, 1].item()) < 5 / math.sqrt(4096)


@pytest.mark.parametrize("backend,device", [("eager", "cpu")] + BACKEND_DEVICE_PAIRS)
def test_noise_is_standard_normal(backend, device):
    numel = min(1 << 20, max_numel_for(backend, device))
    impl = require_backend(backend, device)
    x = impl.philox_normal(numel, 987654321, 4, 2, 0, device).double().cpu()
    assert abs(x.mean().item()) < 5 / math.sqrt(numel)
    assert abs(x.var().item() - 1) < 5 * math.sqrt(2 / numel)
    assert x.abs().max().item() < 6.0
    assert stats.kstest(x.numpy(), "norm").pvalue > 1e-3
