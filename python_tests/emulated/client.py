"""Calls the emulated kernels (emulated_kernels.cpp) from the test process.

The libraries are built with AddressSanitizer, whose runtime must be loaded before
anything else in the process; so they run in a worker process started with it
preloaded (worker.py), and the tests, the eager oracle and pytest itself stay in an
ordinary process. Tensors travel both ways with torch.save, which keeps views
(storage offsets, hence misaligned data pointers) intact.

When a sanitizer stops the worker, the call raises EmulatedKernelCrash with the
report (it names the kernel's source line), and the next call starts a new worker.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tempfile
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from . import build

WORKER = Path(__file__).resolve().parent / "worker.py"
#: Seconds a single call may take before the worker is presumed hung (a kernel
#: whose loop never ends) and killed.
CALL_TIMEOUT = 300.0
_STARTUP_TIMEOUT = 120.0

FORWARD, REVERSE = 0, 1


class EmulatedKernelCrash(AssertionError):
    """The worker died (a sanitizer report, a crash) or hung while running an op."""


class EmulatedKernels:
    """The emulated ops of every built variant, called as ``kernels.call(variant, op, ...)``.

    Arguments are those of the op's schema in emulated_kernels.cpp. Tensor arguments
    are updated in place with the worker's results, so a call reads like the op's own.
    """

    def __init__(self, libraries: dict[str, Path], preload: list[str]):
        self.libraries = libraries
        self.preload = preload
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._log: Path | None = None

    # ---- worker lifetime ---------------------------------------------------------
    def _start(self) -> None:
        parent, child = socket.socketpair()
        fd, log = tempfile.mkstemp(prefix="sgmcmc_emulated_", suffix=".log")
        self._log = Path(log)
        env = dict(os.environ)
        env.pop("TRITON_INTERPRET", None)
        env["LD_PRELOAD"] = " ".join(self.preload)
        # Python itself leaks by design at exit; everything else stops at the first report.
        env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1:abort_on_error=0:symbolize=1"
        env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1"
        with os.fdopen(fd, "w") as stderr:
            self._process = subprocess.Popen(
                [sys.executable, str(WORKER), str(child.fileno()), *map(str, self.libraries.values())],
                pass_fds=(child.fileno(),),
                stdout=stderr,
                stderr=stderr,
                env=env,
            )
        child.close()
        self._conn = Connection(parent.detach())
        if not self._conn.poll(_STARTUP_TIMEOUT):
            self._fail("starting the worker", hung=True)
        try:
            assert self._conn.recv_bytes() == b"ready"
        except (EOFError, OSError):
            self._fail("starting the worker")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = self._conn = None
        if self._log is not None:  # a worker that ended normally leaves nothing to read
            self._log.unlink(missing_ok=True)
            self._log = None

    def _fail(self, what: str, hung: bool = False) -> None:
        assert self._process is not None and self._log is not None
        if hung:
            self._process.kill()
        code = self._process.wait()
        report = self._log.read_text(errors="replace")
        self._process = None
        self._conn = None
        raise EmulatedKernelCrash(
            f"the emulation worker {'hung and was killed' if hung else f'died (exit status {code})'} "
            f"while {what}; its output ({self._log}):\n{report[-12000:]}"
        )

    # ---- calls ---------------------------------------------------------------------
    def call(self, variant: str, op: str, *args: Any, **kwargs: Any) -> Any:
        """Runs op of `variant` ("product" or "small") in the worker and returns its result.

        Raises RuntimeError with the op's message if it raised, EmulatedKernelCrash if
        the worker died or hung.
        """
        if self._process is None:
            self._start()
        assert self._conn is not None
        namespace = build.VARIANTS[variant].namespace
        buffer = io.BytesIO()
        torch.save((namespace, op, list(args), kwargs), buffer)
        try:
            self._conn.send_bytes(buffer.getvalue())
            if not self._conn.poll(CALL_TIMEOUT):
                self._fail(f"running {namespace}.{op}", hung=True)
            answer = self._conn.recv_bytes()
        except (EOFError, OSError):
            self._fail(f"running {namespace}.{op}")
        status, result, args_after = torch.load(io.BytesIO(answer), weights_only=True)
        if status == "error":
            raise RuntimeError(result)
        _copy_back(list(args), args_after)
        return result


def _copy_back(mine: list, theirs: list) -> None:
    """Copies every tensor of the worker's arguments into the caller's (in place)."""
    for a, b in zip(mine, theirs, strict=True):
        if isinstance(a, torch.Tensor):
            a.copy_(b)
        elif isinstance(a, (list, tuple)):
            _copy_back(list(a), list(b))
