"""A seeded synthetic image-captioning set: coloured shapes on a plain background, five captions each.

`make_scenes` renders N = num_train + num_valid + num_test RGB images (uint8 [N, 3, S, S]) and returns
them with a caption file in the Karpathy split format of Flickr8k/30k and COCO (``dataset_*.json``),
so that the captioning task reads the synthetic set through the same loader as the real ones.

What an image holds: a plain light background (white or light grey) and 1 to 3 shapes that do not
touch, each with its own colour (no two shapes of an image share one):

- shape: circle, square or triangle (an upright equilateral triangle);
- colour: red, green, blue, yellow, purple or orange, drawn exactly (no antialiasing: every pixel of
  a shape has its colour's RGB value, `COLOURS`);
- size: small or large (a circumradius of 0.10 or 0.20 of the image side, so a large shape has about
  4 times the area of a small one of the same kind);
- position: uniform over the places where the shape fits inside the image without touching the others.

Count, colours, kinds and sizes do not depend on where the shapes are, so globally pooled CNN features
can tell them; the captions name them in most references and the positions in few (about 15 %).

The caption grammar (each of the five references of an image is drawn independently; a draw equal to
an earlier reference of the same image is redrawn, as annotators rarely agree word for word)::

    caption    := list                                        22 %  "a red circle"
                | ("there is" | "there are") list [on-bg]      22 %  "there is a big blue box and a small red disc"
                | NUMBER GROUP ":" list                        22 %  "two shapes: a blue box and a green triangle"
                | list ("on a" | "against a") BG "background"  17 %  "one small red ball on a white background"
                | ("a picture of" | "an image of" | "a drawing of") list  17 %
    on-bg      := "on a" BG "background"  (30 % of the "there" captions)
    list       := np | np "and" np | np "," np "and" np
    np         := DET [SIZE] COLOUR NOUN [POSITION]
    DET        := "a" | "an" (before a vowel) | "one" (15 % of the captions use "one" throughout)
    SIZE       := small: "small" | "little" | "tiny";  large: "large" | "big"  (65 % of the captions give sizes)
    COLOUR     := "red" | "green" | "blue" | "yellow" | "orange" | "purple" | "violet" (for purple, 20 %)
    NOUN       := circle: "circle" | "ball" | "disc";  square: "square" | "box" | "block";  triangle: "triangle"
    POSITION   := "on the left" | "at the top" | "in the top left corner" | "in the middle" | ...
                  (by thirds of the image; 15 % of the captions, never the summary)
    NUMBER     := "one" | "two" | "three";  GROUP := "shape(s)" | "object(s)" | "figure(s)"
    BG         := "white";  grey: "grey" | "gray"

Every caption names every shape. A caption that names none ("three objects on a grey background")
would be the safest guess for every image with that many shapes: it matched enough of the references'
4-grams to score BLEU-4 28 against the references' own 43, so a model that learnt to say it scored as
well on BLEU-4 as one that described the shapes.

The shapes of a list are mentioned left to right (30 % of the captions) or in a random order. The raw
sentence starts with a capital letter 70 % of the time and ends with a full stop half of the time; its
tokens are the lowercase words, punctuation removed (as in the Karpathy files).

Determinism: everything is drawn from numpy Generators seeded by ``[seed, tag, split, stream]``, one
stream for the scenes and one for the captions of each split, so the same arguments give the same images
and captions on every machine, and changing one split's size leaves the other splits as they were.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["BACKGROUNDS", "COLOURS", "SHAPES", "SIZES", "SceneLayout", "SceneObject", "Scenes", "make_scenes"]

#: Shape colours: RGB (uint8) by name.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 160, 50),
    "blue": (40, 70, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 170),
    "orange": (245, 130, 20),
}
#: Background colours: RGB (uint8) by name, with the probability of each.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "grey": (218, 218, 218)}
_BACKGROUND_P = (0.6, 0.4)
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
#: Circumradius of a shape as a fraction of the image side, by size.
_RADIUS = {"small": 0.10, "large": 0.20}
#: Least gap between two shapes' circumcircles, as a fraction of the image side.
_GAP = 0.04
#: The split names of the Karpathy files, in the order of the images.
_SPLITS = ("train", "val", "test")
_TAG = 0x5CE7E5
_CAPTIONS_PER_IMAGE = 5

# Word choices with their probabilities: ((word, p), ...), p summing to 1.
_NOUNS = {
    "circle": (("circle", 0.5), ("ball", 0.25), ("disc", 0.25)),
    "square": (("square", 0.55), ("box", 0.3), ("block", 0.15)),
    "triangle": (("triangle", 1.0),),
}
_SIZE_WORDS = {"small": (("small", 0.6), ("little", 0.25), ("tiny", 0.15)), "large": (("large", 0.55), ("big", 0.45))}
_COLOUR_WORDS = {c: ((c, 1.0),) for c in COLOURS} | {"purple": (("purple", 0.8), ("violet", 0.2))}
_BACKGROUND_WORDS = {"white": (("white", 1.0),), "grey": (("grey", 0.6), ("gray", 0.4))}
_GROUPS = (("shape", 0.5), ("object", 0.3), ("figure", 0.2))
_PICTURE = (("a picture of", 0.4), ("an image of", 0.35), ("a drawing of", 0.25))
_TEMPLATES = (("list", 0.22), ("there", 0.22), ("count", 0.22), ("background", 0.17), ("picture", 0.17))
_NUMBERS = ("zero", "one", "two", "three")
_P_SIZE, _P_ONE, _P_POSITION, _P_LEFT_TO_RIGHT = 0.65, 0.15, 0.15, 0.3
_P_CAPITAL, _P_STOP, _P_THERE_BACKGROUND = 0.7, 0.5, 0.3


@dataclass(frozen=True)
class SceneObject:
    """One shape of a scene; x, y, radius in pixels (x to the right, y down, from the image's top left corner).

    `radius` is the circumradius: the shape lies inside the circle of that radius about (x, y).
    """

    shape: str
    colour: str
    size: str
    x: float
    y: float
    radius: float


@dataclass(frozen=True)
class SceneLayout:
    """What one image shows: its background's name and its shapes."""

    background: str
    objects: tuple[SceneObject, ...]


@dataclass
class Scenes:
    """A rendered synthetic captioning set (`make_scenes`).

    Attributes:
        images: uint8 [N, 3, S, S], RGB; the training images, then validation, then test.
        dataset: the captions in the Karpathy split format: ``{"dataset": "scenes", "images": [{"filename":
            "scene-00000.png", "imgid": i, "split": "train" | "val" | "test", "sentids": [...],
            "sentences": [{"tokens": [...], "raw": "...", "imgid": i, "sentid": k}] * 5}, ...]}``;
            entry i describes images[i].
        layouts: what was drawn in each image (the ground truth of the captions).
    """

    images: torch.Tensor
    dataset: dict[str, Any]
    layouts: list[SceneLayout] = field(default_factory=list)


def _pick(rng: np.random.Generator, options: tuple[tuple[Any, float], ...]) -> Any:
    """One of `options` ((value, p), ...) drawn with its probability (p summing to 1)."""
    # One uniform and a linear scan: much faster than Generator.choice(p=...) for a handful of options.
    u, acc = rng.random(), 0.0
    for value, p in options:
        acc += p
        if u < acc:
            return value
    return options[-1][0]


def _place(rng: np.random.Generator, radii: list[float], size: int) -> list[tuple[float, float]]:
    """Centres (x, y) in pixels for shapes of circumradii `radii`, inside the image and apart by _GAP."""
    gap = _GAP * size
    # Rejection sampling, restarted from scratch when a shape finds no room: three large shapes fill
    # much of a small image, and a bad place for the first can leave none for the last.
    for _ in range(1000):
        centres: list[tuple[float, float]] = []
        for r in radii:
            for _ in range(50):
                x, y = rng.uniform(r + 1, size - r - 1, size=2)
                placed = zip(centres, radii[: len(centres)], strict=True)
                if all(math.hypot(x - cx, y - cy) >= r + cr + gap for (cx, cy), cr in placed):
                    centres.append((float(x), float(y)))
                    break
            else:
                break
        if len(centres) == len(radii):
            return centres
    raise RuntimeError(f"no room for shapes of radii {radii} in a {size}x{size} image")  # not reached for S >= 16


def _layout(rng: np.random.Generator, size: int) -> SceneLayout:
    """A random scene: background, 1-3 shapes of distinct colours, their kinds, sizes and places."""
    background = tuple(BACKGROUNDS)[0 if rng.random() < _BACKGROUND_P[0] else 1]
    n = int(rng.integers(1, 4))
    colours = [tuple(COLOURS)[i] for i in rng.permutation(len(COLOURS))[:n]]
    shapes = [SHAPES[i] for i in rng.integers(0, len(SHAPES), size=n)]
    sizes = [SIZES[i] for i in rng.integers(0, len(SIZES), size=n)]
    radii = [_RADIUS[s] * size for s in sizes]
    centres = _place(rng, radii, size)
    objects = tuple(
        SceneObject(shape, colour, sz, x, y, r)
        for shape, colour, sz, (x, y), r in zip(shapes, colours, sizes, centres, radii, strict=True)
    )
    return SceneLayout(background, objects)


def _draw(canvas: np.ndarray, obj: SceneObject) -> None:
    """Paint `obj` into `canvas` (uint8 [S, S, 3]) in place, pixel centres inside the shape."""
    s = canvas.shape[0]
    r = obj.radius
    x0, x1 = max(int(obj.x - r) - 1, 0), min(int(obj.x + r) + 2, s)
    y0, y1 = max(int(obj.y - r) - 1, 0), min(int(obj.y + r) + 2, s)
    dy = np.arange(y0, y1)[:, None] + 0.5 - obj.y  # pixel centres relative to the shape's centre
    dx = np.arange(x0, x1)[None, :] + 0.5 - obj.x
    if obj.shape == "circle":
        mask = dx * dx + dy * dy <= (0.85 * r) ** 2
    elif obj.shape == "square":
        half = r / math.sqrt(2)  # the square inscribed in the circumcircle
        mask = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    else:
        # Apex at (0, -r), base at dy = r/2 from -r√3/2 to r√3/2: the width grows by 2/√3 per pixel down.
        mask = (dy <= r / 2) & (np.abs(dx) <= (dy + r) / math.sqrt(3))
    canvas[y0:y1, x0:x1][mask] = COLOURS[obj.colour]


def _render(layout: SceneLayout, size: int) -> np.ndarray:
    """The image of `layout`: uint8 [S, S, 3]."""
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = BACKGROUNDS[layout.background]
    for obj in layout.objects:
        _draw(canvas, obj)
    return canvas


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _position(obj: SceneObject, size: int, rng: np.random.Generator) -> str:
    """Where `obj` is, by thirds of the image: "on the left", "in the top right corner", "in the middle", ..."""
    col = "left" if obj.x < size / 3 else "right" if obj.x > 2 * size / 3 else None
    row = "top" if obj.y < size / 3 else "bottom" if obj.y > 2 * size / 3 else None
    if col and row:
        return _pick(rng, ((f"in the {row} {col} corner", 0.5), (f"at the {row} {col}", 0.5)))
    if col:
        return f"on the {col}"
    if row:
        return f"at the {row}"
    return _pick(rng, (("in the middle", 0.5), ("in the centre", 0.3), ("in the center", 0.2)))


def _caption(layout: SceneLayout, size: int, rng: np.random.Generator) -> str:
    """One raw caption of `layout` drawn from the grammar of the module docstring."""
    objects = list(layout.objects)
    n = len(objects)
    template = _pick(rng, _TEMPLATES)
    number, group = _NUMBERS[n], _pick(rng, _GROUPS) + ("s" if n > 1 else "")
    background = _pick(rng, _BACKGROUND_WORDS[layout.background])
    with_size, with_one = rng.random() < _P_SIZE, rng.random() < _P_ONE
    with_position = rng.random() < _P_POSITION
    if rng.random() < _P_LEFT_TO_RIGHT:
        objects.sort(key=lambda o: o.x)
    else:
        objects = [objects[i] for i in rng.permutation(n)]
    phrases = []
    for obj in objects:
        words = [_pick(rng, _SIZE_WORDS[obj.size])] if with_size else []
        words += [_pick(rng, _COLOUR_WORDS[obj.colour]), _pick(rng, _NOUNS[obj.shape])]
        if with_position:
            words.append(_position(obj, size, rng))
        phrases.append(" ".join(["one" if with_one else _article(words[0]), *words]))
    listed = phrases[0] if n == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    if template == "list":
        return listed
    if template == "there":
        verb = "there is" if n == 1 or rng.random() < 0.5 else "there are"
        tail = f" on a {background} background" if rng.random() < _P_THERE_BACKGROUND else ""
        return f"{verb} {listed}{tail}"
    if template == "count":
        return f"{number} {group}: {listed}"
    if template == "background":
        return f"{listed} {_pick(rng, (('on a', 0.7), ('against a', 0.3)))} {background} background"
    return f"{_pick(rng, _PICTURE)} {listed}"


def _sentences(layout: SceneLayout, size: int, rng: np.random.Generator) -> list[tuple[str, list[str]]]:
    """Five (raw, tokens) references of `layout`, no two with the same tokens (when 20 draws allow)."""
    out: list[tuple[str, list[str]]] = []
    seen: set[tuple[str, ...]] = set()
    while len(out) < _CAPTIONS_PER_IMAGE:
        for _ in range(20):
            text = _caption(layout, size, rng)
            tokens = re.findall(r"[a-z]+", text)
            if tuple(tokens) not in seen:
                break
        seen.add(tuple(tokens))
        raw = text[0].upper() + text[1:] if rng.random() < _P_CAPITAL else text
        out.append((raw + "." if rng.random() < _P_STOP else raw, tokens))
    return out


def make_scenes(num_train: int, num_valid: int, num_test: int, *, seed: int, image_size: int = 64) -> Scenes:
    """Render a synthetic captioning set (see the module docstring for what is drawn and said).

    Args:
        num_train, num_valid, num_test: images of each split (>= 0); Karpathy splits "train", "val", "test".
        seed: a non-negative integer; the same arguments give the same images and captions.
        image_size: S, the side of the square images in pixels (>= 16; shapes have few pixels below 48).

    Returns:
        `Scenes`: uint8 [N, 3, S, S] images, the Karpathy-format caption dict, the layouts drawn.
    """
    counts = (num_train, num_valid, num_test)
    if any(int(c) != c or c < 0 for c in counts):
        raise ValueError(f"image counts must be non-negative integers, got {counts}")
    if int(image_size) != image_size or image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16 (room for three large shapes), got {image_size}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    size = int(image_size)
    images = np.empty((sum(counts), size, size, 3), dtype=np.uint8)
    layouts: list[SceneLayout] = []
    entries: list[dict[str, Any]] = []
    sentid = 0
    for split_index, (split, count) in enumerate(zip(_SPLITS, counts, strict=True)):
        scene_rng = np.random.default_rng([seed, _TAG, split_index, 0])
        caption_rng = np.random.default_rng([seed, _TAG, split_index, 1])
        for _ in range(int(count)):
            i = len(layouts)
            layout = _layout(scene_rng, size)
            images[i] = _render(layout, size)
            layouts.append(layout)
            sentences = [
                {"tokens": tokens, "raw": raw, "imgid": i, "sentid": sentid + k}
                for k, (raw, tokens) in enumerate(_sentences(layout, size, caption_rng))
            ]
            entries.append({
                "filename": f"scene-{i:05d}.png", "imgid": i, "split": split,
                "sentids": [s["sentid"] for s in sentences], "sentences": sentences,
            })  # fmt: skip
            sentid += len(sentences)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return Scenes(tensor, {"dataset": "scenes", "images": entries}, layouts)
