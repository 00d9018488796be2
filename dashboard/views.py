"""The panel views: one script each in dashboard/static/views/ (`<name>.js`, which registers
`window.Dashboard.views.<name>`), optionally with markup in templates/views/<name>.html.

The scripts are the registry: the config check, the page and the static assets all read VIEWS,
so a new view is one new file.
"""

from __future__ import annotations

from pathlib import Path

VIEWS_DIR = Path(__file__).resolve().parent / "static" / "views"

#: the views the page knows, by name; a panel naming no view gets its feed's `default_view`
VIEWS: tuple[str, ...] = tuple(sorted(path.stem for path in VIEWS_DIR.glob("*.js")))
FALLBACK = "json"  # the view of a panel whose feed suggests one the page does not know
