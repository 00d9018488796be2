"""The hot path compiled to C, when this machine can (dashboard/hotpath.py, docs/performance.md).

Cython compiles each module from its Python source, with the annotations read as Python reads them
(`annotation_typing` off: the compiled module behaves as the source does); `forward.pxd` types the
forwarder's fields. Each extension is `optional`: without a C compiler the install goes on with a
warning and the modules run as Python. Everything else is in pyproject.toml.
"""

import runpy

from Cython.Build import cythonize
from setuptools import Extension, setup

MODULES = runpy.run_path("dashboard/hotpath.py")["MODULES"]

setup(
    ext_modules=cythonize(
        [Extension(name, [name.replace(".", "/") + ".py"], optional=True) for name in MODULES],
        compiler_directives={"language_level": 3, "annotation_typing": False},
        quiet=True,
    )
)
