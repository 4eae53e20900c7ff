"""What a training command needs around its loop, shared by ``lm`` and ``classify``: the device it runs
on, its messages, Ctrl-C, and the exception that ends a run early after a checkpoint."""

from __future__ import annotations

import signal
import sys

import torch
from tqdm.auto import tqdm

from .options import ConfigError


class Stop(Exception):
    """Training stopped before the end (--stop-after-steps or Ctrl-C), after a checkpoint.

    `status` is the command's exit status: 0 for a planned stop, 130 for an interrupt.
    """

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def resolve_device(spec: str) -> torch.device:
    """The device named by --device: ``cpu``, ``cuda``, ``cuda:N``, or ``auto`` (CUDA when present).

    Raises:
        ConfigError: a malformed name, or CUDA asked for where it is not available.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"--device {spec!r}: expected cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}: CUDA is not available here")
    return device


class Printer:
    """Progress messages to stdout: all of them, or with `quiet` only the forced ones; none at all on
    a rank other than 0 of a distributed run (`silent`)."""

    def __init__(self, quiet: bool, silent: bool = False):
        self.quiet, self.silent = quiet, silent

    def __call__(self, message: str, force: bool = False) -> None:
        if not self.silent and (force or not self.quiet):
            # through tqdm, so that a message does not tear an active progress bar
            tqdm.write(message, file=sys.stdout)


class InterruptFlag:
    """Within the block, the first Ctrl-C (SIGINT) or SIGTERM (what cluster schedulers send before they
    kill a job) sets a flag: the training loop checkpoints at the next step boundary and stops, with
    exit status 128 + the signal's number. A second signal stops the process at once, with the status
    of that signal and no traceback. A no-op outside the main thread."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def status(self) -> int:
        """The exit status of a run stopped by the signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + (self.signum or signal.SIGINT)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGINT).name

    def _handler(self, signum, _frame):
        if self.signum is not None:
            # Unwinds at once (BaseException: no `except Exception` holds it); files are written
            # atomically, so the last checkpoint stays whole.
            sys.stderr.write(
                f"{signal.Signals(signum).name} again: stopping now, without a checkpoint; the last one stays\n"
            )
            raise SystemExit(128 + signum)
        self.signum = signum

    def __enter__(self):
        try:
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handler)
        except ValueError:  # not the main thread
            self._previous = {}
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        return False
