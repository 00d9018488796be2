"""Where plugins come from, one mechanism for every kind: built-ins named here, and what installed
packages register under an entry-point group (`dashboard.feeds`, `dashboard.brokers`,
`dashboard.dialects`, `dashboard.views`). A registry names targets (`module:attr`, or a view's
`package:path.js`) and imports one only when it is loaded (listing names imports nothing), so this
module sits at the bottom; loading is the one way a lower layer reaches a plugin above it, at run
time and by name.
"""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import inspect
import pkgutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from importlib.resources.abc import Traversable
from typing import Any

from dashboard.errors import did_you_mean


@dataclass(frozen=True)
class Plugin:
    """One installed plugin: its name, where it came from, and what loading it imports."""

    name: str
    origin: str  # "built-in" or "entry point"
    target: str  # "module:attr"; a feed may name a module defining one Feed subclass


class Registry:
    """The plugins of one kind. A built-in wins over an entry point of the same name, so a package
    cannot replace one by accident. Loading checks what it got against `base` ("module:Class"):
    an instance of it (`instance=True`, dialects) or a subclass (feeds, brokers)."""

    def __init__(
        self,
        kind: str,
        group: str,
        built_in: Callable[[], dict[str, str]],
        base: str,
        *,
        instance: bool = False,
    ) -> None:
        self.kind = kind  # for messages: "feed type", "broker", "dialect"
        self.group = group
        self._built_in = built_in
        self.base = base
        self.instance = instance

    def plugins(self) -> dict[str, Plugin]:
        """Every installed plugin by name, sorted."""
        found = {ep.name: Plugin(ep.name, "entry point", ep.value) for ep in entry_points(group=self.group)}
        found |= {name: Plugin(name, "built-in", target) for name, target in self._built_in().items()}
        return dict(sorted(found.items()))

    def names(self) -> list[str]:
        return list(self.plugins())

    def load(self, name: str) -> Any:
        """The plugin `name`, imported and checked; KeyError when none is installed by that name,
        TypeError when what it names is not a `base`."""
        plugin = self.plugins().get(name)
        if plugin is None:
            raise KeyError(f"no {self.kind} named {name!r}; installed: {', '.join(self.names()) or 'none'}")
        return self.load_target(plugin.target)

    def load_target(self, target: str) -> Any:
        """What `target` names, checked against `base` (a file of a package when `base` is a suffix
        such as ".js": the target is then "package:path/in/it.js"); a bare module (no `:attr`) stands for the
        one `base` subclass it defines. ImportError, AttributeError or TypeError saying what is
        wrong."""
        if self.base.startswith("."):
            return package_file(target, self.base)
        found = import_target(target)
        base = import_target(self.base)
        if inspect.ismodule(found) and not self.instance:
            defined = [
                obj
                for obj in vars(found).values()
                if inspect.isclass(obj) and issubclass(obj, base) and obj.__module__ == found.__name__
            ]
            if len(defined) != 1:
                raise TypeError(f"module {target!r} must define exactly one {base.__name__} subclass")
            found = defined[0]
        if self.instance:
            fits = isinstance(found, base)
        else:
            fits = inspect.isclass(found) and issubclass(found, base)
        if not fits:
            raise TypeError(f"{target!r} is not a {self.base.replace(':', '.')} {self._what()}")
        return found

    def _what(self) -> str:
        return "instance" if self.instance else "subclass"


def import_target(target: str) -> Any:
    """The object a `module:attr` target names (the module itself without `:attr`)."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise
    except SyntaxError as exc:  # the user's own module: where, not a traceback
        raise ImportError(f"{exc.msg} ({exc.filename}:{exc.lineno}:{exc.offset})") from exc
    except Exception as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        raise ImportError(
            f"importing it raised {type(exc).__name__}: {exc} ({frame.filename}:{frame.lineno})"
        ) from exc
    if not attr:
        return module
    try:
        return getattr(module, attr)
    except AttributeError:
        public = [name for name in vars(module) if not name.startswith("_")]
        raise AttributeError(
            f"module {module_name!r} has no attribute {attr!r}{did_you_mean(attr, public)}"
        ) from None


def package_file(target: str, suffix: str) -> Traversable:
    """The file a "package:path" target names inside an installed package; FileNotFoundError or
    TypeError saying what is wrong."""
    package, _, path = target.partition(":")
    if not path.endswith(suffix):
        raise TypeError(f"{target!r} is not a {suffix} file")
    found = importlib.resources.files(package).joinpath(path)
    if not found.is_file():
        raise FileNotFoundError(f"{target!r}: package {package!r} has no file {path!r}")
    return found


def _view_scripts() -> dict[str, str]:
    folder = importlib.resources.files("dashboard").joinpath("static/views")
    return {
        item.name.removesuffix(".js"): f"dashboard:static/views/{item.name}"
        for item in folder.iterdir()
        if item.name.endswith(".js")
    }


def _modules(package: str, attr: str = "") -> dict[str, str]:
    """A package's public modules (not `_private` ones) as name -> target, without importing them."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.submodule_search_locations is None:
        return {}
    return {
        info.name: f"{package}.{info.name}{':' + attr if attr else ''}"
        for info in pkgutil.iter_modules(spec.submodule_search_locations)
        if not info.name.startswith("_")
    }


FEEDS = Registry(
    "feed type", "dashboard.feeds", lambda: _modules("feeds"), "dashboard.feed:Feed", instance=False
)
BROKERS = Registry(
    "broker",
    "dashboard.brokers",  # named by URL scheme
    lambda: {
        "memory": "dashboard.broker.memory:MemoryBroker",
        "redis": "dashboard.broker.redis:RedisBroker",
        "rediss": "dashboard.broker.redis:RedisBroker",
        "sqlite": "dashboard.broker.sqlite:SqliteBroker",
        "redis+sentinel": "dashboard.broker.redis.sentinel:SentinelRedisBroker",
        "rediss+sentinel": "dashboard.broker.redis.sentinel:SentinelRedisBroker",
    },
    "dashboard.broker:Broker",
    instance=False,
)
DIALECTS = Registry(
    "dialect",
    "dashboard.dialects",  # named by a provider's `type`
    lambda: _modules("dashboard.relay.dialects", "dialect"),
    "dashboard.relay.dialects:Dialect",
    instance=True,
)
VIEWS = Registry(
    "view",
    "dashboard.views",  # named as panels' `view:`, valued "package:path/to/name.js"
    _view_scripts,
    ".js",
)
