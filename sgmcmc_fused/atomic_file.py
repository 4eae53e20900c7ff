"""Atomic file writes: readers see the old file or the whole new one, never a part.

The data go to a temporary file in the destination's folder, which is then renamed over the
destination (rename is atomic on POSIX). With ``durable=True`` the file is flushed and fsync'ed before
the rename and the folder after it, so the new file also survives a power cut once the call returns.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "wb", *, durable: bool = True, suffix: str = ".tmp", **open_kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing (`mode` "wb" or "w", `open_kwargs` as for
    `open`); when the block ends normally, rename it over `path`; when it raises, delete it.

    The temporary file is ``.NAME.<random><suffix>`` in path's folder, which is created if missing.
    The finished file has the mode a new file gets under the process's umask (``mkstemp`` would
    leave it 0600).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_folder(path.parent)


def _umask() -> int:
    """The process's umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: some file systems refuse to open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
