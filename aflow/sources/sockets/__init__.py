"""Socket sources: TCP and Unix servers, a reconnecting TCP client, a UDP server.

A stream server accepts many clients at once: one task per connection, in the run's task
group, all feeding one bounded buffer (as :func:`~aflow.merge` does). A connection whose
send into that buffer waits stops reading its socket, so the kernel's buffers fill and
the client's writes block: backpressure reaches the peer. Each connection has its own
framer (see :mod:`aflow.codecs.framing`), so a client that misbehaves (a line longer than
``max_line``, a disconnect in the middle of a line) costs only its own data: the problem
is logged on the ``"aflow"`` logger, counted in the source's ``errors`` statistic and
handed to ``on_error``.

A flow is a re-runnable description: every run binds its own socket. With ``port=0``
each run gets a fresh ephemeral port, which ``on_listening`` receives once it is bound.
"""

from ._client import tcp_client as tcp_client
from ._common import Address as Address
from ._common import OnListening as OnListening
from ._lifecycle import CloseReason as CloseReason
from ._lifecycle import ConnectionEvent as ConnectionEvent
from ._lifecycle import OnConnection as OnConnection
from ._servers import tcp_server as tcp_server
from ._servers import unix_server as unix_server
from ._udp import udp_server as udp_server

__all__ = [
    "Address",
    "CloseReason",
    "ConnectionEvent",
    "OnConnection",
    "OnListening",
    "tcp_client",
    "tcp_server",
    "udp_server",
    "unix_server",
]
