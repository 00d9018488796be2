"""The hot path: the modules that run for every relayed chunk, which setup.py compiles to C with
Cython when the machine can (`pip install -e .` builds them in place). A compiled module is then
imported instead of its Python source; without a C compiler the same modules run as Python, and
the startup line says so. Only the standard library here: setup.py reads MODULES before anything
else is installed."""

from __future__ import annotations

import importlib
import importlib.machinery
import logging

MODULES = ("dashboard.relay.forward", "dashboard.relay.transport", "dashboard.web.direct")

log = logging.getLogger("dashboard")


def python_modules() -> list[str]:
    """The hot path's modules that run from their Python source: none when all are compiled."""
    compiled = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return [name for name in MODULES if not str(importlib.import_module(name).__file__).endswith(compiled)]


def log_hot_path() -> None:
    """The startup line saying whether the hot path runs compiled."""
    left = python_modules()
    if not left:
        log.info("hot path compiled: %s", ", ".join(MODULES))
    else:
        log.warning(
            "hot path runs as Python, the slower path: %s not compiled (pip install -e . builds them"
            " when a C compiler and the Python headers are there; docs/performance.md)",
            ", ".join(left),
        )
