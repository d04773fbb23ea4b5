"""Connectors to message brokers and databases, each behind an optional extra.

* :func:`read_mqtt` / :func:`to_mqtt` (module :mod:`aflow.connectors.mqtt`, extra ``mqtt``):
  subscribe to MQTT topics, publish to them.
* :func:`to_postgres` (module :mod:`aflow.connectors.postgres`, extra ``postgres``): write
  structured arrays to a PostgreSQL table with binary COPY, in transactions.

The names load their module on first use, so ``import aflow.connectors`` needs none of the
extras.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .mqtt import read_mqtt as read_mqtt
    from .mqtt import to_mqtt as to_mqtt
    from .postgres import to_postgres as to_postgres

__all__ = ["read_mqtt", "to_mqtt", "to_postgres"]

_HOMES = {"read_mqtt": "mqtt", "to_mqtt": "mqtt", "to_postgres": "postgres"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
