"""The repository stands alone: it cites its own docs/, and every docs/ anchor and relative link resolves."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# notes that lived outside the repository while it was written (and their folder): a citation of one dangles
OUTSIDE = re.compile(r"\bLARP_SPEC\b|\bFVD_AND_DATA\b|(?<![\w/])(?:ORCHESTRATION|DESIGN|STYLE)\.md\b"
                     r"|(?<![\w/.-])(?:\.\./)+shared/|/work/shared\b")
DOC_REF = re.compile(r"\bdocs/([\w.-]+\.md)#([\w-]+)")
MD_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _tracked_texts() -> dict[str, str]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True,
                           text=True).stdout.split("\0")
    out = {}
    for name in filter(None, names):
        if name == "tests/test_docs.py":  # names what it forbids, and cites made-up docs to test the checks
            continue
        path = ROOT / name
        if not path.is_file():  # deleted in the work tree
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary
            continue
        out[name] = data.decode("utf-8", errors="replace")
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation dropped, spaces -> hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = text.lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def _prose_lines(markdown: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def anchors(markdown: str) -> set[str]:
    """Every heading anchor of a Markdown text, with GitHub's -1, -2 ... suffixes for repeated headings."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose_lines(markdown):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_doc_refs(texts: dict[str, str], root: Path = ROOT) -> list[str]:
    """``docs/<file>.md#<anchor>`` references (in any text) whose file or heading does not exist."""
    bad = []
    for name, text in texts.items():
        for m in DOC_REF.finditer(text):
            doc = root / "docs" / m.group(1)
            if not doc.is_file():
                bad.append(f"{name}: {m.group(0)}: no file docs/{m.group(1)}")
            elif m.group(2) not in anchors(doc.read_text()):
                bad.append(f"{name}: {m.group(0)}: no heading with that anchor")
    return bad


def broken_links(md_path: Path) -> list[str]:
    """Relative links and images of one Markdown file whose target file (or .md heading anchor) is missing."""
    bad = []
    text = md_path.read_text()
    for line in _prose_lines(text):
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        for m in MD_LINK.finditer(line):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
                continue
            path, _, anchor = target.partition("#")
            dest = (md_path.parent / path).resolve() if path else md_path
            if not dest.exists():
                bad.append(f"{md_path.name}: ({target}): no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
                bad.append(f"{md_path.name}: ({target}): no heading with that anchor")
    return bad


def test_nothing_cites_notes_outside_the_repository():
    hits = []
    for name, text in _tracked_texts().items():
        for i, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{name}:{i}: {line.strip()}")
    assert hits == [], "cite docs/ instead:\n" + "\n".join(hits)


def test_every_docs_anchor_reference_resolves():
    texts = _tracked_texts()
    refs = [m.group(0) for t in texts.values() for m in DOC_REF.finditer(t)]
    assert len(refs) >= 25  # the code cites the docs (one per concept); a regex that finds none proves nothing
    assert broken_doc_refs(texts) == []


def test_relative_links_of_the_readme_and_the_docs_resolve():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(files) >= 4
    assert [b for f in files for b in broken_links(f)] == []


def test_the_readme_links_every_doc():
    readme = (ROOT / "README.md").read_text()
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{doc.name})" in readme, doc.name


def test_slugs_and_the_checks_catch_what_they_should(tmp_path):
    assert slug("Deviations from the paper / official code, and the official quirks") == (
        "deviations-from-the-paper--official-code-and-the-official-quirks")
    assert slug("UCF-101") == "ucf-101"
    for cited in ("LARP_SPEC.md section 3", "(LARP_SPEC 4.1)", "FVD_AND_DATA.md \u00a7F", "see ../shared/notes.md",
                  "/work/shared/DESIGN.md", "STYLE.md"):
        assert OUTSIDE.search(cited), cited
    for fine in ("docs/training.md#prior-loss", "shared_memory/", "a shared/ folder", "docs/STYLE.md"):
        assert not OUTSIDE.search(fine), fine
    assert slug("`prior.alpha` and [SVQ](x.md)") == "prioralpha-and-svq"
    assert anchors("# A\n```\n# not a heading\n```\n## A\n## B ##\n") == {"a", "a-1", "b"}
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "m.md").write_text("# Model\n## SVQ\n[ok](#svq) [bad](#nope) [gone](x.md) `[c](y.md)`\n")
    texts = {"a.py": "see docs/m.md#svq, docs/m.md#prior and docs/x.md#svq"}
    assert broken_doc_refs(texts, tmp_path) == ["a.py: docs/m.md#prior: no heading with that anchor",
                                                "a.py: docs/x.md#svq: no file docs/x.md"]
    assert broken_links(tmp_path / "docs" / "m.md") == ["m.md: (#nope): no heading with that anchor",
                                                         "m.md: (x.md): no such file"]
