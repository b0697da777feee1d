"""Small shop participants for saga tests: real nats-py request/reply handlers on a real
server, speaking the demo shop's command API (see contracts.md), with fault knobs."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

COMMANDS = {
    "shop.cmd.payment.authorize": ("payment_id", "pay"),
    "shop.cmd.payment.refund": (None, None),
    "shop.cmd.stock.reserve": ("reservation_id", "res"),
    "shop.cmd.stock.release": (None, None),
    "shop.cmd.shipping.create": ("shipment_id", "ship"),
    "shop.cmd.order.complete": (None, None),
    "shop.cmd.notify.send": (None, None),
}


@dataclass
class Shop:
    """Knobs: `decline` payments, `out_of_stock`, `silent` subjects never answer, `hold`
    subjects wait for `release` before answering (the crash test kills the runner meanwhile)."""

    decline: bool = False
    out_of_stock: bool = False
    silent: set[str] = field(default_factory=set)
    hold: set[str] = field(default_factory=set)
    seen: Counter[str] = field(default_factory=Counter)
    applied: Counter[str] = field(default_factory=Counter)
    calls: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    held: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    replies: dict[str, bytes] = field(default_factory=dict)

    async def serve(self, nc: Client, subjects: list[str] | None = None) -> None:
        for subject in subjects or list(COMMANDS):
            await nc.subscribe(subject, cb=self._handle)
        await nc.flush()

    def subjects_called(self) -> list[str]:
        return [subject for subject, _, _ in self.calls]

    async def _handle(self, msg: Msg) -> None:
        headers = dict(msg.headers or {})
        body = json.loads(msg.data)
        self.calls.append((msg.subject, headers, body))
        key = headers.get("Idempotency-Key", "")
        self.seen[key] += 1
        if msg.subject in self.silent:
            return
        if msg.subject in self.hold and not self.release.is_set():
            self.held.set()
            await self.release.wait()
            return  # the requester is gone; a resend will come with the same key
        if key in self.replies:
            await msg.respond(self.replies[key])
            return
        self.applied[key] += 1
        reply = self._apply(msg.subject, body)
        self.replies[key] = reply
        await msg.respond(reply)

    def _apply(self, subject: str, body: dict[str, Any]) -> bytes:
        if subject == "shop.cmd.payment.authorize" and self.decline:
            return json.dumps({"ok": False, "error": "declined"}).encode()
        if subject == "shop.cmd.stock.reserve" and self.out_of_stock:
            return json.dumps({"ok": False, "error": "out_of_stock"}).encode()
        field_name, prefix = COMMANDS[subject]
        reply: dict[str, Any] = {"ok": True}
        if field_name:
            reply[field_name] = f"{prefix}-{body['order_id']}"
        return json.dumps(reply).encode()
