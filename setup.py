"""The compiled part of aflow: the access log scanner (``aflow/codecs/_logscan.c``).

Optional: where no C compiler is found, the package installs without it and
``read_log`` uses its pyarrow or NumPy engines (the same rows, slower). Everything else
is in ``pyproject.toml``.
"""

import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O3"]
setup(
    ext_modules=[
        Extension(
            "aflow.codecs._logscan",
            ["aflow/codecs/_logscan.c"],
            extra_compile_args=flags,
            optional=True,
        )
    ]
)
