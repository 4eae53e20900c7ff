"""Configuration of the image-caption task: presets, options, and `CaptionConfig`.

Units: `lr` is the step size of the gradient of the mean loss per caption token (<eos> included;
docs/spec.md#langevin-step), and num_data = the number of training target tokens.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, ClassVar

from ..chains import add_chains_argument
from ..config import ANY, INTEGER, PATH, DataField, RunConfig, check_data_part
from ..methods import RMS_DEFAULT_LR
from ..options import (
    SCHEDULE_FIELDS,
    ConfigError,
    PresetField,
    add_dropconnect_arguments,
    add_method_arguments,
    add_preset_arguments,
    add_run_arguments,
    learning_rates,
    need,
    parse_methods,
    preset_values,
    shared_options,
)

# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    # Gan et al. (2017) on Flickr8k/30k: one LSTM layer of 512 units over 512-d word embeddings and
    # residual-network image features, dropout 0.5, minibatches of 64 captions, 20 epochs at lr 1e-3,
    # samples collected after 3 epochs (here one an epoch, the last 20 kept for decoding).
    "paper": dict(
        embedding_dim=512, hidden=512, dropout=0.5, batch_size=64, epochs=20, clip=5.0, burn_in="3ep",
        thin="1ep", sgd_lr=0.1, rms_lr=RMS_DEFAULT_LR,
    ),
    # The embedded default (the synthetic scenes): a few CPU minutes for both default methods. 30 epochs
    # and no dropout: chosen on the validation CIDEr-D over 16 epochs, dropout 0.25 and DropConnect 0.2
    # (docs/results.md).
    "tiny": dict(
        embedding_dim=64, hidden=128, dropout=0.0, batch_size=64, epochs=30, clip=5.0, burn_in="4ep",
        thin="0.5ep", sgd_lr=0.1, rms_lr=3e-3,
    ),
}
# fmt: on
DEFAULT_PRESET = {"synthetic": "tiny", "files": "paper"}

#: The synthetic scenes of the embedded default (`sgmcmc_fused.data.scenes.make_scenes`) and the
#: feature path their pixels go through (a seeded, randomly initialised residual network: no
#: pretrained weights can be fetched at run time).
SYNTHETIC_DEFAULTS = dict(num_train=1500, num_valid=200, num_test=300, image_size=64, arch="resnet18",
                          stages=["layer1", "layer2"], feature_image_size=64)  # fmt: skip

#: Default temperature of the samplers, 1/N (N training target tokens), as the other tasks.
DEFAULT_TEMPERATURE = "1/N"

PRESET_FIELDS = [
    PresetField("embedding_dim", int, "word-embedding size E (also the size of the projected image)"),
    PresetField("hidden", int, "LSTM hidden size H"),
    PresetField("dropout", float, "dropout on the LSTM's inputs and outputs"),
    PresetField("batch_size", int, "training minibatch size (captions)"),
    PresetField("epochs", int, "training epochs"),
    PresetField("clip", float, "max L2 norm of the gradient (mean loss per token); 0 = off"),
    *SCHEDULE_FIELDS,
]


@dataclass(frozen=True, kw_only=True)
class CaptionConfig(RunConfig):
    """An image-caption run (`RunConfig` and these; num_data = training target tokens; layers = 1).

    `data` is {"kind": "synthetic", "seed", and the SYNTHETIC_DEFAULTS fields} or {"kind": "files",
    "captions", "features" (absolute paths), "min_count"}.
    """

    embedding_dim: int
    #: Training captions are cut to this many words (their <eos> kept).
    max_train_words: int
    #: Decoding: beam size (1 = greedy) and the longest caption generated (words).
    beam: int
    max_caption_words: int
    #: Parameter samples kept for decoding (the newest), in samples_dir/METHOD if set, else in memory.
    max_samples: int
    samples_dir: str | None
    #: Independent chains per method (seeds seed .. seed + chains - 1), their samples pooled.
    chains: int = 1

    POSITIVE_INTS: ClassVar[tuple[str, ...]] = (
        *RunConfig.POSITIVE_INTS, "embedding_dim", "max_train_words", "beam", "max_caption_words", "max_samples",
        "chains",
    )  # fmt: skip

    def check(self) -> None:
        super().check()
        need(self.layers == 1, f"the caption model has one LSTM layer, got layers={self.layers}")
        data = self.data
        check_data_part(data, _DATA_FIELDS)
        if data["kind"] == "synthetic":
            for name in ("num_train", "num_valid", "num_test"):
                need(data[name] >= 1, f"--synthetic-{name[4:]} must be >= 1, got {data[name]}")
            need(data["image_size"] >= 16, f"--synthetic-image-size must be >= 16, got {data['image_size']}")
        else:
            need(data["min_count"] >= 1, f"--min-count must be >= 1, got {data['min_count']}")


# ---------------------------------------------------------------------------------------------------
# options


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m sgmcmc_fused.train caption``."""
    data = p.add_argument_group(
        "data (default: the embedded synthetic scenes)",
        "Captions in the Karpathy split JSON (Flickr8k, Flickr30k, COCO: images[].filename, split, "
        "sentences[].tokens) and one feature row per image, in the JSON's order (caption-features makes them).",
    )
    data.add_argument("--captions", metavar="JSON", help="dataset_flickr8k.json or the like")
    data.add_argument("--features", metavar="FILE", help="image features, .safetensors or .npy, [images, F]")
    data.add_argument(
        "--min-count", type=int, default=5, help="words seen fewer times in training captions map to <unk> (default 5)"
    )
    data.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic scenes (default 0)")
    syn = p.add_argument_group("synthetic scenes (no --captions)")
    for name, help_text in (("train", "training images"), ("valid", "validation images"), ("test", "test images"),
                            ("image_size", "image side (pixels)")):  # fmt: skip
        key = name if name == "image_size" else "num_" + name
        syn.add_argument(
            "--synthetic-" + name.replace("_", "-"), dest="synthetic_" + key, type=int,
            default=SYNTHETIC_DEFAULTS[key], help=f"{help_text} (default %(default)s)",
        )  # fmt: skip

    model = p.add_argument_group("model and schedule (defaults from --preset)")
    model.add_argument("--preset", choices=sorted(PRESETS), help="default: tiny for the scenes, paper for files")
    add_preset_arguments(model, PRESET_FIELDS, PRESETS)
    add_dropconnect_arguments(model, "LSTM matrices masked by DropConnect")
    model.add_argument("--max-train-words", type=int, default=20, help="cut training captions to N words (default 20)")

    meth = p.add_argument_group("methods")
    add_method_arguments(meth, datum="caption token", temperature=DEFAULT_TEMPERATURE,
                         lr_defaults="rmsprop/psgld 1e-3 (tiny preset 3e-3), sgd/sgld 0.1")  # fmt: skip

    dec = p.add_argument_group("decoding with the posterior")
    dec.add_argument("--beam", type=int, default=3, help="beam size; 1 = greedy (default 3)")
    dec.add_argument("--max-caption-words", type=int, default=16, help="longest caption generated (default 16)")
    dec.add_argument(
        "--max-samples", type=int, default=20,
        help="samples kept (the newest) and averaged when decoding (default 20); perplexity averages take every one",
    )  # fmt: skip
    dec.add_argument("--samples-dir", metavar="DIR", help="keep the samples on disk in DIR/METHOD instead of memory")
    add_chains_argument(meth)

    run = add_run_arguments(p, default_out="runs/caption-<data>-<time>")
    run.add_argument("--eval-batch-size", type=int, default=100, help="images per batch when evaluating (default 100)")
    run.add_argument(
        "--show", type=int, default=3, metavar="N",
        help="print, for N test images, the references, the model average's caption and a few single samples' "
        "(default 3; 0: none)",
    )  # fmt: skip


#: The fields of each kind of data part (a saved config.json may have been edited by hand).
_DATA_FIELDS: dict[str, dict[str, DataField]] = {
    "synthetic": {"seed": INTEGER, **dict.fromkeys(("num_train", "num_valid", "num_test", "image_size"), INTEGER),
                  **dict.fromkeys(("arch", "stages", "feature_image_size"), ANY)},
    "files": {"captions": PATH, "features": PATH, "min_count": INTEGER},
}  # fmt: skip


def data_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The data part of the configuration (paths made absolute for --resume)."""
    if args.captions is None:
        if args.features is not None:
            raise ConfigError("--features needs --captions (the synthetic scenes compute their own)")
        spec = {"kind": "synthetic", "seed": args.data_seed, **SYNTHETIC_DEFAULTS}
        for key in ("num_train", "num_valid", "num_test", "image_size"):
            spec[key] = getattr(args, "synthetic_" + key)
        return spec
    if args.features is None:
        raise ConfigError("--captions needs --features (python -m sgmcmc_fused.train caption-features makes them)")
    return {"kind": "files", "captions": os.path.abspath(args.captions), "features": os.path.abspath(args.features),
            "min_count": args.min_count}  # fmt: skip


def resolve_config(args: argparse.Namespace) -> CaptionConfig:
    """The configuration of a new run: the preset's fields, overridden by the options given.

    Raises:
        ConfigError: a value out of range or a malformed option.
    """
    data = data_spec(args)
    preset = args.preset or DEFAULT_PRESET[data["kind"]]
    methods = parse_methods(args.methods)
    lr = learning_rates(args.lr, methods, sgd_lr=PRESETS[preset]["sgd_lr"], rms_lr=PRESETS[preset]["rms_lr"])
    return CaptionConfig(
        preset=preset, data=data, methods=methods, lr=lr, **preset_values(args, PRESETS[preset], PRESET_FIELDS),
        **shared_options(args), layers=1, max_train_words=args.max_train_words, beam=args.beam,
        max_caption_words=args.max_caption_words, max_samples=args.max_samples,
        samples_dir=os.path.abspath(args.samples_dir) if args.samples_dir else None,
        eval_batch_size=args.eval_batch_size, chains=args.chains,
    )  # fmt: skip
