"""The PostgreSQL sink against a real server (127.0.0.1:5432, trust auth, database ``test``,
user ``postgres``): types, commits, error policies, and a connection killed mid-run."""

from __future__ import annotations

import asyncio
import os
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import numpy as np
import pytest
import pytest_asyncio

import aflow as af

asyncpg = pytest.importorskip("asyncpg", reason="the postgres extra (asyncpg) is not installed")

from aflow.connectors import to_postgres  # noqa: E402
from aflow.connectors._pg_copy import create_columns  # noqa: E402

DSN = os.environ.get("AFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest_asyncio.fixture
async def db() -> AsyncIterator[Any]:
    try:
        conn = await asyncpg.connect(DSN, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.skip(f"PostgreSQL unreachable at {DSN}: {exc!r}")
    try:
        yield conn
    finally:
        await conn.close()


@pytest_asyncio.fixture
async def table(db: Any) -> AsyncIterator[str]:
    name = f"aflow_test_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        await db.execute(f'DROP TABLE IF EXISTS "{name}"')


DT = np.dtype(
    [
        ("id", "i8"),
        ("small", "i2"),
        ("u", "u4"),
        ("x", "f8"),
        ("y", "f4"),
        ("ok", "?"),
        ("label", "U8"),
        ("raw", "S4"),
        ("ts", "M8[ns]"),
        ("day", "M8[D]"),
    ]
)


def rows(n: int, start: int = 0) -> np.ndarray:
    ids = np.arange(start, start + n)
    out = np.empty(n, DT)
    out["id"] = ids
    out["small"] = (ids % 100) - 50
    out["u"] = ids * 3
    out["x"] = ids / 4
    out["y"] = ids / 8
    out["ok"] = ids % 2 == 0
    out["label"] = [f"é{i % 1000}" for i in ids]
    out["raw"] = [b"r%d" % (i % 10) for i in ids]
    out["ts"] = np.datetime64("2024-01-02T03:04:05.123456", "ns") + ids * np.timedelta64(1, "s")
    out["day"] = np.datetime64("2024-02-29") + ids
    return out


@pytest.mark.asyncio
async def test_rows_round_trip_with_every_type(db: Any, table: str) -> None:
    data = rows(1000)
    data["ts"][3] = np.datetime64("NaT")
    result = await (af.from_array(data, 300) | to_postgres(DSN, table, create=True)).run()
    assert result.value == 1000
    types = await db.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = $1 ORDER BY ordinal_position",
        table,
    )
    assert [(r[0], r[1]) for r in types] == [
        ("id", "bigint"),
        ("small", "smallint"),
        ("u", "bigint"),
        ("x", "double precision"),
        ("y", "real"),
        ("ok", "boolean"),
        ("label", "text"),
        ("raw", "bytea"),
        ("ts", "timestamp without time zone"),
        ("day", "date"),
    ]
    got = await db.fetch(f'SELECT * FROM "{table}" ORDER BY id')
    assert len(got) == 1000
    for i in (0, 3, 7, 999):
        r = got[i]
        assert r["id"] == i
        assert r["small"] == (i % 100) - 50
        assert r["u"] == 3 * i
        assert r["x"] == i / 4
        assert r["y"] == pytest.approx(i / 8)
        assert r["ok"] is (i % 2 == 0)
        assert r["label"] == f"é{i}"
        assert r["raw"] == b"r%d" % (i % 10)
        assert str(r["day"]) == str(np.datetime64("2024-02-29") + i)
        if i == 3:
            assert r["ts"] is None
        else:
            want = np.datetime64("2024-01-02T03:04:05.123456") + np.timedelta64(i, "s")
            assert np.datetime64(r["ts"], "us") == want


@pytest.mark.asyncio
async def test_an_existing_table_with_other_column_types(db: Any, table: str) -> None:
    await db.execute(
        f'CREATE TABLE "{table}" (n integer, v double precision, name varchar(10), '
        "at timestamptz, extra text DEFAULT 'd')"
    )
    data = np.array(
        [(1, 2.5, "a", np.datetime64("2024-01-01T00:00:00")), (2, -1, "bé", "NaT")],
        [("n", "i8"), ("v", "f4"), ("name", "U3"), ("at", "M8[s]")],
    )
    result = await (af.from_arrays([data]) | to_postgres(DSN, table)).run()
    assert result.value == 2
    got = await db.fetch(f'SELECT n, v, name, at, extra FROM "{table}" ORDER BY n')
    assert [(r["n"], r["v"], r["name"], r["extra"]) for r in got] == [
        (1, 2.5, "a", "d"),
        (2, -1.0, "bé", "d"),
    ]
    assert got[0]["at"].isoformat() == "2024-01-01T00:00:00+00:00"
    assert got[1]["at"] is None


@pytest.mark.asyncio
async def test_clear_errors_for_what_cannot_be_written(db: Any, table: str) -> None:
    with pytest.raises(TypeError, match=r"field 'z' of dtype complex128 has no PostgreSQL type"):
        create_columns(np.dtype([("a", "i4"), ("z", "c16")]))
    with pytest.raises(TypeError, match=r"uint64 has no PostgreSQL type \(cast it to int64"):
        create_columns(np.dtype([("a", "u8")]))
    bad = np.zeros(2, [("a", "i4"), ("z", "c16")])
    with pytest.raises(TypeError, match="complex128 has no PostgreSQL type"):
        await (af.from_arrays([bad]) | to_postgres(DSN, table, create=True)).run()
    with pytest.raises(TypeError, match=f"table {table} does not exist; create it"):
        await (af.from_arrays([np.zeros(2, [("a", "i4")])]) | to_postgres(DSN, table)).run()
    await db.execute(f'CREATE TABLE "{table}" (a integer, flag boolean)')
    with pytest.raises(TypeError, match=r"has no column 'b' \(its columns: a, flag\)"):
        await (af.from_arrays([np.zeros(2, [("b", "i4")])]) | to_postgres(DSN, table)).run()
    with pytest.raises(TypeError, match=r"field 'flag' of dtype float64 cannot be written"):
        await (af.from_arrays([np.zeros(2, [("flag", "f8")])]) | to_postgres(DSN, table)).run()
    with pytest.raises(TypeError, match="takes structured arrays"):
        await (af.from_iterable([1, 2]) | to_postgres(DSN, table)).run()
    dsn = "postgresql://postgres@127.0.0.1:1/test"
    with pytest.raises(ConnectionError, match="cannot connect to PostgreSQL"):
        await (af.from_arrays([np.zeros(2, [("a", "i4")])]) | to_postgres(dsn, table)).run()


@pytest.mark.asyncio
async def test_rejected_batches_follow_the_error_policy(db: Any, table: str) -> None:
    await db.execute(f'CREATE TABLE "{table}" (id integer PRIMARY KEY, name varchar(3))')
    dt = [("id", "i8"), ("name", "U5")]
    batches = [
        np.array([(1, "a"), (2, "b")], dt),
        np.array([(3, "toolong")], dt),  # too long for varchar(3)
        np.array([(4, "d")], dt),
        np.array([(2**40, "e")], dt),  # out of integer's range
        np.array([(1, "dup")], dt),  # primary key taken
        np.array([(5, "f")], dt),
    ]
    dead: list[Any] = []
    sink = to_postgres(DSN, table, commit_rows=100, on_error=af.dead_letter(dead))
    result = await (af.from_arrays(batches, name="in") | sink).run()
    assert result.value == 4
    got = await db.fetch(f'SELECT id FROM "{table}" ORDER BY id')
    assert [r[0] for r in got] == [1, 2, 4, 5]
    assert [d.item["id"].tolist() for d in dead] == [[3], [2**40], [1]]
    assert "value too long" in str(dead[0].error)
    assert "out of the range of PostgreSQL int4" in str(dead[1].error)
    assert "duplicate key" in str(dead[2].error)
    assert [str(d.provenance) for d in dead] == ["in rows 2..3", "in rows 4..5", "in rows 5..6"]
    assert result.statistics.stages[-1].errors == 3
    with pytest.raises(ValueError, match=r"PostgreSQL rejected a batch.*duplicate key"):
        await (af.from_arrays([np.array([(4, "x")], dt)]) | to_postgres(DSN, table)).run()


@pytest.mark.asyncio
async def test_commits_per_batch_or_per_rows(db: Any, table: str) -> None:
    seen: list[int] = []

    async def batches() -> AsyncIterator[np.ndarray]:
        for i in range(6):
            if i:  # what a second connection sees before batch i is written
                seen.append(await db.fetchval(f'SELECT count(*) FROM "{table}"'))
            yield rows(10, 10 * i)

    await db.execute(f'CREATE TABLE "{table}" (id bigint, x double precision)')
    dt = [("id", "i8"), ("x", "f8")]
    flow = af.from_arrays(batches) | af.map(lambda a: a[["id", "x"]].astype(dt))
    await (flow | to_postgres(DSN, table, buffer=1)).run()
    # one transaction per batch: the sink may be at most a batch or two behind the source
    assert seen == sorted(seen)
    assert seen[-1] >= 30
    await db.execute(f'TRUNCATE "{table}"')
    seen.clear()
    result = await (flow | to_postgres(DSN, table, commit_rows=25, buffer=1)).run()
    assert result.value == 60
    assert set(seen) <= {0, 30}  # rows 0..29 commit together, then the rest at the end
    assert await db.fetchval(f'SELECT count(*) FROM "{table}"') == 60


@pytest.mark.asyncio
async def test_trio_is_refused_clearly(table: str) -> None:
    async def main() -> None:
        await (af.from_arrays([rows(2)]) | to_postgres(DSN, table, create=True)).run()

    with pytest.raises(RuntimeError, match="asyncpg runs on asyncio only, not trio"):
        await anyio.to_thread.run_sync(lambda: anyio.run(main, backend="trio"))


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_killed_connection_loses_and_duplicates_nothing(db: Any, table: str) -> None:
    """Backends of the sink terminated mid-run from a second connection, ten times: every
    row lands exactly once (open transactions roll back and are written again)."""
    await db.execute(f'CREATE TABLE "{table}" (id bigint, x double precision)')
    total, size = 400_000, 2_000
    dt = [("id", "i8"), ("x", "f8")]

    async def batches() -> AsyncIterator[np.ndarray]:
        for start in range(0, total, size):
            out = np.empty(size, dt)
            out["id"] = np.arange(start, start + size)
            out["x"] = out["id"] * 0.5
            yield out
            await anyio.sleep(0.002)

    kills = 0

    async def killer() -> None:
        nonlocal kills
        while kills < 10:
            await anyio.sleep(0.07)
            killed = await db.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND application_name = 'aflow_pg_fault'"
            )
            kills += killed

    sink = to_postgres(
        DSN + "?application_name=aflow_pg_fault", table, commit_rows=7_000, backoff=0.01
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(killer)
        result = await (af.from_arrays(batches) | sink).run()
        tg.cancel_scope.cancel()
    assert kills >= 3, "the run ended before the connection was killed often enough"
    assert result.value == total
    assert result.statistics.stages[-1].retries >= 3  # reconnections
    count, distinct, low, high = await db.fetchrow(
        f'SELECT count(*), count(DISTINCT id), min(id), max(id) FROM "{table}"'
    )
    assert (count, distinct, low, high) == (total, total, 0, total - 1)


@pytest.mark.asyncio
async def test_reconnecting_gives_up_after_reconnect_timeout(db: Any, table: str) -> None:
    """The sink connects through a proxy; the proxy then goes away and nothing listens on
    its port: the sink retries for ``reconnect_timeout`` seconds, then raises a
    ReconnectError naming the server and the table."""
    await db.execute(f'CREATE TABLE "{table}" (id bigint, x double precision)')
    url = urllib.parse.urlsplit(DSN)
    conns: list[asyncio.StreamWriter] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 5432)
        conns.extend([writer, up_writer])
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dsn = urllib.parse.urlunsplit(url._replace(netloc=f"{url.username}@127.0.0.1:{port}"))
    written = anyio.Event()

    async def batches() -> AsyncIterator[np.ndarray]:
        for start in range(0, 1_000_000, 100):
            out = np.empty(100, [("id", "i8"), ("x", "f8")])
            out["id"] = np.arange(start, start + 100)
            out["x"] = 0.5
            yield out
            if start >= 500:
                written.set()
            await anyio.sleep(0.01)

    sink = to_postgres(dsn, table, reconnect_timeout=1.0, backoff=0.05, max_backoff=0.2)

    async def cut() -> None:
        await written.wait()
        with anyio.fail_after(10):  # under load the sink is behind the source
            count = f'SELECT count(*) FROM "{table}"'
            while await db.fetchval(count) < 500:  # noqa: ASYNC110 - polls the table
                await anyio.sleep(0.01)
        server.close()  # nothing listens on the port any more
        for w in conns:
            w.transport.abort()
        await server.wait_closed()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(cut)
            with pytest.raises(af.ReconnectError) as info:
                await (af.from_arrays(batches) | sink).run()
    assert isinstance(info.value, ConnectionError)
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert repr(table) in message
    assert "reconnect_timeout=1.0" in message
    assert await db.fetchval(f'SELECT count(*) FROM "{table}"') >= 500  # written before the cut
