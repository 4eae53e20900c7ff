"""Image features for captioning (`sgmcmc_fused.train.caption.features`) and the ``caption-features`` command.

The references are written here without the module: images decoded by Pillow, the crop and the ImageNet
normalisation done by hand, the resize by ``torch.nn.functional.interpolate``, and a torchvision resnet18
loaded with the same state dict and called directly. A random resnet18 at 64 px on a few small images keeps
every test well under a second on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors import safe_open

from sgmcmc_fused.train import caption_features
from sgmcmc_fused.train.caption.features import (
    ARCHS,
    build_backbone,
    extract_features,
    load_features,
    load_image,
    preprocess,
)
from sgmcmc_fused.train.options import ConfigError

# torchvision >= 0.29 flags its image codecs as deprecated (in favour of torchcodec, not installed here)
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

SIZE = 64  # network input side; every test image has its shorter side SIZE, so only a crop is needed
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
#: (relative path, H, W, kind): RGB PNG, RGB JPEG, greyscale PNG, RGBA PNG, palette PNG, greyscale JPEG.
IMAGES = [
    ("a.png", 64, 80, "rgb"),
    ("sub/b.jpg", 96, 64, "rgb"),
    ("grey.png", 64, 64, "grey"),
    ("sub/rgba.png", 64, 72, "rgba"),
    ("pal.png", 70, 64, "palette"),
    ("g.jpg", 64, 66, "grey"),
]


def _pattern(h: int, w: int, channels: int, seed: int) -> torch.Tensor:
    """Smooth uint8 [channels, h, w] (JPEG keeps it close) with a seeded random part (images differ)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    phase = torch.rand(channels, 1, 1, generator=g) * 6.28
    img = (
        128 + 60 * torch.sin(xx / 6 + phase) * torch.cos(yy / 9 - phase) + 20 * torch.rand(channels, h, w, generator=g)
    )
    return img.round().clamp(0, 255).to(torch.uint8)


def _write(path: Path, h: int, w: int, kind: str, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "rgba":  # torchvision encodes 1 or 3 channels only
        Image.fromarray(_pattern(h, w, 4, seed).permute(1, 2, 0).numpy(), "RGBA").save(path)
    elif kind == "palette":
        pal = Image.fromarray((_pattern(h, w, 1, seed)[0] // 32).numpy(), "P")
        pal.putpalette([v for i in range(8) for v in (30 * i, 255 - 30 * i, (70 * i) % 256)])
        pal.save(path)
    else:
        img = _pattern(h, w, 1 if kind == "grey" else 3, seed)
        if path.suffix == ".png":
            torchvision.io.write_png(img, str(path))
        else:
            path.write_bytes(torchvision.io.encode_jpeg(img, quality=95).numpy().tobytes())


def _pil_rgb(path: Path) -> torch.Tensor:
    """Pillow's decode (alpha dropped, palette and grey expanded) as uint8 [3, H, W]."""
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)


def _manual_input(image: torch.Tensor) -> torch.Tensor:
    """uint8 [3, H, W] with min(H, W) == SIZE -> the normalised centre square float32 [3, SIZE, SIZE]."""
    _, h, w = image.shape
    assert min(h, w) == SIZE and (h - SIZE) % 2 == 0 and (w - SIZE) % 2 == 0
    top, left = (h - SIZE) // 2, (w - SIZE) // 2
    crop = image[:, top : top + SIZE, left : left + SIZE].to(torch.float32) / 255
    return (crop - MEAN) / STD


def _reference_model(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = torchvision.models.resnet18()
    model.load_state_dict(state)
    model.fc = torch.nn.Identity()
    return model.eval()


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on 2 shared cores, small convolutions run several times faster than with 2
    (whose threads wait on each other at every operation); the caller's count is given back."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A random resnet18 state dict (batch-norm statistics and affine parameters perturbed, so that
    eval-mode normalisation matters) saved as a .pth file, and the state dict."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        model = torchvision.models.resnet18()
    g = torch.Generator().manual_seed(12)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.1, generator=g)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    state = model.state_dict()
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    for seed, (name, h, w, kind) in enumerate(IMAGES):
        _write(root / name, h, w, kind, seed)
    return root


def _reference_features(state, image_dir: Path) -> torch.Tensor:
    """[len(IMAGES), 512]: the reference model on the hand-made batch of all the images."""
    batch = torch.stack([_manual_input(_pil_rgb(image_dir / name)) for name, *_ in IMAGES])
    with torch.no_grad():
        return _reference_model(state)(batch)


def test_load_image_matches_pillow(image_dir):
    for name, h, w, kind in IMAGES:
        image = load_image(image_dir / name)
        assert image.dtype == torch.uint8 and image.shape == (3, h, w), name
        assert torch.equal(image, _pil_rgb(image_dir / name)), name
        if kind == "grey":
            assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    # the RGBA image: its colour channels as written, the alpha dropped
    rgba = _pattern(64, 72, 4, seed=3)
    assert torch.equal(load_image(image_dir / "sub/rgba.png"), rgba[:3])


def test_animated_gif_gives_its_first_frame(tmp_path):
    g = torch.Generator().manual_seed(4)
    frames = [
        Image.fromarray(torch.randint(0, 256, (20, 30, 3), dtype=torch.uint8, generator=g).numpy()).quantize(16)
        for _ in range(2)
    ]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    first = _pil_rgb(tmp_path / "anim.gif")  # Pillow opens a GIF at frame 0
    second = Image.open(tmp_path / "anim.gif")
    second.seek(1)
    assert not np.array_equal(np.asarray(second.convert("RGB")), first.permute(1, 2, 0).numpy())
    assert torch.equal(load_image(tmp_path / "anim.gif"), first)


@pytest.mark.parametrize("content", [b"not an image at all", None, "truncated"])
def test_unreadable_image_names_the_file(tmp_path, content):
    path = tmp_path / "broken.png"
    if content == "truncated":
        torchvision.io.write_png(_pattern(16, 16, 3, 0), str(tmp_path / "whole.png"))
        path.write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match="broken.png"):
        load_image(path)


def test_preprocess_resize_crop_normalise_against_interpolate():
    # 48x96 -> shorter side 32: 32x64, centre crop 32x32 from column 16
    images = torch.stack([_pattern(48, 96, 3, seed) for seed in range(2)])
    got = preprocess(images, 32)
    assert got.dtype == torch.float32 and got.shape == (2, 3, 32, 32)
    resized = torch.nn.functional.interpolate(
        images.to(torch.float64), size=(32, 64), mode="bilinear", antialias=True, align_corners=False
    )
    ref = (resized.round().clamp(0, 255)[..., 16:48] / 255 - MEAN.double()) / STD.double()
    # the uint8 resize rounds its own way: at most one grey level apart, and seldom that
    levels = ((got.double() - ref) * STD.double() * 255).abs()
    assert levels.max() <= 1 + 1e-4
    assert levels.mean() < 0.5
    # no resize needed: exact crop and normalisation
    square = _pattern(64, 80, 3, 5)
    torch.testing.assert_close(preprocess(square[None], SIZE)[0], _manual_input(square), rtol=0, atol=1e-6)


def test_extract_features_equals_torchvision_model_by_hand(weights, image_dir):
    path, state = weights
    backbone = build_backbone("resnet18", path)
    assert not backbone.training
    images = [load_image(image_dir / name) for name, *_ in IMAGES]
    got = extract_features(backbone, images, image_size=SIZE, batch_size=4)
    ref = _reference_features(state, image_dir)
    assert got.dtype == torch.float32 and got.shape == (len(IMAGES), ARCHS["resnet18"]) and got.device.type == "cpu"
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    # features that tell images apart (not a constant the check would pass on)
    assert ref.std(0).mean() > 0.05 and (ref[0] - ref[1]).abs().max() > 0.05


def test_batch_size_independence_and_lazy_input(weights, image_dir):
    backbone = build_backbone("resnet18", weights[0])
    images = [load_image(image_dir / name) for name, *_ in IMAGES]
    by_one = extract_features(backbone, images, image_size=SIZE, batch_size=1)
    for batch_size in (2, 5, 32):
        other = extract_features(backbone, images, image_size=SIZE, batch_size=batch_size)
        torch.testing.assert_close(other, by_one, rtol=1e-4, atol=1e-5)
    # a generator of images gives the rows a list gives
    lazy = extract_features(backbone, iter(images), image_size=SIZE, batch_size=2, names=[n for n, *_ in IMAGES])
    torch.testing.assert_close(lazy, extract_features(backbone, images, image_size=SIZE, batch_size=2), rtol=0, atol=0)
    # a train-mode backbone is evaluated in eval mode and handed back in train mode
    backbone.train()
    torch.testing.assert_close(extract_features(backbone, images, image_size=SIZE, batch_size=1), by_one)
    assert backbone.training


def test_weights_file_round_trip(weights, image_dir, tmp_path):
    path, state = weights
    backbone = build_backbone("resnet18", path)
    loaded = backbone.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.")}
    for k, v in loaded.items():
        assert torch.equal(v, state[k]), k
    # the headless network's own state dict (no fc) loads too, to the same features
    torch.save(loaded, tmp_path / "headless.pth")
    again = build_backbone("resnet18", tmp_path / "headless.pth")
    images = [load_image(image_dir / name) for name, *_ in IMAGES]
    torch.testing.assert_close(
        extract_features(again, images, image_size=SIZE), _reference_features(state, image_dir), rtol=1e-4, atol=1e-5
    )


def test_weights_that_do_not_fit(weights, tmp_path):
    path, state = weights
    with pytest.raises(ConfigError, match=r"resnet18\.pth do not fit resnet50: .*missing keys.*fit resnet18"):
        build_backbone("resnet50", path)
    bad = dict(state, **{"conv1.weight": torch.zeros(64, 3, 5, 5)})
    torch.save(bad, tmp_path / "bad_shape.pth")
    with pytest.raises(
        ConfigError, match=r"bad_shape\.pth .*1 shape mismatches \(first: conv1\.weight \[64, 3, 5, 5\]"
    ):
        build_backbone("resnet18", tmp_path / "bad_shape.pth")
    (tmp_path / "garbage.pth").write_bytes(b"\x00garbage")
    with pytest.raises(ConfigError, match=r"cannot read weights file .*garbage\.pth"):
        build_backbone("resnet18", tmp_path / "garbage.pth")
    with pytest.raises(ConfigError, match=r"missing\.pth does not exist"):
        build_backbone("resnet18", tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match="unknown architecture 'resnet19'"):
        build_backbone("resnet19", None, seed=0)


def test_random_init_is_seeded_and_leaves_the_callers_rng_alone():
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a = build_backbone("resnet18", None, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    after = torch.rand(3)
    torch.manual_seed(1234)
    assert torch.equal(after, torch.rand(3))
    # the reference: torchvision's own initialisation under the same seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        ref = torchvision.models.resnet18()
    b, c = build_backbone("resnet18", None, seed=7), build_backbone("resnet18", None, seed=8)
    for k, v in a.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]) and torch.equal(v, b.state_dict()[k]), k
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    assert not a.training
    with torch.no_grad():
        assert a(torch.zeros(2, 3, 32, 32)).shape == (2, 512)


# ---------------------------------------------------------------------------------------------------
# the subcommand


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="train")
    caption_features.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["caption-features", *argv])
    return args.func(args)


def _karpathy(path: Path, order: list[int]) -> list[str]:
    """A Karpathy split JSON of IMAGES in `order` (subfolders as COCO's filepath); returns the filenames."""
    entries = []
    for i in order:
        folder, _, filename = IMAGES[i][0].rpartition("/")
        entry = {"filename": filename, "imgid": i, "split": "train", "sentences": [{"raw": "a picture."}]}
        if folder:
            entry["filepath"] = folder
        entries.append(entry)
    path.write_text(json.dumps({"dataset": "test", "images": entries}))
    return [e["filename"] for e in entries]


def test_a_caption_file_with_a_byte_order_mark_is_read_as_the_trainer_reads_it(tmp_path):
    path = tmp_path / "dataset.json"
    names = _karpathy(path, [3, 0])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as some Windows editors save UTF-8
    assert [entry[-1] for entry in caption_features.read_karpathy_images(path)] == names


@pytest.mark.parametrize("suffix", [".safetensors", ".npy"])
def test_subcommand_writes_rows_in_json_order(weights, image_dir, tmp_path, capsys, suffix):
    path, state = weights
    order = [3, 0, 5, 1, 4, 2]
    filenames = _karpathy(tmp_path / "dataset.json", order)
    out = tmp_path / f"feats{suffix}"
    argv = ["--images", str(image_dir), "--captions", str(tmp_path / "dataset.json"), "--arch", "resnet18",
            "--weights", str(path), "--out", str(out), "--image-size", str(SIZE), "--batch-size", "4",
            "--device", "cpu", "--threads", "1", "--no-progress"]  # fmt: skip
    assert _run(argv) == 0
    summary = capsys.readouterr().out
    assert f"{len(order)} images, 512 features each (resnet18, {SIZE} px, cpu)" in summary and str(out) in summary
    if suffix == ".npy":
        got = torch.from_numpy(np.load(out))
    else:
        with safe_open(out, framework="pt") as f:
            got, meta = f.get_tensor("features"), f.metadata()
        assert json.loads(meta["filenames"]) == filenames
        assert meta["arch"] == "resnet18" and meta["image_size"] == str(SIZE)
        again, meta2 = load_features(out)
        assert torch.equal(again, got) and meta2 == {"filenames": filenames, "arch": "resnet18", "image_size": SIZE}
    assert got.dtype == torch.float32 and got.shape == (len(order), 512)
    # each row: the reference model on that image alone
    model = _reference_model(state)
    for row, i in enumerate(order):
        with torch.no_grad():
            ref = model(_manual_input(_pil_rgb(image_dir / IMAGES[i][0]))[None])[0]
        torch.testing.assert_close(got[row], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"missing_image": True}, r"image 2 of .*dataset\.json \(nothere\.png\): .*nothere\.png does not exist"),
        ({"json": {"pictures": []}}, "expected a Karpathy split JSON"),
        ({"json": {"images": [{"filename": "a.png"}, {"file": "b.jpg"}]}}, r"images\[1\] has no 'filename'"),
        ({"json": "{not json"}, "cannot read captions file"),
        ({"--arch": "resnet19"}, "invalid choice: 'resnet19'"),
        ({"--weights": "absent.pth"}, r"absent\.pth does not exist"),
        ({"--arch": "resnet34"}, r"resnet18\.pth do not fit resnet34: .*fit resnet18"),
        ({"--threads": "0"}, "--threads must be >= 1, got 0"),
        ({"--out": "feats.pt"}, r"--out .*feats\.pt: expected a file name ending in \.safetensors or \.npy"),
    ],
)
def test_subcommand_usage_errors(weights, image_dir, tmp_path, capsys, change, message):
    captions = tmp_path / "dataset.json"
    _karpathy(captions, [0, 1, 2])
    if change.get("missing_image"):
        data = json.loads(captions.read_text())
        data["images"][2]["filename"] = "nothere.png"
        captions.write_text(json.dumps(data))
    if "json" in change:
        captions.write_text(change["json"] if isinstance(change["json"], str) else json.dumps(change["json"]))
    opts = {"--images": str(image_dir), "--captions": str(captions), "--arch": "resnet18",
            "--weights": str(weights[0]), "--out": str(tmp_path / "f.safetensors")}  # fmt: skip
    opts.update(
        {k: str(tmp_path / v) if k in ("--weights", "--out") else v for k, v in change.items() if k[:2] == "--"}
    )
    with pytest.raises(SystemExit) as exc:
        _run([*(x for kv in opts.items() for x in kv), "--image-size", str(SIZE), "--device", "cpu", "--no-progress"])
    assert exc.value.code == 2
    assert re.search(message, capsys.readouterr().err), message
    assert not (tmp_path / "f.safetensors").exists()


def test_pooled_stages_concatenate_each_stages_global_mean():
    """stages=("layer1", "layer2"): the spatial means of those stages' outputs, read with forward hooks
    on an independently built torchvision resnet18 of the same weights."""
    backbone = build_backbone("resnet18", None, seed=7, stages=("layer1", "layer2"))
    reference = torchvision.models.resnet18(weights=None).eval()
    state = backbone.net.state_dict()
    reference.load_state_dict({**state, **reference.fc.state_dict(prefix="fc.")})
    seen = {}
    for name in ("layer1", "layer2"):
        getattr(reference, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference(x)
        got = backbone(x)
    want = torch.cat([seen["layer1"].mean((2, 3)), seen["layer2"].mean((2, 3))], 1)
    assert got.shape == (3, 64 + 128)
    torch.testing.assert_close(got, want)
    assert build_backbone("resnet18", None, seed=7).__class__.__name__ == "ResNet"  # the default: the pooled last stage
    with pytest.raises(ConfigError, match="layer5"):
        build_backbone("resnet18", None, seed=7, stages=("layer5",))
