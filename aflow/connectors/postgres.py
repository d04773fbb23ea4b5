"""A PostgreSQL sink: structured arrays written with binary COPY, in transactions.

Needs the ``postgres`` extra (asyncpg, which runs on asyncio only). Each batch is turned
into PostgreSQL's binary COPY format by NumPy (see :mod:`aflow.connectors._pg_copy`),
one vectorized pass per column, and sent with one ``COPY ... FROM STDIN`` inside the open
transaction. The transaction commits after each batch by default, or after
``commit_rows`` rows / ``commit_seconds`` seconds, at the end of the run, and at each
commit of the run's delivery barriers when the run has them.

Connection loss (a restarted server, a terminated backend, a network cut) rolls the open
transaction back on the server: the sink reconnects with capped backoff and writes the
transaction's batches again, which it holds until they are committed. A commit whose
outcome is unknown (the connection broke during ``COMMIT``) is settled with
``txid_status``: nothing committed is lost, nothing is committed twice.
"""

from __future__ import annotations

import logging
import math
import time
import urllib.parse
from typing import Any

import anyio
import asyncpg
import numpy as np
from numpy.typing import NDArray

from ..abc import (
    Batch,
    Context,
    ErrorPolicy,
    SinkOperator,
    SinkWriter,
    StageCounters,
    apply_policy,
    check_policy,
)
from ..errors import ReconnectError
from ..flow import Sink
from ._common import Backoff, require_asyncio
from ._pg_copy import create_columns, encode_copy, plan_cells, quote_ident

__all__ = ["to_postgres"]

logger = logging.getLogger("aflow")

THREAD_ROWS = 1 << 16
"""Batches of at least this many rows are encoded in a worker thread."""


def _server(dsn: str) -> str:
    """``host:port`` of a connection string (no user or password), for messages."""
    try:
        url = urllib.parse.urlsplit(dsn)
        host, port = url.hostname, url.port
    except ValueError:
        host, port = None, None
    return f"{host or '(the default host)'}:{port or 5432}"


def _split_table(table: str) -> tuple[str | None, str]:
    schema, dot, name = table.partition(".")
    return (schema, name) if dot else (None, table)


class _Lost(Exception):
    """The connection broke; the open transaction is gone."""


_FAILURES = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions._base.InternalClientError,
)
"""What asyncpg raises when a statement fails, for the server's or the network's reasons."""


def _broken(conn: asyncpg.Connection, exc: BaseException) -> bool:
    """Whether ``exc`` (one of :data:`_FAILURES`) leaves the connection unusable: anything
    but an error the server reported about the data on a connection still open (a
    connection or operator-intervention error, SQLSTATE classes 08 and 57, ends it)."""
    if conn.is_closed() or not isinstance(exc, asyncpg.PostgresError):
        return True
    state = str(getattr(exc, "sqlstate", "") or "")
    return state.startswith(("08", "57"))


class _PgWriter(SinkWriter[Any, int]):
    def __init__(self, op: _PgOp) -> None:
        self.op = op
        self.conn: asyncpg.Connection | None = None
        self.counters: StageCounters | None = None
        self.cells: list[Any] | None = None
        self.dtype: np.dtype[Any] | None = None
        self.columns: dict[str, str] = {}
        self.pending: list[tuple[bytes, int]] = []  # the open transaction's COPY payloads
        self.in_tx = False
        self.tx_started = 0.0
        self.committed = 0
        self.commits = 0
        self.reconnects = 0

    def attach(self, counters: StageCounters, producer: anyio.CancelScope) -> None:
        self.counters = counters

    # -- connection --------------------------------------------------------------------

    async def open(self) -> None:
        require_asyncio(self.op.name, "asyncpg")
        try:
            self.conn = await self._connect()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise ConnectionError(
                f"{self.op.name}: cannot connect to PostgreSQL ({exc!r}); check the dsn and "
                "that the server is up"
            ) from exc

    async def _connect(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            self.op.dsn, timeout=self.op.connect_timeout
        )
        try:
            if self.op.create and self.dtype is not None:
                await self._create(conn, self.dtype)
            if self.dtype is not None:
                self.columns = await self._column_types(conn)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close(timeout=1)
            raise
        return conn

    async def _reconnect(self) -> asyncpg.Connection:
        """A new connection, after capped backoff between failed attempts, for at most
        ``reconnect_timeout`` seconds; then :class:`~aflow.ReconnectError`."""
        await self._drop()
        op = self.op
        backoff = Backoff(op.backoff, op.max_backoff)
        what = f"{op.name}: cannot reconnect"
        try:
            conn = await backoff.retry(self._connect, _FAILURES, op.reconnect_timeout, what)
        except _FAILURES as exc:
            # every failed attempt but the last waited once
            raise self._gave_up(backoff.attempts + 1, exc) from exc
        self.reconnects += 1
        if self.counters is not None:
            self.counters.retries += 1
        self.conn = conn
        return conn

    def _gave_up(self, attempts: int, exc: BaseException) -> ReconnectError:
        op = self.op
        held = sum(rows for _, rows in self.pending)
        return ReconnectError(
            f"{op.name}: lost the connection to PostgreSQL at {_server(op.dsn)} (table "
            f"{op.table!r}) and could not reconnect within reconnect_timeout="
            f"{op.reconnect_timeout} s ({attempts} attempts; last: {exc!r}); the "
            f"{held} rows of the open transaction were rolled back by the server and are "
            "not written. Check that the server is up and reachable, then run again (with "
            "checkpoint= the run resumes from its last commit), or give a larger "
            "reconnect_timeout (None: retry forever)"
        )

    async def _drop(self) -> None:
        conn, self.conn = self.conn, None
        self.in_tx = False
        if conn is not None:
            conn.terminate()

    async def _create(self, conn: asyncpg.Connection, dtype: np.dtype[Any]) -> None:
        cols = ", ".join(f"{quote_ident(n)} {t}" for n, t in create_columns(dtype))
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {self._qualified()} ({cols})")

    def _qualified(self) -> str:
        schema, name = _split_table(self.op.table)
        return quote_ident(name) if schema is None else f"{quote_ident(schema)}.{quote_ident(name)}"

    async def _column_types(self, conn: asyncpg.Connection) -> dict[str, str]:
        try:
            rows = await conn.fetch(
                "SELECT a.attname, t.typname FROM pg_attribute a "
                "JOIN pg_type t ON t.oid = a.atttypid "
                "WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped "
                "ORDER BY a.attnum",
                self._qualified(),
            )
        except asyncpg.UndefinedTableError as exc:
            raise TypeError(
                f"{self.op.name}: table {self.op.table} does not exist; create it, or pass "
                "create=True to create it from the batches' dtype"
            ) from exc
        return {str(r["attname"]): str(r["typname"]) for r in rows}

    # -- transactions ------------------------------------------------------------------

    async def _run(self, payload: bytes) -> None:
        """COPY ``payload`` into the open transaction (opening one). Raises :class:`_Lost`
        when the connection broke, the server's error for bad data."""
        conn = self.conn
        if conn is None:
            raise _Lost("not connected")
        schema, name = _split_table(self.op.table)
        assert self.cells is not None
        try:
            if not self.in_tx:
                await conn.execute("BEGIN")
                self.in_tx = True
                self.tx_started = time.monotonic()
            await conn.copy_to_table(
                name,
                source=memoryview(payload),  # bytes would be taken for a path
                columns=[c.column for c in self.cells],
                schema_name=schema,
                format="binary",
                timeout=self.op.timeout,
            )
        except _FAILURES as exc:
            if _broken(conn, exc):
                raise _Lost(repr(exc)) from exc
            raise

    async def _replay(self) -> None:
        """Write the open transaction's batches again on a fresh transaction (after the
        connection broke, or the server rejected a batch and aborted it)."""
        while True:
            if self.conn is None:
                await self._reconnect()
            try:
                for payload, _ in self.pending:
                    await self._run(payload)
                return
            except _Lost as exc:
                logger.warning("%s: connection lost (%s); reconnecting", self.op.name, exc)
                await self._drop()

    async def _copy(self, payload: bytes, rows: int) -> None:
        """COPY one batch, surviving connection loss; the server's data errors raise (the
        open transaction then holds the batches before it again)."""
        while True:
            try:
                await self._run(payload)
            except _Lost as exc:
                logger.warning("%s: connection lost (%s); reconnecting", self.op.name, exc)
                await self._drop()
                await self._replay()
                continue
            except asyncpg.PostgresError:
                await self._rollback()
                await self._replay()
                raise
            self.pending.append((payload, rows))
            return

    async def _rollback(self) -> None:
        conn = self.conn
        if conn is not None and self.in_tx:
            try:
                await conn.execute("ROLLBACK")
            except _FAILURES:
                await self._drop()
        self.in_tx = False

    async def _commit(self) -> None:
        """Commit the open transaction, settling an unknown outcome with ``txid_status``."""
        while self.pending:
            if not self.in_tx:
                await self._replay()
            conn = self.conn
            assert conn is not None
            xid = None
            try:
                xid = await conn.fetchval("SELECT txid_current()")
                await conn.execute("COMMIT")
            except _FAILURES as exc:
                if not _broken(conn, exc):
                    raise
                logger.warning("%s: connection lost at commit (%r)", self.op.name, exc)
                await self._drop()
                if xid is not None and await self._committed(xid):
                    self._done()
                    return
                continue
            self.in_tx = False
            self._done()

    async def _committed(self, xid: int) -> bool:
        """Whether transaction ``xid`` committed, asked on a new connection."""
        while True:
            conn = await self._reconnect()
            try:
                status = await conn.fetchval("SELECT txid_status($1)", xid)
            except _FAILURES as exc:
                logger.warning("%s: %r while checking a commit", self.op.name, exc)
                await self._drop()
                continue
            if status == "in progress":  # the old backend is still ending
                await anyio.sleep(0.05)
                continue
            return bool(status == "committed")

    def _done(self) -> None:
        self.committed += sum(rows for _, rows in self.pending)
        self.commits += 1
        self.pending = []

    def _commit_due(self) -> bool:
        op = self.op
        held = sum(rows for _, rows in self.pending)
        if op.commit_rows is None and op.commit_seconds is None:
            return True
        if op.commit_rows is not None and held >= op.commit_rows:
            return True
        return (
            op.commit_seconds is not None
            and time.monotonic() - self.tx_started >= op.commit_seconds
        )

    # -- the SinkWriter interface ------------------------------------------------------

    def _plan(self, dtype: np.dtype[Any]) -> None:
        if self.cells is not None and dtype == self.dtype:
            return
        if self.cells is not None:
            raise TypeError(
                f"{self.op.name}: a batch of dtype {dtype} after batches of {self.dtype}; "
                "the rows of one table keep one dtype"
            )
        create_columns(dtype)  # unmappable dtypes fail here, naming the field
        self.dtype = dtype
        self.cells = []  # the connection's setup now creates and reads the table

    async def _setup(self, dtype: np.dtype[Any]) -> None:
        first = self.cells is None
        self._plan(dtype)
        if not first:
            return
        conn = self.conn
        assert conn is not None
        if self.op.create:
            await self._create(conn, dtype)
        self.columns = await self._column_types(conn)
        self.cells = plan_cells(dtype, self.columns, self.op.table)

    async def write(self, item: Any) -> None:
        if isinstance(item, np.ndarray):
            await self._write_array(item, item, None)
            return
        raise TypeError(
            f"{self.op.name}: takes structured arrays (batches), got {type(item).__name__}; "
            "batch the flow first (aflow.batch)"
        )

    async def write_batch(self, batch: Batch) -> None:
        await self._write_array(batch.data, batch.data, batch.provenance)

    async def _write_array(self, data: NDArray[Any], item: Any, provenance: Any) -> None:
        if data.ndim != 1:
            raise TypeError(f"{self.op.name}: takes 1-D structured arrays, got shape {data.shape}")
        await self._setup(data.dtype)
        if not len(data):
            return
        assert self.cells is not None
        assert self.counters is not None
        try:
            if len(data) >= THREAD_ROWS:
                payload = await anyio.to_thread.run_sync(encode_copy, data, self.cells)
            else:
                payload = encode_copy(data, self.cells)
        except ValueError as exc:
            await apply_policy(self.op.on_error, item, exc, self.op.name, provenance, self.counters)
            return
        try:
            await self._copy(payload, len(data))
        except asyncpg.PostgresError as exc:
            error = ValueError(f"{self.op.name}: PostgreSQL rejected a batch: {exc}")
            error.__cause__ = exc

            async def again() -> list[Any]:
                await self._copy(payload, len(data))
                return []

            await apply_policy(
                self.op.on_error, item, error, self.op.name, provenance, self.counters, again=again
            )
        if self._commit_due():
            await self._commit()

    async def flush(self) -> None:
        await self._commit()

    async def commit(self, epoch: int) -> None:
        """Make every row written so far durable (the run's delivery barrier)."""
        await self._commit()

    async def aclose(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await conn.close(timeout=2)  # an open transaction rolls back
                except _FAILURES:
                    conn.terminate()

    def result(self) -> int:
        return self.committed


class _PgOp(SinkOperator[Any, int]):
    fused = False

    def __init__(
        self,
        dsn: str,
        table: str,
        *,
        create: bool,
        commit_rows: int | None,
        commit_seconds: float | None,
        connect_timeout: float,
        timeout: float | None,
        backoff: float,
        max_backoff: float,
        reconnect_timeout: float | None,
        buffer: int | None,
        on_error: ErrorPolicy,
        name: str | None,
    ) -> None:
        if commit_rows is not None and commit_rows < 1:
            raise ValueError(f"to_postgres: commit_rows={commit_rows}: must be at least 1")
        if commit_seconds is not None and not commit_seconds > 0:
            raise ValueError(f"to_postgres: commit_seconds={commit_seconds}: must be positive")
        if not (0 < backoff <= max_backoff) or not connect_timeout > 0:
            raise ValueError("to_postgres: need 0 < backoff <= max_backoff, connect_timeout > 0")
        if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"to_postgres: timeout={timeout}: must be positive (or None)")
        if reconnect_timeout is not None and not reconnect_timeout >= 0:
            raise ValueError(
                f"to_postgres: reconnect_timeout={reconnect_timeout}: must be >= 0 (or None)"
            )
        self.dsn = dsn
        self.table = table
        self.create = create
        self.commit_rows = commit_rows
        self.commit_seconds = commit_seconds
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.reconnect_timeout = reconnect_timeout
        self.buffer = buffer
        self.on_error = check_policy(on_error)
        self.name = name or f"to_postgres({table})"

    def writer(self, ctx: Context) -> SinkWriter[Any, int]:
        return _PgWriter(self)


def to_postgres(
    dsn: str,
    table: str,
    *,
    create: bool = False,
    commit_rows: int | None = None,
    commit_seconds: float | None = None,
    connect_timeout: float = 10.0,
    timeout: float | None = 60.0,
    backoff: float = 0.1,
    max_backoff: float = 5.0,
    reconnect_timeout: float | None = 300.0,
    buffer: int | None = None,
    on_error: ErrorPolicy = "raise",
    name: str | None = None,
) -> Sink[Any, int]:
    """Write batches of structured arrays to a PostgreSQL table with binary COPY.

    Each field of the batches' dtype goes to the column of the same name (the table may
    have more columns: they take their defaults). Writable types: booleans to
    ``boolean``; integers to ``smallint``/``integer``/``bigint`` (a value out of the
    column's range is an error for ``on_error``); integers and floats to ``real`` and
    ``double precision``; fixed strings (``U``: as UTF-8, ``S``: as they are) to ``text``,
    ``varchar``, ``char`` and ``bytea`` (trailing NULs stripped, as NumPy does);
    ``datetime64`` to ``timestamp`` and ``timestamptz`` (as UTC, to the microsecond) and to
    ``date``; ``NaT`` to ``NULL``. Any other pair raises ``TypeError`` naming the field.

    Rows are committed in transactions: by default one per batch; with ``commit_rows``
    and/or ``commit_seconds`` once that many rows are held or that many seconds passed
    since the transaction began (checked at each batch); always at the end of the run (and
    at a graceful stop), and at each delivery barrier of the run. The result is the
    number of rows committed. A row is committed exactly once: when the connection breaks
    the open transaction is rolled back by the server and written again after a
    reconnect (the sink holds it until it commits), and a commit interrupted midway is
    looked up (``txid_status``) before anything is written again.

    Needs the ``postgres`` extra (asyncpg) and the asyncio backend.

    Args:
        dsn: where to connect: ``postgresql://user:password@host:port/database`` (any
            asyncpg connection string; the ``PG*`` environment variables fill what it lacks).
        table: the table's name, ``schema.table`` to name its schema.
        create: create the table when it does not exist, a column per field (``bool``:
            boolean; ``int8``/``int16``/``uint8``: smallint; ``int32``/``uint16``: integer;
            ``int64``/``uint32``: bigint; ``float16``/``float32``: real; ``float64``: double
            precision; ``U``: text; ``S``: bytea; ``datetime64[D]``: date; other
            ``datetime64``: timestamp).
        commit_rows: commit once at least this many rows are uncommitted.
        commit_seconds: commit at the first batch this many seconds after the
            transaction began.
        connect_timeout: seconds one connection attempt may take.
        timeout: seconds one COPY may take before the connection counts as broken.
        backoff: seconds before the first reconnection attempt; it doubles after each
            failed one.
        max_backoff: the longest wait between two reconnection attempts.
        reconnect_timeout: seconds a lost connection is tried again (capped backoff)
            before the sink gives up with :class:`~aflow.ReconnectError`; ``None``: for
            ever.
        buffer: messages waiting in front of the sink.
        on_error: what to do with a batch PostgreSQL rejects (a constraint, a string too
            long for its column, invalid UTF-8) or that does not fit its columns (an
            integer out of range): ``"raise"``, ``"skip"`` it, :func:`~aflow.retry` or
            :func:`~aflow.dead_letter` (the batch's rows with their provenance). The
            other batches of its transaction are written again, so a rejected batch
            costs nothing else. A lost connection is not an error: the sink reconnects.
        name: the sink's name in statistics and errors.

    Raises:
        ConnectionError: the first connection, when the run starts, could not be opened.
        ReconnectError: a lost connection could not be opened again within
            ``reconnect_timeout`` (a ``ConnectionError`` naming the server and table).
        TypeError: the batches are not structured arrays, a field has no column or a
            dtype cannot be written to its column's type, or the table does not exist
            (without ``create``).
        RuntimeError: the flow runs on trio (asyncpg needs asyncio).
    """
    return Sink(
        _PgOp(
            dsn,
            table,
            create=create,
            commit_rows=commit_rows,
            commit_seconds=commit_seconds,
            connect_timeout=connect_timeout,
            timeout=timeout,
            backoff=backoff,
            max_backoff=max_backoff,
            reconnect_timeout=reconnect_timeout,
            buffer=buffer,
            on_error=on_error,
            name=name,
        )
    )
