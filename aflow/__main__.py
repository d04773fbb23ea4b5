"""``python -m aflow`` is the ``aflow`` command."""

import sys

from .cli import main

sys.exit(main())
