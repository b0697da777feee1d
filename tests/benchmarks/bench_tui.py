"""The TUI on a 1,000,000-event session: time to a usable screen, page-down, filters, memory;
and the TUI tailing a recorder that records a bus at 20,000 events/s.

Run: pytest -m benchmark -s tests/benchmarks/bench_tui.py
Targets: open < 1 s, page-down and a filter's first screen < 100 ms (median), RSS < 300 MB;
while tapping 20,000 ev/s a key press shows on screen in < 100 ms (median), nothing lost.
Each figure is printed with its ratio to a baseline measured in the same run.
"""

from __future__ import annotations

import asyncio
import functools
import json
import operator
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from bench_record import PUBLISHER, count, publish, wait_recorder_ready
from helpers import qixtui_command
from textual import events as keys

from qixtui.core import filters, store
from qixtui.core.model import Flow
from qixtui.ui.app import QixtuiApp
from qixtui.ui.rowlist import RowList
from qixtui_nats.server import EmbeddedServer

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


RARE_EVERY = 100_000  # one event in this many is a refund: a rare subject and payload text


def rows() -> Iterator[tuple[object, ...]]:
    encode = msgspec.json.encode
    for i in range(1, EVENTS + 1):
        flow = (i - 1) // PER_FLOW + 1
        headers = encode(
            [["X-Correlation-ID", f"ord-{flow}"], ["X-Message-ID", f"m-{i}"], ["Tenant", "acme"]]
        )
        rare = i % RARE_EVERY == RARE_EVERY // 3
        note = "refund requested" if rare else "x" * 40
        payload = encode({"order_id": flow, "seq": i, "note": note})
        subject = "shop.refund.issued" if rare else SUBJECTS[i % len(SUBJECTS)]
        yield (i, T0 + i * 1_000_000, subject, None, headers.decode(), payload, len(payload), flow)


def flow(f: int) -> Flow:
    """One flow in seven failed; one in 10,000 compensated, and it took 5 s, not 10 ms."""
    rare = f % 10_000 == 0
    return Flow(
        f,
        "compensated" if rare else "completed" if f % 7 else "failed",
        T0,
        T0 + (5_000 if rare else PER_FLOW) * 1_000_000,
        PER_FLOW,
        ["order", "payment"],
        ["placed", "completed"],
    )


@pytest.fixture(scope="module")
def million(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same million events twice: closed with read indexes, and as a live recording has
    them (no read indexes yet, no stop time)."""
    folder = tmp_path_factory.mktemp("bench")
    path, live = folder / "million.qix", folder / "live.qix"
    started = time.perf_counter()
    db = store.create_session(path)
    with store.transaction(db):
        db.executemany(store.INSERT_EVENT, rows())
        store.upsert_flows(db, [flow(f) for f in range(1, EVENTS // PER_FLOW + 1)])
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    built = time.perf_counter() - started
    size = path.stat().st_size
    shutil.copyfile(path, live)
    store.set_meta(db, {"stopped_ns": str(T0 + EVENTS * 1_000_000)})
    # What the session writer does when the recording closes.
    started = time.perf_counter()
    store.build_read_indexes(db)
    indexing = time.perf_counter() - started
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    print(
        f"\nbuilt {EVENTS:,} events in {built:.1f}s, {size / 1e6:.0f} MB; read indexes built "
        f"at close in {indexing:.1f}s, file now {path.stat().st_size / 1e6:.0f} MB"
    )
    return path, live


@pytest.fixture(scope="module")
def big_session(million: tuple[Path, Path]) -> Path:
    return million[0]


def rss_mb() -> tuple[float, float]:
    current = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            current = int(line.split()[1]) / 1024
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def wait_until(pilot, ready, within: float = 120) -> None:  # type: ignore[no-untyped-def]
    # A deadline: a publisher that died (it once lacked an argument) hung the run for good.
    deadline = time.monotonic() + within
    while not ready():
        assert time.monotonic() < deadline, "waited two minutes"
        await pilot.pause(0.001)


# Every kind of filter term, for a rare value and a common one.
FILTER_CASES = [
    ("subject", "rare", "subject:shop.refund.issued"),  # 10 events
    ("subject wildcard", "rare", "shop.refund.*"),  # the same 10
    ("subject wildcard", "common", "shop.order.*"),  # 40% of events
    ("header", "rare", "header:X-Correlation-ID=ord-99999"),  # 10, near the end
    ("header", "common", "header:Tenant=acme"),  # every event
    ("payload text", "rare", "refund"),  # 10
    ("payload text", "common", "note"),  # every event
    ("json", "rare", "json:/order_id=50000"),  # 10, in the middle
    ("json", "common", f"json:/note={'x' * 40}"),  # all but the 10
    ("status", "rare", "status:compensated"),  # 10 flows, 100 events
    ("status", "common", "status:failed"),  # one flow in seven
    ("flow", "rare", "flow:50000"),  # 10 events in the middle
    ("duration", "rare", "duration>1s"),  # the compensated flows
    ("duration", "common", "duration<1s"),  # all the others
]
Timings = dict[str, dict[str, list[float]]]


async def time_filters(app: QixtuiApp, pilot: Any, raw: Any, repeat: int = 3) -> Timings:
    """Each filter's time to its first screen (a screenful of matches, or all there are when
    fewer) and to the end of its scan; and the bare full-scan count as the baseline."""
    events = app.screen.query_one("#events", RowList)
    height = events.scrollable_content_region.height
    filters.install_functions(raw)
    out: Timings = {"first": {}, "full": {}, "base": {}}
    for _kind, _how, text in FILTER_CASES:
        for _ in range(repeat):
            t = time.perf_counter()
            app.apply_filter(text)
            await wait_until(pilot, lambda: len(events.index) >= height or not app.scanning)
            for y in range(height):  # draw the first screen of matches
                events.render_line(y)
            out["first"].setdefault(text, []).append(time.perf_counter() - t)
            await wait_until(pilot, lambda: not app.scanning)
            out["full"].setdefault(text, []).append(time.perf_counter() - t)
            where = filters.build(filters.parse(text))
            t = time.perf_counter()
            # The baseline: the full scan every filter made before the read indexes.
            raw.execute(
                f"SELECT count(*) FROM events NOT INDEXED WHERE {where.sql}", where.params
            ).fetchone()
            out["base"].setdefault(text, []).append(time.perf_counter() - t)
        assert len(events.index) > 0, text
    app.apply_filter("")
    await pilot.pause()
    return out


def print_filters(title: str, timings: Timings) -> None:
    print(f"filters on a {EVENTS:,}-event {title} (median of 3; target first screen < 100 ms):")
    for kind, how, text in FILTER_CASES:
        first, full, base = (median_ms(timings[k][text]) for k in ("first", "full", "base"))
        print(
            f"  {kind:<16} {how:<6} {text[:36]!r:<38} first screen {first:5.0f} ms, "
            f"whole file {full:5.0f} ms (bare SQL full-scan count {base:4.0f} ms, "
            f"ratio {full / max(base, 1e-6):.2f}x)"
        )


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
            further = functools.partial(operator.lt, events.cursor)  # cursor past where it was
            page_times.append(await key_to_frame(app, "pagedown", events, further))
            await pilot.pause()
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
        filtered = await time_filters(app, pilot, raw)
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
        f"key press to the frame showing the next page: median {median_ms(page_times):.0f} ms"
    )
    print_filters("closed recording, read indexes built", filtered)
    print(
        f"RSS: {rss_now:.0f} MB now, {rss_peak:.0f} MB peak "
        f"({rss_before:.0f} MB before the app; target < 300 MB)"
    )


async def test_filters_on_a_live_million_events(million: tuple[Path, Path]) -> None:
    """A recording still being written has no read indexes: every filter scans, in a worker,
    while the screen keeps answering keys."""
    live = million[1]
    app = QixtuiApp(live)
    async with app.run_test(size=(160, 50)) as pilot:
        events = app.screen.query_one("#events", RowList)
        await wait_until(pilot, lambda: len(events.index) > 0)
        raw = store.open_session(live)
        assert not store.read_indexes_ready(raw)
        filtered = await time_filters(app, pilot, raw, repeat=1)
        # Keys on the flow list while scans run through the whole file. Common values: a
        # typed filter narrows the flows list to the flows with a match, and a rare one's
        # single flow leaves no row for a key to move to.
        flows = app.screen.query_one("#flows", RowList)
        flows.focus()
        until = time.monotonic() + 2
        idle = await key_latencies(app, flows, lambda: time.monotonic() < until)
        scanning: list[float] = []
        scans = 0
        while len(scanning) < 30 and scans < 10:
            app.apply_filter("note" if scans % 2 else f"json:/note={'x' * 40}")
            scanning += await key_latencies(app, flows, lambda: app.scanning)
            scans += 1
        app.apply_filter("")
        await pilot.pause()
    print_filters("live recording, no read indexes yet", filtered)
    print(
        f"  key press to frame while a filter scans: median {median_ms(scanning):.1f} ms, "
        f"p95 {p95_ms(scanning):.1f} ms ({len(scanning)} keys over {scans} scans); "
        f"idle {median_ms(idle):.1f} ms (ratio {median_ms(scanning) / median_ms(idle):.2f}x)"
    )


TAP_RATE = 20_000
WARM = 2_000  # events on screen before the clock starts, so keys have rows to move over
TAP_SECONDS = float(os.environ.get("QIXTUI_BENCH_TAP_S", "10"))
KEY_EVERY_S = 0.1


def p95_ms(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[18] * 1000


async def key_to_frame(
    app: QixtuiApp, key: str, rows: RowList, arrived: Callable[[int], bool]
) -> float:
    """Seconds from `key` reaching the app's driver (as a terminal's key would) to the first
    frame the app draws with `rows`' cursor where arrived(cursor) holds."""
    frame: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    draw = app._display

    def display(screen: Any, renderable: Any) -> None:
        draw(screen, renderable)
        if renderable is not None and not frame.done() and arrived(rows.cursor):
            frame.set_result(time.perf_counter())

    app._display = display  # type: ignore[method-assign]
    try:
        assert app._driver is not None
        pressed = time.perf_counter()
        app._driver.send_message(keys.Key(key, None))
        return await asyncio.wait_for(frame, 10) - pressed
    finally:
        del app._display


async def key_latencies(
    app: QixtuiApp, rows: RowList, keep_going: Callable[[], bool]
) -> list[float]:
    """Press down and up in turn, every KEY_EVERY_S, while keep_going(); each sample is the time
    from the key to the first frame the app draws with the cursor moved."""
    samples = []
    key = "up"
    while keep_going():
        # Alternate, but never down from the last row: that key would move nothing.
        key = "up" if key == "down" or rows.cursor >= len(rows.index) - 1 else "down"
        moved_to = rows.cursor + (1 if key == "down" else -1)
        samples.append(await key_to_frame(app, key, rows, functools.partial(operator.eq, moved_to)))
        await asyncio.sleep(KEY_EVERY_S)
    return samples


def start(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_recorded(path: Path, total: int) -> int:
    """Recorded means committed to the file: poll until all are there or the count stops."""
    last, still_since = -1, time.monotonic()
    while (recorded := count(path)) < total and time.monotonic() - still_since < 30:
        if recorded != last:
            last, still_since = recorded, time.monotonic()
        time.sleep(0.05)
    return recorded


async def test_tui_while_tapping_20k_events_per_second(tmp_path: Path) -> None:
    out = tmp_path / "tap.qix"
    total = int(TAP_RATE * TAP_SECONDS)
    with EmbeddedServer(jetstream=False) as server:
        recorder = start(
            qixtui_command("record", "-s", server.url, "-o", str(out), "-S", "bench.>", "--json")
        )
        try:
            wait_recorder_ready(out)
            publish(server.port, WARM)
            assert wait_recorded(out, WARM) == WARM
            app = QixtuiApp(out, recorder_pid=recorder.pid)
            async with app.run_test(size=(160, 50)) as pilot:
                rows = app.screen.query_one("#events", RowList)
                await pilot.press("up")  # stop following, so each key moves the cursor by one
                quiet_until = time.monotonic() + 3
                idle = await key_latencies(app, rows, lambda: time.monotonic() < quiet_until)
                # one message per order (bench_record's publisher takes a group size)
                argv = [str(server.port), str(total), str(TAP_RATE), "1"]
                publisher = start([sys.executable, "-c", PUBLISHER, *argv])
                # The publisher builds its frames first; measure once events flow.
                await wait_until(pilot, lambda: app.session.max_id() > WARM)
                cpu, wall = time.process_time(), time.monotonic()
                busy = await key_latencies(app, rows, lambda: publisher.poll() is None)
                cpu, wall = time.process_time() - cpu, time.monotonic() - wall
                pub = json.loads(publisher.communicate(timeout=60)[0])
                shown = len(rows.index) - WARM
            published_at = time.monotonic()
            wait_recorded(out, WARM + total)
            caught_up = time.monotonic() - published_at
        finally:
            recorder.send_signal(signal.SIGINT)
            stopping = time.monotonic()
            stdout, _ = recorder.communicate(timeout=600)
            stopping = time.monotonic() - stopping
    summary = json.loads(stdout)
    recorded = count(out) - WARM  # after the recorder flushed and closed the file
    print(f"\nrecorder summary: {summary}")
    offered = total / pub["seconds"]
    print(
        f"\n[tap] {total:,} events offered at {offered:,.0f}/s "
        f"(target {TAP_RATE:,}/s) to `qixtui record`, its file tailed by the TUI\n"
        f"  recorded {recorded:,} of {total:,} published, dropped {summary['dropped']:,}, "
        f"gaps {summary['gaps']}; {shown:,} were committed and listed when publishing "
        f"ended (the rest in the recorder's queue), all {caught_up:.1f} s later; the recorder "
        f"stopped {stopping:.1f} s after SIGINT (correlation's end, read indexes)\n"
        f"  the TUI used {cpu / wall:.0%} of a core while tapping\n"
        f"  key press to frame, idle bus : median {median_ms(idle):.1f} ms, "
        f"p95 {p95_ms(idle):.1f} ms ({len(idle)} keys)\n"
        f"  key press to frame, tapping  : median {median_ms(busy):.1f} ms, "
        f"p95 {p95_ms(busy):.1f} ms ({len(busy)} keys; target median < 100 ms)\n"
        f"  ratio tapping/idle           : median {median_ms(busy) / median_ms(idle):.2f}x, "
        f"p95 {p95_ms(busy) / p95_ms(idle):.2f}x"
    )
    assert recorded == total
    assert summary["dropped"] == 0
    assert summary["gaps"] == 0
