"""Decoding captions with the model average of S posterior samples: the samples batched on a leading
dimension (`StackedCaptionModels`, one set of batched matrix products per step) against a Python loop
over S single models (each its own `StackedCaptionModels` of one sample, their word distributions
averaged at every step), and against one model alone.

    python -m pytest bench/bench_caption_decode.py --benchmark-json=bench/results/caption_decode_cpu.json

Greedy decoding of a fixed number of steps (the cost of a step does not depend on the words chosen,
so every provider runs exactly `STEPS` steps: <eos> is never taken) for a batch of images, at the
shapes of the paper preset (2048-d ResNet-152 features, 512 embedding and hidden units, 8,000 words,
100 images) and of the embedded default's tiny preset (512-d features, 64/128, the scenes' vocabulary
of ~40 words, 300 images). Targets: 10 samples batched at least 2x faster than the loop at the
paper shapes, and at most 4x one model's time at the tiny shapes (docs/benchmarks.md has the times
and their ratios, all from one run).
"""

from __future__ import annotations

import pytest
import torch
from conftest import device_name, synchronize

# The caption package imports its whole task (image features, scores) on the way to the decoder.
pytest.importorskip("torchvision")
pytest.importorskip("pycocoevalcap")

from sgmcmc_fused.train.caption.decode import StackedCaptionModels  # noqa: E402
from sgmcmc_fused.train.caption.model import CaptionModel  # noqa: E402

STEPS = 16
SAMPLES = 10
SHAPES = {
    "paper": dict(features=2048, embedding=512, hidden=512, vocab=8000, images=100),
    "tiny": dict(features=512, embedding=64, hidden=128, vocab=40, images=300),
}


def _states(shape: dict, count: int) -> list[dict[str, torch.Tensor]]:
    states = []
    for s in range(count):
        torch.manual_seed(s)
        model = CaptionModel(shape["vocab"], shape["features"], embedding_dim=shape["embedding"],
                             hidden_size=shape["hidden"], lstm_impl="eager")  # fmt: skip
        states.append(model.state_dict())
    return states


def _decode_batched(models: StackedCaptionModels, features: torch.Tensor) -> torch.Tensor:
    state, probs = models.start(features)
    for _ in range(STEPS):
        state, probs = models.step(state, probs.argmax(1))
    return probs


def _decode_loop(models: list[StackedCaptionModels], features: torch.Tensor) -> torch.Tensor:
    states, dists = zip(*(m.start(features) for m in models), strict=True)
    states = list(states)
    probs = torch.stack(dists).mean(0)
    for _ in range(STEPS):
        words = probs.argmax(1)
        dists = []
        for i, m in enumerate(models):
            states[i], p = m.step(states[i], words)
            dists.append(p)
        probs = torch.stack(dists).mean(0)
    return probs


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("preset", list(SHAPES))
@pytest.mark.parametrize("provider", ["one_model", "loop_10", "batched_10"])
def test_caption_decode(benchmark, device, preset, provider):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    device = torch.device(device)
    shape = SHAPES[preset]
    states = _states(shape, SAMPLES)
    features = torch.randn(shape["images"], shape["features"], generator=torch.Generator().manual_seed(0)).to(device)
    if provider == "one_model":
        models = StackedCaptionModels(states[:1], device)
        run = lambda: _decode_batched(models, features)  # noqa: E731
    elif provider == "batched_10":
        models = StackedCaptionModels(states, device)
        run = lambda: _decode_batched(models, features)  # noqa: E731
    else:
        singles = [StackedCaptionModels([s], device) for s in states]
        run = lambda: _decode_loop(singles, features)  # noqa: E731
    # The batched and looped averages agree (same words chosen, same distributions to rounding).
    if provider != "one_model":
        ref = _decode_loop([StackedCaptionModels([s], device) for s in states], features)
        torch.testing.assert_close(run(), ref, rtol=1e-4, atol=1e-6)

    def timed():
        out = run()
        synchronize(device)
        return out

    benchmark.group = f"caption decode {preset} ({device_name(device)}), {SAMPLES} samples, {STEPS} steps"
    benchmark.extra_info.update(preset=preset, provider=provider, samples=SAMPLES, steps=STEPS, **shape)
    benchmark.pedantic(timed, rounds=5, warmup_rounds=1)
