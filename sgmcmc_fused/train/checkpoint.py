"""Checkpoints: atomic writes, a kept previous checkpoint, checksums and safe loads.

A checkpoint is written to a temporary file in the same folder, flushed and fsync'ed, then renamed over
the old one (rename is atomic on POSIX), so a crash or SIGKILL while saving leaves the previous
checkpoint intact. `write_checkpoint` also keeps the checkpoint it replaces as ``NAME.prev`` (a hard
link made before the rename, so ``NAME`` itself never goes missing), and stores a SHA-256 digest of
the content: torch's zip reader does not verify its CRCs, so without the digest a flipped byte in a
tensor would load silently. A checkpoint is read back with ``torch.load(weights_only=True)``: only
tensors and plain containers of numbers and strings are accepted, never arbitrary pickled objects.
"""

from __future__ import annotations

import glob
import hashlib
import os
import warnings
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import torch

from ..atomic_file import atomic_write
from .options import ConfigError


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupted or of another format."""


#: Key of the content digest in a checkpoint written by `write_checkpoint`.
DIGEST_KEY = "content_sha256"


def previous_path(path: str | os.PathLike) -> Path:
    """Where `write_checkpoint` keeps the checkpoint that `path` replaced: ``path`` + ``.prev``."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def content_digest(obj: Any) -> str:
    """SHA-256 (hex) of a checkpoint's content: dict keys, containers, numbers, strings and tensors
    (dtype, shape and bytes), walked in a fixed order. Independent of torch's file format."""
    h = hashlib.sha256()
    _digest_into(h, obj)
    return h.hexdigest()


def _digest_into(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            _digest_into(h, k)
            _digest_into(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__[0]}{len(obj)}".encode())
        for v in obj:
            _digest_into(h, v)
    else:  # numbers, strings, bools, None, torch.Size/dtype: their repr is exact
        h.update(f"V{type(obj).__name__}:{obj!r};".encode())


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove what `write_checkpoint` of `path` leaves when killed mid-write: the partial new file
    (``.NAME.*.tmp``) and the link to the previous one (``.NAME.prev.PID.tmp``). Call it only while
    holding the run folder (no other writer). Returns the files removed."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def write_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write `state` (a dict) to `path` with its content digest, atomically, keeping the checkpoint it
    replaces as `previous_path(path)`."""
    path = Path(path)
    if DIGEST_KEY in state:
        raise ValueError(f"{DIGEST_KEY!r} is reserved for the checkpoint's digest")
    if path.is_file():
        # Link the current checkpoint under a temporary name, then rename that over NAME.prev: both
        # steps are atomic, and NAME stays in place until atomic_write renames the new one over it.
        prev = previous_path(path)
        tmp_link = prev.with_name(f".{prev.name}.{os.getpid()}.tmp")
        try:
            os.unlink(tmp_link)
        except FileNotFoundError:
            pass
        os.link(path, tmp_link)
        os.replace(tmp_link, prev)
    try:
        with atomic_write(path) as f:
            torch.save({**state, DIGEST_KEY: content_digest(state)}, f)
    except (OSError, RuntimeError) as e:
        # torch.save reports a full disk as a RuntimeError of its zip writer, with the OSError
        # (ENOSPC, EDQUOT, EIO) as its context: name the OSError and what the run folder still holds.
        cause = next((c for c in _exception_chain(e) if isinstance(c, OSError)), None)
        if cause is None:
            raise
        kept = f"{path} is the last checkpoint, whole" if path.is_file() else "no checkpoint was written"
        raise CheckpointError(
            f"{path}: cannot write the checkpoint ({cause.strerror or cause}); {kept}. Free space (or fix the "
            "folder) and continue the run with --resume"
        ) from e


def _exception_chain(e: BaseException) -> Iterator[BaseException]:
    """`e`, then its causes and contexts (what "During handling ..." tracebacks show), each once."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def load_checkpoint(path: str | os.PathLike, expected_format: str | None = None) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` onto the CPU.

    The content is verified against the digest `write_checkpoint` stored, which is removed from the
    returned dict.

    Raises:
        CheckpointError: the file is missing, unreadable (truncated, corrupted, not a torch file), not a
            dict, fails its digest, or its ``"format"`` entry differs from `expected_format`. When a
            readable previous checkpoint exists beside it, the message says how to continue from that.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/corrupted zip archives
        raise CheckpointError(
            f"cannot read checkpoint {path} (truncated or corrupted?): {e}{_previous_hint(path)}"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    if DIGEST_KEY not in obj:
        raise CheckpointError(f"checkpoint {path} has no content digest (not written by write_checkpoint)")
    stored = obj.pop(DIGEST_KEY)
    if content_digest(obj) != stored:
        raise CheckpointError(
            f"checkpoint {path} is corrupted: its content does not match its SHA-256 digest{_previous_hint(path)}"
        )
    if expected_format is not None and obj.get("format") != expected_format:
        raise CheckpointError(f"checkpoint {path} has format {obj.get('format')!r}, expected {expected_format!r}")
    return obj


def _previous_hint(path: Path) -> str:
    prev = previous_path(path)
    if not prev.is_file():
        return ""
    try:
        load_checkpoint(prev)
    except CheckpointError:
        return f"; the previous checkpoint {prev} is damaged too"
    return (
        f"; the previous checkpoint {prev} is intact (one checkpoint older): to continue from it, "
        f"replace {path.name} by it (mv {prev} {path}) and resume again"
    )


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
        # CPU kernels split their reductions by thread, so the thread count is part of what fixes the
        # floating-point result; a resume under another count is checked by `warn_if_threads_changed`.
        "cpu_threads": torch.get_num_threads(),
    }


def warn_if_threads_changed(ck: dict[str, Any], device: torch.device, label: str) -> None:
    """Warn (RuntimeWarning) when a CPU run resumes under another torch thread count than it was
    checkpointed with: the result is then close to, but not bitwise equal to, the uninterrupted run's."""
    saved = ck.get("cpu_threads")
    now = torch.get_num_threads()
    if device.type != "cpu" or saved is None or int(saved) == now:
        return
    warnings.warn(
        f"{label}: resumed with {now} CPU threads, checkpointed with {saved}; pass --threads {saved} for a "
        "result bitwise equal to an uninterrupted run",
        RuntimeWarning,
        stacklevel=3,
    )


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
