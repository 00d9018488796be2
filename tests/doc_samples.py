"""The code blocks of the README and docs/, found by the marker comment above each (`<!-- config -->`,
`<!-- feed: myfeeds.py -->`), which the reader does not see, so that tests run them as written."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from tests.support import ROOT

README = ROOT / "README.md"
CHAPTERS = sorted((ROOT / "docs").glob("*.md"))

FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>\w*)\n(?P<code>.*?)^(?P=indent)```[ ]*$", re.S | re.M)
MARKER = re.compile(r"^[ ]*<!-- (?P<mark>.+?) -->[ ]*$")


@dataclass
class Sample:
    path: Path
    line: int
    lang: str
    mark: str | None  # the marker comment's text, when the line above the block holds one
    code: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} ({self.lang})"


def samples(path: Path) -> list[Sample]:
    """Every fenced block of the file, with its marker."""
    text = path.read_text()
    found = []
    for fence in FENCE.finditer(text):
        before = text[: fence.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.match(before)
        found.append(
            Sample(
                path,
                text.count("\n", 0, fence.start()) + 1,
                fence.group("lang"),
                marker.group("mark") if marker else None,
                textwrap.dedent(fence.group("code")),
            )
        )
    return found


def sample(path: Path, mark: str) -> str:
    """The code of the one block of `path` marked `<!-- {mark} -->`."""
    found = [s.code for s in samples(path) if s.mark == mark]
    assert len(found) == 1, f"{path.relative_to(ROOT)} has {len(found)} blocks marked <!-- {mark} -->, not 1"
    return found[0]
