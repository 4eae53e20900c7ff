"""``python -m sgmcmc_fused.train download NAME [NAME ...] [--dest DIR] [--base-url URL]``.

Fetches the public corpora of the paper's experiments (`sgmcmc_fused.data.download.SOURCES`) into DIR
in one folder per set (``ptb/``, ``tinyshakespeare/``, ``sentcls/``; War and Peace in
``warandpeace/``), and prints every file: ``wrote PATH (BYTES bytes; how it was verified)``, or
``kept PATH`` for a file that was already there and passes verification (one that fails is downloaded
again). Every file is checked against its published SHA-256 where one is recorded, else for its format
(`sgmcmc_fused.data.download.verify`), before it is renamed into place: a failed, interrupted or wrong
download leaves no file under the final name. ``--base-url`` replaces the scheme and host of
every URL (a mirror, or a local server in tests).

    python -m sgmcmc_fused.train download ptb trec --dest data
    python -m sgmcmc_fused.train lm --word-corpus data/ptb
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data.download import SOURCES, download


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``download`` subcommand."""
    p = subparsers.add_parser(
        "download", help="fetch PTB, War and Peace, Tiny Shakespeare and the sentence-classification sets",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("names", nargs="+", metavar="NAME", choices=sorted(SOURCES), help=f"{', '.join(sorted(SOURCES))}")
    p.add_argument("--dest", default="data", metavar="DIR", help="destination folder (default: data)")
    p.add_argument(
        "--base-url", metavar="URL", help="fetch every file from URL/<its path> instead of its own host (a mirror)"
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per connection or read (default 60)")
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    """Download each set in turn; a failure prints the URL and the reason and exits with status 1
    (the files of the sets already done, and of the failing set before the failure, are kept)."""
    if not args.timeout > 0:
        args.parser.error(f"--timeout must be > 0, got {args.timeout}")
    dest = Path(args.dest)
    for name in dict.fromkeys(args.names):  # each set once, in the order given
        try:
            download(name, dest, base_url=args.base_url, timeout=args.timeout, report=print)
        except (RuntimeError, OSError) as e:
            print(f"error: {name}: {e}", file=sys.stderr)
            return 1
    return 0
