"""Synthetic shop traffic for correlation tests and benchmarks: flows of known membership.

Each flow uses one correlation convention; every message carries its flow's tag (a `Test-Flow`
header, or a `tag` field in a header-less reply) so a test can check what correlation found
without using the keys correlation uses. Heartbeats are tagged `noise`.
"""

from __future__ import annotations

import json
import random
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import msgspec

CONVENTIONS = (
    "trace",
    "header",
    "field",
    "bridge",
    "cloudevents",
    "request",
    "latebridge",  # both halves exist before the event that bridges them
    "causation",  # message ids and causation headers only
)
FIELD_KEYS = ["/order_id", "/data/order_id", "/shipment_id"]
TAG_HEADER = "Test-Flow"
CUSTOMER = "c-shared-1"  # one customer on every order: must never merge them

_encode = msgspec.json.encode


# --- recording helpers: the rules that match this traffic, and waiting for a recorder ---

RULE_FLAGS = [
    *[arg for key in FIELD_KEYS for arg in ("--key", key)],
    "--terminal",
    "shop.order.completed",
    "--failure",
    "shop.order.cancelled",
]


def subscribers(server: Any, subject: str) -> int:
    with urllib.request.urlopen(f"{server.monitor_url}/subsz?subs=1&limit=10000") as resp:
        subs = json.load(resp).get("subscriptions_list") or []
    return sum(1 for s in subs if s.get("subject") == subject)


def wait_for_subscriber(server: Any, subject: str, count: int) -> None:
    """The recorder is ready when the server shows its subscription."""
    end = time.monotonic() + 20
    while subscribers(server, subject) < count:
        assert time.monotonic() < end, f"recorder never subscribed to {subject}"
        time.sleep(0.05)


@dataclass
class Message:
    subject: str
    payload: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    reply: str | None = None  # an inbox the responder answers with a header-less reply
    reply_payload: bytes = b""

    def tag(self) -> str:
        return dict(self.headers)[TAG_HEADER]


def _ids(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def flow_messages(n: int, convention: str, rng: random.Random) -> list[Message]:
    """One order's messages, in causal order, all tagged f<n>."""
    tag = f"f{n}"
    order = f"{convention[:2]}-{n}"
    steps = ["shop.order.placed", "shop.payment.authorized", "shop.stock.reserved"]
    last = "shop.order.completed" if n % 3 else "shop.order.cancelled"
    msgs: list[Message] = []

    def base(extra: dict[str, object] | None = None) -> dict[str, object]:
        return {"customer_id": CUSTOMER, "amount": n % 97, **(extra or {})}

    if convention == "trace":
        trace = _ids(rng, 32)
        for subject in [*steps, last]:
            hdr = [("traceparent", f"00-{trace}-{_ids(rng, 16)}-01"), (TAG_HEADER, tag)]
            msgs.append(Message(subject, _encode(base()), hdr))
    elif convention == "header":
        for subject in [*steps, last]:
            hdr = [("X-Correlation-ID", f"corr-{n}"), (TAG_HEADER, tag)]
            msgs.append(Message(subject, _encode(base()), hdr))
    elif convention == "field":
        for subject in [*steps, last]:
            msgs.append(Message(subject, _encode(base({"order_id": order})), [(TAG_HEADER, tag)]))
    elif convention == "bridge":
        ship = f"s-{n}"
        msgs += [Message(s, _encode(base({"order_id": order})), [(TAG_HEADER, tag)]) for s in steps]
        both = base({"order_id": order, "shipment_id": ship})
        msgs.append(Message("shop.shipment.created", _encode(both), [(TAG_HEADER, tag)]))
        msgs.append(
            Message("shop.shipment.dispatched", _encode({"shipment_id": ship}), [(TAG_HEADER, tag)])
        )
        msgs.append(Message(last, _encode({"shipment_id": ship}), [(TAG_HEADER, tag)]))
    elif convention == "cloudevents":
        for subject in [*steps, last]:
            body = {
                "specversion": "1.0",
                "id": _ids(rng, 12),
                "source": "/shop",
                "type": subject,
                "data": base({"order_id": order}),
            }
            msgs.append(Message(subject, _encode(body), [(TAG_HEADER, tag)]))
    elif convention == "request":
        hdr = [("X-Correlation-ID", f"rr-{n}"), (TAG_HEADER, tag)]
        msgs.append(Message("shop.order.placed", _encode(base()), hdr))
        msgs.append(
            Message(
                "shop.pricing.quote",
                _encode(base()),
                hdr,
                reply=f"_INBOX.test.{n}",
                reply_payload=_encode({"ok": True, "price": n, "tag": tag}),
            )
        )
        msgs.append(Message(last, _encode(base()), hdr))
    elif convention == "latebridge":
        ship = f"ls-{n}"
        msgs.append(
            Message("shop.order.placed", _encode(base({"order_id": order})), [(TAG_HEADER, tag)])
        )
        msgs.append(
            Message("shop.shipment.dispatched", _encode({"shipment_id": ship}), [(TAG_HEADER, tag)])
        )
        both = base({"order_id": order, "shipment_id": ship})
        msgs.append(Message("shop.shipment.created", _encode(both), [(TAG_HEADER, tag)]))
        msgs.append(Message(last, _encode({"order_id": order}), [(TAG_HEADER, tag)]))
    elif convention == "causation":
        cause = None
        for i, subject in enumerate([*steps, last]):
            hdr = [("X-Message-ID", f"m-{n}-{i}"), (TAG_HEADER, tag)]
            if cause:
                hdr.append(("X-Causation-ID", cause))
            cause = f"m-{n}-{i}"
            msgs.append(Message(subject, _encode(base()), hdr))
    else:
        raise ValueError(convention)
    return msgs


def noise(i: int, rng: random.Random) -> Message:
    service = rng.choice(["payment", "stock", "shipping"])
    payloads = [
        _encode({"customer_id": CUSTOMER, "seq": i}),
        b"\xff\xfe not json",
        b"",
        b'{"order_id": ',  # truncated JSON
    ]
    return Message(f"shop.heartbeat.{service}", rng.choice(payloads), [(TAG_HEADER, "noise")])


def interleave(flows: list[list[Message]], rng: random.Random) -> list[Message]:
    """Merge flows randomly, keeping each flow's own order."""
    cursors = [0] * len(flows)
    pending = [i for i, f in enumerate(flows) if f]
    out: list[Message] = []
    while pending:
        k = rng.randrange(len(pending))
        i = pending[k]
        out.append(flows[i][cursors[i]])
        cursors[i] += 1
        if cursors[i] == len(flows[i]):
            pending[k] = pending[-1]
            pending.pop()
    return out


def interleave_window(flows: list[list[Message]], window: int, rng: random.Random) -> list[Message]:
    """Like `interleave`, with at most `window` flows in flight, as on a real bus where an
    order takes seconds and thousands happen per hour."""
    waiting = list(reversed(flows))
    active: list[list[Message]] = []
    out: list[Message] = []
    while waiting or active:
        while waiting and len(active) < window:
            active.append(list(reversed(waiting.pop())))
        k = rng.randrange(len(active))
        out.append(active[k].pop())
        if not active[k]:
            active[k] = active[-1]
            active.pop()
    return out


def traffic(flows: int, noise_every: int, seed: int, window: int | None = None) -> list[Message]:
    """`flows` flows cycling through the conventions, one heartbeat per `noise_every` msgs."""
    rng = random.Random(seed)
    groups = [flow_messages(n, CONVENTIONS[n % len(CONVENTIONS)], rng) for n in range(flows)]
    total = sum(map(len, groups))
    groups += [[noise(i, rng)] for i in range(total // noise_every)]
    if window is not None:
        rng.shuffle(groups)
        return interleave_window(groups, window, rng)
    return interleave(groups, rng)


def expand_replies(messages: list[Message]) -> list[tuple[Message, str | None]]:
    """Messages as a recorder sees them: each request followed by its header-less reply.

    Yields (message, reply_subject_of_this_event); replies have subject = the inbox."""
    out: list[tuple[Message, str | None]] = []
    for msg in messages:
        out.append((msg, msg.reply))
        if msg.reply:
            out.append((Message(msg.reply, msg.reply_payload, []), None))
    return out


def reply_tag(payload: bytes) -> str:
    return str(msgspec.json.decode(payload)["tag"])
