"""Caption metrics (sgmcmc_fused/train/caption/scores.py) against references computed here from the
metrics' definitions: BLEU (modified n-gram precision with clipping, closest-reference brevity
penalty), ROUGE-L (LCS F-measure), CIDEr-D (clipped tf-idf cosine with a Gaussian length penalty); the
Java-backed parts (PTB tokeniser, METEOR) where a Java runtime exists, and their absence where not."""

from __future__ import annotations

import csv
import math
import os
import shutil
from collections import Counter

import pytest

from sgmcmc_fused.train.caption import scores
from sgmcmc_fused.train.caption.scores import (
    METRICS,
    TOKENIZER_PTB,
    TOKENIZER_PYTHON,
    CaptionScores,
    fallback_tokenize,
    format_scores_table,
    most_frequent_caption,
    ptb_tokenize,
    reference_agreement,
    score_captions,
    write_per_image_csv,
)

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs a Java runtime (PTB tokeniser, METEOR)")
NO_METEOR = [m for m in METRICS if m != "METEOR"]

# Already tokenised (lowercase words, no punctuation), so both tokenisers leave them unchanged and the
# reference implementations below can split on spaces.
REFS = [
    [
        "a man riding a wave on top of a surfboard",
        "a surfer rides a large wave in the ocean",
        "a person on a surfboard riding a wave",
    ],
    [
        "two dogs playing with a frisbee in a field",
        "a pair of dogs run across the grass",
        "dogs chase a frisbee on a green field",
    ],
    ["a plate of food with broccoli and rice", "a white plate topped with rice and vegetables"],
    [
        "a red bus parked on the side of a street",
        "a double decker bus drives down the street",
        "a large red bus on a city street",
        "a bus is stopped near the curb",
    ],
]
CANDS = [
    "a man riding a wave on a surfboard",
    "two dogs play with a frisbee on the grass",
    "a plate of rice and broccoli",
    "a red bus driving down a city street",
]


def ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def ref_bleu(refs: list[list[str]], cands: list[str], max_n: int = 4):
    """BLEU-1..max_n, corpus and per image, from the definition (Papineni et al. 2002): clipped n-gram
    precisions, brevity penalty from the reference length closest to the candidate's (ties: shorter)."""
    correct_sum, guess_sum, c_sum, r_sum = [0] * max_n, [0] * max_n, 0, 0
    per_image = []
    for rs, cand in zip(refs, cands, strict=True):
        c_words, r_words = cand.split(), [r.split() for r in rs]
        c, r = len(c_words), min((abs(len(w) - len(c_words)), len(w)) for w in r_words)[1]
        correct, guess = [], []
        for n in range(1, max_n + 1):
            cand_counts = ngrams(c_words, n)
            max_ref = Counter()
            for w in r_words:
                max_ref |= ngrams(w, n)  # elementwise max over references
            correct.append(sum(min(k, max_ref[g]) for g, k in cand_counts.items()))
            guess.append(max(c - n + 1, 0))
        per_image.append(_bleu_from_counts(correct, guess, c, r))
        correct_sum = [a + b for a, b in zip(correct_sum, correct, strict=True)]
        guess_sum = [a + b for a, b in zip(guess_sum, guess, strict=True)]
        c_sum, r_sum = c_sum + c, r_sum + r
    return _bleu_from_counts(correct_sum, guess_sum, c_sum, r_sum), per_image


def _bleu_from_counts(correct, guess, c, r):
    bp = 1.0 if c >= r else math.exp(1.0 - r / c)
    out, log_p = [], 0.0
    for n, (k, g) in enumerate(zip(correct, guess, strict=True), start=1):
        if k == 0:
            out.extend([0.0] * (len(correct) - n + 1))
            break
        log_p += math.log(k / g)
        out.append(bp * math.exp(log_p / n))
    return out


def ref_rouge_l(refs: list[str], cand: str, beta: float = 1.2) -> float:
    """ROUGE-L (Lin 2004) as on the COCO server: max LCS precision and max LCS recall over references."""

    def lcs(a, b):
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
        return table[-1][-1]

    c = cand.split()
    p = max(lcs(r.split(), c) / len(c) for r in refs)
    r_ = max(lcs(r.split(), c) / len(r.split()) for r in refs)
    return 0.0 if p == 0 or r_ == 0 else (1 + beta**2) * p * r_ / (r_ + beta**2 * p)


def ref_cider_d(refs: list[list[str]], cands: list[str], sigma: float = 6.0) -> list[float]:
    """CIDEr-D (Vedantam et al. 2015) per image: tf-idf vectors of n-grams (n = 1..4; raw counts; idf =
    log N - log df, df over the images' reference sets, clamped at 1 for n-grams no reference has), the
    candidate's weights clipped at the reference's, cosine per n, times exp(-(l_c - l_r)^2 / 2 sigma^2),
    mean over n and references, x10."""
    n_images = len(refs)
    df = Counter()
    for rs in refs:
        df.update(set().union(*(ngrams(r.split(), n) for r in rs for n in range(1, 5))))

    def vectors(words):
        return [
            {g: k * (math.log(n_images) - math.log(max(1, df[g]))) for g, k in ngrams(words, n).items()}
            for n in range(1, 5)
        ]

    scores = []
    for rs, cand in zip(refs, cands, strict=True):
        vc, total = vectors(cand.split()), 0.0
        for r in rs:
            vr = vectors(r.split())
            penalty = math.exp(-((len(cand.split()) - len(r.split())) ** 2) / (2 * sigma**2))
            for a, b in zip(vc, vr, strict=True):
                na, nb = math.sqrt(sum(v * v for v in a.values())), math.sqrt(sum(v * v for v in b.values()))
                dot = sum(min(v, b.get(g, 0.0)) * b.get(g, 0.0) for g, v in a.items())
                total += (dot / (na * nb) if na and nb else 0.0) * penalty / 4
        scores.append(10.0 * total / len(rs))
    return scores


# --- BLEU, ROUGE-L, CIDEr-D against the definitions ------------------------------------------------


def test_bleu_matches_definition_corpus_and_per_image():
    s = score_captions(REFS, CANDS, metrics=NO_METEOR, tokenizer="python")
    corpus, per_image = ref_bleu(REFS, CANDS)
    for n in range(4):
        assert s.corpus[f"BLEU-{n + 1}"] == pytest.approx(corpus[n], rel=1e-6)
        for i, row in enumerate(per_image):
            # pycocoevalcap smooths a zero match count to ~1e-15 instead of 0.
            assert s.per_image[i][f"BLEU-{n + 1}"] == pytest.approx(row[n], rel=1e-6, abs=1e-3)
    assert 0.3 < s.corpus["BLEU-4"] < s.corpus["BLEU-1"] < 1.0  # not a degenerate case


def test_bleu_clips_by_the_max_count_in_any_one_reference():
    # "the" is once in each reference: clipped to 1 (not 2) of the candidate's 3; lengths equal, no BP.
    refs = [["the cat sat", "the dog sat"], ["a cat on a mat", "the cat is on the mat"]]
    cands = ["the the the", "the cat the cat on the mat"]
    s = score_captions(refs, cands, metrics=["BLEU-1", "BLEU-2"], tokenizer="python")
    assert s.per_image[0]["BLEU-1"] == pytest.approx(1 / 3, rel=1e-8)
    corpus, per_image = ref_bleu(refs, cands, max_n=2)
    assert [s.corpus["BLEU-1"], s.corpus["BLEU-2"]] == pytest.approx(corpus, rel=1e-8)
    assert s.per_image[1]["BLEU-2"] == pytest.approx(per_image[1][1], rel=1e-8)


def test_bleu_brevity_penalty_uses_closest_reference_length():
    # 4 words against references of 4 and 12 words: closest length 4, so no penalty.
    refs = [["a dog on grass", "a small brown dog is lying down on the green grass outside"]]
    s = score_captions(refs, ["a dog on grass"], metrics=["BLEU-1"], tokenizer="python")
    assert s.corpus["BLEU-1"] == pytest.approx(1.0, abs=1e-8)
    # 2 words, closest reference 4 words: BP = exp(1 - 4/2).
    s = score_captions(refs, ["a dog"], metrics=["BLEU-1"], tokenizer="python")
    assert s.corpus["BLEU-1"] == pytest.approx(math.exp(1 - 4 / 2), rel=1e-8)


def test_rouge_l_matches_definition():
    s = score_captions(REFS, CANDS, metrics=["ROUGE-L"], tokenizer="python")
    expected = [ref_rouge_l(r, c) for r, c in zip(REFS, CANDS, strict=True)]
    assert [row["ROUGE-L"] for row in s.per_image] == pytest.approx(expected, rel=1e-12)
    assert s.corpus["ROUGE-L"] == pytest.approx(sum(expected) / len(expected), rel=1e-12)
    assert list(s.corpus) == ["ROUGE-L"]


def test_cider_d_matches_definition():
    s = score_captions(REFS, CANDS, metrics=["CIDEr-D"], tokenizer="python")
    expected = ref_cider_d(REFS, CANDS)
    assert [row["CIDEr-D"] for row in s.per_image] == pytest.approx(expected, rel=1e-9)
    assert s.corpus["CIDEr-D"] == pytest.approx(sum(expected) / len(expected), rel=1e-9)
    assert s.corpus["CIDEr-D"] > 0.5


def test_cider_d_hand_computed_and_invariants():
    # Two images, one 2-word reference each, candidate = reference: every n-gram has df 1 of N = 2, so
    # both tf-idf vectors are log 2 * counts; cosine 1 for n = 1, 2 and 0 (empty) for n = 3, 4; equal
    # lengths: score = 10 * (1 + 1 + 0 + 0) / 4 = 5.
    s = score_captions([["a b"], ["c d"]], ["a b", "c d"], metrics=["CIDEr-D"], tokenizer="python")
    assert [row["CIDEr-D"] for row in s.per_image] == pytest.approx([5.0, 5.0], rel=1e-12)
    # A candidate equal to all references (4+ words, n-grams specific to the image) scores 10; a
    # disjoint one 0; a partial one in between.
    refs = [["a dog runs on the beach"] * 3, ["a cat sleeps on a sofa"] * 3, ["two birds on a wire"] * 3]
    cands = ["a dog runs on the beach", "an airplane flying over mountains", "two birds on a fence"]
    s = score_captions(refs, cands, metrics=["CIDEr-D"], tokenizer="python")
    same, disjoint, partial = (row["CIDEr-D"] for row in s.per_image)
    assert same == pytest.approx(10.0, rel=1e-12)
    assert disjoint == 0.0
    assert 0.0 < partial < same


def test_perfect_candidate_scores_one():
    s = score_captions(REFS, [r[0] for r in REFS], metrics=NO_METEOR, tokenizer="python")
    for n in range(1, 5):
        assert s.corpus[f"BLEU-{n}"] == pytest.approx(1.0, abs=1e-8)
    assert s.corpus["ROUGE-L"] == 1.0
    assert all(row["ROUGE-L"] == 1.0 for row in s.per_image)


def test_empty_candidate_scores_zero():
    s = score_captions(REFS[:2], ["a man riding a wave", ""], metrics=NO_METEOR, tokenizer="python")
    assert s.per_image[1]["BLEU-1"] == pytest.approx(0.0, abs=1e-12)
    assert s.per_image[1]["ROUGE-L"] == 0.0
    assert s.per_image[1]["CIDEr-D"] == 0.0


def test_raw_captions_are_tokenised_like_the_references():
    # Case and punctuation do not count: the raw form scores as its tokenised form.
    raw = ["A man riding a wave, on a surfboard!", "Two dogs play with a frisbee on the grass."]
    a = score_captions(REFS[:2], raw, metrics=NO_METEOR, tokenizer="python")
    b = score_captions(REFS[:2], CANDS[:2], metrics=NO_METEOR, tokenizer="python")
    assert a.corpus == pytest.approx(b.corpus, rel=1e-12)
    assert a.tokenizer == TOKENIZER_PYTHON


def test_metric_subset_and_order():
    s = score_captions(REFS, CANDS, metrics=["CIDEr-D", "BLEU-3", "BLEU-2"], tokenizer="python")
    assert list(s.corpus) == ["BLEU-2", "BLEU-3", "CIDEr-D"]
    assert all(list(row) == list(s.corpus) for row in s.per_image)
    full = score_captions(REFS, CANDS, metrics=NO_METEOR, tokenizer="python")
    assert s.corpus["BLEU-3"] == full.corpus["BLEU-3"]


# --- tokenisation ------------------------------------------------------------------------------------

# pycocoevalcap's PTB tokenisation (Java, PTBTokenizer + PUNCTUATIONS removal) of each string, recorded
# from the Java tool and checked against it by test_ptb_table_matches_java.
PTB_TABLE = [
    ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
    ("Two dogs' toys aren't \"here\" (really).", "two dogs toys are n't here -lrb- really -rrb-"),
    ("The cat's whiskers -- don't, won't; can't: cannot!", "the cat 's whiskers do n't wo n't ca n't can not"),
    (
        "Mr. Smith & co. in the U.S. at 2:30 p.m., with 1,000 people...",
        "mr. smith & co. in the u.s. at 2:30 p.m. with 1,000 people",
    ),
    (
        "Hello world!!! What??? A 3.5 ft-long sign, 50% off $5 #1",
        "hello world !!! what ??? a 3.5 ft-long sign 50 % off $ 5 # 1",
    ),
    ("Black-and-white photo of a man's hat; St. Louis etc.", "black-and-white photo of a man 's hat st. louis etc."),
    ("it\u2019s a dog\u2019s life \u2014 \u201cquoted\u201d \u2026", "it 's a dog 's life quoted"),
    ("A sign that says 'STOP' [maybe] {x} - ok?!", "a sign that says stop -lsb- maybe -rsb- -lcb- x -rcb- ok ?!"),
    ("  Two   giraffes\tstanding\nnear a tree .  ", "two giraffes standing near a tree"),
    ("I'm gonna eat a hot-dog", "i 'm gon na eat a hot-dog"),
]


def test_fallback_tokenizer_matches_ptb_table():
    inputs, expected = zip(*PTB_TABLE, strict=True)
    assert fallback_tokenize(inputs) == list(expected)


@needs_java
def test_ptb_table_matches_java():
    inputs, expected = zip(*PTB_TABLE, strict=True)
    assert ptb_tokenize(inputs) == list(expected)


@needs_java
def test_ptb_tokenize_equals_pycocoevalcap_ptbtokenizer():
    from pycocoevalcap.tokenizer import ptbtokenizer

    if not os.access(os.path.dirname(ptbtokenizer.__file__), os.W_OK):
        pytest.skip("PTBTokenizer writes its input file next to itself, and that folder is read-only")
    inputs = [s for s, _ in PTB_TABLE if "\n" not in s and "\t" not in s] + ["", "a.", "end"]
    theirs = ptbtokenizer.PTBTokenizer().tokenize({i: [{"caption": s}] for i, s in enumerate(inputs)})
    assert ptb_tokenize(inputs) == [theirs[i][0] for i in range(len(inputs))]


# --- Java: METEOR and the PTB tokeniser, present and absent --------------------------------------------


@needs_java
def test_meteor_and_ptb_with_java_and_no_output(capfd):
    refs = [
        ["a man riding a wave on top of a surfboard", "a surfer rides a wave"],
        ["a red bus on a city street", "a bus parked by the road"],
    ]
    s = score_captions(refs, ["A man riding a wave on top of a surfboard.", "giraffes eating leaves"])
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # neither pycocoevalcap's nor Java's chatter
    assert s.tokenizer == TOKENIZER_PTB and s.tokenizer_note == "" and s.unavailable == {}
    perfect, disjoint = (row["METEOR"] for row in s.per_image)
    assert 0.0 < perfect <= 1.0
    assert disjoint == pytest.approx(0.0, abs=1e-9)
    assert 0.0 < s.corpus["METEOR"] < perfect
    assert list(s.corpus) == list(METRICS)


@needs_java
def test_one_meteor_process_serves_every_call_with_the_same_scores():
    """The METEOR process is started once and shared (a JVM start costs seconds); a process that died
    is replaced, and sharing changes no score: METEOR keeps no state between requests."""
    first = score_captions(REFS, CANDS, metrics=("METEOR",))
    process = scores._shared_meteor
    assert process is not None and process.meteor_p.poll() is None
    other = score_captions(REFS[:2], ["a b c", "giraffes eating leaves"], metrics=("METEOR",))
    assert scores._shared_meteor is process
    again = score_captions(REFS, CANDS, metrics=("METEOR",))
    assert again.corpus == first.corpus and again.per_image == first.per_image
    assert other.corpus["METEOR"] != first.corpus["METEOR"]
    process.close()  # as if it had died
    after = score_captions(REFS, CANDS, metrics=("METEOR",))
    assert scores._shared_meteor is not process and after.corpus == first.corpus


def test_without_java_meteor_is_unavailable_not_zero(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java
    assert shutil.which("java") is None
    s = score_captions(REFS[:2], CANDS[:2])
    assert s.corpus["METEOR"] is None and all(row["METEOR"] is None for row in s.per_image)
    assert "java" in s.unavailable["METEOR"].lower()
    assert s.tokenizer == TOKENIZER_PYTHON and "java" in s.tokenizer_note.lower()
    assert s.corpus["BLEU-4"] == pytest.approx(ref_bleu(REFS[:2], CANDS[:2])[0][3], rel=1e-6)
    with pytest.raises(RuntimeError, match="Java"):
        score_captions(REFS[:2], CANDS[:2], tokenizer="ptb")


def test_without_java_via_which(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    s = reference_agreement(REFS)
    assert s.corpus["METEOR"] is None and "METEOR" in s.unavailable
    assert s.tokenizer == TOKENIZER_PYTHON


@pytest.mark.skipif(os.name != "posix", reason="a shell-script stand-in for java")
def test_java_that_fails_to_start(monkeypatch, tmp_path):
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\necho 'Error: Could not create the Java Virtual Machine.' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    s = score_captions(REFS[:2], CANDS[:2])
    assert s.corpus["METEOR"] is None
    assert "Could not create the Java Virtual Machine" in s.unavailable["METEOR"]
    assert s.tokenizer == TOKENIZER_PYTHON and "status 1" in s.tokenizer_note
    assert s.corpus["ROUGE-L"] is not None


# --- leave-one-out reference agreement ---------------------------------------------------------------


def test_reference_agreement_identical_references():
    refs = [["a dog runs on the beach"] * 3, ["a cat sleeps on a sofa"] * 3, ["two birds sit on a wire"] * 2]
    s = reference_agreement(refs, metrics=NO_METEOR, tokenizer="python")
    assert s.corpus["BLEU-4"] == pytest.approx(1.0, abs=1e-8)
    assert s.corpus["ROUGE-L"] == 1.0
    # Leave-one-out sets have the same n-grams as the full ones, all image-specific: CIDEr-D 10.
    assert s.corpus["CIDEr-D"] == pytest.approx(10.0, rel=1e-12)


def test_reference_agreement_hand_case_and_rounds():
    # Image 0: two equal references and an unrelated one. Leave-one-out: each "a b c d" still finds its
    # twin (BLEU-1 1); "w x y z" finds nothing (0): per-image BLEU-1 = (1 + 1 + 0) / 3.
    refs = [["a b c d", "a b c d", "w x y z"], ["p q r s t", "p q r s u"]]
    s = reference_agreement(refs, metrics=NO_METEOR, tokenizer="python")
    assert s.per_image[0]["BLEU-1"] == pytest.approx(2 / 3, abs=1e-6)
    assert s.per_image[1]["BLEU-1"] == pytest.approx(4 / 5, rel=1e-6)
    # Bookkeeping: round k = every image's reference k mod K_i against its others; per image the mean
    # of its first K_i rounds, corpus the mean of the rounds.
    rounds = [
        score_captions([refs[0][1:], refs[1][1:]], [refs[0][0], refs[1][0]], metrics=NO_METEOR, tokenizer="python"),
        score_captions(
            [[refs[0][0], refs[0][2]], refs[1][:1]], [refs[0][1], refs[1][1]], metrics=NO_METEOR, tokenizer="python"
        ),
        score_captions([refs[0][:2], refs[1][1:]], [refs[0][2], refs[1][0]], metrics=NO_METEOR, tokenizer="python"),
    ]
    for m in NO_METEOR:
        assert s.per_image[0][m] == pytest.approx(sum(r.per_image[0][m] for r in rounds) / 3, rel=1e-12)
        assert s.per_image[1][m] == pytest.approx(sum(r.per_image[1][m] for r in rounds[:2]) / 2, rel=1e-12)
        assert s.corpus[m] == pytest.approx(sum(r.corpus[m] for r in rounds) / 3, rel=1e-12)


def test_reference_agreement_of_images_with_more_references_counts_idf_over_all_images():
    # Identical references everywhere, one image with a sixth: every leave-one-out candidate equals its
    # references, so CIDEr-D is 10 for every image, as with five references each. (A round scoring the
    # sixth references alone would count idf over one image, log 1 - log 1 = 0, and give it 0.)
    refs = [["a dog runs on the beach"] * 5, ["a cat sleeps on a sofa"] * 5, ["two birds sit on a wire"] * 6]
    s = reference_agreement(refs, metrics=["CIDEr-D", "BLEU-4"], tokenizer="python")
    assert [row["CIDEr-D"] for row in s.per_image] == pytest.approx([10.0] * 3, rel=1e-12)
    assert s.corpus["CIDEr-D"] == pytest.approx(10.0, rel=1e-12)
    assert s.corpus["BLEU-4"] == pytest.approx(1.0, abs=1e-8)


@needs_java
def test_reference_agreement_with_meteor():
    refs = [["a dog runs on the beach"] * 2, ["a cat sleeps on a sofa"] * 2]
    s = reference_agreement(refs)
    assert s.tokenizer == TOKENIZER_PTB
    assert 0.9 < s.corpus["METEOR"] <= 1.0
    assert all(0.9 < row["METEOR"] <= 1.0 for row in s.per_image)


def test_reference_agreement_needs_two_references():
    with pytest.raises(ValueError, match=r"references\[1\] has 1 caption.*at least 2"):
        reference_agreement([["a b", "a c"], ["a b"]], tokenizer="python")


# --- baseline, errors, reports -----------------------------------------------------------------------


def test_most_frequent_caption():
    train = [["A dog on a bench.", "a cat"], ["a  dog on a BENCH", "a cat."], ["zebras", "a dog on a bench"]]
    assert most_frequent_caption(train) == "a dog on a bench"
    # Tie (2 each): the lexicographically smallest.
    assert most_frequent_caption([["bb cc", "aa bb"], ["bb cc", "Aa bb."]]) == "aa bb"
    assert most_frequent_caption([["z"], ["y"], ["x"]]) == "x"
    with pytest.raises(ValueError, match="no images"):
        most_frequent_caption([])


@pytest.mark.parametrize(
    ("references", "candidates", "error", "match"),
    [
        ([], [], ValueError, "references is empty"),
        ([["a b"], ["c d"]], ["a b"], ValueError, "1 candidates for 2 images"),
        ([["a b"], []], ["a", "b"], ValueError, r"references\[1\] has 0 caption.*at least one reference"),
        ([["a b"], "c d"], ["a", "b"], TypeError, r"references\[1\] must be a list"),
        ([["a b"], ["  "]], ["a", "b"], ValueError, r"references\[1\]\[0\] is an empty caption"),
        ([["a b"]], [None], TypeError, r"candidates\[0\] must be a str"),
        ("a b", ["a"], TypeError, "references must be a list"),
    ],
)
def test_input_errors(references, candidates, error, match):
    with pytest.raises(error, match=match):
        score_captions(references, candidates, tokenizer="python")


def test_metric_and_tokenizer_errors():
    with pytest.raises(ValueError, match="unknown metric"):
        score_captions([["a"]], ["a"], metrics=["BLEU-5"], tokenizer="python")
    with pytest.raises(ValueError, match="metrics is empty"):
        score_captions([["a"]], ["a"], metrics=[], tokenizer="python")
    with pytest.raises(ValueError, match="tokenizer must be"):
        score_captions([["a"]], ["a"], tokenizer="nltk")


def test_write_per_image_csv(tmp_path):
    s = score_captions(REFS, CANDS, metrics=NO_METEOR, tokenizer="python")
    s.corpus["METEOR"] = None  # an unavailable metric is an empty cell
    for row in s.per_image:
        row["METEOR"] = None
    names = [f"img{i}.jpg" for i in range(len(CANDS))]
    path = tmp_path / "per_image.csv"
    write_per_image_csv(path, names, CANDS, s)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["filename", "caption", *NO_METEOR, "METEOR"]
    assert [r["filename"] for r in rows] == names and [r["caption"] for r in rows] == CANDS
    assert [float(r["CIDEr-D"]) for r in rows] == [row["CIDEr-D"] for row in s.per_image]
    assert all(r["METEOR"] == "" for r in rows)
    with pytest.raises(ValueError, match="3 filenames"):
        write_per_image_csv(path, names[:3], CANDS, s)


def test_format_scores_table():
    a = CaptionScores(
        corpus={"BLEU-1": 0.7123, "METEOR": None, "CIDEr-D": 0.9512},
        per_image=[],
        tokenizer=TOKENIZER_PTB,
        unavailable={"METEOR": "no Java runtime"},
    )
    b = CaptionScores(corpus={"BLEU-1": 0.5, "CIDEr-D": 1.23456}, per_image=[], tokenizer=TOKENIZER_PTB)
    lines = format_scores_table([("model", a), ("most frequent", b)]).splitlines()
    assert lines[0].split() == ["model", "BLEU-1", "METEOR", "CIDEr-D"]
    assert lines[1].split() == ["model", "71.2", "n/a", "95.1"]
    assert lines[2].split() == ["most", "frequent", "50.0", "-", "123.5"]
    assert lines[3] == "METEOR n/a: no Java runtime"
    assert len({len(line) for line in lines[:3]}) == 1  # fixed width
    with pytest.raises(ValueError, match="no rows"):
        format_scores_table([])
