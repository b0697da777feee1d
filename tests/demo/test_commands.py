"""The command API the saga engine drives, per contracts.md, against a real nats-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from shop_helpers import FAST

from qixtui_demo import catalog
from qixtui_demo.plan import Knobs
from qixtui_demo.shop import Faults, Shop


@pytest.fixture
async def shop(nats_server) -> AsyncIterator[Shop]:
    shop = Shop(nats_server.url, Knobs(seed=5), latency=FAST, heartbeat_s=0)
    await shop.start()
    yield shop
    await shop.close()


@pytest.fixture
async def nc(nats_server) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


async def call(nc: Client, subject: str, body: Any, key: str | None = None) -> dict[str, Any]:
    headers = {"Idempotency-Key": key} if key else None
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = await nc.request(subject, data, timeout=2, headers=headers)
    result: dict[str, Any] = json.loads(reply.data)
    return result


async def stats(nc: Client, service: str) -> dict[str, Any]:
    return await call(nc, f"shop.admin.{service}.stats", {})


async def test_payment_authorizes_declines_and_refunds(shop, nc):
    ok = await call(
        nc, "shop.cmd.payment.authorize", {"order_id": "o-1", "customer_id": "c-1", "amount": 42.0}
    )
    assert ok["ok"] is True
    assert ok["payment_id"].startswith("pay-")
    big = {"order_id": "o-2", "customer_id": "c-1", "amount": catalog.CARD_LIMIT + 1}
    assert await call(nc, "shop.cmd.payment.authorize", big) == {"ok": False, "error": "declined"}
    refund = {"order_id": "o-1", "payment_id": ok["payment_id"]}
    assert await call(nc, "shop.cmd.payment.refund", refund) == {"ok": True}
    wrong = {"order_id": "o-1", "payment_id": "pay-nope"}
    assert await call(nc, "shop.cmd.payment.refund", wrong) == {
        "ok": False,
        "error": "unknown_payment",
    }


async def test_stock_reserves_fails_and_releases(shop, nc):
    items = [{"sku": "sku-mug", "qty": 2}]
    ok = await call(nc, "shop.cmd.stock.reserve", {"order_id": "o-1", "items": items})
    assert ok["ok"] is True
    sold_out = [*items, {"sku": "sku-retro-console", "qty": 1}]
    failed = await call(nc, "shop.cmd.stock.reserve", {"order_id": "o-2", "items": sold_out})
    assert failed == {"ok": False, "error": "out_of_stock", "sku": "sku-retro-console"}
    release = {"order_id": "o-1", "reservation_id": ok["reservation_id"]}
    assert await call(nc, "shop.cmd.stock.release", release) == {"ok": True}
    again = await call(nc, "shop.cmd.stock.release", release)
    assert again == {"ok": False, "error": "unknown_reservation"}


async def test_shipping_order_and_notify_answer(shop, nc):
    address = {"street": "1 Mill Lane", "city": "Graz"}
    shipped = await call(nc, "shop.cmd.shipping.create", {"order_id": "o-1", "address": address})
    assert shipped["ok"] is True
    assert shipped["shipment_id"].startswith("shp-")
    assert await call(nc, "shop.cmd.order.complete", {"order_id": "o-1"}) == {"ok": True}
    sent = await call(nc, "shop.cmd.notify.send", {"order_id": "o-1", "message": "on its way"})
    assert sent == {"ok": True}


async def test_bad_requests_get_an_error_reply(shop, nc):
    missing = await call(nc, "shop.cmd.payment.authorize", {"order_id": "o-1"})
    assert missing["ok"] is False
    assert "customer_id" in missing["error"]
    garbage = await call(nc, "shop.cmd.stock.reserve", b"not json")
    assert garbage["ok"] is False
    assert garbage["error"].startswith("bad_request")


async def test_same_idempotency_key_applies_once_and_replays_the_reply(shop, nc):
    body = {"order_id": "o-7", "customer_id": "c-1", "amount": 10.0}
    first = await call(nc, "shop.cmd.payment.authorize", body, key="run-1:authorize_payment:o-7")
    second = await call(nc, "shop.cmd.payment.authorize", body, key="run-1:authorize_payment:o-7")
    assert second == first
    assert await stats(nc, "payment") == {
        "seen": {"run-1:authorize_payment:o-7": 2},
        "applied": {"run-1:authorize_payment:o-7": 1},
    }
    # without a key each request is a new authorization: what the key protects against
    plain = [await call(nc, "shop.cmd.payment.authorize", body) for _ in range(2)]
    assert plain[0]["payment_id"] != plain[1]["payment_id"] != first["payment_id"]


async def test_concurrent_retries_with_one_key_apply_once(shop, nc):
    body = {"order_id": "o-8", "items": [{"sku": "sku-kettle", "qty": 1}]}
    key = "run-2:reserve_stock:o-8"
    replies = await asyncio.gather(
        *(call(nc, "shop.cmd.stock.reserve", body, key) for _ in range(5))
    )
    assert all(reply == replies[0] for reply in replies)
    assert replies[0]["ok"] is True
    assert await stats(nc, "stock") == {"seen": {key: 5}, "applied": {key: 1}}


@pytest.mark.parametrize(
    ("service", "subject", "body"),
    [
        ("shipping", "shop.cmd.shipping.create", {"order_id": "o-9", "address": {}}),
        ("order", "shop.cmd.order.complete", {"order_id": "o-9"}),
        ("notify", "shop.cmd.notify.send", {"order_id": "o-9", "message": "hi"}),
        ("payment", "shop.cmd.payment.refund", {"order_id": "o-9", "payment_id": "pay-x"}),
        ("stock", "shop.cmd.stock.release", {"order_id": "o-9", "reservation_id": "res-x"}),
    ],
)
async def test_every_service_keeps_idempotency_stats(shop, nc, service, subject, body):
    key = f"run-3:{service}:o-9"
    first = await call(nc, subject, body, key)
    assert await call(nc, subject, body, key) == first
    assert await stats(nc, service) == {"seen": {key: 2}, "applied": {key: 1}}


async def test_a_silent_service_does_not_answer_commands(nats_server, nc):
    shop = Shop(
        nats_server.url,
        Knobs(seed=5),
        latency=FAST,
        faults=Faults(silent={"payment": 0}),
        heartbeat_s=0,
    )
    await shop.start()
    try:
        body = {"order_id": "o-1", "customer_id": "c-1", "amount": 1.0}
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request("shop.cmd.payment.authorize", json.dumps(body).encode(), timeout=0.3)
        assert await call(nc, "shop.cmd.order.complete", {"order_id": "o-1"}) == {"ok": True}
    finally:
        await shop.close()
