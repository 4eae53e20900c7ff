"""Where a caption run's data come from: files (a Karpathy split JSON and a feature file), or the
synthetic scenes, rendered and passed through the same feature path as photographs."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ...data.scenes import make_scenes
from .data import CaptionData, caption_data_from, load_caption_files
from .features import build_backbone, extract_features


def load_caption_data(spec: dict[str, Any], *, progress: bool = False) -> CaptionData:
    """The data of a run's `data` configuration (`config.CaptionConfig`), features standardised
    (`standardised`). Raises ConfigError."""
    if spec["kind"] == "files":
        return standardised(load_caption_files(spec["captions"], spec["features"], min_count=spec["min_count"]))
    return standardised(_scenes(spec, progress))


def standardised(data: CaptionData) -> CaptionData:
    """`data` with every feature dimension shifted and scaled by the training images' mean and standard
    deviation (a dimension constant over them is only shifted).

    Why: pooled CNN activations are positive with a large shared offset and a small spread across
    images (the synthetic scenes' vary by about a seventh of their mean); standardised, the image
    enters the LSTM at the scale of a word embedding whatever the network. The fingerprint stays the
    raw data's.
    """
    train = data.train.features.double()
    mean, std = train.mean(0), train.std(0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))

    def scale(split):
        return dataclasses.replace(split, features=((split.features.double() - mean) / std).float())

    return dataclasses.replace(data, train=scale(data.train), valid=scale(data.valid), test=scale(data.test))


def _scenes(spec: dict[str, Any], progress: bool) -> CaptionData:
    """The synthetic scenes of `spec`, through the feature path of photographs."""
    scenes = make_scenes(spec["num_train"], spec["num_valid"], spec["num_test"], seed=spec["seed"],
                         image_size=spec["image_size"])  # fmt: skip
    # A randomly initialised network (seeded): no pretrained weights can be fetched at run time. Its
    # early stages' pooled activations still separate colours, sizes and shapes; its last stage's do not
    # (`features.PooledStages`).
    backbone = build_backbone(spec["arch"], None, seed=spec["seed"], stages=spec["stages"])
    features = extract_features(backbone, scenes.images, image_size=spec["feature_image_size"], progress=progress)
    description = (
        f"synthetic scenes (seed {spec['seed']}): {spec['num_train']}/{spec['num_valid']}/{spec['num_test']} "
        f"train/valid/test images of {spec['image_size']} px, 5 captions each; features: random {spec['arch']} "
        f"{'+'.join(spec['stages'])} at {spec['feature_image_size']} px"
    )
    return caption_data_from(scenes.dataset, features, min_count=1, captions_name="<synthetic scenes>",
                             features_name=f"<{spec['arch']} features>", description=description)  # fmt: skip
