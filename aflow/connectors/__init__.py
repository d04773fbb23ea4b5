"""Message brokers and databases as sources and sinks, each behind an optional extra.

Each connector reads and writes many messages per call, decodes payloads in bulk into
structured arrays with :mod:`aflow.codecs`, reconnects with a capped backoff, and
acknowledges what it read only after the run's sinks did.

* :func:`read_redis` / :func:`to_redis` (extra ``redis``): Redis Streams, consumer groups.
* :func:`read_nats` / :func:`to_nats` (extra ``nats``): NATS JetStream, durable pull
  consumers.
* :func:`read_mqtt` / :func:`to_mqtt` (module :mod:`aflow.connectors.mqtt`, extra ``mqtt``):
  subscribe to MQTT topics, publish to them.
* :func:`to_postgres` (module :mod:`aflow.connectors.postgres`, extra ``postgres``): write
  structured arrays to a PostgreSQL table with binary COPY, in transactions.

The client libraries are imported when a run starts (Redis, NATS) or when the name is
first used (MQTT, PostgreSQL), so ``import aflow.connectors`` needs none of the extras.
The shared helpers are in :mod:`aflow.connectors._common`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .nats import read_nats as read_nats
from .nats import to_nats as to_nats
from .redis import read_redis as read_redis
from .redis import to_redis as to_redis

if TYPE_CHECKING:
    from .mqtt import read_mqtt as read_mqtt
    from .mqtt import to_mqtt as to_mqtt
    from .postgres import to_postgres as to_postgres

__all__ = [
    "read_mqtt",
    "read_nats",
    "read_redis",
    "to_mqtt",
    "to_nats",
    "to_postgres",
    "to_redis",
]

_HOMES = {"read_mqtt": "mqtt", "to_mqtt": "mqtt", "to_postgres": "postgres"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
