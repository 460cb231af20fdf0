"""Docstrings cite docs/design.md by section; every cited section must exist on that page."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"docs/design\.md`*\s+((?:§\d+(?:\.\d+)?(?:\s*(?:,|and)\s*)?)+)")


def _sections() -> set[str]:
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    return set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, flags=re.MULTILINE))


def _citations():
    for folder in ("src", "tests", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                for match in CITATION.finditer(line):
                    for section in re.findall(r"§(\d+(?:\.\d+)?)", match.group(1)):
                        yield f"{path.relative_to(ROOT)}:{number}", section


def test_every_cited_section_of_the_design_page_exists():
    sections = _sections()
    assert {"2", "3", "3.1", "4", "4.5", "5", "6", "7", "8"} <= sections
    cited = list(_citations())
    assert len(cited) >= 14                     # the docstrings do point here
    missing = [(where, s) for where, s in cited if s not in sections]
    assert not missing, missing


def test_no_docstring_cites_a_design_file_outside_the_repository():
    offenders = []
    for folder in ("src", "tests", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == Path(__file__).name:
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if re.search(r"\bDESIGN(\.md)?\b", line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert not offenders, offenders
