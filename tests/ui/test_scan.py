"""A filter on a live recording (no read indexes yet) scans in a worker: the screen keeps
answering keys, says how far the scan has come, lists matches as they are found, and a new
filter stops the old scan."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest
from helpers import recorder_stand_in, run_qixtui
from textual.widgets import Input

from qixtui.core import filters, store
from qixtui.ui import app as app_module
from qixtui.ui.app import QixtuiApp
from qixtui.ui.rowlist import RowList
from ui.sessions import MS, T0, screen_text, settle, shop_session

EVENTS = 20_000
CHUNK = 2_000
NEEDLES = (3_000, 9_500, 17_000)  # ids of the only payloads that hold "needle"


def live_session(path: Path) -> Path:
    """A recording still being written: no stop time, no read indexes."""
    db = store.create_session(path, {"recorder_pid": "0"})
    encode = msgspec.json.encode
    rows = []
    for i in range(1, EVENTS + 1):
        payload = encode({"seq": i, "note": "needle" if i in NEEDLES else "hay"})
        headers = encode([["X-Correlation-ID", f"c-{i}"]]).decode()
        rows.append((i, T0 + i * MS, f"live.{i % 3}", None, headers, payload, len(payload), None))
    with store.transaction(db):
        db.executemany(store.INSERT_EVENT, rows)
    assert not store.read_indexes_ready(db)
    db.close()
    return path


class Gate:
    """Holds each chunk the scan worker reads until the test lets it through; the scan itself
    runs unchanged on the real file. Reads on the UI thread pass at once."""

    def __init__(self) -> None:
        self.turns = threading.Semaphore(0)
        self.arrived = 0  # chunks that asked for a turn
        self.opened = False

    def wrap(self, scan: Any) -> Any:
        def gated(*args: Any) -> Any:
            if threading.current_thread() is not threading.main_thread() and not self.opened:
                self.arrived += 1
                if not self.turns.acquire(timeout=30):
                    raise TimeoutError("the test never let this chunk through")
            return scan(*args)

        return gated

    def open(self) -> None:
        """Let every chunk through: a cancelled scan may still be waiting for its turn."""
        self.opened = True
        self.turns.release(100)

    async def next_chunk(self, pilot: Any) -> None:
        """Let one chunk through, and wait until a worker asks for the next one or none runs
        (a dropped scan that took the turn asks for none: then a second later)."""
        arrived = self.arrived
        self.turns.release()
        for _ in range(200):
            if self.arrived > arrived or not pilot.app.scanning:
                break
            await pilot.pause(0.005)
        await pilot.pause()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Gate:
    gate = Gate()
    monkeypatch.setattr(app_module, "scan", gate.wrap(app_module.scan))
    monkeypatch.setattr(app_module, "SCAN_FIRST", CHUNK)
    monkeypatch.setattr(app_module, "SCAN_CHUNK", CHUNK)
    return gate


def title(app: QixtuiApp) -> str:
    return str(app.screen.query_one("#events-title").render())


async def test_a_scan_never_blocks_the_screen_and_a_new_filter_stops_it(
    tmp_path: Path, gate: Gate
) -> None:
    path = live_session(tmp_path / "live.qix")
    app = QixtuiApp(path)
    async with app.run_test(size=(140, 40)) as pilot:
        events = app.screen.query_one("#events", RowList)
        await pilot.press("slash", *"needle", "enter")
        await pilot.pause()
        assert app.scanning
        assert "searching… 10%, 0 found" in title(app)  # the UI thread matched 2,000 ids

        # The worker is held inside its first chunk: the screen still takes keys.
        while not gate.arrived:
            await pilot.pause(0.005)
        await pilot.press("slash", "end", *" x")
        assert app.screen.query_one("#filter", Input).value == "needle x"
        assert "✔ text, text · enter applies" in screen_text(app)
        await pilot.press("escape")
        await gate.next_chunk(pilot)  # ids up to 4,000: the first needle
        assert list(events.index.ids or []) == [3_000]
        assert "searching… 20%, 1 found" in title(app)
        assert '{"seq":3000,"note":"needle"}' in screen_text(app)

        # A second filter while the first is still scanning: its batches are dropped.
        await pilot.press("slash", "ctrl+a", "ctrl+k", *"subject:live.1", "enter")
        await pilot.pause()
        assert app.scanning
        assert "subject:live.1" in title(app)
        for _ in range(50):
            if not app.scanning:
                break
            await gate.next_chunk(pilot)
            await pilot.press("up")  # the screen answers between chunks
        await settle(pilot)
        assert not app.scanning
        where = filters.build(filters.parse("subject:live.1"))
        expected = [
            r[0]
            for r in app.session.db.execute(
                f"SELECT id FROM events WHERE {where.sql} ORDER BY id", where.params
            )
        ]
        assert list(events.index.ids or []) == expected
        assert f"{len(expected):,} matches" in title(app)
        assert "searching" not in title(app)
        assert events.cursor < len(expected) - 1  # the up keys moved it off the last row
        gate.open()


async def test_a_scan_lists_matches_as_it_finds_them(tmp_path: Path, gate: Gate) -> None:
    path = live_session(tmp_path / "live.qix")
    app = QixtuiApp(path)
    seen: list[int] = []
    async with app.run_test(size=(140, 40)) as pilot:
        events = app.screen.query_one("#events", RowList)
        app.apply_filter("needle")
        while app.scanning:
            await gate.next_chunk(pilot)
            seen.append(len(events.index))
            await pilot.press("down")
        await settle(pilot)
        assert list(events.index.ids or []) == list(NEEDLES)
        assert "3 matches" in title(app)
        app.apply_filter("")
        await settle(pilot)
        assert "matches" not in title(app)
        assert len(events.index) == EVENTS
    # One needle at a time, as the chunks holding them were read.
    assert seen[0] == 1
    assert 2 in seen
    assert seen[-1] == 3


def notices(app: QixtuiApp) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def test_a_finished_recording_without_indexes_says_how_to_build_them(
    tmp_path: Path,
) -> None:
    path = shop_session(tmp_path / "shop.qix")  # stopped, never indexed
    app = QixtuiApp(path, replay=True)
    async with app.run_test(size=(140, 40)) as pilot:
        await settle(pilot)
        (notice,) = [n for n in notices(app) if "indexes" in n]
        assert f"`qixtui index {path}` builds them" in notice
    app.session.close()  # a reader left open keeps the file in WAL mode
    done = run_qixtui("index", str(path))
    assert done.returncode == 0, done.stderr
    assert f"qixtui: indexed {path}" in done.stderr
    db = store.open_session(path)
    assert store.read_indexes_ready(db)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    db.close()
    app = QixtuiApp(path, replay=True)
    async with app.run_test(size=(140, 40)) as pilot:
        await settle(pilot)
        assert not [n for n in notices(app) if "indexes" in n]
    again = run_qixtui("index", str(path))
    assert again.returncode == 0
    assert "already indexed" in again.stderr


async def test_a_recording_still_being_written_is_neither_flagged_nor_indexed(
    tmp_path: Path,
) -> None:
    path = live_session(tmp_path / "live.qix")
    with recorder_stand_in() as pid:
        db = store.open_session(path, readonly=False)
        store.set_meta(db, {"recorder_pid": str(pid)})  # a recorder that is alive
        db.close()
        app = QixtuiApp(path)
        async with app.run_test(size=(140, 40)) as pilot:
            await settle(pilot)
            assert not [n for n in notices(app) if "indexes" in n]
        refused = run_qixtui("index", str(path))
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"qixtui: {path}: still being recorded; its recorder builds the indexes when it stops"
    )
    bad = run_qixtui("index", str(tmp_path / "nope.qix"))
    assert bad.returncode == 1
    assert "no such file" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
