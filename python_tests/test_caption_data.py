"""The captioning data: Karpathy split files, feature files, the vocabulary, training pairs, synthetic scenes.

Every file is written here under tmp_path by hand (JSON, ``np.save``, ``safetensors.torch.save_file``) and
every expectation is worked out independently: vocabulary ids from counts listed in the test, padded token
rows written out, and the scenes' captions checked against what the pixels show (connected components,
exact colours, how much of its bounding box each shape fills, where it lies).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy import ndimage

from sgmcmc_fused.data.scenes import make_scenes
from sgmcmc_fused.train.caption.data import (
    BOS,
    EOS,
    PAD,
    UNK,
    CaptionSplit,
    Vocabulary,
    caption_data_from,
    load_caption_files,
    load_features,
    training_pairs,
)
from sgmcmc_fused.train.options import ConfigError

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def _image(filename: str, split: str, *captions: str) -> dict:
    """A Karpathy image entry whose tokens are the whitespace-separated words of each caption."""
    return {
        "filename": filename,
        "split": split,
        "sentences": [{"tokens": c.split(), "raw": c} for c in captions],
    }


def _files(tmp_path: Path, images: list[dict], features: np.ndarray | None = None) -> tuple[Path, Path]:
    """dataset.json and feats.npy (default: row i = [i, 10 i, 100 i])."""
    captions = tmp_path / "dataset.json"
    captions.write_text(json.dumps({"dataset": "toy", "images": images}), encoding="utf-8")
    if features is None:
        features = np.arange(len(images), dtype=np.float64)[:, None] * np.array([1.0, 10.0, 100.0])
    feats = tmp_path / "feats.npy"
    np.save(feats, features)
    return captions, feats


#: Five images, one of each split and two of "train": the smallest file with every split in it.
TOY = [
    _image("a.jpg", "train", "A Dog runs .", "a dog runs fast"),
    _image("b.jpg", "restval", "a cat sits", "the cat , sits"),
    _image("c.jpg", "val", "a dog sits", "a zebra"),
    _image("d.jpg", "test", "a cat runs", "two dogs"),
    _image("e.jpg", "train", "a dog", "the dog sits"),
]


# -- Vocabulary ---------------------------------------------------------------------------------------


def test_vocabulary_ids_follow_counts_then_letters_and_min_count_leaves_rare_words_out():
    captions = [["a", "dog", "runs"], ["a", "cat"], ["the", "dog"], ["a", "bird"]]
    # counts: a 3, dog 2, bird 1, cat 1, runs 1, the 1
    v = Vocabulary.build(captions, min_count=1)
    assert v.words == SPECIALS + ["a", "dog", "bird", "cat", "runs", "the"]
    assert len(v) == 10
    assert (v.stoi["<pad>"], v.stoi["<bos>"], v.stoi["<eos>"], v.stoi["<unk>"]) == (PAD, BOS, EOS, UNK) == (0, 1, 2, 3)
    v2 = Vocabulary.build(captions, min_count=2)
    assert v2.words == SPECIALS + ["a", "dog"]
    assert v2.encode(["dog", "cat", "a", "zebra"]) == [5, 3, 4, 3]
    assert v.encode(["the", "runs"]) == [9, 8]
    # A caption word spelling a special token is an unknown word, never the marker itself.
    assert v.encode(["<eos>", "<pad>"]) == [UNK, UNK]


def test_vocabulary_decode_stops_at_eos_and_skips_pad_and_bos():
    v = Vocabulary(SPECIALS + ["a", "dog", "cat"])
    assert v.decode([BOS, 5, PAD, 4, UNK, EOS, 6, 6]) == ["dog", "a", "<unk>"]
    assert v.decode(torch.tensor([[BOS, 6, 4, EOS, PAD]])) == ["cat", "a"]
    assert v.decode([4, 5, 6]) == ["a", "dog", "cat"]
    with pytest.raises(ValueError, match="id 7 is out of range for a vocabulary of 7"):
        v.decode([4, 7])


def test_vocabulary_state_round_trips_through_json_and_is_checked():
    v = Vocabulary.build([["b", "a", "b"]])
    state = json.loads(json.dumps(v.state()))
    assert state == SPECIALS + ["b", "a"]
    assert Vocabulary.from_state(state) == v
    with pytest.raises(ValueError, match="starts with"):
        Vocabulary.from_state(["a", "b"])
    with pytest.raises(ValueError, match="duplicate word 'a'"):
        Vocabulary.from_state(SPECIALS + ["a", "a"])
    with pytest.raises(ValueError, match="min_count must be >= 1"):
        Vocabulary.build([["a"]], min_count=0)


# -- caption files ------------------------------------------------------------------------------------


def test_load_caption_files_splits_restval_tokens_and_features(tmp_path):
    captions, feats = _files(tmp_path, TOY)
    data = load_caption_files(str(captions), str(feats), min_count=1)
    assert data.train.filenames == ["a.jpg", "b.jpg", "e.jpg"]  # "restval" trains, JSON order kept
    assert data.train.image_ids == [0, 1, 4]
    assert (data.valid.filenames, data.valid.image_ids) == (["c.jpg"], [2])
    assert (data.test.filenames, data.test.image_ids) == (["d.jpg"], [3])
    # Lowercased, punctuation-only tokens dropped.
    assert data.train.references == [
        [["a", "dog", "runs"], ["a", "dog", "runs", "fast"]],
        [["a", "cat", "sits"], ["the", "cat", "sits"]],
        [["a", "dog"], ["the", "dog", "sits"]],
    ]
    assert data.valid.references == [[["a", "dog", "sits"], ["a", "zebra"]]]
    assert data.test.references == [[["a", "cat", "runs"], ["two", "dogs"]]]
    assert data.train.features.dtype == torch.float32
    assert data.train.features.tolist() == [[0, 0, 0], [1, 10, 100], [4, 40, 400]]
    assert data.valid.features.tolist() == [[2, 20, 200]]
    assert data.test.features.tolist() == [[3, 30, 300]]
    assert data.feature_dim == 3
    # Training words only: a 4, dog 4, sits 3, cat 2, runs 2, the 2, fast 1 ("zebra", "two", "dogs" are not).
    assert data.vocab.words == SPECIALS + ["a", "dog", "sits", "cat", "runs", "the", "fast"]
    assert any("restval" in n and "1" in n for n in data.notes)
    assert any("2 punctuation tokens dropped" in n for n in data.notes)
    assert "3/1/1 train/valid/test images" in data.description and "dataset.json" in data.description
    # The default min_count of 5 keeps no word of this small file.
    assert load_caption_files(str(captions), str(feats)).vocab.words == SPECIALS


def test_feature_rows_saved_for_other_images_are_refused(tmp_path):
    # caption-features records each row's file name: rows saved in another order (or for another
    # caption file) would give every image another image's features.
    captions, _ = _files(tmp_path, TOY)
    x = torch.arange(15, dtype=torch.float32).reshape(5, 3)
    names = [im["filename"] for im in TOY]
    save_file({"features": x}, str(tmp_path / "same.safetensors"), metadata={"filenames": json.dumps(names)})
    data = load_caption_files(str(captions), str(tmp_path / "same.safetensors"), min_count=1)
    assert data.test.features.tolist() == [x[3].tolist()]
    swapped = [names[1], names[0], *names[2:]]
    save_file({"features": x}, str(tmp_path / "swapped.safetensors"), metadata={"filenames": json.dumps(swapped)})
    want = r"swapped\.safetensors: row 0 holds the features of 'b\.jpg', but image 0 of .*dataset\.json is 'a\.jpg'"
    with pytest.raises(ConfigError, match=want):
        load_caption_files(str(captions), str(tmp_path / "swapped.safetensors"), min_count=1)
    save_file({"features": x}, str(tmp_path / "bad.safetensors"), metadata={"filenames": "a.jpg,b.jpg"})
    with pytest.raises(ConfigError, match=r"bad\.safetensors: its 'filenames' metadata is not a JSON list"):
        load_caption_files(str(captions), str(tmp_path / "bad.safetensors"), min_count=1)


def test_an_image_listed_in_two_splits_is_warned_about(tmp_path):
    leaky = [*TOY, _image("a.jpg", "test", "a dog runs")]
    captions, feats = _files(tmp_path, leaky)
    data = load_caption_files(str(captions), str(feats), min_count=1)
    assert data.test.filenames == ["d.jpg", "a.jpg"]
    (note,) = [n for n in data.notes if "more than one split" in n]
    assert note.startswith("warning: 1 file name(s) listed in more than one split, first 'a.jpg' in train and test")
    clean_captions, clean_feats = _files(tmp_path, TOY)
    assert not any("more than one split" in n for n in load_caption_files(str(clean_captions), str(clean_feats)).notes)


def test_fingerprint_depends_on_captions_and_features_only(tmp_path):
    def fingerprint(folder: str, images: list[dict], features: np.ndarray | None = None, min_count: int = 1) -> str:
        (tmp_path / folder).mkdir(exist_ok=True)
        captions, feats = _files(tmp_path / folder, images, features)
        return load_caption_files(str(captions), str(feats), min_count=min_count).fingerprint

    fp = fingerprint("a", TOY)
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert fingerprint("b", TOY, min_count=2) == fp  # the same files elsewhere, another vocabulary
    changed = json.loads(json.dumps(TOY))
    changed[2]["sentences"][1]["tokens"] = ["a", "horse"]
    assert fingerprint("c", changed) != fp
    features = np.arange(5, dtype=np.float64)[:, None] * np.array([1.0, 10.0, 100.0])
    assert fingerprint("d", TOY, features) == fp
    features[3, 1] += 0.5
    assert fingerprint("e", TOY, features) != fp


def _error(tmp_path: Path, images: list[dict], features: np.ndarray | None = None) -> str:
    captions, feats = _files(tmp_path, images, features)
    with pytest.raises(ConfigError) as e:
        load_caption_files(str(captions), str(feats), min_count=1)
    return str(e.value)


def _with(index: int, **changes) -> list[dict]:
    """TOY with image `index` changed (a value of None removes the key)."""
    images = json.loads(json.dumps(TOY))
    for k, v in changes.items():
        if v is None:
            del images[index][k]
        else:
            images[index][k] = v
    return images


@pytest.mark.parametrize(
    "images, expected",
    [
        (_with(1, filename=None), [r"image 1: no 'filename'"]),
        (_with(1, split=None), [r"image 1 \('b.jpg'\): no 'split'"]),
        (_with(1, sentences=None), [r"image 1 \('b.jpg'\): no 'sentences'"]),
        (_with(1, sentences=[]), [r"image 1 \('b.jpg'\): no captions"]),
        (
            _with(1, sentences=[{"tokens": ["a"]}, {"raw": "a cat"}]),
            [r"image 1 \('b.jpg'\): caption 1 has no 'tokens'"],
        ),
        (
            _with(1, sentences=[{"tokens": ["a"]}, {"tokens": [".", ","], "raw": "."}]),
            [r"image 1 \('b.jpg'\): caption 1 is empty once punctuation is dropped"],
        ),
        (_with(1, sentences=[{"tokens": ["a"]}, {"tokens": []}]), [r"image 1 \('b.jpg'\): caption 1 is empty"]),
        (_with(1, split="dev"), [r"image 1 \('b.jpg'\): unknown split 'dev'"]),
        (_with(1, filename=7), [r"image 1: 'filename' must be a string"]),
        (_with(3, split="val"), [r"no image of split 'test'"]),
        (_with(2, split="test"), [r"no image of split 'val'"]),
    ],
)
def test_caption_file_errors_name_the_file_and_the_entry(tmp_path, images, expected):
    msg = _error(tmp_path, images)
    assert msg.startswith(str(tmp_path / "dataset.json") + ": ")
    for pattern in expected:
        assert re.search(pattern, msg), msg


def test_no_training_image_is_an_error(tmp_path):
    images = [_image("a.jpg", "val", "a dog"), _image("b.jpg", "test", "a cat")]
    msg = _error(tmp_path, images)
    assert msg.startswith(str(tmp_path / "dataset.json")) and "no image of split 'train' or 'restval'" in msg


@pytest.mark.parametrize("content", [{"imgs": []}, [1, 2], {"images": {"a": 1}}])
def test_a_json_that_is_not_the_karpathy_format_is_an_error(tmp_path, content):
    captions = tmp_path / "dataset.json"
    captions.write_text(json.dumps(content))
    np.save(tmp_path / "f.npy", np.zeros((2, 3)))
    with pytest.raises(ConfigError, match=r"dataset\.json: not a Karpathy split caption file"):
        load_caption_files(str(captions), str(tmp_path / "f.npy"))


def test_an_image_entry_that_is_not_an_object_is_an_error(tmp_path):
    msg = _error(tmp_path, [*TOY[:2], "c.jpg", *TOY[3:]])
    assert msg.startswith(str(tmp_path / "dataset.json") + ": image 2: expected an object"), msg


def test_malformed_json_and_missing_files_are_errors(tmp_path):
    captions = tmp_path / "dataset.json"
    captions.write_text('{"images": [\n  {"filename": "a.jpg",,}\n]}')
    np.save(tmp_path / "f.npy", np.zeros((1, 3)))
    with pytest.raises(ConfigError, match=re.escape(f"{captions}:2:") + ".*not valid JSON"):
        load_caption_files(str(captions), str(tmp_path / "f.npy"))
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "none.json")) + ": cannot read"):
        load_caption_files(str(tmp_path / "none.json"), str(tmp_path / "f.npy"))
    captions.write_bytes(b'{"images": ["\xff"]}')
    with pytest.raises(ConfigError, match=re.escape(str(captions)) + r": not UTF-8 \(byte 0xff at offset 13\)"):
        load_caption_files(str(captions), str(tmp_path / "f.npy"))
    # Flickr's own caption file, given where the Karpathy JSON belongs: the error says which file is wanted.
    captions.write_text("1000268201_693b08cb0e.jpg#0\tA child in a pink dress .\n")
    with pytest.raises(ConfigError, match=r"not valid JSON.*looks like Flickr's token file.*dataset_flickr8k\.json"):
        load_caption_files(str(captions), str(tmp_path / "f.npy"))


def test_feature_count_different_from_image_count_names_both(tmp_path):
    msg = _error(tmp_path, TOY, np.zeros((4, 3)))
    assert msg.startswith(str(tmp_path / "feats.npy") + ": 4 feature rows"), msg
    assert f"{tmp_path / 'dataset.json'} lists 5 images" in msg


def test_non_finite_features_name_the_row_and_its_image(tmp_path):
    feats = np.ones((5, 3))
    feats[2, 1] = np.nan
    feats[4, 0] = np.inf
    msg = _error(tmp_path, TOY, feats)
    assert msg.startswith(str(tmp_path / "feats.npy") + ": row 2 holds a non-finite value"), msg
    assert f"{tmp_path / 'dataset.json'}: image 2 ('c.jpg')" in msg and "1 more rows" in msg
    # float64 beyond float32's range becomes inf in float32: as unusable.
    feats = np.ones((5, 3))
    feats[3, 2] = 1e300
    assert "row 3 holds a non-finite value" in _error(tmp_path, TOY, feats)


def test_caption_data_from_checks_feature_dims():
    dataset = {"images": json.loads(json.dumps(TOY))}
    kw = dict(min_count=1, captions_name="caps.json", features_name="feats.bin", description="toy")
    for bad in (torch.zeros(5), torch.zeros(5, 2, 2)):
        with pytest.raises(ConfigError, match=r"feats\.bin: features must be 2-D \[images, feature dim\]"):
            caption_data_from(dataset, bad, **kw)
    with pytest.raises(ConfigError, match="min_count must be an integer >= 1"):
        caption_data_from(dataset, torch.zeros(5, 2), **{**kw, "min_count": 0})
    data = caption_data_from(dataset, torch.arange(10.0, dtype=torch.float64).reshape(5, 2), **kw)
    assert data.train.features.dtype == torch.float32 and data.test.features.tolist() == [[6.0, 7.0]]
    assert data.description.startswith("toy: 3/1/1 train/valid/test images, 6/2/2 captions, 2-d features")


# -- feature files ------------------------------------------------------------------------------------


def test_load_features_npy_and_safetensors(tmp_path):
    x = torch.arange(12, dtype=torch.float64).reshape(4, 3)
    np.save(tmp_path / "f.npy", x.numpy())
    np.save(tmp_path / "i.npy", np.arange(6, dtype=np.int16).reshape(2, 3))
    save_file({"anything": x.to(torch.bfloat16)}, str(tmp_path / "one.safetensors"))
    save_file({"features": x.float(), "filenames_hash": torch.zeros(3)}, str(tmp_path / "named.safetensors"))
    for name in ("f.npy", "one.safetensors", "named.safetensors"):
        got = load_features(tmp_path / name)
        assert got.dtype == torch.float32 and got.tolist() == x.tolist(), name
    assert load_features(str(tmp_path / "i.npy")).tolist() == [[0, 1, 2], [3, 4, 5]]
    with open(tmp_path / "F.NPY", "wb") as f:  # a suffix in capitals is the same format (np.save(path) adds .npy)
        np.save(f, x.numpy())
    assert load_features(tmp_path / "F.NPY").shape == (4, 3)


def test_load_features_errors_name_the_file(tmp_path):
    def err(path: Path) -> str:
        with pytest.raises(ConfigError) as e:
            load_features(path)
        assert str(e.value).startswith(f"{path}: "), str(e.value)
        return str(e.value)

    (tmp_path / "f.txt").write_text("1 2 3")
    assert ".npy or .safetensors file, not a .txt file" in err(tmp_path / "f.txt")
    assert "file without a suffix" in err(tmp_path / "features")
    assert "cannot read the features" in err(tmp_path / "missing.npy")
    assert "cannot read the features" in err(tmp_path / "missing.safetensors")
    (tmp_path / "bad.npy").write_bytes(b"not an array at all")
    assert "not a .npy file" in err(tmp_path / "bad.npy")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    assert "not a readable .safetensors file" in err(tmp_path / "bad.safetensors")
    save_file({"a": torch.zeros(2, 3), "b": torch.zeros(2, 3)}, str(tmp_path / "two.safetensors"))
    assert "expected one tensor or a tensor named 'features', found 2: a, b" in err(tmp_path / "two.safetensors")
    save_file({"features": torch.zeros(2, 3, 4)}, str(tmp_path / "three_d.safetensors"))
    assert "2-D [images, feature dim], got shape (2, 3, 4)" in err(tmp_path / "three_d.safetensors")
    np.save(tmp_path / "one_d.npy", np.zeros(5))
    assert "got shape (5,)" in err(tmp_path / "one_d.npy")
    np.save(tmp_path / "str.npy", np.array([["a", "b"]]))
    assert "real numbers" in err(tmp_path / "str.npy")
    save_file({"features": torch.zeros(2, 3, dtype=torch.bool)}, str(tmp_path / "bool.safetensors"))
    assert "real numbers" in err(tmp_path / "bool.safetensors")


# -- training pairs -----------------------------------------------------------------------------------


def test_training_pairs_bos_truncated_caption_eos_then_pad():
    vocab = Vocabulary(SPECIALS + ["a", "b", "c"])  # a 4, b 5, c 6
    split = CaptionSplit(
        features=torch.zeros(3, 2),
        references=[[["a", "b", "c"], ["b"]], [["c", "a", "x", "b", "a"]], [["c", "c"]]],
        filenames=["p", "q", "r"],
        image_ids=[7, 8, 9],
    )
    image_index, tokens, lengths = training_pairs(split, vocab, max_len=3)
    assert image_index.dtype == tokens.dtype == lengths.dtype == torch.int64
    assert image_index.tolist() == [0, 0, 1, 2]
    assert tokens.tolist() == [
        [1, 4, 5, 6, 2],
        [1, 5, 2, 0, 0],
        [1, 6, 4, 3, 2],  # "x" is unknown; "b a" cut by max_len 3
        [1, 6, 6, 2, 0],
    ]
    assert lengths.tolist() == [5, 3, 5, 4]
    # Without truncation the width is the longest caption + 2.
    _, tokens, lengths = training_pairs(split, vocab, max_len=50)
    assert tokens.shape == (4, 7) and tokens[2].tolist() == [1, 6, 4, 3, 5, 4, 2]
    assert lengths.tolist() == [5, 3, 7, 4]
    with pytest.raises(ConfigError, match="max_len must be an integer >= 1"):
        training_pairs(split, vocab, max_len=0)


# -- synthetic scenes ---------------------------------------------------------------------------------

#: Exact RGB of each colour word (violet is a name for purple) and of the two backgrounds.
RGB = {
    "red": (220, 30, 30), "green": (40, 160, 50), "blue": (40, 70, 220), "yellow": (240, 200, 20),
    "purple": (140, 50, 170), "orange": (245, 130, 20),
}  # fmt: skip
BACKGROUND_RGB = {"white": (255, 255, 255), "grey": (218, 218, 218)}
COLOUR_WORDS = {**{c: c for c in RGB}, "violet": "purple"}
NOUNS = {"circle": "circle", "ball": "circle", "disc": "circle", "square": "square", "box": "square",
         "block": "square", "triangle": "triangle"}  # fmt: skip
SIZE_WORDS = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large"}
NUMBER_WORDS = {"one": 1, "two": 2, "three": 3}
GROUP_WORDS = {"shape", "shapes", "object", "objects", "figure", "figures"}


def test_scenes_are_deterministic_in_the_seed():
    a = make_scenes(6, 2, 3, seed=7)
    b = make_scenes(6, 2, 3, seed=7)
    assert torch.equal(a.images, b.images) and a.dataset == b.dataset
    c = make_scenes(6, 2, 3, seed=8)
    assert not torch.equal(a.images, c.images)
    assert [s["raw"] for i in a.dataset["images"] for s in i["sentences"]] != [
        s["raw"] for i in c.dataset["images"] for s in i["sentences"]
    ]
    # Each split has its own streams: more validation images leave the training and test images as they were.
    d = make_scenes(6, 5, 3, seed=7)
    assert torch.equal(d.images[:6], a.images[:6]) and torch.equal(d.images[11:], a.images[8:])
    raws = [[s["raw"] for s in i["sentences"]] for i in d.dataset["images"]]
    assert raws[:6] + raws[11:] == [
        [s["raw"] for s in i["sentences"]] for i in a.dataset["images"][:6] + a.dataset["images"][8:]
    ]


def test_scenes_karpathy_fields_and_sizes():
    scenes = make_scenes(5, 2, 3, seed=1, image_size=32)
    assert scenes.images.shape == (10, 3, 32, 32) and scenes.images.dtype == torch.uint8
    d = scenes.dataset
    assert d["dataset"] == "scenes"
    assert [i["split"] for i in d["images"]] == ["train"] * 5 + ["val"] * 2 + ["test"] * 3
    assert [i["filename"] for i in d["images"]] == [f"scene-{i:05d}.png" for i in range(10)]
    assert [i["imgid"] for i in d["images"]] == list(range(10))
    sentids = []
    for i, entry in enumerate(d["images"]):
        assert len(entry["sentences"]) == 5
        assert entry["sentids"] == [s["sentid"] for s in entry["sentences"]]
        sentids += entry["sentids"]
        for s in entry["sentences"]:
            assert s["imgid"] == i
            assert s["tokens"] == re.findall(r"[a-z]+", s["raw"].lower())
            assert all(re.fullmatch("[a-z]+", t) for t in s["tokens"])
        assert len({tuple(s["tokens"]) for s in entry["sentences"]}) == 5  # references differ
    assert sorted(sentids) == list(range(50))
    assert json.loads(json.dumps(d)) == d  # writable as the JSON file it stands for
    with pytest.raises(ValueError, match="image_size"):
        make_scenes(1, 1, 1, seed=0, image_size=8)
    with pytest.raises(ValueError, match="non-negative"):
        make_scenes(-1, 1, 1, seed=0)


def _pixel_shapes(image: np.ndarray) -> tuple[str, dict[str, dict]]:
    """(background name, {colour: {"shape", "size", "x", "y"}}) read from the pixels of one [S, S, 3] image."""
    background = next(n for n, rgb in BACKGROUND_RGB.items() if (image[0, 0] == rgb).all())
    s = image.shape[0]
    found = {}
    for name, rgb in RGB.items():
        mask = (image == rgb).all(-1)
        if not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        fill = mask.sum() / (w * h)  # square ~1, circle ~pi/4, triangle ~1/2 of its bounding box
        shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
        # Circumradius 0.1 S or 0.2 S: the box sides are at most 0.22 S small and at least 0.28 S large.
        size = "large" if max(w, h) > 0.25 * s else "small"
        # The pixels' centroid: the shape's centre (for the triangle too, its centroid being its circumcentre).
        found[name] = {"shape": shape, "size": size, "x": xs.mean() + 0.5, "y": ys.mean() + 0.5}
    return background, found


def test_scene_captions_say_what_the_pixels_show():
    size = 64
    scenes = make_scenes(80, 0, 0, seed=11, image_size=size)
    images = scenes.images.permute(0, 2, 3, 1).numpy()
    positional = total = 0
    counts = set()
    for image, entry in zip(images, scenes.dataset["images"], strict=True):
        background, shapes = _pixel_shapes(image)
        # Shapes never touch: one connected component of non-background pixels per shape, one colour each.
        _, n = ndimage.label(~(image == BACKGROUND_RGB[background]).all(-1))
        assert n == len(shapes) and 1 <= n <= 3
        counts.add(n)
        for s in entry["sentences"]:
            t = s["tokens"]
            total += 1
            colours = [COLOUR_WORDS[w] for w in t if w in COLOUR_WORDS]
            if t[0] in NUMBER_WORDS:
                assert t[0] == "one" or t[1] in GROUP_WORDS, t
                if t[1] in GROUP_WORDS:
                    assert NUMBER_WORDS[t[0]] == n, t
            says_where = False
            # Every caption names every shape, each once.
            assert sorted(colours) == sorted(shapes), (t, shapes)
            assert sum(w in NOUNS for w in t) == n, t
            for j, w in enumerate(t):
                if w in COLOUR_WORDS:
                    drawn = shapes[COLOUR_WORDS[w]]
                    assert NOUNS[t[j + 1]] == drawn["shape"], (t, drawn)
                    if t[j - 1] in SIZE_WORDS:
                        assert SIZE_WORDS[t[j - 1]] == drawn["size"], (t, drawn)
                    where = t[j + 2 : j + 7]
                    if where[:2] in (["on", "the"], ["at", "the"], ["in", "the"]):
                        says_where = True
                        # By thirds of the image; a pixel of slack for the rasterised centre.
                        if "left" in where[2:4]:
                            assert drawn["x"] < size / 3 + 1, (t, drawn)
                        if "right" in where[2:4]:
                            assert drawn["x"] > 2 * size / 3 - 1, (t, drawn)
                        if "top" in where[2:4]:
                            assert drawn["y"] < size / 3 + 1, (t, drawn)
                        if "bottom" in where[2:4]:
                            assert drawn["y"] > 2 * size / 3 - 1, (t, drawn)
                if w == "background":
                    assert {"white": "white", "grey": "grey", "gray": "grey"}[t[j - 1]] == background, t
            positional += says_where
    assert counts == {1, 2, 3}
    # Positions appear in some references (15 % of the draws) but in a minority of them.
    assert 0.05 * total < positional < 0.3 * total


def test_scenes_through_the_caption_loader():
    scenes = make_scenes(12, 3, 4, seed=2, image_size=48)
    pooled = scenes.images.float().mean((2, 3))  # [N, 3]: position-invariant, as CNN features after pooling
    data = caption_data_from(
        scenes.dataset, pooled, min_count=1, captions_name="<scenes>", features_name="<pooled>", description="scenes"
    )
    assert (len(data.train), len(data.valid), len(data.test)) == (12, 3, 4)
    assert data.test.filenames == [f"scene-{i:05d}.png" for i in range(15, 19)]
    assert torch.equal(data.valid.features, pooled[12:15])
    assert data.train.references[0] == [s["tokens"] for s in scenes.dataset["images"][0]["sentences"]]
    image_index, tokens, lengths = training_pairs(data.train, data.vocab, max_len=30)
    assert image_index.tolist() == [i for i in range(12) for _ in range(5)]
    words = {w for refs in data.train.references for r in refs for w in r}
    assert set(data.vocab.words[4:]) == words and UNK not in tokens[:, 1:][tokens[:, 1:] != PAD].tolist()
    captions = [r for refs in data.train.references for r in refs]
    assert [data.vocab.decode(row) for row in tokens] == captions
    assert lengths.tolist() == [len(r) + 2 for r in captions]
