"""CSV decoding (aflow/codecs/csv.py): decode_csv on lines given as chunks."""

from __future__ import annotations

import numpy as np
import pytest

import aflow as af

pytestmark = pytest.mark.anyio


async def test_numpy_csv_engine_keeps_hash_signs_and_isolates_open_quotes() -> None:
    dt = np.dtype([("a", "U10"), ("b", "i8")])
    dead: list[af.FailedItem] = []
    lines = [b"#x,1\n", b'"y,2\n', b'z",3\n', b"w,4\n"]
    stage = af.decode_csv(dt, engine="numpy", on_error=af.dead_letter(dead))
    got = (await (af.from_iterable(lines) | stage).run()).value
    # the open quote is reported on its own line; nothing is silently merged
    assert got.tolist() == [("#x", 1), ('z"', 3), ("w", 4)]
    assert [d.item for d in dead] == [b'"y,2\n']


async def test_header_of_lines_given_as_chunks() -> None:
    dt = np.dtype([("a", "i8"), ("b", "f8")])
    flow = af.from_iterable(["a,b", "1,2.5", "3,4.5"]) | af.decode_csv(dt, header=True)
    assert (await flow.run()).value.tolist() == [(1, 2.5), (3, 4.5)]
