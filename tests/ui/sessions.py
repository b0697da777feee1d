"""Session files for UI tests, written with the store functions the recorder uses."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from qixtui.core import store
from qixtui.core.model import Event, Flow, Link

T0 = 1_780_000_000_000_000_000  # a fixed moment, so screenshots do not change
MS = 1_000_000


def shop_session(path: Path, *, stopped: bool = True) -> Path:
    """Three orders: one completed (with a request/reply), one failed, one with a long idle."""
    events: list[Event] = []
    links: list[Link] = []

    def add(ts_ms: int, subject: str, body: object, flow: int, *, cid: str, reply=None,
            parent: int | None = None, extra=()) -> int:  # fmt: skip
        event_id = len(events) + 1
        headers = [("X-Correlation-ID", cid), *extra]
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        events.append(Event(T0 + ts_ms * MS, subject, reply, headers, payload, event_id, flow))
        if parent is not None:  # its keys (the correlation id) are derived, not stored
            links.append(Link(event_id, "causation", f"msg-{parent}", parent))
        return event_id

    a = add(0, "shop.order.placed", {"order_id": 1, "amount": 30}, 1, cid="ord-1")
    b = add(40, "shop.pricing.quote", {"order_id": 1}, 1, cid="ord-1", reply="_INBOX.q1", parent=a)
    events.append(Event(T0 + 90 * MS, "_INBOX.q1", None, None, b'{"price": 30}', 3, 1))
    links.append(Link(3, "reply", "_INBOX.q1", b))
    c = add(120, "shop.payment.authorized", {"order_id": 1, "payment_id": "p-1"}, 1,
            cid="ord-1", parent=b)  # fmt: skip
    d = add(200, "shop.stock.reserved", {"order_id": 1}, 1, cid="ord-1", parent=c)
    add(320, "shop.order.completed", {"order_id": 1}, 1, cid="ord-1", parent=d,
        extra=[("Tenant", "blue")])  # fmt: skip
    e = add(400, "shop.order.placed", {"order_id": 2, "amount": 99}, 2, cid="ord-2")
    f = add(450, "shop.payment.declined", {"order_id": 2, "reason": "card"}, 2, cid="ord-2",
            parent=e)  # fmt: skip
    add(470, "shop.order.cancelled", {"order_id": 2}, 2, cid="ord-2", parent=f)
    g = add(500, "shop.order.placed", {"order_id": 3}, 3, cid="ord-3")
    add(4_500, "shop.payment.authorized", {"order_id": 3}, 3, cid="ord-3", parent=g)
    add(4_600, "shop.heartbeat.stock", b"\x00\x01\x02binary\xff", 0, cid="hb")
    events[-1] = Event(events[-1].ts_ns, events[-1].subject, None, None, events[-1].payload,
                       events[-1].id, None)  # fmt: skip
    flows = [
        Flow(
            1,
            "completed",
            T0,
            T0 + 320 * MS,
            6,
            ["order", "pricing", "payment", "stock"],
            ["placed", "quote", "authorized", "reserved", "completed"],
            ["ord-1"],
        ),
        Flow(
            2,
            "failed",
            T0 + 400 * MS,
            T0 + 470 * MS,
            3,
            ["order", "payment"],
            ["placed", "declined", "cancelled"],
            ["ord-2"],
        ),
        Flow(
            3,
            "stalled",
            T0 + 500 * MS,
            T0 + 4_500 * MS,
            2,
            ["order", "payment"],
            ["placed", "authorized"],
            ["ord-3"],
        ),
    ]
    meta = {"server": "nats://127.0.0.1:4222", "started_ns": str(T0)}
    db = store.create_session(path, meta)
    with store.transaction(db):
        store.insert_events(db, events)
        store.upsert_flows(db, flows)
        store.insert_links(db, links)
        gap = store.open_gap(db, T0 + 2_000 * MS, "disconnected")
        store.close_gap(db, gap, T0 + 2_500 * MS)
        if stopped:
            store.set_meta(db, {"stopped_ns": str(T0 + 5_000 * MS)})
    db.close()
    return path


def damaged_session(path: Path) -> Path:
    """5,000 events, then garbage over pages in the middle: the file opens, and a read that
    reaches those pages fails."""
    db = store.create_session(path, {"stopped_ns": str(T0 + 10_000 * MS)})
    rows = [Event(T0 + i * MS, f"a.{i % 7}", None, [("X", str(i))], b"p" * 200, i + 1)
            for i in range(5_000)]  # fmt: skip
    with store.transaction(db):
        store.insert_events(db, rows)
    db.execute("PRAGMA journal_mode = DELETE")
    db.close()
    data = bytearray(path.read_bytes())
    middle = len(data) // 2 // 4096 * 4096
    data[middle : middle + 16 * 4096] = b"\xa5" * (16 * 4096)
    path.write_bytes(bytes(data))
    return path


def screen_text(app: object) -> str:
    """What the terminal would show, as plain text lines."""
    strips = app.screen._compositor.render_strips()  # type: ignore[attr-defined]
    return "\n".join(strip.text for strip in strips)


CORPUS = [
    "[@click=app.quit]x[/]",
    '[link="file:///etc/passwd"]x[/link]',
    "[/oops]",
    "[/",
    "\x1b]52;c;SGVsbG8=\x07",
    "\x1b]0;pwned\x07",
    "\x1b[2J",
    "\u009b31m",
    "\u202e",
    "\x00",
    "\x7f",
]


def hostile_session(path: Path) -> Path:
    """Every corpus string as a subject token, header name and value, payload, flow and link key."""
    events = []
    links = []
    for i, bad in enumerate(CORPUS, start=1):
        events.append(
            Event(
                T0 + i * MS,
                f"evil.{bad}.x",
                f"_INBOX.{bad}",
                [(f"H{bad}", f"v{bad}"), ("X-Correlation-ID", bad)],
                f'{{"k": "{bad.encode("unicode_escape").decode()}"}} {bad}'.encode(),
                i,
                1,
            )
        )
        links.append(Link(i, "causation", bad, i - 1 or None))
    flows = [Flow(1, "fail[/x]", T0, T0 + 20 * MS, len(CORPUS), CORPUS, CORPUS, CORPUS)]
    db = store.create_session(path, {"server": "[@click=app.quit]x[/]", "stopped_ns": "1"})
    with store.transaction(db):
        store.insert_events(db, events)
        store.upsert_flows(db, flows)
        store.insert_links(db, links)
    db.close()
    return path


async def until(pilot, check: Callable[[], bool], what: str, within: float = 15) -> None:  # type: ignore[no-untyped-def]
    """Wait for the screen to show something (`check`), failing after `within` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"the screen never showed {what}")
        await pilot.pause(0.05)


async def settle(pilot) -> None:  # type: ignore[no-untyped-def]
    """Wait until filter scans are done and the detail pane shows the selection."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    while pilot.app.scanning or pilot.app.detail_pending:
        await pilot.pause(0.01)
    await pilot.pause()
