"""A run's context (aflow/_core/context.py): stage numbering and names."""

from __future__ import annotations

import anyio
import pytest

import aflow as af

pytestmark = pytest.mark.anyio


async def ident(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return x


async def test_stage_names_are_unique() -> None:
    flow = af.from_iterable(range(3)) | af.broadcast(
        af.map(lambda x: x) | af.collect(), af.map(ident) | af.collect()
    )
    names = [s.name for s in (await flow.run()).statistics.stages]
    assert len(names) == len(set(names))
