"""Helpers for testing flows: counting sources, a recording sink, runs on a virtual clock,
and conformance checks for the sources and sinks you write on :mod:`aflow.abc`.

These are part of the public API, for your own tests of flows built with aflow.
"""

from .clock import VirtualClock as VirtualClock
from .clock import from_schedule as from_schedule
from .clock import run_virtual as run_virtual
from .fakes import CountingSource as CountingSource
from .fakes import FakeSink as FakeSink
from .sinks import check_sink as check_sink
from .sources import check_source as check_source

__all__ = [
    "CountingSource",
    "FakeSink",
    "VirtualClock",
    "check_sink",
    "check_source",
    "from_schedule",
    "run_virtual",
]
