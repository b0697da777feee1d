"""Publisher process for recording benchmarks: publishes synthetic shop traffic as fast as it
can, replies included. `PYTHONPATH=tests python tests/benchmarks/publish_traffic.py URL FLOWS SEED`
"""

from __future__ import annotations

import asyncio
import sys

import nats
from flowgen import traffic


async def main(url: str, flows: int, seed: int) -> None:
    messages = traffic(flows, noise_every=8, seed=seed, window=200)
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    for i, msg in enumerate(messages):
        await nc.publish(msg.subject, msg.payload, reply=msg.reply or "", headers=dict(msg.headers))
        if msg.reply:
            await nc.publish(msg.reply, msg.reply_payload)
        if i % 5000 == 0:
            await nc.flush()
    await nc.flush()
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
