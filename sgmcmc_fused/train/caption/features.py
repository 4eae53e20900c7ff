"""Image features for captioning: a torchvision residual network without its classifier maps each image to the
globally average-pooled activations of its last convolutional stage, one float32 vector per image.

The same path (`load_image` or a rendered uint8 tensor, then `preprocess`, then the backbone) serves real
photographs and the synthetic images of the embedded default, so a model trained on either sees features of
one kind. Weights are never downloaded here: `build_backbone` reads a local state-dict file, or initialises the
network at random from a seed.

Files (`save_features`, `load_features`): ``.safetensors`` with the tensor ``features`` [N, F] float32 and the
metadata ``filenames`` (a JSON list, row i is image i), ``arch`` and ``image_size``; or ``.npy`` with the
array alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms.v2.functional as TF
from safetensors import safe_open
from safetensors.torch import save as _st_save
from tqdm.auto import tqdm

from ...atomic_file import atomic_write
from ..options import ConfigError

#: The supported torchvision residual networks and the size F of their pooled features.
ARCHS: dict[str, int] = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048}
#: ImageNet per-channel mean and standard deviation of pixels in [0, 1], RGB order: the statistics every
#: torchvision ImageNet checkpoint was trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The file formats `save_features` writes, by suffix.
FEATURE_SUFFIXES = (".safetensors", ".npy")


def build_backbone(
    arch: str, weights: str | os.PathLike | None, *, seed: int | None = None, stages: Sequence[str] = ("layer4",)
) -> torch.nn.Module:
    """The torchvision network `arch` (a key of `ARCHS`) with ``fc`` replaced by Identity, in eval mode on
    the CPU: it maps float32 images [B, 3, S, S] (as from `preprocess`) to features [B, ARCHS[arch]] float32.

    `stages`: the residual stages ("layer1" .. "layer4") whose globally average-pooled activations are the
    features, concatenated in stage order (`PooledStages`); the default, the last stage alone, is the usual
    pooled last-layer feature vector.

    `weights`: a local file holding a torchvision state dict (``torch.save(model.state_dict(), FILE)``),
    read with ``torch.load(weights_only=True)`` and loaded strictly (the ``fc.*`` entries, if there, are
    dropped: the classifier is not used, whatever its number of classes). To use the ImageNet weights, fetch
    them where a network exists, e.g.::

        url = torchvision.models.ResNet152_Weights.IMAGENET1K_V1.url
        torch.hub.load_state_dict_from_url(url, model_dir="weights")  # writes weights/resnet152-<hash>.pth

    and pass that .pth file. ``None``: random initialisation (torchvision's), drawn from a CPU generator
    seeded with `seed` inside ``torch.random.fork_rng``, so the caller's random state is left as it was;
    with `seed` None too, drawn from (and advancing) torch's global CPU generator.

    Raises:
        ConfigError: unknown `arch`; a weights file that is missing, unreadable, not a state dict, or whose
            keys or shapes do not fit `arch` (the message names the file and the architecture it fits, if any).
    """
    if arch not in ARCHS:
        raise ConfigError(f"unknown architecture {arch!r}: expected one of {', '.join(ARCHS)}")
    if weights is None:
        # Built on the CPU whatever the default device, so the result depends on the seed alone.
        with torch.device("cpu"):
            if seed is None:
                model = _headless(arch)
            else:
                # Only the CPU generator is forked and seeded: torch.manual_seed would also reseed (and so
                # disturb) the caller's CUDA generators, which the construction does not use.
                with torch.random.fork_rng(devices=[]):
                    torch.default_generator.manual_seed(seed)
                    model = _headless(arch)
        return _pooled(model, stages).eval()
    state = _read_state_dict(Path(weights))
    # A skeleton on the meta device costs no memory and no random numbers; the file's tensors are assigned
    # into it.
    with torch.device("meta"):
        model = _headless(arch)
    problem = _mismatch(model, state)
    if problem:
        fits = [a for a in ARCHS if a != arch and not _mismatch(_skeleton(a), state)]
        hint = f"; they fit {fits[0]}" if fits else ""
        raise ConfigError(f"weights {weights} do not fit {arch}: {problem}{hint}")
    model.load_state_dict(state, strict=True, assign=True)
    return _pooled(model.float(), stages).eval()


#: The residual stages of a torchvision ResNet, in order.
STAGES = ("layer1", "layer2", "layer3", "layer4")


class PooledStages(torch.nn.Module):
    """A ResNet's stem and stages up to the last one asked for; the output is the global average pool of
    each stage asked for, concatenated: float32 [B, sum of their widths].

    Why a choice of stages: the pooled last stage is what captioning models use with trained weights, but
    in a randomly initialised network the deep stages wash colour and shape out of the pooled vector,
    while the early ones keep them (the synthetic scenes' default uses layer1 and layer2).
    """

    def __init__(self, net: torch.nn.Module, stages: Sequence[str]) -> None:
        super().__init__()
        self.net, self.stages = net, tuple(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        pooled = []
        for name in STAGES[: max(STAGES.index(s) for s in self.stages) + 1]:
            x = getattr(net, name)(x)
            if name in self.stages:
                pooled.append(x.mean((2, 3)))
        return torch.cat(pooled, dim=1)


def _pooled(model: torch.nn.Module, stages: Sequence[str]) -> torch.nn.Module:
    """`model` itself for the last stage alone (its own pooling), else `PooledStages`."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ConfigError(f"stages {list(stages)}: expected one or more of {', '.join(STAGES)}")
    return model if tuple(stages) == ("layer4",) else PooledStages(model, stages)


def _headless(arch: str) -> torch.nn.Module:
    """torchvision's `arch` (built on the current default device) with fc = Identity."""
    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = torch.nn.Identity()
    return model


def _skeleton(arch: str) -> torch.nn.Module:
    with torch.device("meta"):
        return _headless(arch)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of the state-dict file `path` on the CPU, without the classifier's (``fc.*``)."""
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn file, another format, or a pickle weights_only refuses
        raise ConfigError(f"cannot read weights file {path} as a torch state dict: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"weights file {path} does not hold a state dict (a dict of tensors)")
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _mismatch(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> str:
    """What keeps `state` from loading strictly into `model` ("" when it fits), briefly."""
    expected = model.state_dict()
    # BatchNorm fills in num_batches_tracked where a state dict lacks it (checkpoints from before it existed)
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {list(v.shape)} in the file, {list(expected[k].shape)} in the network"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    parts = [
        f"{len(keys)} {what} (first: {keys[0]})"
        for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if keys
    ]
    return "; ".join(parts)


def preprocess(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 images [B, 3, H, W] (RGB, 0..255) -> float32 [B, 3, image_size, image_size], the input of the
    backbone: the shorter side resized to `image_size` (bilinear, antialiased), the centre square cropped,
    the pixels scaled to [0, 1] and normalised with the ImageNet mean and std per channel.

    The resize runs on the uint8 pixels, as in torchvision's own ImageNet evaluation transforms, so the
    network sees inputs of the distribution its ImageNet weights were trained on.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images [B, 3, H, W], got {images.dtype} {list(images.shape)}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    x = TF.resize(images, [image_size], antialias=True)
    x = TF.center_crop(x, [image_size, image_size])
    x = TF.to_dtype(x, torch.float32, scale=True)
    return TF.normalize(x, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))


def extract_features(
    backbone: torch.nn.Module,
    images: Iterable[torch.Tensor],
    *,
    image_size: int = 224,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
    names: Sequence[str] | None = None,
) -> torch.Tensor:
    """Features [N, F] float32 on the CPU of N images (uint8 [3, H, W] tensors, each its own size), row i
    for image i.

    Each image goes through `preprocess` on the CPU; batches of `batch_size` run through `backbone` on
    `device` under ``torch.inference_mode()``, the backbone in eval mode (its mode is restored afterwards;
    it is moved to `device` in place, as ``Module.to`` does). `images` may be a lazy iterable (e.g. files
    decoded one at a time), so only one batch of images is held at once. `names` (one per image) name the
    images in error messages and give the progress bar its length when `images` has none. `progress`
    shows a tqdm bar (images per second).

    Raises:
        ValueError: an image that is not uint8 [3, H, W] (named), or no images at all.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    total = len(images) if isinstance(images, Sequence) else len(names) if names is not None else None
    was_training = backbone.training
    backbone.to(device).eval()
    rows: list[torch.Tensor] = []
    try:
        with torch.inference_mode(), tqdm(total=total, unit="img", disable=not progress, leave=False) as bar:
            for batch in _batches(images, image_size, batch_size, names):
                out = backbone(batch.to(device))
                rows.append(out.to("cpu", torch.float32))
                bar.update(len(batch))
    finally:
        backbone.train(was_training)
    if not rows:
        raise ValueError("no images to extract features from")
    return torch.cat(rows)


def _batches(
    images: Iterable[torch.Tensor], image_size: int, batch_size: int, names: Sequence[str] | None
) -> Iterator[torch.Tensor]:
    """Preprocessed batches [b <= batch_size, 3, S, S] float32 of `images`, in order. Each image is
    resized on its own: images of different sizes cannot share one tensor before the resize."""
    batch: list[torch.Tensor] = []
    for i, image in enumerate(images):
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            what = f"{image.dtype} {list(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
            label = f"image {i}" + (f" ({names[i]})" if names is not None and i < len(names) else "")
            raise ValueError(f"{label}: expected a uint8 tensor [3, H, W], got {what}")
        batch.append(preprocess(image[None], image_size)[0])
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """The image file `path` (JPEG, PNG, WebP or GIF; GIF: its first frame) as uint8 [3, H, W] RGB.

    Greyscale, RGBA and palette images are converted to RGB (the alpha channel is dropped, not composited);
    16-bit PNGs are scaled to 8 bits. EXIF orientation is not applied: the pixels are taken as stored, as
    the usual captioning feature pipelines (and the published features of COCO and Flickr) take them.

    Raises:
        ConfigError: a missing or unreadable file, naming it.
    """
    path = Path(path)
    try:
        image = torchvision.io.decode_image(str(path), mode=torchvision.io.ImageReadMode.RGB)
    except (RuntimeError, OSError, ValueError) as e:
        reason = f"{e}".strip().splitlines()[-1] if f"{e}".strip() else type(e).__name__
        raise ConfigError(f"cannot read image {path}: {reason}") from None
    if image.ndim == 4:  # an animated GIF: [frames, 3, H, W]
        image = image[0]
    if image.dtype != torch.uint8:
        image = TF.to_dtype(image, torch.uint8, scale=True)
    return image


def save_features(
    path: str | os.PathLike,
    features: torch.Tensor,
    filenames: Sequence[str],
    *,
    arch: str | None = None,
    image_size: int | None = None,
) -> None:
    """Write `features` [N, F] (float32; row i for ``filenames[i]``) to `path` atomically: readers see the
    old file or the whole new one, and a failed write leaves nothing under `path`.

    ``.safetensors``: tensor ``features`` plus metadata ``filenames`` (JSON list), and ``arch`` and
    ``image_size`` where given. ``.npy``: the float32 array alone (the rows follow the caller's list).
    """
    path = Path(path)
    if path.suffix not in FEATURE_SUFFIXES:
        raise ValueError(f"{path}: the features file must end in {' or '.join(FEATURE_SUFFIXES)}")
    if features.ndim != 2 or features.shape[0] != len(filenames):
        raise ValueError(f"expected features [{len(filenames)}, F] (one row per file), got {list(features.shape)}")
    features = features.detach().to("cpu", torch.float32).contiguous()
    with atomic_write(path) as f:
        if path.suffix == ".npy":
            np.save(f, features.numpy())
        else:
            meta = {"filenames": json.dumps(list(filenames))}
            if arch is not None:
                meta["arch"] = arch
            if image_size is not None:
                meta["image_size"] = str(image_size)
            f.write(_st_save({"features": features}, metadata=meta))


def load_features(path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, object]]:
    """The features [N, F] float32 and metadata of a file `save_features` wrote. The metadata of a
    ``.safetensors`` file: ``filenames`` (list of str) and, where saved, ``arch`` (str) and ``image_size``
    (int); of a ``.npy`` file: empty."""
    path = Path(path)
    if path.suffix == ".npy":
        return torch.from_numpy(np.load(path)), {}
    with safe_open(path, framework="pt") as f:
        raw = f.metadata() or {}
        features = f.get_tensor("features")
    meta: dict[str, object] = {"filenames": json.loads(raw["filenames"])}
    if "arch" in raw:
        meta["arch"] = raw["arch"]
    if "image_size" in raw:
        meta["image_size"] = int(raw["image_size"])
    return features, meta
