"""Message brokers as sources and sinks: each connector reads and writes many messages per
call, decodes payloads in bulk into structured arrays with :mod:`aflow.codecs`, reconnects
with a capped backoff, and acknowledges what it read only after the run's sinks did.

Each needs its optional extra (``pip install 'aflow-streams[redis]'``, ``[nats]``...): the
client library is imported when a run starts, so importing aflow never needs it. The
shared helpers are in :mod:`aflow.connectors._common`.
"""

from .nats import read_nats as read_nats
from .nats import to_nats as to_nats
from .redis import read_redis as read_redis
from .redis import to_redis as to_redis

__all__ = ["read_nats", "read_redis", "to_nats", "to_redis"]
