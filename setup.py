"""The compiled part of aflow: the access log and CSV scanners (``aflow/codecs/*.c``).

Optional: where no C compiler is found, the package installs without them and
``read_log`` and ``read_csv`` use their pyarrow or NumPy engines (the same rows,
slower). Everything else is in ``pyproject.toml``.
"""

import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O3"]
setup(
    ext_modules=[
        Extension(
            f"aflow.codecs.{name}",
            [f"aflow/codecs/{name}.c"],
            extra_compile_args=flags,
            optional=True,
        )
        for name in ("_logscan", "_csvscan")
    ]
)
