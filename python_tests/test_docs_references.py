"""The repository stands alone: every citation of the numerical contract names a heading
that exists in docs/spec.md, and nothing points at files outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".md", ".cpp", ".h", ".cu", ".cuh", ".sh", ".toml", ".txt", ".ini"}


def tracked_text_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [ROOT / f for f in listed.splitlines()]
    files += [ROOT / ".ci" / "run"]
    return [f for f in files if f.is_file() and (f.suffix in TEXT_SUFFIXES or f.name == "run")]


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def spec_anchors() -> set[str]:
    text = (ROOT / "docs" / "spec.md").read_text()
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def test_github_anchor_rule():
    assert github_anchor("Agreement between backends") == "agreement-between-backends"
    assert github_anchor("Cell and gradients") == "cell-and-gradients"


def test_every_spec_citation_resolves_to_a_heading():
    anchors = spec_anchors()
    assert {"langevin-step", "noise-stream", "stream-words", "dropconnect-masks"} <= anchors
    cited, broken = 0, []
    for path in tracked_text_files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for m in re.finditer(r"spec\.md#([\w-]+)", line):
                cited += 1
                if m.group(1) not in anchors:
                    broken.append(f"{path.relative_to(ROOT)}:{n}: #{m.group(1)}")
    assert cited > 50  # the code does cite it
    assert not broken, "citations of docs/spec.md with no such heading:\n" + "\n".join(broken)


def test_nothing_points_outside_the_repository():
    outside = re.compile(r"\.\./shared|SPEC §")
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in tracked_text_files()
        if path.name != "test_docs_references.py"
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if outside.search(line)
    ]
    assert not hits, "references to files a user does not have:\n" + "\n".join(hits)


def test_the_readme_quick_example_runs():
    # The README's first Python example, as a user would paste it, over a loader of two small batches.
    readme = (ROOT / "README.md").read_text()
    code = readme.split("## Quick example", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    loader = [(torch.randn(3, 2, 200), torch.randint(0, 10_000, (3, 2))) for _ in range(2)]
    namespace = {"loader": loader}
    exec(compile(code, "README.md (quick example)", "exec"), namespace)
    assert namespace["loss"].dim() == 0 and torch.isfinite(namespace["loss"])
    assert namespace["opt"].state[namespace["params"][0]]["step"] == 2
