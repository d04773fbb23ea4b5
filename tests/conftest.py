"""Shared fixtures.

Backend-neutral tests are marked ``pytest.mark.anyio`` and run once per backend through
anyio's ``anyio_backend`` parametrization (asyncio and trio); asyncio-only tests use
pytest-asyncio in strict mode (``pytest.mark.asyncio``). Neither plugin runs in auto mode.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# CI runs the property tests on a fixed set of examples (reproducible); locally they explore.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
