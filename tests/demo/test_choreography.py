"""The shop's choreography on a real nats-server: each service reacts only to events."""

from __future__ import annotations

import itertools

from shop_helpers import Seen, run_shop

from qixtui_demo.messages import message_id
from qixtui_demo.plan import Knobs, plan_order
from qixtui_demo.shop import Faults

HAPPY = [
    "shop.order.placed",
    "shop.payment.authorized",
    "shop.stock.reserved",
    "shop.shipment.created",
    "shop.order.completed",
    "shop.notification.sent",
]


def trace(m: Seen) -> tuple[str, str]:
    _, trace_id, span_id, _ = m.headers["traceparent"].split("-")
    return trace_id, span_id


def assert_causal_chain(events: list[Seen]) -> None:
    """One trace, a new span per hop, and each hop names the previous one as its cause."""
    assert len({trace(m)[0] for m in events}) == 1
    assert len({trace(m)[1] for m in events}) == len(events)
    assert "X-Causation-ID" not in events[0].headers
    for cause, effect in itertools.pairwise(events):
        assert effect.headers["X-Causation-ID"] == message_id(cause.headers)


async def test_happy_path_runs_every_step_in_order(nats_server):
    shop, watch = await run_shop(nats_server.url, seed=11, orders=3)
    assert shop.summary()["orders"]["completed"] == 3
    orders = watch.by_order()
    assert len(orders) == 3
    for order_id, seen in orders.items():
        events = [m for m in seen if m.subject in HAPPY]
        assert [m.subject for m in events] == HAPPY
        assert_causal_chain(events)
        shipped, completed, notified = events[3], events[4], events[5]
        assert shipped.body["order_id"] == completed.body["order_id"] == order_id
        assert shipped.body["shipment_id"] == completed.body["shipment_id"]
        assert notified.body == {
            "shipment_id": shipped.body["shipment_id"],
            "channel": "email",
            "template": "order_shipped",
        }


async def test_messages_mix_header_styles_and_plain_request_reply(nats_server):
    shop, watch = await run_shop(nats_server.url, seed=12, orders=1, heartbeat_s=0.05)
    first = {}
    for m in watch.messages:
        first.setdefault(m.subject, m)
    placed, paid = first["shop.order.placed"], first["shop.payment.authorized"]
    assert {"X-Message-ID", "X-Correlation-ID", "traceparent"} <= set(placed.headers)
    assert {"ce-id", "ce-type", "ce-source", "ce-specversion"} <= set(paid.headers)
    assert "X-Correlation-ID" not in paid.headers
    reserved = first["shop.stock.reserved"]
    assert reserved.headers["X-Correlation-ID"] == placed.headers["X-Correlation-ID"]
    # the pricing lookup: requests naming the order (a slow answer is retried), replies with
    # no headers at all, one of which priced the order
    quotes = [m for m in watch.messages if m.subject == "shop.pricing.quote"]
    assert all(q.headers == {} and q.body["order_id"] == placed.body["order_id"] for q in quotes)
    inboxes = {q.reply for q in quotes}
    replies = [m for m in watch.messages if m.subject in inboxes]
    assert replies, (watch.subjects(), shop.summary()["services"])
    assert all(r.headers == {} for r in replies)
    assert placed.body["amount"] in {r.body["amount"] for r in replies}
    # heartbeats: noise with a customer id orders share, and nothing that links
    beats = [m for m in watch.messages if m.subject.startswith("shop.heartbeat.")]
    assert {m.subject for m in beats} >= {"shop.heartbeat.payment", "shop.heartbeat.order"}
    customers = {m.body["customer_id"] for m in beats}
    assert placed.body["customer_id"] in customers
    assert all(m.headers == {} and "order_id" not in m.body for m in beats)


async def test_declined_payment_cancels_the_order(nats_server):
    shop, watch = await run_shop(nats_server.url, seed=13, orders=2, decline_rate=1.0)
    assert shop.summary()["orders"]["failed"] == 2
    for seen in watch.by_order().values():
        events = [m for m in seen if m.subject != "shop.pricing.quote"]
        assert [m.subject for m in events] == [
            "shop.order.placed",
            "shop.payment.declined",
            "shop.order.cancelled",
        ]
        assert events[-1].body["reason"] == "payment_declined"
        assert_causal_chain(events)
    assert not any(s.startswith(("shop.stock.", "shop.shipment.")) for s in watch.subjects())


async def test_stock_failure_refunds_the_payment(nats_server):
    shop, watch = await run_shop(nats_server.url, seed=14, orders=2, stockout_rate=1.0)
    assert shop.summary()["orders"]["compensated"] == 2
    for seen in watch.by_order().values():
        events = [m for m in seen if m.subject != "shop.pricing.quote"]
        assert [m.subject for m in events] == [
            "shop.order.placed",
            "shop.payment.authorized",
            "shop.stock.failed",
            "shop.payment.refunded",
            "shop.order.cancelled",
        ]
        assert events[3].body["payment_id"] == events[1].body["payment_id"]
        assert_causal_chain(events)
    assert "shop.shipment.created" not in watch.subjects()


async def test_silent_service_leaves_orders_unfinished(nats_server):
    faults = Faults(silent={"stock": 0.0})
    shop, watch = await run_shop(nats_server.url, seed=15, orders=3, faults=faults, drain_s=0.5)
    summary = shop.summary()
    assert summary["orders"]["placed"] == 3
    assert summary["orders"]["unfinished"] == 3
    assert set(summary["outcomes"].values()) == {"unfinished"}
    assert summary["services"]["stock"]["unanswered"] >= 6  # placed and authorized, per order
    assert watch.subjects().count("shop.payment.authorized") == 3
    assert not any(s.startswith(("shop.stock.", "shop.order.completed")) for s in watch.subjects())


async def test_without_a_price_no_order_is_placed(nats_server):
    faults = Faults(silent={"pricing": 0.0})
    shop, watch = await run_shop(nats_server.url, seed=17, orders=2, faults=faults)
    summary = shop.summary()
    assert summary["orders"]["placed"] == 0
    assert summary["orders"]["not_placed"] == 2
    assert summary["services"]["order"]["pricing_timeouts"] == 4  # each order asked twice
    assert watch.subjects().count("shop.pricing.quote") == 4
    assert "shop.order.placed" not in watch.subjects()


async def test_a_service_that_falls_silent_later_stalls_only_later_orders(nats_server):
    # seed 21 at 10 orders/s places orders at 0.02, 0.2, 0.22, 0.36, 0.44, 0.6 ... 0.9 s
    faults = Faults(silent={"payment": 0.4})
    shop, _ = await run_shop(
        nats_server.url, seed=21, orders=10, rate=10, faults=faults, drain_s=0.5
    )
    by_id = shop.summary()["outcomes"]
    outcomes = [by_id[order_id] for order_id in sorted(by_id)]  # ids sort by order number
    assert outcomes[:3] == ["completed"] * 3
    assert outcomes[5:] == ["unfinished"] * 5


async def test_duplicates_are_delivered_and_applied_once(nats_server):
    faults = Faults(duplicates=1.0)
    shop, watch = await run_shop(
        nats_server.url, seed=16, orders=4, decline_rate=0.25, stockout_rate=0.34, faults=faults
    )
    summary = shop.summary()
    assert summary["orders"]["unfinished"] == 0
    events = [m for m in watch.messages if message_id(m.headers)]
    ids = [message_id(m.headers) for m in events]
    # every event went out twice, byte for byte the same message
    assert len(ids) == 2 * len(set(ids))
    outcomes = [m for m in events if m.subject in ("shop.order.completed", "shop.order.cancelled")]
    assert len({m.body["order_id"] for m in outcomes}) == 4
    services = summary["services"]
    ignored = sum(s.get("duplicates_ignored", 0) for s in services.values())
    assert ignored > 0
    payment = services["payment"]
    assert payment.get("authorized", 0) + payment.get("declined", 0) == 4
    assert payment.get("refunded", 0) == summary["orders"]["compensated"]


async def test_same_seed_same_outcomes_whatever_the_timing(nats_server):
    knobs = {"seed": 2024, "orders": 12, "decline_rate": 0.3, "stockout_rate": 0.3}
    first, _ = await run_shop(nats_server.url, **knobs)
    slow = {name: type(lat)(lat.median_ms * 3, 1.0) for name, lat in first.latency.items()}
    second, _ = await run_shop(nats_server.url, **knobs, latency=slow)
    outcomes = first.summary()["outcomes"]
    assert outcomes == second.summary()["outcomes"]
    plan = Knobs(seed=2024, decline_rate=0.3, stockout_rate=0.3)
    expected = {p.order_id: p.expected for p in (plan_order(plan, n) for n in range(1, 13))}
    assert outcomes == expected
    assert set(outcomes.values()) == {"completed", "failed", "compensated"}
