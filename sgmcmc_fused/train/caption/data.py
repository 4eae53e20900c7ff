"""The captioning task's data: Karpathy split caption files, image feature files, the vocabulary and the
(image, caption) training pairs.

Captions come in the Karpathy split JSON of Flickr8k, Flickr30k and COCO (``dataset_flickr8k.json``, ...):
``{"images": [{"filename": ..., "split": "train" | "restval" | "val" | "test", "sentences": [{"tokens":
[...], "raw": ...}, ...]}, ...]}``; "train" and "restval" images are for training, "val" for validation,
"test" for testing. Image features come from a separate file, one row per JSON image in the JSON's order
(float32 [N, F]: a .npy array or a .safetensors tensor), as an image encoder run over the images writes
them. `load_caption_files` reads the two files; `caption_data_from` does the work on what they hold, and
is also what the synthetic scenes (`sgmcmc_fused.data.scenes`) go through with their rendered images'
features.

Captions are lowercase tokens, with the tokens that hold no letter or digit (punctuation) dropped. The
vocabulary comes from the training captions alone (`Vocabulary.build`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..options import ConfigError

__all__ = [
    "BOS", "EOS", "PAD", "SPECIALS", "UNK", "CaptionData", "CaptionSplit", "Vocabulary", "caption_data_from",
    "load_caption_files", "load_features", "saved_filenames", "training_pairs",
]  # fmt: skip

#: The first line of Flickr8k.token.txt / results_20130124.token: "1000268201_693b08cb0e.jpg#0<tab>A child ...".
_FLICKR_TOKEN_LINE = re.compile(r"[^\s#]+#\d+\t")

#: Ids of the special tokens, the first four of every vocabulary.
PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
#: The Karpathy split names, by the split of the task they feed.
_SPLIT_OF = {"train": "train", "restval": "train", "val": "valid", "test": "test"}
_NPY_MAGIC = b"\x93NUMPY"
#: Integer dtypes a .safetensors feature tensor may have (cast to float32 like floating ones).
_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class Vocabulary:
    """The words of the captions and their ids: the specials (`PAD`, `BOS`, `EOS`, `UNK`), then the words.

    Build one from training captions with `Vocabulary.build`; `state` / `from_state` give it as a JSON-able
    list (the words in id order) for a checkpoint or a run folder.

    Attributes:
        words: list[str], the token of each id: ``["<pad>", "<bos>", "<eos>", "<unk>", word_4, ...]``.
        stoi: dict[str, int], the id of each token of `words`.
    """

    PAD, BOS, EOS, UNK = PAD, BOS, EOS, UNK

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a caption vocabulary starts with {list(SPECIALS)}, got {words[: len(SPECIALS)]}")
        self.words: list[str] = words
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(words)}
        if len(self.stoi) != len(words):
            dup = next(w for w, c in Counter(words).items() if c > 1)
            raise ValueError(f"duplicate word {dup!r} in the vocabulary")
        # A caption token that happens to spell a special ("<eos>") is an unknown word, not that marker.
        self._word_ids = {w: i for i, w in enumerate(words) if i >= len(SPECIALS)}

    @classmethod
    def build(cls, captions: Iterable[Sequence[str]], min_count: int = 1) -> Vocabulary:
        """The vocabulary of `captions` (token lists): the words seen at least `min_count` times.

        Word ids follow the specials, by descending count, ties in alphabetical (code point) order, so the
        same captions always give the same ids. Rarer words are left out; they encode as `UNK`.
        """
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts = Counter(w for caption in captions for w in caption if w not in SPECIALS)
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    def __repr__(self) -> str:
        head = ", ".join(repr(w) for w in self.words[len(SPECIALS) : len(SPECIALS) + 5])
        return f"Vocabulary(size={len(self)}, words=[{head}{', ...' if len(self) > len(SPECIALS) + 5 else ''}])"

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """The ids of `tokens` (no BOS or EOS added); words outside the vocabulary give `UNK`."""
        ids = self._word_ids
        return [ids.get(t, UNK) for t in tokens]

    def decode(self, ids: Iterable[int] | torch.Tensor) -> list[str]:
        """The words of `ids` (a 1-D tensor or ints) up to the first `EOS`; `PAD` and `BOS` are skipped.

        `UNK` decodes as "<unk>". Raises ValueError for an id outside 0..len-1.
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        out = []
        for i in ids:
            if i == EOS:
                break
            if not 0 <= i < len(self.words):
                raise ValueError(f"id {i} is out of range for a vocabulary of {len(self.words)} words")
            if i not in (PAD, BOS):
                out.append(self.words[i])
        return out

    def state(self) -> list[str]:
        """The words in id order: a JSON-able list that `from_state` turns back into this vocabulary."""
        return list(self.words)

    @classmethod
    def from_state(cls, state: Sequence[str]) -> Vocabulary:
        return cls(state)


@dataclass
class CaptionSplit:
    """The images of one split and their reference captions.

    Attributes:
        features: float32 [N, F], one row per image.
        references: per image, its reference captions, each a list of lowercase tokens (no punctuation).
        filenames: per image, its file name in the caption file.
        image_ids: per image, its index in the caption file's ``images`` list (and its feature row there).
    """

    features: torch.Tensor
    references: list[list[list[str]]]
    filenames: list[str]
    image_ids: list[int]

    def __len__(self) -> int:
        return len(self.filenames)

    @property
    def num_captions(self) -> int:
        return sum(len(refs) for refs in self.references)


@dataclass
class CaptionData:
    """The three splits, the vocabulary of the training captions, and what the report says about them.

    Attributes:
        train, valid, test: the splits ("train" + "restval", "val", "test" of the caption file).
        vocab: built from the training captions.
        feature_dim: F, the width of the features.
        description: one line: the source, the split sizes, the features and the vocabulary.
        fingerprint: 16 hex digits of a SHA-256 over every split's file names, captions and features.
        notes: facts worth a line in the report (restval images, unknown-word rates, dropped tokens, ...).
    """

    train: CaptionSplit
    valid: CaptionSplit
    test: CaptionSplit
    vocab: Vocabulary
    feature_dim: int
    description: str
    fingerprint: str
    notes: list[str] = field(default_factory=list)


def _entry_name(source: str, index: int, entry: Any) -> str:
    """``source: image 3 ('x.jpg')``: where an error is, for its message."""
    name = entry.get("filename") if isinstance(entry, dict) else None
    return f"{source}: image {index}" + (f" ({name!r})" if isinstance(name, str) else "")


def _references(entry: Any, index: int, source: str) -> tuple[str, str, list[list[str]], int]:
    """(filename, split, captions, punctuation tokens dropped) of one image entry; ConfigError if malformed."""
    where = _entry_name(source, index, entry)
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object with 'filename', 'split' and 'sentences', got {entry!r:.60}")
    for key in ("filename", "split", "sentences"):
        if key not in entry:
            raise ConfigError(
                f"{where}: no {key!r} (each entry of 'images' in a Karpathy split file has 'filename', "
                "'split' and 'sentences')"
            )
    filename, split, sentences = entry["filename"], entry["split"], entry["sentences"]
    if not isinstance(filename, str):
        raise ConfigError(f"{where}: 'filename' must be a string, got {filename!r:.60}")
    if split not in _SPLIT_OF:
        raise ConfigError(f"{where}: unknown split {split!r} (expected 'train', 'restval', 'val' or 'test')")
    if not isinstance(sentences, list):
        raise ConfigError(f"{where}: 'sentences' must be a list of captions, got {sentences!r:.60}")
    if not sentences:
        raise ConfigError(f"{where}: no captions ('sentences' is empty)")
    captions, dropped = [], 0
    for k, sentence in enumerate(sentences):
        tokens = sentence.get("tokens") if isinstance(sentence, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ConfigError(f"{where}: caption {k} has no 'tokens' list of strings (got {sentence!r:.80})")
        # Karpathy's tokens are mostly words already; a stray "." or "," (some COCO captions) is dropped.
        words = [t.strip().lower() for t in tokens if any(c.isalnum() for c in t)]
        dropped += len(tokens) - len(words)
        if not words:
            raw = sentence.get("raw")
            raise ConfigError(
                f"{where}: caption {k} is empty once punctuation is dropped (tokens {tokens!r:.60}"
                + (f", raw {raw!r:.60})" if isinstance(raw, str) else ")")
            )
        captions.append(words)
    return filename, split, captions, dropped


def _check_features(features: torch.Tensor, images: list[Any], source: str, captions_name: str) -> torch.Tensor:
    """`features` as float32 [N, F] after checking that they fit the N images of the caption file."""
    if not isinstance(features, torch.Tensor):
        raise ConfigError(f"{source}: features must be a tensor, got {type(features).__name__}")
    if features.dim() != 2:
        raise ConfigError(f"{source}: features must be 2-D [images, feature dim], got shape {tuple(features.shape)}")
    if features.shape[0] != len(images):
        raise ConfigError(
            f"{source}: {features.shape[0]} feature rows, but {captions_name} lists {len(images)} images "
            "(row i must hold the features of image i)"
        )
    if features.shape[1] == 0:
        raise ConfigError(f"{source}: the features have width 0")
    out = features.detach().to(device="cpu", dtype=torch.float32).contiguous()
    # Checked after the cast: a float64 value beyond float32's range becomes inf there.
    bad = (~torch.isfinite(out)).any(1).nonzero()
    if len(bad):
        i = int(bad[0])
        raise ConfigError(
            f"{source}: row {i} holds a non-finite value (nan, inf, or beyond float32's range); it is the features "
            f"of {_entry_name(captions_name, i, images[i])}"
            + (f" and {len(bad) - 1} more rows" if len(bad) > 1 else "")
        )
    return out


def _check_row_filenames(row_filenames: Sequence[str], filenames: list[str], source: str, captions_name: str) -> None:
    """Raise ConfigError at the first feature row saved for another image than the caption file's."""
    if len(row_filenames) != len(filenames):
        raise ConfigError(
            f"{source}: its metadata names {len(row_filenames)} images, but {captions_name} lists {len(filenames)}"
        )
    for i, (saved, listed) in enumerate(zip(row_filenames, filenames, strict=True)):
        if saved != listed:
            raise ConfigError(
                f"{source}: row {i} holds the features of {saved!r}, but image {i} of {captions_name} is {listed!r} "
                "(the features were made from another caption file, or another order of it)"
            )


def _shared_between_splits(splits: dict[str, CaptionSplit]) -> list[tuple[str, list[str]]]:
    """(file name, the splits that list it) for each file name listed in more than one split."""
    where: dict[str, list[str]] = {}
    for split_name, s in splits.items():
        for name in dict.fromkeys(s.filenames):
            where.setdefault(name, []).append(split_name)
    return [(name, found) for name, found in where.items() if len(found) > 1]


def _fingerprint(splits: dict[str, CaptionSplit]) -> str:
    h = hashlib.sha256()
    for name, s in splits.items():
        h.update(f"[{name}]\n".encode())
        for filename, refs in zip(s.filenames, s.references, strict=True):
            h.update(f"{filename}\t{' | '.join(' '.join(r) for r in refs)}\n".encode())
        h.update(s.features.numpy().tobytes())
    return h.hexdigest()[:16]


def _unknown_rate(split: CaptionSplit, vocab: Vocabulary) -> tuple[int, int]:
    """(tokens that encode as UNK, tokens) over the split's captions."""
    tokens = [w for refs in split.references for r in refs for w in r]
    return vocab.encode(tokens).count(UNK), len(tokens)


def caption_data_from(
    dataset: dict[str, Any],
    features: torch.Tensor,
    *,
    min_count: int,
    captions_name: str,
    features_name: str,
    description: str,
    row_filenames: Sequence[str] | None = None,
) -> CaptionData:
    """Splits, vocabulary and features from a Karpathy split dict and its image features.

    Args:
        dataset: the parsed caption file: ``{"images": [{"filename", "split", "sentences": [{"tokens"}]}]}``.
        features: [N, F] real numbers, row i the features of ``dataset["images"][i]`` (cast to float32).
        min_count: words seen fewer times in the training captions encode as `UNK` (>= 1).
        captions_name, features_name: the files (or other sources) named in the error messages.
        description: the source, the head of `CaptionData.description`.
        row_filenames: the image file name of each feature row, where the feature file records them
            (`saved_filenames`); each must equal its image's ``filename``.

    Raises:
        ConfigError naming the file and, where there is one, the entry (image index and file name): not the
        Karpathy format, an unknown split, an image without captions, an empty caption, features that are
        not 2-D, whose row count differs from the image count, that hold a non-finite value, or whose
        `row_filenames` differ from the images' file names, and an empty train, val or test split.
    """
    if int(min_count) != min_count or min_count < 1:
        raise ConfigError(f"min_count must be an integer >= 1, got {min_count}")
    images = dataset.get("images") if isinstance(dataset, dict) else None
    if not isinstance(images, list):
        raise ConfigError(
            f"{captions_name}: not a Karpathy split caption file (expected a JSON object with an 'images' list, "
            "as in dataset_flickr8k.json)"
        )
    rows: dict[str, list[int]] = {"train": [], "valid": [], "test": []}
    parsed, dropped, restval = [], 0, 0
    for i, entry in enumerate(images):
        filename, split, captions, d = _references(entry, i, captions_name)
        parsed.append((filename, captions))
        rows[_SPLIT_OF[split]].append(i)
        dropped += d
        restval += split == "restval"
    feats = _check_features(features, images, features_name, captions_name)
    if row_filenames is not None:
        _check_row_filenames(row_filenames, [name for name, _ in parsed], features_name, captions_name)
    for split, karpathy in (("train", "'train' or 'restval'"), ("valid", "'val'"), ("test", "'test'")):
        if not rows[split]:
            raise ConfigError(f"{captions_name}: no image of split {karpathy} (the {split} split would be empty)")

    def subset(idx: list[int]) -> CaptionSplit:
        return CaptionSplit(
            feats[torch.tensor(idx, dtype=torch.long)], [parsed[i][1] for i in idx], [parsed[i][0] for i in idx], idx
        )

    splits = {name: subset(idx) for name, idx in rows.items()}
    train, valid, test = splits["train"], splits["valid"], splits["test"]
    vocab = Vocabulary.build((r for refs in train.references for r in refs), min_count=int(min_count))
    notes = []
    if restval:
        notes.append(f"training images: {restval} of split 'restval' with {len(train) - restval} of split 'train'")
    per_image = [len(refs) for s in splits.values() for refs in s.references]
    if min(per_image) != max(per_image):
        notes.append(f"captions per image: {min(per_image)} to {max(per_image)} (the pairs weigh images unevenly)")
    if dropped:
        notes.append(f"{dropped} punctuation tokens dropped from the captions")
    leaked = _shared_between_splits(splits)
    if leaked:
        name, where = leaked[0]
        notes.append(
            f"warning: {len(leaked)} file name(s) listed in more than one split, first {name!r} in "
            f"{' and '.join(where)}: an image trained on and tested on makes the test scores optimistic"
        )
    rates = []
    for name, s in splits.items():
        unknown, total = _unknown_rate(s, vocab)
        rates.append(f"{name} {unknown}/{total} ({unknown / total:.2%})")
    notes.append(f"tokens outside the vocabulary (<unk>): {', '.join(rates)}")
    desc = (
        f"{description}: {len(train)}/{len(valid)}/{len(test)} train/valid/test images, {train.num_captions}/"
        f"{valid.num_captions}/{test.num_captions} captions, {feats.shape[1]}-d features, vocabulary of "
        f"{len(vocab) - len(SPECIALS)} words (seen >= {min_count} times in training) + {len(SPECIALS)} specials"
    )
    return CaptionData(train, valid, test, vocab, int(feats.shape[1]), desc, _fingerprint(splits), notes)


def _load_npy(path: Path) -> torch.Tensor:
    with open(path, "rb") as f:
        if f.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
            raise ConfigError(f"{path}: not a .npy file (no NumPy header)")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as e:  # object arrays, a truncated file
        raise ConfigError(f"{path}: cannot read the features: {e}") from None
    if array.dtype.kind not in "fiu":
        raise ConfigError(f"{path}: features must be real numbers, got dtype {array.dtype}")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: caption_data_from names it
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _load_safetensors(path: Path) -> torch.Tensor:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            names = sorted(f.keys())
            if "features" in names:
                name = "features"
            elif len(names) == 1:
                name = names[0]
            else:
                raise ConfigError(
                    f"{path}: expected one tensor or a tensor named 'features', found "
                    + (f"{len(names)}: {', '.join(names[:10])}" if names else "none")
                )
            tensor = f.get_tensor(name)
    except SafetensorError as e:
        raise ConfigError(f"{path}: not a readable .safetensors file: {e}") from None
    if tensor.is_complex() or not (tensor.is_floating_point() or tensor.dtype in _INTEGER_DTYPES):
        raise ConfigError(f"{path}: features must be real numbers, got {tensor.dtype} (tensor {name!r})")
    return tensor.to(torch.float32)


def load_features(path: str | os.PathLike) -> torch.Tensor:
    """Image features from a file: float32 [N, F].

    ``.npy``: the array (any real dtype, cast). ``.safetensors``: its only tensor, or the one named
    "features" among several. Raises ConfigError naming the file for another suffix, a file that cannot
    be read or is not of its format, a dtype that is not real numbers, or an array that is not 2-D.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".safetensors"):
        raise ConfigError(
            f"{path}: image features must be a .npy or .safetensors file, not "
            + (f"a {suffix} file" if suffix else "a file without a suffix")
        )
    try:
        tensor = _load_npy(p) if suffix == ".npy" else _load_safetensors(p)
    except OSError as e:  # missing, a directory, unreadable
        raise ConfigError(f"{path}: cannot read the features: {e.strerror or e}") from None
    if tensor.dim() != 2:
        raise ConfigError(f"{path}: features must be 2-D [images, feature dim], got shape {tuple(tensor.shape)}")
    return tensor


def saved_filenames(path: str | os.PathLike) -> list[str] | None:
    """The image file name of each row of a ``.safetensors`` feature file, from its ``filenames``
    metadata (as ``caption-features`` writes it); None for a ``.npy`` file or a file without it.

    Raises:
        ConfigError: the metadata is not a JSON list of strings.
    """
    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get("filenames")
    except (OSError, SafetensorError) as e:
        raise ConfigError(f"{path}: not a readable .safetensors file: {e}") from None
    if raw is None:
        return None
    try:
        names = json.loads(raw)
    except json.JSONDecodeError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{path}: its 'filenames' metadata is not a JSON list of file names")
    return names


def load_caption_files(captions_json: str, features_file: str, *, min_count: int = 5) -> CaptionData:
    """`caption_data_from` over a Karpathy split JSON file (UTF-8) and its image feature file.

    The default `min_count` of 5 is the usual one for Flickr8k/30k and COCO. Raises ConfigError naming the
    file: unreadable, not UTF-8, not valid JSON (with the line and column), or any error of
    `load_features` and `caption_data_from`.
    """
    try:
        text = Path(captions_json).read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise ConfigError(f"{captions_json}: cannot read the caption file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{captions_json}: not UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    try:
        dataset = json.loads(text)
    except json.JSONDecodeError as e:
        hint = ""
        if _FLICKR_TOKEN_LINE.match(text):
            hint = (" (this looks like Flickr's token file, IMAGE#K<tab>caption lines; the trainer reads the "
                    "Karpathy split JSON, dataset_flickr8k.json or dataset_flickr30k.json)")  # fmt: skip
        raise ConfigError(f"{captions_json}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}{hint}") from None
    features = load_features(features_file)
    row_filenames = saved_filenames(features_file)
    name = dataset.get("dataset") if isinstance(dataset, dict) else None
    source = Path(captions_json).name + (f" ({name})" if isinstance(name, str) else "")
    return caption_data_from(
        dataset, features, min_count=min_count, captions_name=str(captions_json), features_name=str(features_file),
        description=f"{source} with {Path(features_file).name}", row_filenames=row_filenames,
    )  # fmt: skip


def training_pairs(
    split: CaptionSplit, vocab: Vocabulary, max_len: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One (image, caption) pair per reference caption of the split, images in order, then references.

    Returns:
        image_index: int64 [M], the row of each pair's image in ``split.features``.
        tokens: int64 [M, L + 2]: `BOS`, the caption's ids truncated to `max_len` words, `EOS`, then `PAD`;
            L is the longest caption after truncation (<= max_len).
        lengths: int64 [M], tokens of each pair including BOS and EOS (caption words + 2).
    """
    if int(max_len) != max_len or max_len < 1:
        raise ConfigError(f"max_len must be an integer >= 1, got {max_len}")
    image_index, ids = [], []
    for i, refs in enumerate(split.references):
        for r in refs:
            image_index.append(i)
            ids.append(vocab.encode(r[: int(max_len)]))
    n = np.array([len(c) for c in ids], dtype=np.int64)
    width = int(n.max(initial=0)) + 2
    tokens = np.full((len(ids), width), PAD, dtype=np.int64)
    # Fill every caption at once: the positions 1..n_m of row m, taken row-major, are the concatenated ids.
    cols = np.arange(width)[None, :]
    tokens[(cols >= 1) & (cols <= n[:, None])] = [w for c in ids for w in c]
    tokens[:, 0] = BOS
    tokens[np.arange(len(ids)), n + 1] = EOS
    return torch.tensor(image_index, dtype=torch.long), torch.from_numpy(tokens), torch.from_numpy(n + 2)
