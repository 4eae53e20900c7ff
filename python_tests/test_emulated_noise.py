"""The CUDA noise kernel (philox_normal_kernel, csrc/cuda/langevin_step_kernels.cuh)
executed on the host under emulation with sanitizers: the known answer of docs/spec.md#noise-stream and the
eager stream, at any element offset and through the grid-stride loop. See
test_emulated_step.py for what emulation does not cover."""

from __future__ import annotations

import pytest
import torch
from emulated.client import FORWARD, REVERSE
from tolerances import assert_close

from sgmcmc_fused.kernels.langevin import reference

pytestmark = pytest.mark.emulated

# docs/spec.md#noise-stream: seed 12345678901234, counter (0, 0, 3, 7).
KNOWN_SEED, KNOWN_STREAM, KNOWN_STEP = 12345678901234, 3, 7
KNOWN_NORMALS = [-0.201932, -0.480094, -1.387980, -0.947448]


def emulated_normals(
    kernels, numel, seed, stream, step, offset, *, max_blocks, order=FORWARD, variant="product", misaligned=False
):
    out = torch.full((numel + 1,), float("nan"))[1:] if misaligned else torch.full((numel,), float("nan"))
    kernels.call(variant, "philox_normal_", out, seed, stream, step, offset, max_blocks=max_blocks, order=order)
    return out


def test_known_answer(emulated_kernels):
    n = emulated_normals(emulated_kernels, 4, KNOWN_SEED, KNOWN_STREAM, KNOWN_STEP, 0, max_blocks=1)
    assert_close(n, torch.tensor(KNOWN_NORMALS), atol=1e-6, rtol=0, what="known answer of docs/spec.md#noise-stream")


@pytest.mark.parametrize("offset", [0, 1, 2, 3, 4, 4097, 2**34 + 3])
@pytest.mark.parametrize("numel", [1, 3, 4, 5, 1023, 278011])
def test_matches_the_eager_stream(emulated_kernels, numel, offset):
    """Every element of the slice, with few blocks so the grid-stride loop runs,
    bit-identical in both thread orders, equal to the eager stream to 1e-6."""
    seed, stream, step = 987654321, 11, 5
    forward = emulated_normals(emulated_kernels, numel, seed, stream, step, offset, max_blocks=3)
    reverse = emulated_normals(emulated_kernels, numel, seed, stream, step, offset, max_blocks=3, order=REVERSE)
    assert torch.equal(forward, reverse)
    expected = reference.philox_normal(numel, seed, stream, step, offset)
    assert_close(forward, expected, atol=1e-6, rtol=0, what=f"numel {numel} offset {offset}")


@pytest.mark.parametrize("variant", ["product", "small"])
def test_misaligned_output_and_grid_sizes_agree(emulated_kernels, variant):
    """A view at an odd storage offset (scalar path) and any number of blocks give the
    same numbers as one block over an aligned tensor."""
    args = (10_007, 42, 2, 9, 6)
    one_block = emulated_normals(emulated_kernels, *args, max_blocks=1, variant=variant)
    for max_blocks in (2, 7, 1 << 20):
        many = emulated_normals(emulated_kernels, *args, max_blocks=max_blocks, variant=variant, misaligned=True)
        assert torch.equal(many, one_block), f"max_blocks {max_blocks}"
    assert not one_block.isnan().any()


def test_bad_arguments_are_refused(emulated_kernels):
    out = torch.zeros(8)
    with pytest.raises(RuntimeError, match="out must be float32"):
        emulated_kernels.call(
            "product", "philox_normal_", torch.zeros(8, dtype=torch.float64), 1, 0, 0, 0, max_blocks=1, order=FORWARD
        )
    with pytest.raises(RuntimeError, match="overflows int64"):
        emulated_kernels.call("product", "philox_normal_", out, 1, 0, 0, 2**63 - 2, max_blocks=1, order=FORWARD)
    assert torch.equal(out, torch.zeros(8))
