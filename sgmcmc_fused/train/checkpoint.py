"""Checkpoints: atomic writes and safe loads.

A checkpoint is written to a temporary file in the same folder, flushed and fsync'ed, then renamed over
the old one (rename is atomic on POSIX), so a crash or SIGKILL while saving leaves the previous
checkpoint intact. It is read back with ``torch.load(weights_only=True)``: only tensors and plain
containers of numbers and strings are accepted, never arbitrary pickled objects.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from .options import ConfigError


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupted or of another format."""


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save `obj` to `path` atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # Make the rename itself durable.
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | os.PathLike, expected_format: str | None = None) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` onto the CPU.

    Raises:
        CheckpointError: the file is missing, unreadable (truncated, corrupted, not a torch file), not a
            dict, or its ``"format"`` entry differs from `expected_format`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/corrupted zip archives
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or corrupted?): {e}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    if expected_format is not None and obj.get("format") != expected_format:
        raise CheckpointError(f"checkpoint {path} has format {obj.get('format')!r}, expected {expected_format!r}")
    return obj


def capture_training_state(
    *, epoch: int, batch_in_epoch: int, step: int, model: Any, optimizer: Any, device: torch.device, epoch_rng: Any
) -> dict[str, Any]:
    """The checkpoint entries every trainer saves: the position (epoch, batch_in_epoch, step), the model
    with its DropConnect LSTM seed and call counter, the optimizer, torch's (and CUDA's) RNG and the
    data-order RNG state at the start of the epoch."""
    return {
        "epoch": epoch,
        "batch_in_epoch": batch_in_epoch,
        "step": step,
        "model": model.state_dict(),
        "lstm_seed": model.lstm.seed,
        "lstm_calls": model.lstm.calls,
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "epoch_rng": epoch_rng,
    }


def restore_training_state(
    ck: dict[str, Any], *, model: Any, optimizer: Any, device: torch.device, nan_policy: str
) -> tuple[int, int, int, Any]:
    """Restore what `capture_training_state` saved into `model`, `optimizer` and the RNGs.

    Returns (epoch, batch_in_epoch, step, epoch_rng).
    """
    model.load_state_dict(ck["model"])
    model.lstm.seed, model.lstm.calls = int(ck["lstm_seed"]), int(ck["lstm_calls"])
    optimizer.load_state_dict(ck["optimizer"])
    optimizer.nan_policy = nan_policy
    torch.set_rng_state(ck["torch_rng"])
    if ck["cuda_rng"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(ck["cuda_rng"], device)
    return int(ck["epoch"]), int(ck["batch_in_epoch"]), int(ck["step"]), ck["epoch_rng"]


def check_same_config(
    path: str | os.PathLike, saved: dict[str, Any], cfg: dict[str, Any], resumable: Collection[str]
) -> None:
    """Check that the configuration `saved` in the checkpoint at `path` equals `cfg` but for the
    `resumable` fields.

    Raises:
        ConfigError: they differ (naming the fields).
    """
    saved = {k: v for k, v in saved.items() if k not in resumable}
    now = {k: v for k, v in cfg.items() if k not in resumable}
    if saved != now:
        diff = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
        raise ConfigError(f"{path} was written with another configuration (differs in {diff})")
