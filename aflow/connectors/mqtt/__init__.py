"""MQTT: a source subscribing to topics (:func:`read_mqtt`), and a sink publishing rows
(:func:`to_mqtt`).

Needs the ``mqtt`` extra (aiomqtt, which runs on asyncio only).
"""

from __future__ import annotations

from ._read import MqttFormat as MqttFormat
from ._read import read_mqtt as read_mqtt
from ._write import to_mqtt as to_mqtt

__all__ = ["MqttFormat", "read_mqtt", "to_mqtt"]
