"""A UDP server source: one or many lines or records per datagram.

The socket is read directly: each time it becomes readable, every datagram already
queued in the kernel is taken at once (up to a bound), and the datagrams of each sender
become one message. So a busy flow pays its per-message cost per burst, not per datagram,
and while the flow is slow the kernel's buffer fills and drops what does not fit (UDP has
no backpressure).
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from typing import Any

import anyio
import numpy as np
from numpy.typing import DTypeLike, NDArray

from ...abc import Batch, Context, Outlet, Provenance, Source
from ...codecs.framing import Framing, check_framing
from ...errors import IncompleteFrameError
from ...flow import Flow
from ...policies import ErrorPolicy, Reporter, check_policy
from ._common import OnListening, _announce, _ip_address, _reject, _url

MAX_DATAGRAM = 65_535
BURST_BYTES = 1 << 20  # most bytes taken from the socket per wakeup
RECEIVE_BUFFER = 4 << 20  # asked of the kernel (it caps this at net.core.rmem_max)
SENDERS = 65_536  # senders whose numbering is remembered (the least recent is forgotten)


class _UdpServer(Source):
    def __init__(
        self,
        host: str,
        port: int,
        framing: Framing,
        dtype: np.dtype[Any] | None,
        on_error: ErrorPolicy,
        on_listening: OnListening | None,
    ) -> None:
        self.host = host
        self.port = port
        self.framing = framing
        self.dtype = dtype
        self.on_error = check_policy(on_error)
        self.on_listening = on_listening
        self.name = f"udp_server({host}:{port})"

    async def produce(self, out: Outlet, ctx: Context) -> None:
        report = Reporter(self.on_error, self.name, out.counters)
        sock = await _bind(self.host, self.port)
        numbers: OrderedDict[str, int] = OrderedDict()  # sender -> next line or row
        try:
            await _announce(self.on_listening, _ip_address(sock.getsockname()))
            while not out.stopping:
                with out.pull_scope() as scope:
                    await anyio.wait_readable(sock)
                if scope.cancel_called:
                    return
                for peer, datagrams in _burst(sock).items():
                    source = _url("udp", peer)
                    msg = await self._frame(datagrams, source, numbers, report)
                    if msg is not None:
                        await out.emit(msg)
        finally:
            sock.close()

    async def _frame(
        self, datagrams: list[bytes], source: str, numbers: OrderedDict[str, int], report: Reporter
    ) -> Batch | None:
        """One sender's datagrams as one block of lines or one array of records, numbered
        on from where its previous ones ended."""
        if self.framing == "records":
            datagrams = await self._whole_records(datagrams, source, report)
        lines = self.framing == "lines"
        data = b"".join(d if not lines or d.endswith(b"\n") else d + b"\n" for d in datagrams)
        if not data:
            return None
        first = numbers.pop(source, 1 if lines else 0)  # lines count from 1, rows from 0
        payload: NDArray[Any] = np.frombuffer(data, np.uint8 if lines else self.dtype)
        count = data.count(b"\n") if lines else len(payload)
        numbers[source] = first + count
        if len(numbers) > SENDERS:
            numbers.popitem(last=False)
        prov = Provenance(source, first, first + count, "line" if lines else "row")
        return Batch(payload, "source", prov)

    async def _whole_records(
        self, datagrams: list[bytes], source: str, report: Reporter
    ) -> list[bytes]:
        assert self.dtype is not None
        size = self.dtype.itemsize
        whole = []
        for data in datagrams:
            if len(data) % size:
                error = IncompleteFrameError(
                    f"a datagram of {len(data)} bytes is not a whole number of {size}-byte "
                    "records; dropped",
                    source=source,
                )
                await _reject(report, error, data, Provenance(source, 0, len(data), "byte"))
            else:
                whole.append(data)
        return whole


async def _bind(host: str, port: int) -> socket.socket:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _burst(sock: socket.socket) -> dict[Any, list[bytes]]:
    """Every datagram queued now (up to ``BURST_BYTES``), grouped by sender in order."""
    senders: dict[Any, list[bytes]] = {}
    taken = 0
    while taken < BURST_BYTES:
        try:
            data, peer = sock.recvfrom(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            break
        if data:
            senders.setdefault(peer, []).append(data)
            taken += len(data)
    return senders


def udp_server(
    port: int = 0,
    host: str = "127.0.0.1",
    *,
    framing: Framing = "lines",
    dtype: DTypeLike | None = None,
    on_error: ErrorPolicy = "skip",
    on_listening: OnListening | None = None,
) -> Flow[Any]:
    """Receive UDP datagrams, each holding one or many lines or records; runs until stopped.

    The datagrams waiting in the socket are read together, and those of each sender
    become one message: a block of lines (a datagram's last line needs no newline), or
    an array of ``dtype`` records (``framing="records"``; a datagram that is not a whole
    number of records is dropped and reported through ``on_error``). Provenance names
    the sender (``udp://<host>:<port>``) and numbers its lines (or records) from 1 on
    across its datagrams, counting what arrived; the 65,536 most recent senders are
    remembered, and one forgotten starts again from 1 (with ``decode_csv(header=True)``
    its first line is then taken for a header). UDP has no backpressure: while the flow
    is slow, the kernel drops datagrams that do not fit its receive buffer (4 MiB is
    asked for; Linux grants at most ``net.core.rmem_max``). See :func:`tcp_server` for
    ``host``, ``port`` and ``on_listening``.
    """
    check_framing(framing, dtype, ("lines", "records"))
    dt = None if dtype is None else np.dtype(dtype)
    return Flow(_UdpServer(host, port, framing, dt, on_error, on_listening))
