"""The TUI on a 1,000,000-event session: time to a usable screen, page-down, filters, memory.

Run: pytest -m benchmark -s tests/benchmarks/bench_tui.py
Targets: open < 1 s, page-down and a filter's first screen < 100 ms (median), RSS < 300 MB.
Each figure is printed with its ratio to the bare SQLite query doing the same reading.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from qixtui.core import filters, store
from qixtui.core.model import Flow
from qixtui.ui.app import QixtuiApp
from qixtui.ui.rowlist import RowList

pytestmark = [pytest.mark.benchmark, pytest.mark.timeout(900)]

EVENTS = 1_000_000
PER_FLOW = 10
T0 = 1_780_000_000_000_000_000
SUBJECTS = [
    "shop.order.placed",
    "shop.payment.authorized",
    "shop.stock.reserved",
    "shop.shipment.created",
    "shop.order.completed",
]


def rows() -> Iterator[tuple[object, ...]]:
    encode = msgspec.json.encode
    for i in range(1, EVENTS + 1):
        flow = (i - 1) // PER_FLOW + 1
        headers = encode([["X-Correlation-ID", f"ord-{flow}"], ["X-Message-ID", f"m-{i}"]])
        payload = encode({"order_id": flow, "seq": i, "note": "x" * 40})
        subject = SUBJECTS[i % len(SUBJECTS)]
        yield (i, T0 + i * 1_000_000, subject, None, headers.decode(), payload, len(payload), flow)


@pytest.fixture(scope="module")
def big_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "million.qix"
    started = time.perf_counter()
    db = store.create_session(path, {"stopped_ns": str(T0 + EVENTS * 1_000_000)})
    with store.transaction(db):
        db.executemany(store.INSERT_EVENT, rows())
        flows = [
            Flow(
                f,
                "completed" if f % 7 else "failed",
                T0,
                T0 + PER_FLOW * 1_000_000,
                PER_FLOW,
                ["order", "payment"],
                ["placed", "completed"],
            )
            for f in range(1, EVENTS // PER_FLOW + 1)
        ]
        store.upsert_flows(db, flows)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    print(
        f"\nbuilt {EVENTS:,} events in {time.perf_counter() - started:.1f}s, "
        f"{path.stat().st_size / 1e6:.0f} MB"
    )
    return path


def rss_mb() -> tuple[float, float]:
    current = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            current = int(line.split()[1]) / 1024
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def wait_until(pilot, ready) -> None:  # type: ignore[no-untyped-def]
    while not ready():
        await pilot.pause(0.001)


async def test_tui_on_a_million_events(big_session: Path) -> None:
    rss_before, _ = rss_mb()
    started = time.perf_counter()
    app = QixtuiApp(big_session)
    async with app.run_test(size=(160, 50)) as pilot:
        await wait_until(pilot, lambda: len(app.screen.query_one("#events", RowList).index) > 0)
        await pilot.pause()
        opened = time.perf_counter() - started
        print(f"\nopened in {opened:.2f}s", flush=True)
        events = app.screen.query_one("#events", RowList)
        assert len(events.index) == EVENTS
        assert events.cursor == EVENTS - 1

        raw = store.open_session(big_session)
        t = time.perf_counter()
        raw.execute("SELECT max(id), count(*) FROM events").fetchone()
        list(raw.execute(f"SELECT {store.EVENT_COLUMNS} FROM events ORDER BY id DESC LIMIT 50"))
        base_open = time.perf_counter() - t

        # Page-down over cold pages: move to the top, then page down through unseen rows.
        events.move_to(0)
        await pilot.pause()
        page_times = []
        for _ in range(30):
            t = time.perf_counter()
            await pilot.press("pagedown")
            await pilot.pause()
            page_times.append(time.perf_counter() - t)
        # The work one page-down does, without Pilot's round trip: move, read, draw, detail.
        page_work = []
        height = events.scrollable_content_region.height
        for _ in range(30):
            t = time.perf_counter()
            events.action_page(1)
            app.show_event(events.row_id())
            for y in range(height):
                events.render_line(y)
            page_work.append(time.perf_counter() - t)
        base_page = []
        for n in range(30):
            t = time.perf_counter()
            list(
                raw.execute(
                    f"SELECT {store.EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT 50",
                    (500_000 + n * 50,),
                )
            )
            base_page.append(time.perf_counter() - t)

        print(f"paged: {median_ms(page_times):.1f} ms", flush=True)
        # Filters: time to the first screen of matches, and to the end of the scan.
        cases = [
            "header:X-Correlation-ID=ord-99999",  # 10 matches near the end: a full scan
            "json:/order_id=50000",  # 10 matches in the middle
            "shop.order.*",  # 40% of events
            "status:failed",  # one flow in seven, through the flows table
            "note",  # payload text in every event
        ]
        filter_first: dict[str, list[float]] = {}
        filter_full: dict[str, list[float]] = {}
        base_full: dict[str, list[float]] = {}
        for text in cases:
            for _ in range(3):
                t = time.perf_counter()
                app.apply_filter(text)
                await wait_until(pilot, lambda: len(events.index) > 0 or not app.scanning)
                for y in range(height):  # draw the first screen of matches
                    events.render_line(y)
                filter_first.setdefault(text, []).append(time.perf_counter() - t)
                await wait_until(pilot, lambda: not app.scanning)
                filter_full.setdefault(text, []).append(time.perf_counter() - t)
                print(text, filter_first[text][-1], filter_full[text][-1], flush=True)
                where = filters.build(filters.parse(text))
                filters.install_functions(raw)
                t = time.perf_counter()
                raw.execute(f"SELECT count(*) FROM events WHERE {where.sql}", where.params)
                base_full.setdefault(text, []).append(time.perf_counter() - t)
            assert len(events.index) > 0, text
        app.apply_filter("")
        await pilot.pause()
        rss_now, rss_peak = rss_mb()

    print(
        f"\nopen to usable screen: {opened * 1000:.0f} ms "
        f"(bare SQL {base_open * 1000:.1f} ms; target < 1000 ms)"
    )
    print(
        f"page-down median: {median_ms(page_work):.1f} ms of app work "
        f"(max {max(page_work) * 1000:.1f} ms; bare SQL page {median_ms(base_page):.2f} ms, ratio "
        f"{median_ms(page_work) / max(median_ms(base_page), 1e-6):.0f}x; target < 100 ms); "
        f"{median_ms(page_times):.0f} ms through Pilot's key press and repaint"
    )
    for text in cases:
        print(
            f"filter {text!r}: first screen {median_ms(filter_first[text]):.0f} ms, "
            f"whole file {median_ms(filter_full[text]):.0f} ms "
            f"(bare SQL count {median_ms(base_full[text]):.0f} ms, ratio "
            f"{median_ms(filter_full[text]) / max(median_ms(base_full[text]), 1e-6):.2f}x)"
        )
    print(
        f"RSS: {rss_now:.0f} MB now, {rss_peak:.0f} MB peak "
        f"({rss_before:.0f} MB before the app; target < 300 MB)"
    )
