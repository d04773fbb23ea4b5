"""A UDP server source: one or many lines or records per datagram."""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
from anyio.abc import SocketAttribute
from numpy.typing import DTypeLike, NDArray

from ..._message import Batch, Provenance
from ..._ops import Outlet, Source
from ..._runtime import RunContext
from ...codecs.framing import Framing, IncompleteFrameError, check_framing
from ...flow import Flow
from ...policies import ErrorPolicy, check_policy
from ._common import OnListening, _aclose, _announce, _ip_address, _Reporter, _url


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

    async def produce(self, out: Outlet, ctx: RunContext) -> None:
        report = _Reporter(self.on_error, self.name, out)
        sock = await anyio.create_udp_socket(local_host=self.host, local_port=self.port)
        try:
            address = _ip_address(sock.extra(SocketAttribute.local_address))
            await _announce(self.on_listening, address)
            while not out.stopping:
                packet = None
                with out.pull_scope():
                    packet = await sock.receive()
                if packet is None:
                    return
                data, peer = packet
                msg = await self._frame(data, _url("udp", peer), report)
                if msg is not None:
                    await out.emit(msg)
        finally:
            await _aclose(sock)

    async def _frame(self, data: bytes, source: str, report: _Reporter) -> Batch | None:
        """One datagram as a block of lines (numbered from 1) or an array of records."""
        if not data:
            return None
        if self.framing == "lines":
            block = data if data.endswith(b"\n") else data + b"\n"
            n = block.count(b"\n")
            prov = Provenance(source, 1, 1 + n, "line", 0, len(data))
            return Batch(np.frombuffer(block, np.uint8), "source", prov)
        assert self.dtype is not None
        size = self.dtype.itemsize
        if len(data) % size:
            error = IncompleteFrameError(
                f"a datagram of {len(data)} bytes is not a whole number of {size}-byte "
                "records; dropped",
                source=source,
            )
            await report(error, data, Provenance(source, 0, len(data), "byte"))
            return None
        rows: NDArray[Any] = np.frombuffer(data, self.dtype)
        return Batch(rows, "source", Provenance(source, 0, len(rows), "row", 0, len(data)))


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

    Each datagram becomes one message: a block of its lines (a last line without a
    newline counts; provenance ``udp://<peer>``, lines numbered from 1 in the datagram),
    or an array of ``dtype`` records (``framing="records"``; a datagram that is not a
    whole number of records is dropped and reported through ``on_error``). UDP has no
    backpressure: while the flow is slow, the kernel drops datagrams that do not fit its
    receive buffer. See :func:`tcp_server` for ``host``, ``port`` and ``on_listening``.
    """
    check_framing(framing, dtype, ("lines", "records"))
    dt = None if dtype is None else np.dtype(dtype)
    return Flow(_UdpServer(host, port, framing, dt, on_error, on_listening))
