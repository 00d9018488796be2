"""The hot path compiled to C, when this machine can (dashboard/hotpath.py, docs/performance.md).

Cython compiles each module from its Python source, with the annotations read as Python reads them
(`annotation_typing` off: the compiled module behaves as the source does); `forward.pxd` types the
forwarder's fields. A module that does not compile (no C compiler, no Python headers) is left out
with a warning and runs as Python. Everything else is in pyproject.toml.
"""

import runpy

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODULES = runpy.run_path("dashboard/hotpath.py")["MODULES"]


class BuildWhereItCan(build_ext):
    # Not Extension(optional=True): setuptools misses the compiler's error by its class, and then
    # copies the missing file anyway.
    def build_extensions(self) -> None:
        for ext in list(self.extensions):
            try:
                self.build_extension(ext)
            except Exception as exc:
                self.warn(f"{ext.name} is not compiled and runs as Python: {exc}")
                self.extensions.remove(ext)


setup(
    cmdclass={"build_ext": BuildWhereItCan},
    ext_modules=cythonize(
        [Extension(name, [name.replace(".", "/") + ".py"]) for name in MODULES],
        compiler_directives={"language_level": 3, "annotation_typing": False},
        quiet=True,
    ),
)
