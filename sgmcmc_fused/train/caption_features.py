"""``python -m sgmcmc_fused.train caption-features --images DIR --captions dataset.json --arch ARCH --weights FILE
--out FILE``.

Computes the image features of a captioning set once, ahead of training: every image of a Karpathy split
JSON (``images[i].filename``, under ``images[i].filepath`` where given, as in COCO's ``dataset_coco.json``;
Flickr8k/30k have no filepath) is read from DIR, in the JSON's order, and passed through the residual network
ARCH without its classifier (`sgmcmc_fused.train.caption.features`). OUT gets one row per image, row i for
``images[i]``: ``.safetensors`` (tensor ``features`` [N, F] float32; metadata ``filenames``, ``arch``,
``image_size``) or ``.npy``. The weights are a local torchvision state dict (see
`sgmcmc_fused.train.caption.features.build_backbone` for where to fetch the ImageNet ones).

    python -m sgmcmc_fused.train caption-features --images data/coco --captions data/coco/dataset_coco.json \\
        --arch resnet152 --weights weights/resnet152-394f9c45.pth --out data/coco/resnet152.safetensors
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from .caption.features import ARCHS, FEATURE_SUFFIXES, build_backbone, extract_features, load_image, save_features
from .options import ConfigError, cpu_threads
from .run_control import resolve_device


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``caption-features`` subcommand."""
    p = subparsers.add_parser(
        "caption-features", help="image features of a captioning set from a residual network, ahead of training",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--images", required=True, metavar="DIR", help="folder the JSON's image paths are relative to")
    p.add_argument("--captions", required=True, metavar="JSON", help="Karpathy split JSON (dataset_coco.json, ...)")
    p.add_argument("--arch", default="resnet152", choices=list(ARCHS), help="residual network (default resnet152)")
    p.add_argument("--weights", required=True, metavar="FILE", help="torchvision state dict (.pth) of --arch")
    p.add_argument("--out", required=True, metavar="FILE", help=f"features file ({' or '.join(FEATURE_SUFFIXES)})")
    p.add_argument("--image-size", type=int, default=224, help="side in pixels of the network's input (default 224)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when present; default)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    """Check the inputs (a usage error, exit status 2, for any fault found), extract, write, print a summary."""
    parser: argparse.ArgumentParser = args.parser
    if args.image_size < 1 or args.batch_size < 1:
        parser.error(f"--image-size and --batch-size must be >= 1, got {args.image_size} and {args.batch_size}")
    out = Path(args.out)
    if out.suffix not in FEATURE_SUFFIXES:
        parser.error(f"--out {out}: expected a file name ending in {' or '.join(FEATURE_SUFFIXES)}")
    try:
        device = resolve_device(args.device)
        entries = read_karpathy_images(Path(args.captions))
        paths = [Path(args.images, *entry) for entry in entries]
        for i, path in enumerate(paths):
            # all checked before the network is built: a missing file is found in seconds, not after hours
            if not path.is_file():
                raise ConfigError(f"image {i} of {args.captions} ({'/'.join(entries[i])}): {path} does not exist")
        backbone = build_backbone(args.arch, args.weights)
        start = time.perf_counter()
        names = [entry[-1] for entry in entries]
        with cpu_threads(args.threads):
            features = extract_features(
                backbone, _decoded(paths), image_size=args.image_size, batch_size=args.batch_size, device=device,
                progress=args.progress, names=names,
            )  # fmt: skip
    except ConfigError as e:
        parser.error(str(e))
    seconds = time.perf_counter() - start
    save_features(out, features, names, arch=args.arch, image_size=args.image_size)
    print(
        f"caption-features: {len(names)} images, {features.shape[1]} features each ({args.arch}, "
        f"{args.image_size} px, {device}), {seconds:.1f} s -> {out}"
    )
    return 0


def read_karpathy_images(path: Path) -> list[tuple[str, ...]]:
    """The images of the Karpathy split JSON `path`, in its order: (filepath, filename), or (filename,)
    where the entry has no filepath.

    Raises:
        ConfigError: the file is missing, not JSON, or not ``{"images": [{"filename": str, ...}, ...]}``
            with at least one image (the message names the first bad entry by its index).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # as the trainer reads it: a BOM is allowed
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read captions file {path}: {e}") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not images:
        raise ConfigError(f"{path}: expected a Karpathy split JSON, {{'images': [{{'filename': ...}}, ...]}}")
    entries = []
    for i, image in enumerate(images):
        if not isinstance(image, dict) or not isinstance(image.get("filename"), str) or not image["filename"]:
            raise ConfigError(f"{path}: images[{i}] has no 'filename' (a non-empty string)")
        filepath = image.get("filepath")
        if filepath is not None and not isinstance(filepath, str):
            raise ConfigError(f"{path}: images[{i}].filepath is not a string")
        entries.append((filepath, image["filename"]) if filepath else (image["filename"],))
    return entries


def _decoded(paths: list[Path]) -> Iterator[torch.Tensor]:
    """The images decoded one at a time, so that only a batch of them is in memory."""
    for path in paths:
        yield load_image(path)
