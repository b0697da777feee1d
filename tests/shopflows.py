"""Synthetic shop traffic in both styles, as events, links and flows, for compare tests."""

from __future__ import annotations

import json
from pathlib import Path

from qixtui.core import store
from qixtui.core.correlate import event_service
from qixtui.core.model import Event, Flow, Link
from qixtui.core.rules import Rules

MS = 1_000_000
T0 = 1_780_000_000_000_000_000
SAGA_TOML = """
name = "shop"

[[steps]]
name = "authorize"
request = "shop.cmd.payment.authorize"
timeout = "2s"
compensate = { request = "shop.cmd.payment.refund" }

[[steps]]
name = "reserve"
request = "shop.cmd.stock.reserve"
timeout = "2s"
compensate = { request = "shop.cmd.stock.release" }

[[steps]]
name = "ship"
request = "shop.cmd.shipping.create"
timeout = "2s"
pivot = true

[[steps]]
name = "complete"
request = "shop.cmd.order.complete"
timeout = "2s"
"""
MAP = [
    "authorize=shop.payment.authorized",
    "reserve=shop.stock.reserved",
    "ship=shop.shipment.created",
    "complete=shop.order.completed",
    "authorize:compensate=shop.payment.refunded",
    "reserve:compensate=shop.stock.released",
]
FAILURE = ["shop.order.cancelled"]
COMPENSATION = ["shop.payment.refunded", "shop.stock.released", "shop.cmd.*.refund"]


class Builder:
    """Events with ids and flow ids assigned, causation and reply links alongside."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.links: list[Link] = []
        self.flows: list[Flow] = []

    def add(
        self,
        flow_id: int,
        ts_ns: int,
        subject: str,
        payload: dict[str, object],
        headers: list[tuple[str, str]] | None = None,
        reply: str | None = None,
        cause: int | None = None,
        answers: int | None = None,
    ) -> int:
        eid = len(self.events) + 1
        body = json.dumps(payload).encode()
        self.events.append(Event(ts_ns, subject, reply, headers, body, eid, flow_id))
        if cause is not None:
            self.links.append(Link(eid, "causation", f"msg-{cause}", cause))
        if answers is not None:
            self.links.append(Link(eid, "reply", f"_INBOX.{answers}", answers))
        return eid

    def chain(self, flow_id: int, start: int, steps: list[tuple[str, int]], status: str) -> None:
        """A choreographed flow: each event caused by the one before, at the given ms."""
        order = {"order_id": f"o-{flow_id}"}
        prev: int | None = None
        for subject, at_ms in steps:
            prev = self.add(flow_id, start + at_ms * MS, subject, order, cause=prev)
        self.finish(flow_id, status, orchestrated=False)

    def saga(
        self, flow_id: int, start: int, calls: list[tuple[str, int, int, bool]], status: str
    ) -> None:
        """An orchestrated flow: (command, request at ms, reply at ms, ok) request/replies."""
        headers = [("Qixtui-Saga-Run", f"run-{flow_id}")]
        for subject, at_ms, reply_ms, ok in calls:
            inbox = f"_INBOX.r{flow_id}.{at_ms}"
            req = self.add(
                flow_id,
                start + at_ms * MS,
                subject,
                {"order_id": f"o-{flow_id}"},
                headers=[*headers, ("Qixtui-Saga-Step", subject.split(".")[-1])],
                reply=inbox,
            )
            # nats-py's respond echoes the request's headers into the reply
            echoed = self.events[-1].headers
            self.add(flow_id, start + reply_ms * MS, inbox, {"ok": ok}, echoed, answers=req)
        self.finish(flow_id, status, orchestrated=True)

    def service(self, event: Event) -> str:
        """As the correlator names it: a reply belongs to its request's service."""
        request = next((lk.parent_id for lk in self.links if lk.event_id == event.id
                        and lk.kind == "reply"), None)  # fmt: skip
        if request is not None:
            event = self.events[request - 1]
        return event_service(event, Rules()) or "?"

    def finish(self, flow_id: int, status: str, orchestrated: bool) -> None:
        mine = [e for e in self.events if e.flow_id == flow_id]
        self.flows.append(
            Flow(
                flow_id=flow_id,
                status=status,
                started_ns=min(e.ts_ns for e in mine),
                ended_ns=max(e.ts_ns for e in mine),
                events=len(mine),
                services=sorted({self.service(e) for e in mine}),
                variant=[e.subject for e in mine],
                orchestrated=orchestrated,
            )
        )


HAPPY = [
    ("shop.order.placed", 0),
    ("shop.payment.authorized", 10),
    ("shop.stock.reserved", 25),
    ("shop.shipment.created", 60),
    ("shop.order.completed", 70),
]
SWAPPED = [  # stock reserved before payment: out of order against the saga
    ("shop.order.placed", 0),
    ("shop.stock.reserved", 8),
    ("shop.payment.authorized", 20),
    ("shop.shipment.created", 50),
    ("shop.order.completed", 55),
]
STOCK_FAILS = [  # payment then stock fails, payment refunded: the saga's compensation path
    ("shop.order.placed", 0),
    ("shop.payment.authorized", 12),
    ("shop.stock.failed", 30),
    ("shop.order.cancelled", 35),
    ("shop.payment.refunded", 50),
]


def build() -> Builder:
    """Five choreographed flows (three happy, one swapped, one compensated) and three
    orchestrated ones (two completed, one compensated)."""
    b = Builder()
    for i, steps in enumerate([HAPPY, HAPPY, HAPPY, SWAPPED, STOCK_FAILS]):
        status = "compensated" if steps is STOCK_FAILS else "completed"
        b.chain(i + 1, T0 + i * 1000 * MS, steps, status)
    ok_calls = [
        ("shop.cmd.payment.authorize", 0, 4, True),
        ("shop.cmd.stock.reserve", 5, 9, True),
        ("shop.cmd.shipping.create", 10, 30, True),
        ("shop.cmd.order.complete", 31, 33, True),
    ]
    b.saga(11, T0 + 10_000 * MS, ok_calls, "completed")
    b.saga(12, T0 + 11_000 * MS, [(s, a * 2, r * 2, ok) for s, a, r, ok in ok_calls], "completed")
    failing = [
        ("shop.cmd.payment.authorize", 0, 3, True),
        ("shop.cmd.stock.reserve", 4, 7, False),
        ("shop.cmd.payment.refund", 8, 15, True),
    ]
    b.saga(13, T0 + 12_000 * MS, failing, "compensated")
    return b


def write_session(path: Path, b: Builder | None = None) -> Builder:
    b = b or build()
    db = store.create_session(path, {"source": "tests/shopflows.py"})
    with store.transaction(db):
        store.insert_events(db, b.events)
        store.insert_links(db, b.links)
        store.upsert_flows(db, b.flows)
    db.close()
    return b
