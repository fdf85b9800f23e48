"""A thermometer with a heater: publishes readings and switches the heater on request."""

from __future__ import annotations

import asyncio
from typing import Any

from examples.console import say
from examples.sensors.messages import SensorReading
from pipecat_workers import BaseWorker, WorkerLostData, job
from pipecat_workers.bus import BusJobRequestMessage


class Sensor(BaseWorker):
    """Sends a :class:`SensorReading` to each subscriber every ``interval`` seconds.

    The room is simulated: it warms while the heater is on and cools while it is off, by a
    fixed step per reading, so runs are repeatable.

    Args:
        name: The worker's name on the bus.
        interval: Seconds between readings.
        start: Temperature of the first reading.
        heating: Degrees gained per reading while the heater is on.
        cooling: Degrees lost per reading while the heater is off.
        switch_delay: Seconds the heater's relay takes to switch.

    Jobs:
        ``subscribe`` ``{}`` -> ``{"interval": float, "temperature": float}``: the requester
        gets readings until it goes away or sends ``unsubscribe``.
        ``unsubscribe`` ``{}`` -> ``{}``.
        ``set_heater`` ``{"on": bool}`` sends progress updates ``{"step", "progress"}`` and
        answers ``{"heater": bool, "temperature": float}``.
    """

    def __init__(self, name: str = "sensor", *, interval: float = 1.0, start: float = 18.0,
                 heating: float = 0.5, cooling: float = 0.25,
                 switch_delay: float = 0.1) -> None:
        super().__init__(name)
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self._interval = interval
        self._temperature = start
        self._heating = heating
        self._cooling = cooling
        self._switch_delay = switch_delay
        self._heater = False
        self._seq = 0
        self._subscribers: dict[str, None] = {}

    @property
    def subscribers(self) -> list[str]:
        """Who gets the readings, in subscription order."""
        return list(self._subscribers)

    @property
    def heater(self) -> bool:
        """Whether the heater is on."""
        return self._heater

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        await super().on_activated(args)
        self.create_task(self._publish(), name=f"{self.name} readings")

    async def _publish(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            # A fixed rate, not a fixed pause: slow sends must not stretch the interval. The
            # first reading waits one interval too, for the subscribers that start with us.
            next_at += self._interval
            await asyncio.sleep(max(next_at - loop.time(), 0))
            self._seq += 1
            for subscriber in list(self._subscribers):
                await self.send_bus_message(SensorReading(
                    source=self.name, target=subscriber, seq=self._seq,
                    temperature=round(self._temperature, 2), heater=self._heater))
            self._temperature += self._heating if self._heater else -self._cooling

    @job("subscribe")
    async def subscribe(self, message: BusJobRequestMessage) -> dict[str, Any]:
        subscriber = message.source
        if subscriber not in self._subscribers:
            self._subscribers[subscriber] = None
            say(self.name, f"{subscriber} subscribed")
            # Forget it when it goes: a restarted subscriber subscribes again.
            await self.watch_workers(subscriber)
        return {"interval": self._interval, "temperature": round(self._temperature, 2)}

    @job("unsubscribe")
    async def unsubscribe(self, message: BusJobRequestMessage) -> dict[str, Any]:
        if message.source in self._subscribers:
            del self._subscribers[message.source]
            say(self.name, f"{message.source} unsubscribed")
        return {}

    async def on_worker_lost(self, data: WorkerLostData) -> None:
        await super().on_worker_lost(data)
        if data.worker_name in self._subscribers:
            del self._subscribers[data.worker_name]
            say(self.name, f"{data.worker_name} is gone ({data.reason}): no more readings for it")

    @job("set_heater", sequential=True)
    async def set_heater(self, message: BusJobRequestMessage) -> dict[str, Any]:
        on = (message.payload or {}).get("on")
        if not isinstance(on, bool):
            raise ValueError('the payload needs a boolean "on", like {"on": true}')
        word = "on" if on else "off"
        if on != self._heater:
            await self.send_job_update(message.job_id, {"step": "switching relay",
                                                        "progress": 0.5})
            await asyncio.sleep(self._switch_delay)
            self._heater = on
            say(self.name, f"heater {word} at {self._temperature:.2f} °C")
        await self.send_job_update(message.job_id, {"step": f"heater {word}", "progress": 1.0})
        return {"heater": self._heater, "temperature": round(self._temperature, 2)}
