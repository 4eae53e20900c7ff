"""The process that runs the emulated kernels, started by client.EmulatedKernels with
the sanitizer runtimes preloaded:

    python worker.py FD LIBRARY...

It loads the op libraries, then answers requests on the socket FD until it closes.
A request is ``torch.save((namespace, op, args, kwargs))``; the answer is
``torch.save(("ok", result, args))`` with the arguments after the call (the ops
work in place), or ``("error", message, None)`` for an exception the op raised.
A sanitizer report ends the process instead, with the report on stderr.
"""

import io
import sys
from multiprocessing.connection import Connection

import torch


def serve(conn: Connection) -> None:
    while True:
        try:
            request = conn.recv_bytes()
        except EOFError:
            return
        namespace, op, args, kwargs = torch.load(io.BytesIO(request), weights_only=True)
        try:
            result = getattr(getattr(torch.ops, namespace), op)(*args, **kwargs)
            answer = ("ok", result, args)
        except Exception as e:  # noqa: BLE001 - every op error goes back to the test
            answer = ("error", f"{type(e).__name__}: {e}", None)
        buffer = io.BytesIO()
        torch.save(answer, buffer)
        conn.send_bytes(buffer.getvalue())


def main() -> None:
    conn = Connection(int(sys.argv[1]))
    for library in sys.argv[2:]:
        torch.ops.load_library(library)
    conn.send_bytes(b"ready")
    serve(conn)


if __name__ == "__main__":
    main()
