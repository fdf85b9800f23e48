"""The sensor's reading: an application message that crosses process boundaries.

Registering it puts it on the allow-list of types a network bus will decode; both the sensor
and the controller import this module, so every process that sees a reading knows its type.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipecat_workers.bus import BusDataMessage, register_message


@register_message(name="examples.sensor.reading")
@dataclass(kw_only=True, slots=True)
class SensorReading(BusDataMessage):
    """One periodic reading, sent by a sensor to each of its subscribers.

    Attributes:
        seq: 1 for the first reading of this sensor's life; a restarted sensor starts over.
        temperature: Degrees Celsius.
        heater: Whether the sensor's heater is on, so a controller acts on the device's
            state rather than on what it last asked for.
    """

    seq: int
    temperature: float
    heater: bool
