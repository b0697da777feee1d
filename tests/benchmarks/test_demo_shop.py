"""How many orders a second the demo shop sustains, against bare nats-py in the same run.

Run: pytest -m benchmark -s tests/benchmarks/test_demo_shop.py
"""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

from qixtui_demo.plan import DEFAULT_LATENCY, Knobs, Latency
from qixtui_demo.shop import Shop

ORDERS = 1500


async def bare_nats(url: str, messages: int) -> float:
    """Seconds for `messages` small publishes to reach one subscriber."""
    pub, sub = await nats.connect(url), await nats.connect(url)
    done = asyncio.Event()
    seen = 0

    async def count(_msg: object) -> None:
        nonlocal seen
        seen += 1
        if seen == messages:
            done.set()

    await sub.subscribe("bench.>", cb=count)
    await sub.flush()
    payload = b'{"order_id": "ord-1-00001", "amount": 42.0}'
    started = time.perf_counter()
    for _ in range(messages):
        await pub.publish("bench.x", payload, headers={"X-Message-ID": "m"})
    await pub.flush()
    await done.wait()
    elapsed = time.perf_counter() - started
    await pub.close()
    await sub.close()
    return elapsed


@pytest.mark.benchmark
async def test_shop_throughput(nats_server):
    no_wait = {name: Latency(0.0, 0.0) for name in DEFAULT_LATENCY}
    shop = Shop(
        nats_server.url,
        Knobs(seed=1, rate=1e6, orders=ORDERS),
        latency=no_wait,
        heartbeat_s=0,
        drain_s=60,
    )
    started = time.perf_counter()
    await shop.run(asyncio.Event())
    shop_s = time.perf_counter() - started
    summary = shop.summary()
    assert summary["orders"]["unfinished"] == 0
    published = sum(s.get("published", 0) for s in summary["services"].values())
    messages = published + 2 * ORDERS  # plus the price requests and their replies
    bare_s = await bare_nats(nats_server.url, messages)
    print(
        f"\ndemo shop: {ORDERS} orders, {messages} messages in {shop_s:.2f}s = "
        f"{ORDERS / shop_s:,.0f} orders/s, {messages / shop_s:,.0f} msgs/s; bare nats-py "
        f"publish->subscribe: {messages / bare_s:,.0f} msgs/s; shop/bare = "
        f"{bare_s / shop_s:.2f}"
    )
