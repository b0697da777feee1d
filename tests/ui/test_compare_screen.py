"""The compare screen and a two-flow diff on a real session file, driven by Pilot."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path

import msgspec
import pytest
from helpers import eventually, run_qixtui
from shopflows import MAP, SAGA_TOML, write_session
from textual.widgets import Static

from qixtui.core import compare as cmp
from qixtui.core import store
from qixtui.core.model import Event, Flow
from qixtui.core.saga import load_saga_text
from qixtui.core.text import visible
from qixtui.ui.app import MainScreen, QixtuiApp
from qixtui.ui.comparescreen import CompareApp, CompareScreen, load
from ui.sessions import CORPUS, MS, T0, screen_text

SIZE = (120, 40)


def compare_session(path: Path) -> Path:
    """Five choreographed and three orchestrated shop orders, and the saga run's journal."""
    write_session(path)
    db = store.open_session(path, readonly=False)
    store.insert_saga_run(
        db,
        store.SagaRunRecord(
            run_id="run-11",
            saga="shop",
            definition=SAGA_TOML,
            vars={},
            correlation_id="c-11",
            trace_id="0" * 31 + "1",
            status="completed",
            started_ns=1,
        ),
    )
    db.close()
    return path


@pytest.fixture
def shop2(tmp_path: Path) -> Path:
    return compare_session(tmp_path / "compare.qix")


async def loaded(pilot) -> None:  # type: ignore[no-untyped-def]
    """The compare screen has read every flow (in a thread of its own) and shows them."""
    await pilot.pause()
    await eventually(
        lambda: isinstance(pilot.app.screen, CompareScreen) and pilot.app.screen.loaded, 30
    )
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.pause(0.05)


async def test_compare_screen_from_the_main_screen(shop2: Path) -> None:
    app = QixtuiApp(shop2)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        await loaded(pilot)
        assert isinstance(app.screen, CompareScreen)
        text = screen_text(app)
        assert "choreography 5 flows  vs  orchestration 3 flows" in text
        assert "as of" not in text  # a finished recording: the figures are final
        row = next(line for line in text.splitlines() if "latency p50 (completed)" in line)
        assert row.split()[-4:] == ["70.0ms", "(n=4)", "33.0ms", "(n=2)"]
        # the saga's commands belong to their services, not to a service called "cmd"
        assert "orchestrator → payment ×4 (request)" in text
        assert "cmd →" not in text

        await pilot.press("2")
        await pilot.pause(0.05)
        text = screen_text(app)
        assert "discovered choreography · 5 flows · 3 variants" in text
        assert "├─▶ shop.payment.authorized  ×4  p50 10ms" in text
        assert "saga plan · shop · 4 steps · from run run-11" in text
        assert "│ ↺ shop.cmd.payment.refund" in text
        assert "3 ship  ◆ pivot" in text

        await pilot.press("3")
        await pilot.pause(0.05)
        text = screen_text(app)
        # a completed flow of each style, on one axis as long as the longer (70 ms)
        assert "A #1  ✔ completed  choreographed  70ms" in text
        assert "B #11  ✔ completed  orchestrated ⚙  33ms" in text
        assert "+70ms" in text
        lanes = [x.split()[0] for x in text.splitlines() if "├─" in x and "→reply" not in x]
        assert lanes == ["payment", "stock", "shipping", "order"]
        assert "diff A #1 → B #11: 5 missing, 8 extra, 0 out of order" in text

        # back from the flows list, which holds the focus on this tab
        await pilot.press("1")
        await pilot.pause(0.05)
        assert "latency p50 (completed)" in screen_text(app)
        await pilot.press("3", "2")
        await pilot.pause(0.05)
        assert "discovered choreography · 5 flows · 3 variants" in screen_text(app)

        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)


async def test_figures_of_a_growing_recording_say_when_and_are_read_again(shop2: Path) -> None:
    app = QixtuiApp(shop2, recorder_pid=os.getpid())  # a recorder writes the file
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        await loaded(pilot)
        head = str(app.screen.query_one("#compare-head", Static).content)
        assert re.match(r"as of \d\d:\d\d:\d\d \(r: again\)  choreography 5 flows", head)
        db = sqlite3.connect(shop2)  # the recorder finds one more choreographed order
        with db:
            db.execute(
                "INSERT INTO events(ts_ns, subject, reply, headers, payload, size, flow_id) "
                "SELECT ts_ns, subject, reply, headers, payload, size, 100 FROM events "
                "WHERE flow_id = 1"
            )
            db.execute(
                "INSERT INTO flows SELECT 100, status, started_ns, ended_ns, events, services, "
                "variant, keys, orchestrated FROM flows WHERE flow_id = 1"
            )
        db.close()
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        first, screen.loaded = screen.loaded, None
        await pilot.press("r")
        await loaded(pilot)
        head = screen.query_one("#compare-head", Static)
        assert "choreography 6 flows" in str(head.content)
        assert first is not None
        screen.show_loaded(first, 1)  # the first read finishing late changes nothing
        await pilot.pause()
        assert "choreography 6 flows" in str(head.content)


async def test_two_flow_diff_marked_in_the_list(shop2: Path) -> None:
    app = CompareApp(shop2)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        await pilot.press("3", "m")  # the pair was #1 and #11: a new A, #1
        await pilot.pause()
        assert screen.marks == [1]
        assert "A #1 marked: press m on another flow" in screen_text(app)
        await pilot.press("down", "down", "down", "m")  # #4: stock before payment
        await pilot.pause(0.05)
        assert screen.marks == [1, 4]
        text = screen_text(app)
        assert "diff A #1 → B #4: 0 missing, 0 extra, 1 out of order, 0 slower" in text
        moved = next(line for line in text.splitlines() if line.lstrip().startswith("↔"))
        assert "shop.payment.authorized" in moved
        assert "+10ms" in moved  # A's payment came at 10 ms,
        assert "+20ms" in moved  # B's at 20 ms
        assert '/order_id: "o-1" → "o-4"' in text
        # the swapped step is marked on B's waterfall
        b_lanes = text.split("B #4  ✔ completed")[1].split("● event")[0]
        assert "↔" in b_lanes

        await pilot.press("up", "m", "down", "down", "m")  # a new pair: #3 against #5
        await pilot.pause(0.05)
        assert screen.marks == [3, 5]
        text = screen_text(app)
        assert "diff A #3 → B #5" in text
        assert "+ shop.stock.failed" in text
        assert "− shop.shipment.created" in text


def hostile_pair(path: Path) -> Path:
    """Two flows of hostile subjects whose payloads differ in hostile fields and values."""
    events = []
    flows = []
    for flow_id in (1, 2):
        mine = []
        for i, bad in enumerate(CORPUS):
            body = json.dumps({f"f{bad}": f"{bad}{flow_id}"}).encode()
            event_id = len(events) + 1
            mine.append(Event(T0 + (flow_id * 100 + i) * MS, f"evil.{bad}.x", None, None, body,
                              event_id, flow_id))  # fmt: skip
            events.append(mine[-1])
        flows.append(Flow(flow_id, "completed", mine[0].ts_ns, mine[-1].ts_ns, len(mine),
                          CORPUS, CORPUS))  # fmt: skip
    db = store.create_session(path, {"stopped_ns": "1"})
    with store.transaction(db):
        store.insert_events(db, events)
        store.upsert_flows(db, flows)
    db.close()
    return path


async def test_hostile_subjects_and_payloads_are_shown_as_text(tmp_path: Path) -> None:
    app = CompareApp(hostile_pair(tmp_path / "hostile.qix"))
    async with app.run_test(size=(160, 60)) as pilot:
        await loaded(pilot)
        await pilot.press("2")
        await pilot.pause(0.05)
        assert "■ evil.[/oops].x" in screen_text(app)
        await pilot.press("3")
        await pilot.pause(0.05)
        assert "\x1b" not in screen_text(app)
        # the diff is below the waterfalls' 22 lanes: read all of it
        text = str(app.screen.query_one("#pair-diff", Static).render())
        assert "diff A #1 → B #2" in text
        assert "= evil.[@click=app.quit]x[/].x" in text
        bad = CORPUS[4]  # an OSC 52 clipboard write: the key escaped, the values as JSON
        a, b = (json.dumps(f"{bad}{n}", ensure_ascii=False) for n in (1, 2))
        assert f"/f{visible(bad)}: {a} → {b}" in text
        assert "\x1b" not in text
        assert app.is_running


async def test_saga_from_the_command_line_with_conformance(shop2: Path) -> None:
    saga = load_saga_text(SAGA_TOML, "saga.toml")
    steps = cmp.parse_mapping(MAP, [s.name for s in saga.steps])
    app = CompareApp(shop2, saga, steps, "saga.toml")
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        text = str(app.screen.query_one("#conformance", Static).render())
        assert "4 of 5 choreography flows conform to the saga" in text
        assert "1 flow deviates: reserve → authorize → ship → complete" in text
        await pilot.press("2")
        await pilot.pause(0.05)
        assert "saga plan · shop · 4 steps · from saga.toml" in screen_text(app)


def test_the_cli_counts_compensations_as_the_screen_does(shop2: Path) -> None:
    # Without --saga, both take the saga the session's runs journaled: its refund requests
    # are compensations, so the orchestrated compensation time is measured by both.
    out = run_qixtui("compare", str(shop2), "--json")
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout)["orchestration"]["compensate_ns"]
    screen = msgspec.to_builtins(load(shop2, None, None, "").result.orchestration.compensate_ns)
    assert cli == screen
    assert cli["p50"] is not None


async def test_leaving_the_compare_screen_before_it_has_read_everything(shop2: Path) -> None:
    app = QixtuiApp(shop2)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c", "escape")  # back before the thread is done
        screen = app.screen
        assert isinstance(screen, MainScreen)
        await pilot.pause(1)
        assert isinstance(app.screen, MainScreen)
        await pilot.press("c")
        await loaded(pilot)
        assert "choreography 5 flows" in screen_text(app)
