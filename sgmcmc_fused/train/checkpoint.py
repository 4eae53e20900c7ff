"""Checkpoints: atomic writes and safe loads.

A checkpoint is written to a temporary file in the same folder, flushed and fsync'ed, then renamed over
the old one (rename is atomic on POSIX), so a crash or SIGKILL while saving leaves the previous
checkpoint intact. It is read back with ``torch.load(weights_only=True)``: only tensors and plain
containers of numbers and strings are accepted, never arbitrary pickled objects.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


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
