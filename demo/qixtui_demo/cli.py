"""`python -m qixtui_demo`: run the shop's participants against a NATS server until done."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
from pathlib import Path

import nats.errors

from qixtui_demo.plan import DEFAULT_LATENCY, SERVICES, Knobs, Latency, parse_latency
from qixtui_demo.shop import Faults, Shop, describe
from qixtui_nats.connect import ConnectError, ConnectOptions, split_servers


class UsageError(Exception):
    pass


def rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a rate between 0 and 1")
    return value


def positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m qixtui_demo",
        description="The demo shop's participants (order, pricing, payment, stock, shipping, "
        "notification), each on its own NATS connection, plus an order generator.",
    )
    p.add_argument(
        "--server",
        metavar="URL",
        default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
        help="NATS server (default: NATS_URL, then nats://127.0.0.1:4222).",
    )
    p.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="Same seed, same orders and outcomes (default random).",
    )
    p.add_argument("--rate", type=positive, default=5.0, metavar="R", help="Orders/s (Poisson).")
    p.add_argument(
        "--orders", type=int, metavar="N", help="Stop after placing N orders (default: run on)."
    )
    p.add_argument("--services-only", action="store_true", help="Generate no orders.")
    p.add_argument("--decline-rate", type=rate, default=0.1, metavar="P", help="Share declined.")
    p.add_argument(
        "--stockout-rate", type=rate, default=0.1, metavar="P", help="Share out of stock."
    )
    p.add_argument(
        "--latency",
        action="append",
        default=[],
        metavar="[SERVICE=]MEDIAN_MS[:SPREAD]",
        help="Lognormal processing time, for all services or one (repeatable).",
    )
    p.add_argument(
        "--silent",
        action="append",
        default=[],
        metavar="SERVICE[@SECONDS]",
        help="The service stops answering (after SECONDS; repeatable).",
    )
    p.add_argument(
        "--duplicates", type=rate, default=0.0, metavar="P", help="Share of events sent twice."
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=0.0,
        metavar="S",
        help="Send liveness noise that belongs to no flow every S seconds (default: none).",
    )
    p.add_argument(
        "--incarnation",
        type=int,
        default=0,
        metavar="K",
        help="The K-th restart after a crash: order ids get an rK- part so none repeats.",
    )
    p.add_argument(
        "--drain", type=float, default=5.0, metavar="S", help="Seconds to let orders settle."
    )
    p.add_argument(
        "--connect-timeout",
        type=positive,
        default=10.0,
        metavar="S",
        help="Seconds to reach the server.",
    )
    p.add_argument("--json", action="store_true", help="Print the summary as JSON on stdout.")
    p.add_argument(
        "--summary-file", type=Path, metavar="PATH", help="Also write the JSON summary here."
    )
    p.add_argument(
        "--ready-file", type=Path, metavar="PATH", help="Create this file once subscribed."
    )
    return p


def shown(server: str) -> str:
    """The server URL(s) for a log line: no user:password@."""
    return ConnectOptions(servers=split_servers(server)).display_servers()


def parse_silent(specs: list[str]) -> dict[str, float]:
    silent: dict[str, float] = {}
    for spec in specs:
        name, _, after = spec.partition("@")
        if name not in SERVICES:
            raise UsageError(f"--silent {spec}: no service {name!r} (one of {', '.join(SERVICES)})")
        try:
            silent[name] = float(after) if after else 0.0
        except ValueError:
            raise UsageError(f"--silent {spec}: {after!r} is not a number of seconds") from None
    return silent


def build(args: argparse.Namespace) -> Shop:
    latency: dict[str, Latency] = dict(DEFAULT_LATENCY)
    for spec in args.latency:
        try:
            latency = parse_latency(spec, latency)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.orders is not None and args.orders < 0:
        raise UsageError("--orders must not be negative")
    if args.incarnation < 0:
        raise UsageError("--incarnation must not be negative")
    knobs = Knobs(
        seed=args.seed if args.seed is not None else random.randrange(100_000),
        rate=args.rate,
        orders=args.orders,
        decline_rate=args.decline_rate,
        stockout_rate=args.stockout_rate,
        incarnation=args.incarnation,
    )
    faults = Faults(duplicates=args.duplicates, silent=parse_silent(args.silent))
    return Shop(
        args.server,
        knobs,
        latency=latency,
        faults=faults,
        heartbeat_s=args.heartbeat,
        drain_s=args.drain,
        connect_timeout_s=args.connect_timeout,
    )


async def run(shop: Shop, args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def ready() -> None:
        if args.ready_file is not None:
            args.ready_file.write_text(str(os.getpid()))
        print(
            f"qixtui-demo: shop running on {shown(args.server)} (seed {shop.knobs.seed})",
            file=sys.stderr,
        )

    if args.services_only:
        # run until stopped: the generator has nothing to do, the services keep answering
        await shop.start()
        ready()
        try:
            await stop.wait()
        finally:
            await shop.close()
    else:
        await shop.run(stop, ready)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        shop = build(args)
    except UsageError as exc:
        print(f"qixtui-demo: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(shop, args))
    except ConnectError as exc:  # worded as `qixtui record` words it, the URL without a password
        print(f"qixtui-demo: {exc}", file=sys.stderr)
        return 1
    except (OSError, nats.errors.Error) as exc:
        print(f"qixtui-demo: NATS at {shown(args.server)}: {exc}", file=sys.stderr)
        return 1
    summary = shop.summary()
    if args.summary_file is not None:
        args.summary_file.write_text(json.dumps(summary))
    if args.json:
        print(json.dumps(summary))
    with contextlib.suppress(BrokenPipeError):
        print(describe(summary), file=sys.stderr)
    return 0
