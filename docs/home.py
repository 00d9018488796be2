"""MkDocs hook: the README is the site's home page, so the quick start is written once.

The README links to the chapters as `docs/x.md` (right on GitHub); on the site they sit beside it,
so those links lose their `docs/`. Chapters link back to `../README.md`, which on the site is `index.md`.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

README = Path(__file__).resolve().parent.parent / "README.md"


def on_files(files: Files, config) -> Files:
    text = README.read_text(encoding="utf-8").replace("](docs/", "](")
    files.append(File.generated(config, "index.md", content=text))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    return markdown.replace("](../README.md", "](index.md")
