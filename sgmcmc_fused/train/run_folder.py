"""Ownership of a run's folder (one command at a time writes into it) and of its samples folder.

A command holds an exclusive ``flock`` on ``FOLDER/.lock`` for its whole life. The kernel releases
the lock when the holder exits, however it exits (SIGKILL, a crash, a power cut of its node), so a
lock left by a dead process is never in the way; the file itself stays, holding the last holder's
process id and host for the message a second command gets. (``flock`` is local to a host on some
network file systems: two hosts writing into one shared folder are not detected there.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

from .options import ConfigError
from .runlog import write_json

LOCK_NAME = ".lock"


class RunFolder:
    """The folder of one run, owned by this process between `acquire` and `release`.

    Args:
        path: the folder (created by `acquire` if missing).
        option: the option that named it, for messages (``--out``, ``--resume``).
    """

    def __init__(self, path: str | os.PathLike, option: str = "--out"):
        self.path = Path(path)
        self.option = option
        self._fd: int | None = None
        #: What `acquire` made, so that `discard` removes exactly that: the folder, the lock file.
        self._made_folder = self._made_lock = False
        #: What `discard` undoes besides (claims the run made outside its folder, `undo_on_discard`).
        self._undo: list[Callable[[], None]] = []

    def acquire(self) -> None:
        """Create the folder if needed and take its lock.

        Raises:
            ConfigError: another process holds the folder (naming its process id), or the folder
                cannot be made or written (a file of that name, no permission).
        """
        try:
            made_folder = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
            made_lock = not (self.path / LOCK_NAME).exists()
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise ConfigError(f"{self.option} {self.path}: cannot use it as a run folder ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            os.close(fd)
            who = f"process {holder[0]}" + (f" on {holder[1]}" if len(holder) > 1 else "") if holder else "a process"
            raise ConfigError(
                f"{self.option} {self.path} is in use by {who}, which is writing a run there: wait for it to "
                "finish, or choose another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        self._made_folder, self._made_lock = made_folder, made_lock

    def release(self) -> None:
        """Give the folder up (the lock file stays: removing it would race with a new holder)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Give the folder up and remove what `acquire` made (the lock file; the folder itself if
        nothing else is in it): for a command refused or failed before its run began, so that it
        leaves no trace (no lock file in a folder of other files, no empty run folder). Removing the
        lock file while holding it is safe: no process waits for it (`acquire` does not block)."""
        while self._undo:
            self._undo.pop()()
        if self._fd is not None and self._made_lock:
            (self.path / LOCK_NAME).unlink(missing_ok=True)
            if self._made_folder:
                with contextlib.suppress(OSError):  # not empty: a file written meanwhile stays
                    self.path.rmdir()
        self.release()

    def undo_on_discard(self, undo: Callable[[], None] | None) -> None:
        """Have `discard` call `undo` (if not None): a claim the run made outside its folder."""
        if undo is not None:
            self._undo.append(undo)

    def foreign_entries(self) -> list[str]:
        """The names in the folder other than the lock file, sorted."""
        return sorted(p.name for p in self.path.iterdir() if p.name != LOCK_NAME)


def chain_dir(out: Path, method: str, k: int) -> Path:
    """The folder of chain `k` of `method` in the run folder `out`."""
    return Path(out) / method / f"chain-{k}"


#: The file in a --samples-dir that names the run it belongs to.
SAMPLES_OWNER = "run.json"


def claim_samples_dir(folder: Path, out: Path, resumed: bool) -> Callable[[], None] | None:
    """Make `folder` (--samples-dir) the samples folder of the run in `out`, or refuse it.

    A samples folder belongs to one run: `SAMPLES_OWNER` records the run's folder. Another run's
    folder is refused; so is a non-empty folder that names no run, for a new run (a run saved
    before the record existed claims its own folder when it resumes). A resumed run whose recorded
    folder holds no run any more was moved there from it, and takes the samples folder along. A
    resumed run whose samples folder is gone is refused: a new, empty one would split its samples
    between two folders.

    Returns:
        for a new run, what undoes the claim (removes the record, and the folder if the claim made
        it and it is still empty): a run refused before it began leaves no claim behind.
    Raises:
        ConfigError: the folder is another run's, or not empty, or gone, or cannot be written.
    """
    owner_file = folder / SAMPLES_OWNER
    me = str(out.resolve())
    try:
        if owner_file.is_file():
            owner = json.loads(owner_file.read_text()).get("run")
            moved = resumed and isinstance(owner, str) and not (Path(owner) / "config.json").exists()
            if owner != me and moved:  # the run's folder was moved or renamed: the samples follow it
                write_json(owner_file, {"run": me})
            elif owner != me:
                raise ConfigError(
                    f"--samples-dir {folder} holds the samples of the run in {owner}: give each run its own "
                    "samples folder"
                )
            return None
        if resumed and not folder.is_dir():
            raise ConfigError(
                f"the run's --samples-dir {folder} is gone (moved along with the run's folder?): put it back there, "
                "or create it empty to go on without the samples it held"
            )
        if not resumed and folder.is_dir() and any(folder.iterdir()):
            raise ConfigError(f"--samples-dir {folder} is not empty and belongs to no run: give a new or empty folder")
        made = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        write_json(owner_file, {"run": me})
    except ConfigError:
        raise
    except OSError as e:
        raise ConfigError(f"--samples-dir {folder}: {e.strerror or e}") from None
    except (ValueError, AttributeError):
        raise ConfigError(f"--samples-dir {folder}: {owner_file} is damaged (not a JSON object)") from None
    if resumed:
        return None

    def undo() -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if json.loads(owner_file.read_text()).get("run") == me:  # still this run's claim
                owner_file.unlink()
        if made:
            with contextlib.suppress(OSError):  # not empty: a file written meanwhile stays
                folder.rmdir()

    return undo
