"""A thermostat: watches a sensor, reads it, and switches its heater with jobs."""

from __future__ import annotations

import logging
from typing import Any

from examples.console import say
from examples.sensors.messages import SensorReading
from pipecat_workers import BaseWorker, JobError, JobEvent, WorkerLostData, WorkerReadyData
from pipecat_workers.bus import BusMessage

logger = logging.getLogger("examples.sensors")


class Controller(BaseWorker):
    """Keeps the sensor's room near ``target`` by switching the sensor's heater.

    It subscribes to the sensor each time the sensor becomes ready (a restarted sensor has
    forgotten its subscribers), so it copes with a sensor that comes and goes, whichever
    starts first.

    Args:
        name: The worker's name on the bus.
        sensor: The sensor's name.
        target: The temperature to hold, in degrees Celsius.
        band: Tolerance either side of ``target`` before the heater is switched.
        limit: End the session after this many readings; ``None`` runs until stopped.
        job_timeout: Seconds a job to the sensor may take.

    Jobs sent: ``subscribe`` and ``set_heater`` to the sensor (see
    :class:`examples.sensors.sensor.Sensor`). Messages received: :class:`SensorReading`.
    """

    def __init__(self, name: str = "controller", *, sensor: str = "sensor",
                 target: float = 21.0, band: float = 0.5, limit: int | None = None,
                 job_timeout: float = 5.0) -> None:
        super().__init__(name)
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self._sensor = sensor
        self._target = target
        self._band = band
        self._limit = limit
        self._job_timeout = job_timeout
        self._switching = False
        self.readings: list[SensorReading] = []
        """Every reading received, oldest first."""
        self.subscriptions = 0
        """How many times the sensor accepted a subscription (once per sensor start)."""
        self.switches: list[dict[str, Any]] = []
        """The answers of the completed ``set_heater`` jobs."""
        self.updates: list[dict[str, Any]] = []
        """The progress updates of every ``set_heater`` job."""

    async def start(self) -> None:
        await super().start()
        # Watched here rather than with @worker_ready: the sensor's name is an argument.
        await self.watch_workers(self._sensor)

    async def on_worker_ready(self, data: WorkerReadyData) -> None:
        await super().on_worker_ready(data)
        if data.worker_name == self._sensor:
            say(self.name, f"{self._sensor} is ready; subscribing")
            # The registry awaits this hook: a job waited for here would hold it up.
            self.create_task(self._subscribe())

    async def on_worker_lost(self, data: WorkerLostData) -> None:
        await super().on_worker_lost(data)
        if data.worker_name == self._sensor:
            say(self.name, f"{self._sensor} is gone ({data.reason}); waiting for it to return")

    async def _subscribe(self) -> None:
        try:
            async with self.job(self._sensor, name="subscribe",
                                timeout=self._job_timeout) as j:
                pass
        except JobError as error:
            # Usually the sensor went away again; its next start calls on_worker_ready.
            logger.warning("%s: could not subscribe to %s: %s", self.name, self._sensor, error)
            return
        self.subscriptions += 1
        say(self.name, f"subscribed to {self._sensor}: a reading every "
                       f"{j.response['interval']} s")

    async def on_bus_message(self, message: BusMessage) -> None:
        await super().on_bus_message(message)
        if isinstance(message, SensorReading) and message.source == self._sensor:
            await self._on_reading(message)

    async def _on_reading(self, reading: SensorReading) -> None:
        if self._limit is not None and len(self.readings) >= self._limit:
            return  # the session is ending
        self.readings.append(reading)
        heater = "on" if reading.heater else "off"
        say(self.name, f"reading {reading.seq}: {reading.temperature:.2f} °C, heater {heater}")
        wanted = self._decide(reading)
        if wanted is not None and not self._switching:
            self._switching = True
            self.create_task(self._set_heater(wanted, reading.temperature))
        if self._limit is not None and len(self.readings) >= self._limit:
            say(self.name, f"{self._limit} readings: ending the session")
            await self.end(reason=f"{self._limit} readings taken")

    def _decide(self, reading: SensorReading) -> bool | None:
        """The heater state to ask for, or ``None`` to leave it."""
        if reading.temperature < self._target - self._band and not reading.heater:
            return True
        if reading.temperature > self._target + self._band and reading.heater:
            return False
        return None

    async def _set_heater(self, on: bool, temperature: float) -> None:
        word = "on" if on else "off"
        side = "below" if on else "above"
        say(self.name, f"{temperature:.2f} °C is {side} {self._target} °C: heater {word}")
        try:
            async with self.job(self._sensor, name="set_heater", payload={"on": on},
                                timeout=self._job_timeout) as j:
                async for event in j:
                    if event.type == JobEvent.UPDATE and event.data:
                        self.updates.append(event.data)
                        say(self.name, f"  set_heater: {event.data['step']} "
                                       f"({event.data['progress']:.0%})")
            self.switches.append(j.response)
        except JobError as error:
            logger.warning("%s: set_heater %s failed: %s", self.name, word, error)
        finally:
            self._switching = False
