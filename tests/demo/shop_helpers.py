"""Run the demo shop in the test's event loop against a real nats-server and watch the bus."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import nats

from qixtui_demo.plan import DEFAULT_LATENCY, Knobs, Latency
from qixtui_demo.shop import Faults, Shop

FAST = {name: Latency(1.0, 0.3) for name in DEFAULT_LATENCY}


@dataclass
class Seen:
    subject: str
    reply: str | None
    headers: dict[str, str]
    body: Any


@dataclass
class Watch:
    messages: list[Seen] = field(default_factory=list)

    def subjects(self) -> list[str]:
        return [m.subject for m in self.messages]

    def by_order(self) -> dict[str, list[Seen]]:
        """Shop events per order id; the notification joins through its shipment id."""
        orders: dict[str, list[Seen]] = defaultdict(list)
        shipments: dict[str, str] = {}
        for m in self.messages:
            if not m.subject.startswith("shop.") or m.subject.startswith("shop.heartbeat."):
                continue
            if not isinstance(m.body, dict):
                continue
            order_id = m.body.get("order_id")
            if order_id is None and "shipment_id" in m.body:
                order_id = shipments.get(m.body["shipment_id"])
            if order_id is None:
                continue
            if "shipment_id" in m.body:
                shipments[m.body["shipment_id"]] = order_id
            orders[order_id].append(m)
        return orders


async def run_shop(
    url: str,
    *,
    seed: int = 1,
    orders: int = 4,
    rate: float = 200.0,
    decline_rate: float = 0.0,
    stockout_rate: float = 0.0,
    faults: Faults | None = None,
    heartbeat_s: float = 0.0,
    drain_s: float = 3.0,
    latency: dict[str, Latency] | None = None,
) -> tuple[Shop, Watch]:
    """Place `orders` orders and return once they settled, with everything seen on shop.>."""
    watch = Watch()
    nc = await nats.connect(url)

    async def seen(msg: Any) -> None:
        try:
            body = json.loads(msg.data)
        except ValueError:
            body = None
        watch.messages.append(Seen(msg.subject, msg.reply or None, dict(msg.headers or {}), body))

    await nc.subscribe("shop.>", cb=seen)
    await nc.subscribe("_INBOX.>", cb=seen)
    await nc.flush()
    knobs = Knobs(
        seed=seed,
        rate=rate,
        orders=orders,
        decline_rate=decline_rate,
        stockout_rate=stockout_rate,
    )
    shop = Shop(
        url,
        knobs,
        latency=latency or FAST,
        faults=faults,
        heartbeat_s=heartbeat_s,
        drain_s=drain_s,
    )
    await shop.run(asyncio.Event())
    await nc.flush()
    await nc.drain()
    return shop, watch
