"""The shop's orchestrated half: saga runs of sagas/shop.toml at a steady pace, journaled into
the demo's session file next to the choreographed orders the recorder is writing.

    python -m qixtui_demo.orchestrated --server URL --file SESSION [--rate R] [--seed S]

Each run's outcome follows from (seed, run number), like the choreographed orders: about one
run in ten is declined (amount over the card limit) and one in ten meets a stock-out, which
refunds the payment. SIGTERM or SIGINT ends it after the run in progress.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
from pathlib import Path

from qixtui.core import store
from qixtui.core.saga import load_saga_text
from qixtui_demo import SHOP_SAGA
from qixtui_demo.catalog import EVERYDAY, SOLD_OUT
from qixtui_nats.connect import ConnectError, ConnectOptions
from qixtui_nats.saga_runner import SagaRunner, connect_bus, open_journal


def run_variables(seed: int, n: int, incarnation: int = 0) -> dict[str, str]:
    """The variables of run `n`: decided by (seed, n) alone, never by timing; a restart after
    a crash (`incarnation`) only changes the order id, so no run repeats an earlier one's."""
    pick = random.Random(seed * 1_000_003 + n)
    roll = pick.random()
    amount = 5000.0 if roll < 0.1 else round(pick.uniform(10, 400), 2)
    sku = pick.choice(sorted(SOLD_OUT)) if 0.1 <= roll < 0.2 else pick.choice(EVERYDAY)
    restart = f"r{incarnation}-" if incarnation else ""
    return {
        "order_id": f"orch-{seed}-{restart}{n:05d}",
        "customer_id": f"cust-{pick.randrange(1, 40):03d}",
        "amount": str(amount),
        "sku": sku,
        "qty": str(pick.randrange(1, 4)),
    }


async def drive(
    server: str, session: Path, rate: float, seed: int, runs: int | None, incarnation: int = 0
) -> dict:
    text = SHOP_SAGA.read_text(encoding="utf-8")
    saga = load_saga_text(text, str(SHOP_SAGA))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nc = await connect_bus(ConnectOptions(servers=[server]))
    db = open_journal(session)
    runner = SagaRunner(nc, db)
    outcomes: dict[str, int] = {}
    n = 0
    try:
        while not stop.is_set() and (runs is None or n < runs):
            n += 1
            report = await runner.start(saga, text, run_variables(seed, n, incarnation))
            outcomes[report.outcome] = outcomes.get(report.outcome, 0) + 1
            if nc.is_closed:  # gave up reconnecting: each run now would stop at once
                raise ConnectError(f"{server}: the bus connection was lost ({report.reason})")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1 / rate)
    finally:
        db.close()
        await nc.close()
    return {"runs": n, "outcomes": outcomes}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m qixtui_demo.orchestrated")
    parser.add_argument("--server", required=True)
    parser.add_argument("--file", required=True, type=Path, help="session file for the journal")
    parser.add_argument("--rate", type=float, default=1.0, help="saga runs per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, help="stop after N runs (default: until stopped)")
    parser.add_argument(
        "--incarnation", type=int, default=0, help="the K-th restart after a crash (new order ids)"
    )
    args = parser.parse_args(argv)
    try:
        result = asyncio.run(
            drive(args.server, args.file, args.rate, args.seed, args.runs, args.incarnation)
        )
    except (store.SessionError, ConnectError, OSError) as exc:
        sys.exit(f"qixtui_demo.orchestrated: {exc}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
