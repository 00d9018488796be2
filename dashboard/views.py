"""The panel views: one script each (`<name>.js`, which registers `window.Dashboard.views.<name>`):
the built-in ones in dashboard/static/views/ (optionally with markup in templates/views/<name>.html),
and those packages register under the entry-point group `dashboard.views` (dashboard.plugins.VIEWS).
The config check, the page and the route serving the scripts (`/views/<name>.js`) all read VIEWS.
"""

from __future__ import annotations

from dashboard.plugins import VIEWS as REGISTRY

#: the views the page knows, by name; a panel naming no view gets its feed's `default_view`
VIEWS: tuple[str, ...] = tuple(REGISTRY.names())
FALLBACK = "json"  # the view of a panel whose feed suggests one the page does not know


def scripts() -> dict[str, bytes]:
    """Each view's script, read once when the server starts; a view whose file cannot be read is
    left out (and said so by `dashboard check`, which loads it the same way)."""
    found: dict[str, bytes] = {}
    for name in VIEWS:
        try:
            found[name] = REGISTRY.load(name).read_bytes()
        except (OSError, TypeError, ModuleNotFoundError, KeyError):
            continue
    return found
