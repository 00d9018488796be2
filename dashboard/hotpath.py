"""The hot path: the modules that run for every relayed chunk, which setup.py compiles to C with
Cython when the machine can (`pip install -e .` builds them in place). A compiled module is then
imported instead of its Python source; without a C compiler the same modules run as Python, and
the startup line says so. `DASHBOARD_HOT_PATH=python` runs the Python source where they are
compiled too (to compare the two, or to rule the compiled form out). Only the standard library
here: setup.py reads MODULES before anything else is installed."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType

MODULES = ("dashboard.relay.forward", "dashboard.relay.transport", "dashboard.web.direct")
VARIABLE = "DASHBOARD_HOT_PATH"

log = logging.getLogger("dashboard")


class _Source(importlib.abc.MetaPathFinder):
    """Finds the hot path's modules as Python source, past their compiled form."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name not in MODULES or not path:
            return None
        finder = importlib.machinery.FileFinder(path[0], (importlib.machinery.SourceFileLoader, [".py"]))
        return finder.find_spec(name, target)


def choose() -> None:
    """Before anything imports the hot path (dashboard/__init__.py): its Python source if asked."""
    if os.environ.get(VARIABLE) == "python" and not any(isinstance(f, _Source) for f in sys.meta_path):
        sys.meta_path.insert(0, _Source())


def python_modules() -> list[str]:
    """The hot path's modules that run from their Python source: none when all are compiled."""
    compiled = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return [name for name in MODULES if not str(importlib.import_module(name).__file__).endswith(compiled)]


def log_hot_path() -> None:
    """The startup line saying whether the hot path runs compiled."""
    left, asked = python_modules(), os.environ.get(VARIABLE)
    if asked not in (None, "", "python"):
        log.warning("%s=%s is not understood (only `python` is): ignored", VARIABLE, asked)
    if not left:
        log.info("hot path compiled: %s", ", ".join(MODULES))
    elif asked == "python":
        log.info("hot path runs as Python, as %s=python asks", VARIABLE)
    else:
        log.warning(
            "hot path runs as Python, the slower path: %s not compiled (pip install -e . builds them"
            " where a C compiler and the Python headers are; docs/performance.md)",
            ", ".join(left),
        )
