"""JSON lines decoding (aflow/codecs/jsonl.py): decode_jsonl field types."""

from __future__ import annotations

import numpy as np
import pytest

import aflow as af

pytestmark = pytest.mark.anyio


async def test_jsonl_float_fields_take_numbers_only() -> None:
    dt = np.dtype([("v", "f8")])
    dead: list[af.FailedItem] = []
    lines = [b'{"v": 1}\n', b'{"v": "1.5"}\n', b'{"v": null}\n', b'{"v": true}\n', b'{"v": 2.5}\n']
    stage = af.decode_jsonl(dt, on_error=af.dead_letter(dead))
    got = (await (af.from_iterable(lines) | stage).run()).value
    assert got["v"].tolist() == [1.0, 2.5]
    assert len(dead) == 3
