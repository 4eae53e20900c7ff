"""Language-modelling corpora: vocabulary, word (PTB) and character loaders, minibatch streams.

Symbols: N tokens in a split, B batch size (parallel streams), T = N // B steps per stream,
t <= bptt the length of one truncated-BPTT window. Token ids are int64 (torch.long).

Word level (PTB format): one sentence a line, whitespace-separated tokens, one ``<eos>`` appended
per line; the vocabulary comes from the training file, and words of the valid/test files that it
lacks become ``<unk>`` (counted in a warning). Character level: any text, each character a token,
split contiguously into train/valid/test (90/5/5 by default).

Text files are read as UTF-8 (a leading BOM is ignored, and so is one at the start of a line: files
joined with ``cat`` keep theirs); a line that is not valid UTF-8 is read as Windows-1252 instead
(Latin-1 for the five bytes it leaves undefined, so this never fails) with a warning that counts
such lines and names the first. Files with a UTF-16 or UTF-32 BOM are decoded as such; gzip, bzip2
and xz files are decompressed; zip and zstd archives are refused. Lines end with LF, CRLF or a lone
CR, as Python's universal newlines read them. Malformed content raises ValueError naming
``file:line``.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "EOS",
    "UNK",
    "Corpus",
    "Vocabulary",
    "batchify",
    "check_no_control",
    "decode_line",
    "load_char_corpus",
    "load_word_corpus",
    "load_word_corpus_dir",
    "num_random_batches",
    "random_batches",
    "read_text",
    "successive_batches",
]

EOS = "<eos>"
UNK = "<unk>"

# C0 control characters that never occur in text (tab, newline, vertical tab, form feed and
# carriage return do); finding one means the file is binary or corrupted.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f]")


#: Line breaks as Python's universal newlines read them: CRLF (Windows), LF, and a lone CR (classic
#: Mac OS). Not str.splitlines' others (\x85, \x1c..): in a text file they are characters.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LINE_BREAK_BYTES = re.compile(rb"\r\n|\r|\n")


def _line_number(text: str | bytes, offset: int) -> int:
    """The 1-based line of position `offset` in `text`, lines ending as `_lines` ends them."""
    pattern = _LINE_BREAK_BYTES if isinstance(text, bytes) else _LINE_BREAK
    return len(pattern.findall(text, 0, offset)) + 1


def _latin1_for_undefined(error: UnicodeDecodeError) -> tuple[str, int]:
    """Codec error handler: the bytes Windows-1252 leaves undefined (0x81, 0x8d, 0x8f, 0x90, 0x9d)
    as the Latin-1 characters of the same code, so that a fallback decode never fails."""
    return error.object[error.start : error.end].decode("latin-1"), error.end


codecs.register_error("sgmcmc_fused.latin1", _latin1_for_undefined)


def decode_line(raw: bytes) -> tuple[str, bool]:
    """(the line as str, whether it fell back): UTF-8, else Windows-1252.

    Text that is not UTF-8 is in practice Windows-1252 (the MR review files, text saved on Windows):
    it is Latin-1 except in 0x80..0x9f, where Latin-1 has invisible C1 controls and Windows-1252 the
    curly quotes, dashes and ellipsis such text holds. Decoding line by line keeps the UTF-8 lines of
    a file with a few stray bytes intact.
    """
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="sgmcmc_fused.latin1"), True


#: Leading bytes of compressed files: (format, decompress).
_COMPRESSED = {b"\x1f\x8b": ("gzip", gzip.decompress), b"BZh": ("bzip2", bz2.decompress),
               b"\xfd7zXZ\x00": ("xz", lzma.decompress)}  # fmt: skip
#: Leading bytes of archives read_text refuses (several files, or no decoder in the standard library).
_ARCHIVES = {b"PK\x03\x04": "a zip archive", b"\x28\xb5\x2f\xfd": "zstd-compressed"}
#: BOMs of the wide Unicode encodings, UTF-32 first (its little-endian BOM begins with UTF-16's).
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
              (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))  # fmt: skip
#: A BOM at the start of a line after the first (files joined with ``cat``).
_INNER_BOM = re.compile("(?<=[\r\n])\ufeff")


def _file_bytes(path: str | os.PathLike) -> bytes:
    """The file's bytes, decompressed if it is a gzip, bzip2 or xz file (known by its first bytes)."""
    data = Path(path).read_bytes()
    for magic, name in _ARCHIVES.items():
        if data.startswith(magic):
            raise ValueError(f"{path}: the file is {name}, not text; extract the text file from it first")
    for magic, (name, decompress) in _COMPRESSED.items():
        if data.startswith(magic) and (name != "bzip2" or data[4:10] == b"1AY&SY"):
            try:
                return decompress(data)
            except (OSError, EOFError, lzma.LZMAError) as e:
                raise ValueError(f"{path}: a damaged or truncated {name} file ({e})") from None
    return data


def read_text(path: str | os.PathLike) -> str:
    """The whole file as str: UTF-8, line by line Windows-1252 where it is not (with a warning).

    The warning names the file, the line of the first byte that is not UTF-8, and how many lines
    fell back (`decode_line`). BOMs are dropped: a UTF-8 one at the start of the file or of a line;
    a UTF-16 or UTF-32 one decides the encoding. gzip, bzip2 and xz files are decompressed first.

    Raises:
        FileNotFoundError / IsADirectoryError as ``open`` does; ValueError for a zip or zstd
        archive, a damaged compressed file, or a UTF-16/32 file that does not decode.
    """
    data = _file_bytes(path)
    for bom, encoding in _WIDE_BOMS:
        if data.startswith(bom):
            try:
                return _INNER_BOM.sub("", data.decode(encoding).removeprefix("\ufeff"))
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{path}: starts with a {encoding.upper()} BOM but does not decode as it ({e.reason})"
                ) from None
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = bom + e.start
        decoded = [decode_line(raw) for raw in data[bom:].splitlines(keepends=True)]
        fell_back = sum(bad for _, bad in decoded)
        warnings.warn(
            f"{path}:{_line_number(data, offset)}: not valid UTF-8 (byte 0x{data[offset]:02x} at offset {offset}); "
            f"read {fell_back} such line(s) of {len(decoded)} as Windows-1252 instead",
            UnicodeWarning,
            stacklevel=2,
        )
        text = "".join(line for line, _ in decoded)
    return _INNER_BOM.sub("", text)


def _lines(text: str) -> list[str]:
    """The lines of `text` without their line breaks (CRLF, LF or a lone CR: `_LINE_BREAK`), and no
    empty entry after a final line break."""
    lines = _LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def check_no_control(path: str | os.PathLike, text: str) -> None:
    """Raise ValueError ``file:line`` at the first C0 control character other than whitespace."""
    m = _CONTROL.search(text)
    if m is not None:
        line = _line_number(text, m.start())
        col = m.start() - max(text.rfind("\n", 0, m.start()), text.rfind("\r", 0, m.start()))
        raise ValueError(
            f"{path}:{line}: control character {m.group()!r} in the text (column {col}); "
            "is this a binary or corrupted file?"
        )


class Vocabulary:
    """A bijection between tokens (str) and ids 0..len-1, with an optional unknown token.

    Build one with `Vocabulary.build`, or pass the id-ordered token list directly:
    ``Vocabulary(["a", "b", "<unk>"], unk="<unk>")``.

    Attributes:
        itos: list[str], token of each id.
        stoi: dict[str, int], id of each token.
        unk: the unknown token (a member of itos) or None; `unk_id` its id or None.
    """

    def __init__(self, itos: Sequence[str], unk: str | None = None):
        self.itos: list[str] = list(itos)
        self.stoi: dict[str, int] = {s: i for i, s in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            dup = next(s for s, c in Counter(self.itos).items() if c > 1)
            raise ValueError(f"duplicate token {dup!r} in the vocabulary")
        if unk is not None and unk not in self.stoi:
            raise ValueError(f"unknown token {unk!r} is not in the vocabulary")
        self.unk = unk

    @classmethod
    def build(cls, tokens: Iterable[str], unk: str | None = UNK, min_count: int = 1) -> Vocabulary:
        """Vocabulary of `tokens`: ids by descending count, ties in lexicographic order.

        Tokens seen fewer than `min_count` times are left out (they will encode as `unk`). The
        unknown token, if given, is always included; its count is its own occurrences plus those
        of the left-out tokens (the count it will have once they are encoded), so it ranks where
        it would in the encoded data; with a count of 0 it comes last.
        """
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts = Counter(tokens)
        kept = {s: c for s, c in counts.items() if c >= min_count}
        if unk is not None:
            dropped = sum(c for s, c in counts.items() if c < min_count and s != unk)
            kept[unk] = counts.get(unk, 0) + dropped
        # (-count, token) sorts by descending count, then lexicographically; a zero-count unk
        # sorts after every seen token.
        itos = sorted(kept, key=lambda s: (-kept[s], s))
        return cls(itos, unk=unk)

    @property
    def unk_id(self) -> int | None:
        return None if self.unk is None else self.stoi[self.unk]

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos and self.unk == other.unk

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self.itos[:5])
        return f"Vocabulary(size={len(self)}, unk={self.unk!r}, first=[{head}{', ...' if len(self) > 5 else ''}])"

    def encode_counting(self, tokens: Sequence[str], *, source: str = "") -> tuple[torch.Tensor, int]:
        """`encode` that also returns how many tokens were not in the vocabulary (mapped to unk)."""
        stoi = self.stoi
        ids = [stoi.get(s, -1) for s in tokens]
        unknown = ids.count(-1)
        if unknown:
            if self.unk is None:
                pos = ids.index(-1)
                where = f" in {source}" if source else ""
                raise ValueError(
                    f"token {tokens[pos]!r} at position {pos}{where} is not in the vocabulary, "
                    "which has no unknown token"
                )
            u = self.stoi[self.unk]
            ids = [u if i < 0 else i for i in ids]
        return torch.tensor(ids, dtype=torch.long), unknown

    def encode(self, tokens: Sequence[str], *, source: str = "") -> torch.Tensor:
        """Ids of `tokens` as a LongTensor [len(tokens)]; unknown tokens map to `unk`.

        Raises ValueError naming the token, its position (0-based) and `source` (a file name or
        other description for the message) if a token is unknown and there is no unk.
        """
        return self.encode_counting(tokens, source=source)[0]

    def decode(self, ids: Iterable[int] | torch.Tensor) -> list[str]:
        """Tokens of `ids` (a 1-D LongTensor or any iterable of ints)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        itos, n = self.itos, len(self.itos)
        out = []
        for i in ids:
            if not 0 <= i < n:
                raise IndexError(f"id {i} is out of range for a vocabulary of {n} tokens")
            out.append(itos[i])
        return out

    def state_dict(self) -> dict:
        """{"itos": list[str], "unk": str | None}: JSON-serialisable, loadable with weights_only=True."""
        return {"itos": list(self.itos), "unk": self.unk}

    @classmethod
    def from_state_dict(cls, state: dict) -> Vocabulary:
        return cls(state["itos"], unk=state["unk"])


@dataclass
class Corpus:
    """Three encoded splits over one vocabulary.

    Attributes:
        train, valid, test: LongTensor [N_split] of token ids.
        vocab: the Vocabulary.
        level: "word" or "char".
    """

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    vocab: Vocabulary
    level: str

    @property
    def num_tokens(self) -> int:
        """Tokens in the training split (the N of the Langevin prior scaling)."""
        return int(self.train.numel())


def _word_tokens(path: str | os.PathLike) -> list[str]:
    """Tokens of a PTB-format file: each line's whitespace-split tokens, then "<eos>"."""
    text = read_text(path)
    check_no_control(path, text)
    tokens: list[str] = []
    for lineno, line in enumerate(_lines(text), start=1):
        words = line.split()
        if EOS in words:
            raise ValueError(
                f"{path}:{lineno}: the line contains {EOS!r} (column {line.index(EOS) + 1}); the loader "
                f"appends one {EOS!r} per line itself, so the file must not contain it"
            )
        tokens.extend(words)
        tokens.append(EOS)
    if not tokens:
        raise ValueError(f"{path}: the file is empty (no lines)")
    if all(t == EOS for t in tokens):
        raise ValueError(f"{path}: no words, only {len(tokens)} blank line(s)")
    return tokens


def load_word_corpus(
    train: str | os.PathLike, valid: str | os.PathLike, test: str | os.PathLike, *, min_count: int = 1
) -> Corpus:
    """Word-level corpus from three PTB-format files (one sentence a line, "<eos>" appended).

    The vocabulary is built from `train` (`Vocabulary.build`, so ids are by descending training
    count) and always contains "<unk>" (added with count 0 when the training text lacks it).
    Words of `valid`/`test` not in it map to "<unk>"; a `warnings.warn` per file gives how many.

    Raises:
        ValueError ``file:line`` for a control character (binary file) or a literal "<eos>" in a
        line, and for a file that is empty or holds blank lines only.
    """
    train_tokens = _word_tokens(train)
    vocab = Vocabulary.build(train_tokens, unk=UNK, min_count=min_count)
    train_ids, _ = vocab.encode_counting(train_tokens, source=str(train))
    splits = [train_ids]
    for path in (valid, test):
        tokens = _word_tokens(path)
        ids, unknown = vocab.encode_counting(tokens, source=str(path))
        if unknown:
            types = len({s for s in tokens if s not in vocab.stoi})
            warnings.warn(
                f"{path}: {unknown} of {len(tokens)} tokens ({types} distinct words) are not in the training "
                f"vocabulary of {train} and were mapped to {UNK!r}",
                stacklevel=2,
            )
        splits.append(ids)
    return Corpus(splits[0], splits[1], splits[2], vocab, "word")


#: The split files of a corpus folder: PREFIX{train,valid,test}SUFFIX (PTB's ``ptb.train.txt``,
#: WikiText's ``wiki.train.tokens``, or plain ``train.txt``).
_SPLIT_FILE = re.compile(r"(.*?)train(\.txt|\.tokens)")


def load_word_corpus_dir(directory: str | os.PathLike, *, min_count: int = 1) -> Corpus:
    """`load_word_corpus` on the ``PREFIX{train,valid,test}.txt`` (or ``.tokens``) files in `directory`.

    ``ptb.train.txt`` and friends are taken first, then ``train.txt``; otherwise the folder must
    hold exactly one such triple (``wiki.train.tokens``, ``wiki.valid.tokens``, ``wiki.test.tokens``).
    A triple with one split missing (two of its files there), or with a split that is not a file (a
    folder, a broken link), is an error, also beside a complete triple: the corpus the folder was
    meant to hold is incomplete, and another would be trained on in its place.
    """
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such directory")
    triples = [("ptb.", ".txt"), ("", ".txt")]
    triples += sorted({m.groups() for p in d.iterdir() if (m := _SPLIT_FILE.fullmatch(p.name))} - set(triples))
    candidates = [[d / f"{prefix}{s}{suffix}" for s in ("train", "valid", "test")] for prefix, suffix in triples]
    for paths in candidates:
        there = [p for p in paths if p.exists() or p.is_symlink()]
        if len(there) >= 2 and len(there) < len(paths) or any(not p.is_file() for p in there):
            problems = [f"{p.name} is missing" for p in paths if p not in there]
            problems += [f"{p.name} is {_not_a_file(p)}" for p in there if not p.is_file()]
            raise FileNotFoundError(
                f"{d}: {'; '.join(problems)}, beside {', '.join(p.name for p in paths if p.is_file()) or 'nothing'}: "
                "an incomplete corpus (add the split, or remove the others)"
            )
    complete = [paths for paths in candidates if all(p.is_file() for p in paths)]
    if complete and (len(complete) == 1 or complete[0][0].name in ("ptb.train.txt", "train.txt")):
        return load_word_corpus(*complete[0], min_count=min_count)
    if complete:
        raise FileNotFoundError(
            f"{d}: holds {len(complete)} corpora ({', '.join(p[0].name for p in complete)}); name one by its prefix, "
            f"e.g. {d / complete[0][0].name[: complete[0][0].name.rindex('train')].rstrip('.')}"
        )
    raise FileNotFoundError(
        f"{d}: expected ptb.train.txt, ptb.valid.txt and ptb.test.txt (or train.txt, valid.txt, test.txt, or "
        f"another PREFIX.train.txt triple); found {sorted(p.name for p in d.iterdir())}"
    )


def _not_a_file(path: Path) -> str:
    return "a folder" if path.is_dir() else "a broken link" if path.is_symlink() else "not a regular file"


def load_char_corpus(path: str | os.PathLike, split: tuple[float, float, float] = (0.9, 0.05, 0.05)) -> Corpus:
    """Character-level corpus: every character of the file (newlines included) is a token.

    The text is cut contiguously into train/valid/test with fractions `split` (sizes
    floor(N * split[0]), floor(N * split[1]), the rest). The vocabulary holds every character of
    the whole file (a closed set, so there is no unknown token), ids by descending count over the
    whole text, as char-rnn (Karpathy et al.), whose War and Peace setup the paper follows, builds
    it. Unlike a word vocabulary this leaks nothing a model could exploit: a character that never
    occurs in train only gets a row that training pushes towards probability zero. Such
    characters are counted in a warning. CRLF and lone-CR line breaks become one newline token.
    Control characters other than NUL are allowed (any text is a corpus). Files are read with
    `read_text` (non-UTF-8 lines as Windows-1252, with a warning).

    Raises:
        ValueError if `split` is not three positive fractions summing to 1, if the text holds a NUL
        character (a binary file), or if the text is empty or too short to give every split at
        least 2 characters (one input and one target).
    """
    if len(split) != 3 or any(not s > 0 for s in split) or abs(sum(split) - 1.0) > 1e-6:
        raise ValueError(f"split must be three positive fractions summing to 1 (train, valid, test), got {split}")
    # CRLF and a lone CR end a line as LF does: one newline token, as in the same text saved on Unix.
    text = _LINE_BREAK.sub("\n", read_text(path))
    if not text:
        raise ValueError(f"{path}: the file is empty; a character-level corpus needs text")
    nul = text.find("\0")
    if nul >= 0:  # other control characters occur in real text; NUL only in binary files
        raise ValueError(f"{path}:{_line_number(text, nul)}: a NUL character; is this a binary file?")
    n = len(text)
    n_train, n_valid = int(n * split[0]), int(n * split[1])
    sizes = (n_train, n_valid, n - n_train - n_valid)
    if min(sizes) < 2:
        need = max(2 / s for s in split)
        raise ValueError(
            f"{path}: only {n} characters; the split {split} gives {sizes[0]}/{sizes[1]}/{sizes[2]} characters "
            f"and every part needs at least 2, so the text needs about {int(need) + 1} characters or more"
        )
    vocab = Vocabulary.build(text, unk=None)
    ids = vocab.encode(text, source=str(path))
    train, valid, test = torch.split(ids, list(sizes))
    unseen = sorted(set(text[n_train:]) - set(text[:n_train]))
    if unseen:
        shown = "".join(unseen[:20]) + ("..." if len(unseen) > 20 else "")
        warnings.warn(
            f"{path}: {len(unseen)} character(s) of valid/test never occur in train ({shown!r}); "
            "the model can only give them the probability it learns for unseen symbols",
            stacklevel=2,
        )
    return Corpus(train.clone(), valid.clone(), test.clone(), vocab, "char")


def batchify(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut a token stream [N] into `batch_size` contiguous streams, one per column: [T, B].

    Column b holds data[b*T : (b+1)*T] with T = N // B; the last N - T*B tokens are dropped
    (the classic PTB recipe). Returns a new contiguous tensor of data's dtype and device.
    """
    if data.dim() != 1:
        raise ValueError(f"data must be 1-D [N], got shape {tuple(data.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    t = data.numel() // batch_size
    if t < 2:
        raise ValueError(
            f"{data.numel()} tokens are too few for batch_size {batch_size}: each stream needs at least 2 tokens"
        )
    return data[: t * batch_size].view(batch_size, t).t().contiguous()


def successive_batches(data_tb: torch.Tensor, bptt: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Truncated-BPTT windows over batchified streams, in order: (x [t, B], y [t, B]).

    x = data_tb[i : i+t], y = data_tb[i+1 : i+1+t] for i = 0, bptt, 2*bptt, ...; t = bptt except
    possibly the last window (t = T - 1 - i). Consecutive windows continue each column's stream,
    so a stateful model carries its hidden state from one to the next (detached). x and y are
    views of data_tb.
    """
    if data_tb.dim() != 2:
        raise ValueError(f"data_tb must be [T, B] (see batchify), got shape {tuple(data_tb.shape)}")
    if bptt < 1:
        raise ValueError(f"bptt must be >= 1, got {bptt}")
    t_total = data_tb.shape[0]
    for i in range(0, t_total - 1, bptt):
        t = min(bptt, t_total - 1 - i)
        yield data_tb[i : i + t], data_tb[i + 1 : i + 1 + t]


def num_random_batches(num_tokens: int, bptt: int, batch_size: int) -> int:
    """How many batches `random_batches` yields per epoch for a stream of `num_tokens` tokens."""
    return ((num_tokens - 1) // bptt) // batch_size


def random_batches(
    data: torch.Tensor, bptt: int, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled segments: (x [bptt, B], y [bptt, B]) with y the next tokens of x.

    The stream [N] is cut into K = (N - 1) // bptt non-overlapping segments
    x_k = data[k*bptt : (k+1)*bptt], y_k = data[k*bptt + 1 : (k+1)*bptt + 1], so every token after
    the first is a target exactly once per epoch. The segments are shuffled with
    ``torch.randperm(K, generator=generator)`` and grouped B at a time; the last K mod B segments
    of the permutation are dropped (`num_random_batches` batches). Each batch is independent:
    models start it from a zero state. x and y are new tensors on data's device.
    """
    if data.dim() != 1:
        raise ValueError(f"data must be 1-D [N], got shape {tuple(data.shape)}")
    if bptt < 1 or batch_size < 1:
        raise ValueError(f"bptt and batch_size must be >= 1, got {bptt} and {batch_size}")
    k = (data.numel() - 1) // bptt
    nb = k // batch_size
    if nb < 1:
        raise ValueError(f"{data.numel()} tokens give {k} segments of {bptt}, fewer than one batch of {batch_size}")
    perm = torch.randperm(k, generator=generator)
    offsets = torch.arange(bptt + 1)
    for b in range(nb):
        starts = perm[b * batch_size : (b + 1) * batch_size] * bptt
        idx = (starts[None, :] + offsets[:, None]).to(data.device)  # [bptt + 1, B]
        seg = data[idx]
        yield seg[:-1], seg[1:]
