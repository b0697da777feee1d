"""What each generated order is, decided from (seed, order number) alone.

Nothing here depends on arrival order or timing, so one seed gives one sequence of orders and
one outcome per order however the services interleave. Ids are derived the same way, which keeps
two runs of one seed byte-comparable; a different seed gives different order ids, so two demo
runs on one bus do not share flow keys.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from qixtui_demo import catalog

OUTCOMES = ("completed", "failed", "compensated")


def unit(seed: int, *parts: object) -> float:
    """A uniform number in [0, 1) that depends only on its arguments."""
    digest = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def hex_id(nbytes: int, *parts: object) -> str:
    return hashlib.blake2b(repr(parts).encode(), digest_size=nbytes).hexdigest()


def uuid_of(*parts: object) -> str:
    return str(uuid.UUID(bytes=hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()))


@dataclass(frozen=True)
class Knobs:
    """How the generator shapes the order stream."""

    seed: int = 0
    rate: float = 5.0  # orders per second, Poisson arrivals
    orders: int | None = None  # None: until stopped
    decline_rate: float = 0.1
    stockout_rate: float = 0.1
    customers: int = 25
    incarnation: int = 0  # restarts after a crash: new order ids, so none repeats an earlier one


@dataclass(frozen=True)
class OrderPlan:
    n: int
    order_id: str
    customer_id: str
    items: list[dict[str, Any]] = field(default_factory=list)
    address: dict[str, str] = field(default_factory=dict)
    expected: str = "completed"  # the outcome the rules produce when every service answers


def order_id(seed: int, n: int, incarnation: int = 0) -> str:
    restart = f"r{incarnation}-" if incarnation else ""
    return f"ord-{seed}-{restart}{n:05d}"


def plan_order(knobs: Knobs, n: int) -> OrderPlan:
    seed = knobs.seed
    pick = lambda *what: unit(seed, n, *what)  # noqa: E731
    lines = 1 + int(pick("lines") * 3)
    skus = sorted(
        {catalog.EVERYDAY[int(pick("sku", i) * len(catalog.EVERYDAY))] for i in range(lines)}
    )
    items = [{"sku": sku, "qty": 1 + int(pick("qty", sku) * 3)} for sku in skus]
    expected = "completed"
    if pick("decline") < knobs.decline_rate:
        items.append({"sku": catalog.BIG_TICKET, "qty": 1})
        expected = "failed"
    elif pick("stockout") < knobs.stockout_rate:
        sold_out = sorted(catalog.SOLD_OUT)
        items.append({"sku": sold_out[int(pick("sold-out") * len(sold_out))], "qty": 1})
        expected = "compensated"
    address = {
        "name": f"Customer {int(pick('customer') * knobs.customers) + 1}",
        "street": f"{1 + int(pick('house') * 120)} "
        f"{catalog.STREETS[int(pick('street') * len(catalog.STREETS))]}",
        "city": catalog.CITIES[int(pick("city") * len(catalog.CITIES))],
    }
    return OrderPlan(
        n=n,
        order_id=order_id(seed, n, knobs.incarnation),
        customer_id=f"cust-{int(pick('customer') * knobs.customers) + 1:03d}",
        items=items,
        address=address,
        expected=expected,
    )


def arrival_gap(knobs: Knobs, n: int) -> float:
    """Seconds between order n-1 and order n: exponential, so arrivals are Poisson."""
    return -math.log(1.0 - unit(knobs.seed, n, "arrival")) / knobs.rate


def republishes(seed: int, rate: float, order: str, subject: str) -> bool:
    """Whether the publisher of this event sends it twice (the --duplicates fault)."""
    return rate > 0 and unit(seed, order, subject, "duplicate") < rate


@dataclass(frozen=True)
class Latency:
    """A service's processing time: lognormal around a median, so a tail, never a constant."""

    median_ms: float
    spread: float = 0.5  # sigma of the underlying normal

    def sample(self, normal: float) -> float:
        """Seconds, given one standard-normal draw."""
        return self.median_ms / 1000.0 * math.exp(self.spread * normal)


DEFAULT_LATENCY = {
    "order": Latency(5, 0.4),
    "pricing": Latency(3, 0.3),
    "payment": Latency(40, 0.6),
    "stock": Latency(10, 0.5),
    "shipping": Latency(25, 0.5),
    "notification": Latency(15, 0.5),
}
SERVICES = tuple(DEFAULT_LATENCY)


def parse_latency(spec: str, current: dict[str, Latency]) -> dict[str, Latency]:
    """`MEDIAN_MS[:SPREAD]` for every service or `SERVICE=MEDIAN_MS[:SPREAD]` for one."""
    target, _, value = spec.rpartition("=")
    median_text, _, spread_text = value.partition(":")
    try:
        median = float(median_text)
        spread = float(spread_text) if spread_text else None
    except ValueError:
        raise ValueError(
            f"latency {spec!r}: use MEDIAN_MS[:SPREAD] or SERVICE=MEDIAN_MS[:SPREAD]"
        ) from None
    if median < 0 or (spread is not None and spread < 0):
        raise ValueError(f"latency {spec!r}: median and spread must not be negative")
    names = [target] if target else list(current)
    updated = dict(current)
    for name in names:
        if name not in current:
            raise ValueError(
                f"latency {spec!r}: no service {name!r} (one of {', '.join(SERVICES)})"
            )
        old = current[name]
        updated[name] = Latency(median, old.spread if spread is None else spread)
    return updated
