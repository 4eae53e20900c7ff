"""Caption metrics through the COCO caption evaluation code (pycocoevalcap): BLEU-1..4, METEOR, ROUGE-L
and CIDEr-D of generated captions against reference captions, the references' own (leave-one-out)
agreement, the most-frequent-caption baseline, and a per-image CSV and a results table.

Shapes: N images; image i has K_i >= 1 reference captions and one candidate caption. Scores are
fractions (BLEU, METEOR, ROUGE-L in [0, 1]; CIDEr-D in [0, 10], as pycocoevalcap returns it); the table
prints all of them x100, as papers report them (CIDEr-D 0.95 -> "95.0").

Tokenisation: references and candidates both go through pycocoevalcap's PTB tokenisation (Stanford
CoreNLP 3.4.1's PTBTokenizer with -preserveLines -lowerCase, then dropping pycocoevalcap's PUNCTUATIONS
tokens) when a Java runtime starts, else through `fallback_tokenize`, a pure-Python imitation; the
result names the one used, as scores from the two are not strictly comparable.

Metrics (all pycocoevalcap's classes, so the numbers are the COCO server's):
  * BLEU-n: `Bleu(4)`, the "closest" reference length for the brevity penalty; corpus BLEU from the
    n-gram counts summed over images (not the mean of per-image BLEU). Per-image BLEU is smoothed the
    pycocoevalcap way (1e-15 / 1e-9 added to matches / guesses), so a zero match count gives a tiny
    positive BLEU rather than 0.
  * METEOR: `Meteor` (meteor-1.5.jar, Java, "-l en -norm"); the corpus value is METEOR's own aggregate
    over the images' statistics, not the mean of the per-image values. Without a working Java runtime
    it is None, with the reason in `CaptionScores.unavailable` (never reported as 0).
  * ROUGE-L: `Rouge` (LCS F-measure with beta = 1.2, max precision and max recall over the references);
    corpus = mean over images.
  * CIDEr-D: `Cider`, which is CIDEr-D as on the COCO server (cider_scorer.py: tf-idf n-gram vectors for
    n = 1..4 with raw counts, idf = log(N) - log(df) with df counted over the N images' reference sets;
    the candidate's weights clipped at the reference's, min(g_c, g_r) * g_r; a Gaussian length penalty
    exp(-delta^2 / (2 sigma^2)) with sigma = 6, where delta is the difference in bigram counts, i.e. in
    words unless one caption is empty; mean over n and over references, x10); corpus = mean over
    images. The idf comes from the scored set itself, so a corpus value depends on which images are
    scored together, and with a single image every idf is 0 and so is CIDEr-D.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor import meteor as _meteor_module
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer as _ptb_module

from ..runlog import write_csv

#: Every metric, in report order.
METRICS: tuple[str, ...] = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")
ALL = METRICS

#: Names of the tokenisers (`CaptionScores.tokenizer`).
TOKENIZER_PTB = "ptb"
TOKENIZER_PYTHON = "python-fallback"

#: Seconds a Java process (PTB tokeniser, or METEOR per call) may take before it is killed and its result
#: counted as unavailable: generous, as the JVM can start slowly on a loaded machine.
JAVA_TIMEOUT_S = 600.0

_BLEU = METRICS[:4]


@dataclass
class CaptionScores:
    """Scores of N candidate captions.

    Attributes:
        corpus: metric -> corpus-level score (a fraction; CIDEr-D in [0, 10]), None where unavailable.
            Holds the requested metrics only, in `METRICS` order.
        per_image: N dicts with the same keys, in input order.
        tokenizer: `TOKENIZER_PTB` or `TOKENIZER_PYTHON`.
        unavailable: metric -> why it could not be computed (e.g. METEOR without Java).
        tokenizer_note: why the Python fallback was used ("" with the PTB tokeniser, or when asked for).
    """

    corpus: dict[str, float | None]
    per_image: list[dict[str, float | None]]
    tokenizer: str
    unavailable: dict[str, str] = field(default_factory=dict)
    tokenizer_note: str = ""


# ---------------------------------------------------------------------------------------------------
# Tokenisation


class JavaError(RuntimeError):
    """A Java tool of pycocoevalcap did not start or did not answer as expected."""


class Tokenized(NamedTuple):
    """Tokenised captions (tokens joined by single spaces), which tokeniser made them, and why."""

    captions: list[str]
    tokenizer: str
    note: str


def _java() -> str | None:
    """The Java executable on PATH (looked up on every call, so a changed PATH is seen)."""
    return shutil.which("java")


def _one_line(caption: str) -> str:
    # PTBTokenizer is run with -preserveLines (one caption per line): any line break inside a caption
    # (\r, \u2028, ...) would shift every later caption, so all whitespace runs become one space.
    # Whitespace only separates tokens for the tokeniser, so this changes no token.
    return " ".join(caption.split())


def ptb_tokenize(captions: Sequence[str], java: str | None = None) -> list[str]:
    """pycocoevalcap's PTB tokenisation of `captions` (N strings -> N strings of space-joined tokens).

    The same jar, class, options and punctuation removal as `pycocoevalcap.tokenizer.PTBTokenizer`, run
    here rather than through that class because the class lets Java's "PTBTokenizer tokenized ... tokens"
    through to our stderr, writes its input file into site-packages, and never checks that Java ran: a
    failed run would silently drop captions. Raises `JavaError` when Java is missing, fails or times out.
    """
    java = java or _java()
    if java is None:
        raise JavaError("no Java runtime ('java' not on PATH)")
    if not captions:
        return []
    cmd = [
        java,
        "-cp",
        _ptb_module.STANFORD_CORENLP_3_4_1_JAR,
        "edu.stanford.nlp.process.PTBTokenizer",
        "-preserveLines",
        "-lowerCase",
    ]
    text = "".join(_one_line(c) + "\n" for c in captions)
    try:
        proc = subprocess.run(
            cmd,
            cwd=os.path.dirname(os.path.abspath(_ptb_module.__file__)),
            input=text.encode("utf-8"),
            capture_output=True,
            timeout=JAVA_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise JavaError(f"PTBTokenizer did not run: {e}") from e
    if proc.returncode != 0:
        raise JavaError(f"PTBTokenizer exited with status {proc.returncode}: {_tail(proc.stderr)}")
    lines = proc.stdout.decode("utf-8").split("\n")
    # One output line per input line, plus the empty string after the final newline.
    if len(lines) != len(captions) + 1 or lines[-1] != "":
        raise JavaError(f"PTBTokenizer returned {len(lines) - 1} lines for {len(captions)} captions")
    punctuation = set(_ptb_module.PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w not in punctuation) for line in lines[:-1]]


def _tail(stderr: bytes, limit: int = 300) -> str:
    text = " ".join(stderr.decode("utf-8", "replace").split())
    return text[-limit:] if text else "(no message)"


# The fallback imitates what PTBTokenizer + pycocoevalcap's PUNCTUATIONS do to English captions. It was
# written against the Java tool's output (see python_tests/test_caption_scores.py) and agrees on ordinary
# captions; it is not the full Stanford lexer. Known differences: "y'all" -> "y' all", "rock'n'roll",
# "x<y", emoticons (":)" -> ":-rrb-"), a number and a fraction joined into one token ("12 3/4"), and a
# single letter's final period, which the lexer sometimes splits off depending on the previous line.

# Characters PTBTokenizer normalises first (curly quotes, dashes, ellipsis).
_UNICODE = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2013": " -- ",
        "\u2014": " -- ",
        "\u2015": " -- ",
        "\u2026": " ... ",
    }
)
# Characters that are always tokens of their own; brackets become -LRB- etc., which survive
# pycocoevalcap's punctuation removal as lowercase "-lrb-" (its list has only the upper-case forms).
_ALWAYS_SPLIT = {
    '"': ' " ',
    "`": " ` ",
    "(": " -lrb- ",
    ")": " -rrb- ",
    "[": " -lsb- ",
    "]": " -rsb- ",
    "{": " -lcb- ",
    "}": " -rcb- ",
    "&": " & ",
    "%": " % ",
    "*": " * ",
}
_SPLITS = [
    # An ellipsis inside or before a word; one that ends a word is left to _split_word, as an abbreviation
    # keeps one of its periods ("etc..." -> "etc. ..").
    (re.compile(r"\.{3,}(?=[^.\s])"), " ... "),
    (re.compile(r"-{2,}"), " -- "),
    (re.compile(r"(?<!\d)([,;:])|([,;:])(?!\d)"), lambda m: f" {m.group(0)} "),  # not inside 1,000 or 2:30
    (re.compile(r"[$#](?=\d)"), lambda m: f" {m.group(0)} "),
    (re.compile(r"(?<=\S)([?!]+)(?=[\s.']|$)"), r" \1"),  # "dog?!" -> "dog ?!", but "a?b" stays
]
_BRACKETS = frozenset(t.strip() for t in _ALWAYS_SPLIT.values() if t.strip().startswith("-"))
# Words that keep their final period (PTBLexer's abbreviations, as checked against the jar;
# case-insensitive).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr drs prof profs sen sens rep reps lt col gen gov govs adm rev maj sgt cpl pvt capt st ste "
    "ave pres lieut hon brig cmdr pfc det m mme jr sr bros blvd rd esq inc co cos corp pty ltd plc dept univ "
    "intl sys tel est ext sq etc al vs jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri "
    "calif fla ft mt".split()
)
_CASED_ABBREVIATIONS = frozenset({"Miss", "Tex"})  # abbreviations only when capitalised
_ACRONYM = re.compile(r"[A-Za-z](\.[A-Za-z])*")  # "I", "U.S", "a.m", "e.g" (before the final period)
_CLITIC = re.compile(r"(n't|'s|'m|'d|'ll|'re|'ve)$", re.IGNORECASE)
_KEPT_APOSTROPHE = re.compile(r"'n'?|'\d+s?|(n't|'s|'m|'d|'ll|'re|'ve)", re.IGNORECASE)  # "rock 'n' roll", "'90s"
_WHOLE_WORDS = {
    "cannot": ["can", "not"],
    "gonna": ["gon", "na"],
    "gotta": ["got", "ta"],
    "wanna": ["wan", "na"],
    "gimme": ["gim", "me"],
    "lemme": ["lem", "me"],
    "'tis": ["'t", "is"],
    "'twas": ["'t", "was"],
}


def _is_abbreviation(word: str) -> bool:
    return word.lower() in _ABBREVIATIONS or word in _CASED_ABBREVIATIONS or bool(_ACRONYM.fullmatch(word))


def _split_word(word: str) -> list[str]:
    """One whitespace-free chunk -> its PTB tokens (original case)."""
    if word in _BRACKETS:  # "-lrb-" is not a word between hyphens
        return [word]
    prefix: list[str] = []
    suffix: list[str] = []  # in reverse order
    while True:
        if (
            word.startswith("'")
            and len(word) > 1
            and not _KEPT_APOSTROPHE.fullmatch(word)
            and word.lower() not in _WHOLE_WORDS
        ):
            prefix.append("'")
            word = word[1:]
        elif word.startswith("-") and len(word) > 1 and not word[1].isdigit():
            prefix.append("-")
            word = word[1:]
        elif word.endswith("'") and len(word) > 1 and not _KEPT_APOSTROPHE.fullmatch(word):
            suffix.append("'")
            word = word[:-1]
        elif word.endswith("-") and len(word) > 1:
            suffix.append("-")
            word = word[:-1]
        elif word.endswith("/") and len(word) > 1:
            suffix.append("/")
            word = word[:-1]
        elif word.endswith(".") and len(word) > 1 and not _is_abbreviation(word[:-1]):
            suffix.append(".")
            word = word[:-1]
        else:
            break
    core: list[str] = []
    if word.lower() in _WHOLE_WORDS:
        parts = _WHOLE_WORDS[word.lower()]
        core = [word[: len(parts[0])], word[len(parts[0]) :]]
    else:
        while (m := _CLITIC.search(word)) and m.start() > 0:
            core.insert(0, m.group(0))
            word = word[: m.start()]
        core.insert(0, word)
    return prefix + core + suffix[::-1]


def fallback_tokenize(captions: Sequence[str]) -> list[str]:
    """Pure-Python stand-in for `ptb_tokenize` (N strings -> N strings of space-joined tokens).

    Lowercases; splits off punctuation, brackets (kept as "-lrb-" etc., as pycocoevalcap does), quotes and
    clitics ("dog's" -> "dog 's", "don't" -> "do n't"); keeps the period of abbreviations ("mr.", "u.s.")
    and numbers' inner punctuation ("3.5", "1,000", "2:30"); then drops pycocoevalcap's PUNCTUATIONS
    tokens (. , ; : ? ! ' ` - -- ... and quotes).
    """
    punctuation = set(_ptb_module.PUNCTUATIONS) | {'"'}
    out = []
    for caption in captions:
        text = caption.translate(_UNICODE)
        text = "".join(_ALWAYS_SPLIT.get(ch, ch) for ch in text)
        for pattern, repl in _SPLITS:
            text = pattern.sub(repl, text)
        tokens = [t.lower() for chunk in text.split() for t in _split_word(chunk)]
        out.append(" ".join(t for t in tokens if t and t not in punctuation))
    return out


def tokenize_captions(captions: Sequence[str], *, tokenizer: str = "auto") -> Tokenized:
    """Tokenise N captions for scoring: "ptb" (Java, `JavaError` if it fails), "python" (the fallback),
    or "auto" (PTB, falling back to Python with the reason in `note` when Java is missing or fails)."""
    if tokenizer not in ("auto", "ptb", "python"):
        raise ValueError(f"tokenizer must be 'auto', 'ptb' or 'python', not {tokenizer!r}")
    if tokenizer == "python":
        return Tokenized(fallback_tokenize(captions), TOKENIZER_PYTHON, "")
    try:
        return Tokenized(ptb_tokenize(captions), TOKENIZER_PTB, "")
    except JavaError as e:
        if tokenizer == "ptb":
            raise
        return Tokenized(fallback_tokenize(captions), TOKENIZER_PYTHON, str(e))


# ---------------------------------------------------------------------------------------------------
# METEOR (Java)


class _MeteorProcess(Meteor):
    """pycocoevalcap's `Meteor` (its `compute_score` and `_stat`: the COCO protocol) on a process we
    start and stop ourselves.

    `Meteor.__init__` is not called: it runs the bare name "java" and pipes stderr without reading it
    (where METEOR's error message would be lost); and `Meteor.__del__` waits for a lock that a failed
    `compute_score` leaves held, which would hang the garbage collector.
    """

    def __init__(self, java: str):
        self.meteor_cmd = [java, "-jar", "-Xmx2G", _meteor_module.METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"]
        self.lock = threading.Lock()
        self._stderr = tempfile.TemporaryFile()  # read back for the reason if METEOR fails
        try:
            self.meteor_p = subprocess.Popen(
                self.meteor_cmd,
                cwd=os.path.dirname(os.path.abspath(_meteor_module.__file__)),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
            )
        except OSError:
            self._stderr.close()
            raise

    def score(self, gts: dict[int, list[str]], res: dict[int, list[str]]) -> tuple[float, list[float]]:
        """Corpus and per-image METEOR; raises `JavaError` if METEOR fails or takes over JAVA_TIMEOUT_S."""
        # The protocol blocks on readline; killing a hung process turns that into an end of file.
        watchdog = threading.Timer(JAVA_TIMEOUT_S, self.meteor_p.kill)
        watchdog.daemon = True
        watchdog.start()
        try:
            # METEOR's words must not contain its field separator "|||" (Meteor strips it from candidates
            # only); a caption never contains it after tokenisation, but a hand-made one might.
            gts = {k: [r.replace("|||", "") for r in v] for k, v in gts.items()}
            score, scores = self.compute_score(gts, res)
        except (OSError, ValueError) as e:
            self.close()
            raise JavaError(f"METEOR failed: {self._reason(e)}") from e
        finally:
            watchdog.cancel()
        return float(score), [float(s) for s in scores]

    def _reason(self, e: Exception) -> str:
        self._stderr.seek(0)
        message = self._stderr.read()
        return _tail(message) if message.strip() else f"{type(e).__name__}: {e}"

    def close(self) -> None:
        if self.meteor_p.poll() is None:
            with contextlib.suppress(OSError):
                self.meteor_p.stdin.close()
            self.meteor_p.kill()
        self.meteor_p.wait()
        for stream in (self.meteor_p.stdin, self.meteor_p.stdout):
            with contextlib.suppress(OSError):
                stream.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()
            self._stderr.close()


#: The METEOR process that scoring calls share: its start (a JVM loading METEOR's paraphrase tables,
#: several seconds) costs far more than scoring a few thousand captions, and one run scores many times.
#: METEOR keeps no state between EVAL requests, so sharing it changes no score.
_shared_meteor: _MeteorProcess | None = None
_shared_meteor_lock = threading.RLock()


@contextlib.contextmanager
def _meteor_session(wanted: bool):
    """Yields (a running METEOR process or None, the reason it is None). The process is started once
    and reused by later calls (restarted if it died or failed), and stopped when Python exits."""
    global _shared_meteor
    if not wanted:
        yield None, ""
        return
    java = _java()
    if java is None:
        yield None, "no Java runtime ('java' not on PATH)"
        return
    with _shared_meteor_lock:
        shared = _shared_meteor
        if shared is None or shared.meteor_p.poll() is not None or shared.meteor_cmd[0] != java:
            if shared is not None:
                shared.close()
            try:
                _shared_meteor = _MeteorProcess(java)
            except OSError as e:
                yield None, f"METEOR did not start: {e}"
                return
            atexit.register(_shared_meteor.close)
        yield _shared_meteor, ""


# ---------------------------------------------------------------------------------------------------
# Scoring


def _check_metrics(metrics: Iterable[str] | str) -> tuple[str, ...]:
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {list(METRICS)}")
    if not names:
        raise ValueError("metrics is empty")
    return tuple(m for m in METRICS if m in names)


def _check_references(references: Sequence[Sequence[str]], min_refs: int) -> None:
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise TypeError(f"references must be a list (one list of captions per image), not {type(references).__name__}")
    if len(references) == 0:
        raise ValueError("references is empty (no images)")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise TypeError(f"references[{i}] must be a list of caption strings, not {type(refs).__name__}")
        if len(refs) < min_refs:
            need = "at least one reference" if min_refs == 1 else f"at least {min_refs} references"
            raise ValueError(f"references[{i}] has {len(refs)} caption(s); every image needs {need}")
        for k, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise TypeError(f"references[{i}][{k}] must be a str, not {type(ref).__name__}")
            if not ref.strip():
                raise ValueError(f"references[{i}][{k}] is an empty caption")


def _check_candidates(candidates: Sequence[str], n_images: int) -> None:
    if isinstance(candidates, str) or not isinstance(candidates, Sequence):
        raise TypeError(f"candidates must be a list of caption strings, not {type(candidates).__name__}")
    if len(candidates) != n_images:
        raise ValueError(f"{len(candidates)} candidates for {n_images} images (references); need one per image")
    for i, c in enumerate(candidates):
        if not isinstance(c, str):
            raise TypeError(f"candidates[{i}] must be a str, not {type(c).__name__}")


def _cider(gts: dict[int, list[str]], res: dict[int, list[str]]) -> tuple[float, list[float]]:
    # CiderScorer takes max() of the document frequencies, which fails when no reference has a word
    # (every one emptied by tokenisation); every tf-idf vector is then empty and every score 0.
    if not any(r.split() for refs in gts.values() for r in refs):
        return 0.0, [0.0] * len(gts)
    score, scores = Cider().compute_score(gts, res)
    return float(score), [float(s) for s in scores]


def _score_tokenized(
    gts: dict[int, list[str]],
    res: dict[int, list[str]],
    metrics: tuple[str, ...],
    meteor: _MeteorProcess | None,
    meteor_reason: str,
) -> tuple[dict, list[dict], dict]:
    """Metrics of tokenised captions: gts image -> K_i references, res image -> [candidate], keys 0..N-1
    in order. Returns (corpus, per_image, unavailable)."""
    n = len(gts)
    corpus: dict[str, float | None] = {}
    per_image: list[dict[str, float | None]] = [{} for _ in range(n)]
    unavailable: dict[str, str] = {}

    def put(name: str, total: float | None, values: Sequence[float | None]) -> None:
        corpus[name] = total
        for row, v in zip(per_image, values, strict=True):
            row[name] = v

    bleu: dict[str, tuple[float, list[float]]] = {}
    # pycocoevalcap prints progress in some versions and with verbose scorers; none of it is ours.
    with contextlib.redirect_stdout(io.StringIO()):
        for name in metrics:
            if name in _BLEU:
                if not bleu:  # one Bleu(4) run gives BLEU-1..4
                    totals, lists = Bleu(4).compute_score(gts, res, verbose=0)
                    bleu = {b: (float(totals[k]), [float(v) for v in lists[k]]) for k, b in enumerate(_BLEU)}
                put(name, *bleu[name])
            elif name == "METEOR":
                reason = meteor_reason
                if meteor is not None:
                    try:
                        put(name, *meteor.score(gts, res))
                        continue
                    except JavaError as e:
                        reason = str(e)
                unavailable[name] = reason
                put(name, None, [None] * n)
            elif name == "ROUGE-L":
                score, scores = Rouge().compute_score(gts, res)
                put(name, float(score), [float(s) for s in scores])
            elif name == "CIDEr-D":
                put(name, *_cider(gts, res))
    return corpus, per_image, unavailable


def score_captions(
    references: Sequence[Sequence[str]],
    candidates: Sequence[str],
    *,
    metrics: Iterable[str] = ALL,
    tokenizer: str = "auto",
) -> CaptionScores:
    """Score N candidate captions against their images' references.

    Args:
        references: N lists; references[i] holds image i's K_i >= 1 reference captions (raw text or
            space-joined tokens; non-empty).
        candidates: N strings, the generated caption of each image (may be empty).
        metrics: a subset of `METRICS` (METEOR starts a JVM; leave it out for quick evaluations).
        tokenizer: "auto" (PTB via Java, else the Python fallback), "ptb" or "python"; see `tokenize_captions`.

    Returns: `CaptionScores` with corpus and per-image scores (fractions; CIDEr-D in [0, 10]).
    """
    metrics = _check_metrics(metrics)
    _check_references(references, min_refs=1)
    _check_candidates(candidates, len(references))
    flat = [r for refs in references for r in refs] + list(candidates)
    tokens = tokenize_captions(flat, tokenizer=tokenizer)
    gts: dict[int, list[str]] = {}
    start = 0
    for i, refs in enumerate(references):
        gts[i] = tokens.captions[start : start + len(refs)]
        start += len(refs)
    res = {i: [c] for i, c in enumerate(tokens.captions[start:])}
    with _meteor_session("METEOR" in metrics) as (meteor, reason):
        corpus, per_image, unavailable = _score_tokenized(gts, res, metrics, meteor, reason)
    return CaptionScores(corpus, per_image, tokens.tokenizer, unavailable, tokens.note)


def reference_agreement(
    references: Sequence[Sequence[str]], *, metrics: Iterable[str] = ALL, tokenizer: str = "auto"
) -> CaptionScores:
    """How well each image's references agree with one another: the usual "human" reference point.

    Round k (k = 0 .. max K_i - 1) scores, for every image, its reference k mod K_i as the candidate
    against its other K_i - 1 references, exactly as `score_captions` would. Every round holds every
    image, so each round's CIDEr-D document frequencies (idf) are counted over all N images' leave-one-out
    reference sets, as for a model scored against K_i - 1 references; an image with fewer references
    than the most has some of them scored twice, in rounds of their own. An image's per-image score is
    the mean over its first K_i rounds (each of its references the candidate once); a corpus score is
    the mean of the rounds' corpus scores. With one reference fewer than a model gets, these numbers are
    slightly pessimistic for BLEU and CIDEr-D.

    Args:
        references: N lists of K_i >= 2 reference captions each.
        metrics, tokenizer: as for `score_captions`.
    """
    metrics = _check_metrics(metrics)
    _check_references(references, min_refs=2)
    flat = [r for refs in references for r in refs]
    tokens = tokenize_captions(flat, tokenizer=tokenizer)
    tokenized: list[list[str]] = []
    start = 0
    for refs in references:
        tokenized.append(tokens.captions[start : start + len(refs)])
        start += len(refs)

    n = len(references)
    rounds = max(len(refs) for refs in tokenized)
    sums: list[dict[str, float]] = [dict.fromkeys(metrics, 0.0) for _ in range(n)]
    corpus_sum: dict[str, float] = dict.fromkeys(metrics, 0.0)
    unavailable: dict[str, str] = {}
    # One METEOR process for all rounds: its JVM takes seconds to start and load the paraphrase table.
    with _meteor_session("METEOR" in metrics) as (meteor, reason):
        for k in range(rounds):
            left_out = [k % len(refs) for refs in tokenized]
            gts = {i: refs[:c] + refs[c + 1 :] for i, (refs, c) in enumerate(zip(tokenized, left_out, strict=True))}
            res = {i: [refs[c]] for i, (refs, c) in enumerate(zip(tokenized, left_out, strict=True))}
            corpus_k, per_k, unavailable_k = _score_tokenized(gts, res, metrics, meteor, reason)
            if unavailable_k.get("METEOR") and meteor is not None:
                meteor, reason = None, unavailable_k["METEOR"]  # it failed; don't restart it every round
            unavailable.update(unavailable_k)
            for name in metrics:
                if name not in unavailable:
                    corpus_sum[name] += corpus_k[name]
                    for i in range(n):
                        if k < len(tokenized[i]):
                            sums[i][name] += per_k[i][name]
    corpus = {m: None if m in unavailable else corpus_sum[m] / rounds for m in metrics}
    per_image = [{m: None if m in unavailable else sums[i][m] / len(tokenized[i]) for m in metrics} for i in range(n)]
    return CaptionScores(corpus, per_image, tokens.tokenizer, unavailable, tokens.note)


# ---------------------------------------------------------------------------------------------------
# Baseline and reports


def most_frequent_caption(training_references: Sequence[Sequence[str]]) -> str:
    """The training set's most frequent caption, the baseline that captions every image the same.

    Captions are compared after `fallback_tokenize` (lowercase, punctuation dropped, whitespace
    collapsed; Python so that the baseline does not depend on whether Java is installed), and that
    normalised form is returned; ties go to the lexicographically smallest.
    """
    _check_references(training_references, min_refs=1)
    counts = Counter(c for c in fallback_tokenize([r for refs in training_references for r in refs]) if c)
    if not counts:
        raise ValueError("no training caption has a word after normalisation")
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def write_per_image_csv(
    path: str | os.PathLike, filenames: Sequence[str], candidates: Sequence[str], scores: CaptionScores
) -> None:
    """One CSV row per image: filename, caption (as generated, before tokenisation), then each metric of
    `scores.corpus` (fractions in full precision; empty where unavailable). Written atomically."""
    n = len(scores.per_image)
    if len(filenames) != n or len(candidates) != n:
        raise ValueError(f"{len(filenames)} filenames and {len(candidates)} candidates for {n} scored images")
    metrics = list(scores.corpus)
    rows: list[dict[str, Any]] = [
        {"filename": f, "caption": c, **s} for f, c, s in zip(filenames, candidates, scores.per_image, strict=True)
    ]
    write_csv(Path(path), ["filename", "caption", *metrics], rows)


def format_scores_table(rows: Sequence[tuple[str, CaptionScores]]) -> str:
    """A fixed-width table, one line per (name, scores): each metric x100 with one decimal (CIDEr-D x100
    too, as papers print it), "n/a" where unavailable, "-" where not computed; then a note per reason a
    metric was unavailable and, if the rows used different tokenisers, which each used."""
    if not rows:
        raise ValueError("no rows to tabulate")
    metrics = [m for m in METRICS if any(m in s.corpus for _, s in rows)]
    name_width = max(len("model"), *(len(name) for name, _ in rows))
    widths = [max(len(m), 6) for m in metrics]
    lines = ["  ".join(["model".ljust(name_width), *(m.rjust(w) for m, w in zip(metrics, widths, strict=True))])]
    notes: dict[str, None] = {}  # ordered set
    for name, scores in rows:
        cells = []
        for m, w in zip(metrics, widths, strict=True):
            if m not in scores.corpus:
                cell = "-"
            elif scores.corpus[m] is None:
                cell = "n/a"
                notes[f"{m} n/a: {scores.unavailable.get(m, 'unavailable')}"] = None
            else:
                cell = f"{100.0 * scores.corpus[m]:.1f}"
            cells.append(cell.rjust(w))
        lines.append("  ".join([name.ljust(name_width), *cells]))
    if len({s.tokenizer for _, s in rows}) > 1:
        notes["tokenizers differ: " + ", ".join(f"{name}: {s.tokenizer}" for name, s in rows)] = None
    return "\n".join(lines + list(notes)) + "\n"
