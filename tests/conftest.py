"""Shared fixtures.

Backend-neutral tests are marked ``pytest.mark.anyio`` and run once per backend through
anyio's ``anyio_backend`` parametrization (asyncio and trio); asyncio-only tests use
pytest-asyncio in strict mode (``pytest.mark.asyncio``). Neither plugin runs in auto mode.

An anyio test also marked ``pytest.mark.virtual_time`` runs on both backends on the
virtual clock of :class:`aflow.testing.VirtualClock` (the marker's arguments go to it):
sleeps and timeouts take no real time, and the clock moves only once every task waits.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import pytest
from hypothesis import settings

# Where PYTHONDONTWRITEBYTECODE is set, every process of the suite compiles aflow from
# source: pytest's rewritten test modules (4 s of collection) and each of the dozens of
# Python subprocesses the tests start (0.35 s of CPU apiece). The suite keeps the bytecode
# Python would otherwise write (in the tree's __pycache__ folders, ignored by git).
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

from aflow.testing import VirtualClock  # noqa: E402  (after the bytecode switch)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str | tuple[str, dict[str, Any]]:
    backend = str(request.param)
    marker = request.node.get_closest_marker("virtual_time")
    if marker is None:
        return backend
    clock = VirtualClock(*marker.args, backend=backend, **marker.kwargs)
    return backend, clock.backend_options()


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """pytest-timeout's "thread" method (see pyproject.toml), naming the test that ran out
    of time before it dumps every thread's stack and ends the session."""
    if settings.method != "thread":
        return None
    import pytest_timeout

    def expire() -> None:
        sys.stderr.write(f"\n{item.nodeid}: still running after {settings.timeout} s\n")
        pytest_timeout.timeout_timer(item, settings)

    timer = threading.Timer(settings.timeout, expire)
    timer.daemon = True

    def cancel() -> None:
        timer.cancel()
        timer.join()

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # what pytest-timeout calls
    timer.start()
    return True


# CI runs the property tests on a fixed set of examples (reproducible); locally they explore.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """With ``AFLOW_NO_SKIPS=1`` (set by CI), a skipped test fails: a test that needs a
    tool or server (nginx, nc, socat, logrotate) must run where CI runs, never be skipped
    there silently. On a user's machine without them, they skip with the reason."""
    outcome = yield
    report = outcome.get_result()
    if (
        os.environ.get("AFLOW_NO_SKIPS") == "1"
        and report.skipped
        and not hasattr(report, "wasxfail")
    ):
        report.outcome = "failed"
        report.longrepr = f"skipped where CI must run it: {report.longrepr}"
