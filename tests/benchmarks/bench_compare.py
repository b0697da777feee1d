"""compare over many flows, against the least any comparison does: reading the session.

Run: pytest -m benchmark -s tests/benchmarks/bench_compare.py
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from shopflows import (
    COMPENSATION,
    FAILURE,
    HAPPY,
    MAP,
    MS,
    STOCK_FAILS,
    SWAPPED,
    T0,
    Builder,
    write_session,
)

from qixtui.core import compare as cmp
from qixtui.core import store

pytestmark = pytest.mark.benchmark

FLOWS = 6_000


def many() -> Builder:
    b = Builder()
    calls = [
        ("shop.cmd.payment.authorize", 0, 4, True),
        ("shop.cmd.stock.reserve", 5, 9, True),
        ("shop.cmd.shipping.create", 10, 30, True),
        ("shop.cmd.order.complete", 31, 33, True),
    ]
    for i in range(FLOWS):
        start = T0 + i * 100 * MS
        if i % 2:
            b.saga(i + 1, start, calls, "completed")
        else:
            steps = (HAPPY, SWAPPED, STOCK_FAILS)[i % 3]
            b.chain(i + 1, start, steps, "compensated" if steps is STOCK_FAILS else "completed")
    return b


def test_compare_throughput(tmp_path: Path) -> None:
    path = tmp_path / "many.qix"
    b = write_session(path, many())
    db = store.open_session(path)

    t0 = time.perf_counter()
    flows, events, links = cmp.load_scope(db)
    read_s = time.perf_counter() - t0

    saga = cmp.parse_mapping(MAP, ["authorize", "reserve", "ship", "complete"])
    t0 = time.perf_counter()
    result = cmp.compare(
        flows, events, links, markers=cmp.Markers(FAILURE, COMPENSATION), saga=saga
    )
    compare_s = time.perf_counter() - t0
    n = len(b.events)
    assert result.choreography.flows + result.orchestration.flows == FLOWS
    print(
        f"\n{FLOWS:,} flows, {n:,} events: reading the session {read_s:.2f}s "
        f"({n / read_s:,.0f} events/s), compare + conformance {compare_s:.2f}s "
        f"({n / compare_s:,.0f} events/s), ratio compare/read {compare_s / read_s:.2f}"
    )
