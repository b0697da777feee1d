"""The stepper screen driven key by key against the demo shop's participants on a real
nats-server, with a real recorder writing the session file the screen reads."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from helpers import run_qixtui
from nats.aio.client import Client
from rich.console import Group
from rich.text import Text
from textual.widgets import DataTable, RichLog, Static, TextArea
from textual.widgets.text_area import Selection

from qixtui.core import store
from qixtui.core.saga import load_saga_text
from qixtui.ui.stepper import StepperApp, StepperScreen
from qixtui_demo import SHOP_SAGA
from qixtui_demo.plan import DEFAULT_LATENCY, Knobs, Latency
from qixtui_demo.shop import PaymentService, Shop, StockService
from qixtui_nats.saga_runner import Recording, SagaRunner, open_journal
from qixtui_nats.server import EmbeddedServer
from ui.sessions import screen_text, until
from ui.test_snapshots import SIZE, check

TEXT = SHOP_SAGA.read_text(encoding="utf-8")
SAGA = load_saga_text(TEXT, str(SHOP_SAGA))
FAST = {name: Latency(1.0, 0.3) for name in DEFAULT_LATENCY}


@dataclass
class Bench:
    url: str
    path: Path
    nc: Client
    shop: Shop
    db: sqlite3.Connection  # the runner's journal connection


@pytest.fixture
async def bench(nats_server: EmbeddedServer, session_path: Path) -> AsyncIterator[Bench]:
    """Demo participants, a recorder writing `session_path`, and a connection for the runner."""
    shop = Shop(nats_server.url, Knobs(seed=7), latency=FAST, heartbeat_s=0)
    await shop.start()
    nc = await nats.connect(nats_server.url)
    recording = Recording(session_path, [], {"NATS_URL": nats_server.url})
    recording.spawn()
    try:
        await recording.ready()
        db = open_journal(session_path)
        try:
            yield Bench(nats_server.url, session_path, nc, shop, db)
        finally:
            db.close()
    finally:
        recording.abort()
        await nc.close()
        await shop.close()


def stepper(bench: Bench, order_id: str, run_id: str | None = None) -> StepperApp:
    runner = SagaRunner(bench.nc, bench.db, recorded=True)
    return StepperApp(bench.path, runner, SAGA, TEXT, {"order_id": order_id}, run_id)


def plain(app: StepperApp, selector: str) -> str:
    content = app.screen.query_one(selector, Static).content
    if isinstance(content, Group):
        return "\n".join(part.plain for part in content.renderables if isinstance(part, Text))
    return content.plain if isinstance(content, Text) else str(content)


def state(app: StepperApp, step: str) -> str:
    cell = app.screen.query_one("#steps", DataTable).get_cell(step, "state")
    return cell.plain if isinstance(cell, Text) else str(cell)


def events_text(app: StepperApp) -> str:
    log = app.screen.query_one("#events", RichLog)
    return "\n".join(line.text for line in log.lines)


def next_is(app: StepperApp, label: str) -> Callable[[], bool]:
    return lambda: plain(app, "#request-title") == f"next request: {label}"


def run_events(path: Path, run_id: str, subject: str) -> list[store.Event]:
    db = store.open_session(path)
    try:
        query = store.EventQuery(subject=subject)
        return [e for e in store.iter_events(db, query) if e.header("Qixtui-Saga-Run") == run_id]
    finally:
        db.close()


async def test_step_edit_breakpoint_and_continue_to_the_end(bench: Bench) -> None:
    order_id = f"pilot-{uuid.uuid4().hex[:6]}"
    app = stepper(bench, order_id)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, StepperScreen)
        await until(pilot, next_is(app, "authorize_payment"), "the first request")
        assert state(app, "authorize_payment") == "▶ next"
        assert state(app, "reserve_stock") == "pending"
        meta = plain(app, "#request-meta")
        assert "subject  shop.cmd.payment.authorize" in meta
        assert f"Idempotency-Key: {screen.run_id}:authorize_payment:action" in meta
        editor = screen.query_one("#payload", TextArea)
        assert json.loads(editor.text)["amount"] == 42.0

        # Edit the payment before it is sent: the amount selected, a new one typed over it.
        await pilot.press("e")
        assert editor.has_focus
        at = editor.text.index("42.0")
        editor.selection = Selection((0, at), (0, at + 4))
        await pilot.press("9", "full_stop", "9", "5", "e", "1")  # an `e` typed, not a shortcut
        edited = editor.text
        assert json.loads(edited)["amount"] == 99.5
        # A slip that breaks the JSON is said first; the request goes only when asked again.
        await pilot.press("end", "x", "escape", "n")
        await pilot.pause(0.3)
        assert state(app, "authorize_payment") == "▶ next"
        (said,) = [str(n.message) for n in app._notifications if "not JSON" in str(n.message)]
        assert said.startswith("the edited payload is not JSON (Extra data")
        assert said.endswith("; n again sends it as it is")
        await pilot.press("e", "backspace", "escape", "n")
        await until(pilot, lambda: state(app, "authorize_payment").startswith("✔ ok"), "ok")
        await until(pilot, next_is(app, "reserve_stock"), "the second request")
        assert "payment_id" in plain(app, "#reply")
        payment = bench.shop.services["payment"]
        assert isinstance(payment, PaymentService)
        applied = [p for p in payment.payments.values() if p["order_id"] == order_id]
        assert applied == [{"order_id": order_id, "amount": 99.5, "status": "ok"}]
        assert payment.last_customer == "c-1"
        await until(pilot, lambda: "shop.cmd.payment.authorize" in events_text(app), "events")
        (sent,) = run_events(bench.path, screen.run_id, "shop.cmd.payment.authorize")
        assert sent.payload == edited.encode()  # the recording holds the edited request

        # A breakpoint on complete_order; continue runs up to it and stops before sending.
        await pilot.press("down", "down", "down", "b")
        cell = screen.query_one("#steps", DataTable).get_cell("complete_order", "bp")
        assert cell.plain == "●"
        await pilot.press("c")
        await until(pilot, next_is(app, "complete_order"), "the breakpoint")
        assert state(app, "reserve_stock").startswith("✔ ok")
        assert state(app, "create_shipment").startswith("✔ ok")
        assert state(app, "complete_order") == "▶ next"
        assert "waiting for you" in plain(app, "#status")
        assert run_events(bench.path, screen.run_id, "shop.cmd.order.complete") == []
        await until(pilot, lambda: "shop.cmd.shipping.create" in events_text(app), "events")

        await pilot.press("c")
        await until(pilot, lambda: screen.report is not None, "the end of the run")
        assert state(app, "notify").startswith("✔ ok")
        assert plain(app, "#status").startswith(f"run {screen.run_id} completed")
        await pilot.pause(0.1)
        footer = screen_text(app).splitlines()[-1]
        assert "Quit" in footer
        assert "Step" not in footer  # the run's keys leave once it has ended
        assert "Skip" not in footer
        assert not screen.query_one("#payload", TextArea).display
        await pilot.press("q")
    assert app.report is not None
    assert app.report.outcome == "completed"


async def test_abort_compensates_step_by_step_on_screen(bench: Bench) -> None:
    order_id = f"pilot-{uuid.uuid4().hex[:6]}"
    app = stepper(bench, order_id)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, next_is(app, "authorize_payment"), "the first request")
        await pilot.press("n")
        await until(pilot, next_is(app, "reserve_stock"), "the second request")
        await pilot.press("n")
        await until(pilot, next_is(app, "create_shipment"), "the pivot")
        await pilot.press("a")
        await until(pilot, next_is(app, "undo reserve_stock"), "the first compensation")
        assert state(app, "create_shipment") == "■ aborted"
        assert state(app, "reserve_stock") == "▶ undo next"
        assert "shop.cmd.stock.release" in plain(app, "#request-meta")
        await pilot.press("n")
        await until(pilot, next_is(app, "undo authorize_payment"), "the second compensation")
        assert state(app, "reserve_stock").startswith("↺ undone")
        await pilot.press("n")
        screen = app.screen
        assert isinstance(screen, StepperScreen)
        await until(pilot, lambda: screen.report is not None, "the end of the run")
        assert state(app, "authorize_payment").startswith("↺ undone")
        status = plain(app, "#status")
        assert "compensated: aborted by the user at step `create_shipment`" in status
        await until(pilot, lambda: "shop.cmd.payment.refund" in events_text(app), "the refund")
        await pilot.press("q")
    payment = bench.shop.services["payment"]
    stock = bench.shop.services["stock"]
    assert isinstance(payment, PaymentService)
    assert isinstance(stock, StockService)
    assert [p["status"] for p in payment.payments.values() if p["order_id"] == order_id] == [
        "refunded"
    ]
    assert run_events(bench.path, screen.run_id, "shop.cmd.shipping.create") == []


async def test_injected_failure_holds_the_step_for_a_retry_and_quit_leaves_it_resumable(
    bench: Bench,
) -> None:
    app = stepper(bench, f"pilot-{uuid.uuid4().hex[:6]}")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, StepperScreen)
        await until(pilot, next_is(app, "authorize_payment"), "the first request")
        await pilot.press("i")
        assert "the next step fails (injected)" in plain(app, "#status")
        assert state(app, "authorize_payment") == "▶ next ⚡"
        await pilot.press("n")
        await until(pilot, lambda: plain(app, "#request-title") == "failed: authorize_payment", "")
        assert "failure injected by the stepper" in plain(app, "#request-meta")
        assert run_events(bench.path, screen.run_id, "shop.cmd.payment.authorize") == []
        await pilot.press("r")  # the same payload, a new idempotency key, sent at once
        await until(pilot, next_is(app, "reserve_stock"), "the next step after the retry")
        assert state(app, "authorize_payment").startswith("✔ ok (x2)")
        await pilot.press("ctrl+c")  # as q: it asked for ctrl+q instead
    assert app.report is not None
    assert app.report.outcome == "stopped"
    db = store.open_session(bench.path)
    journal = store.saga_journal(db, screen.run_id)
    db.close()
    assert [(r.step, r.result, r.idempotency_key.split(":")[-1]) for r in journal] == [
        ("authorize_payment", "error", "action"),
        ("authorize_payment", "ok", "retry1"),
    ]
    # The journal holds what was decided on screen: a headless resume goes on from there.
    resumed = await SagaRunner(bench.nc, bench.db, recorded=True).resume(screen.run_id)
    assert (resumed.outcome, [s.step for s in resumed.steps][2:]) == (
        "completed",
        ["reserve_stock", "create_shipment", "complete_order", "notify"],
    )


def held_at(app: StepperApp, step: str) -> Callable[[], bool]:
    return lambda: plain(app, "#request-title") == f"failed: {step}"


async def test_a_run_quit_at_a_failed_step_resumes_in_the_stepper_at_that_step(
    bench: Bench,
) -> None:
    """`orchestrate --resume` in a terminal: the failed step waits for r/s/a again."""
    first = stepper(bench, f"pilot-{uuid.uuid4().hex[:6]}")
    async with first.run_test(size=SIZE) as pilot:
        await until(pilot, next_is(first, "authorize_payment"), "the first request")
        await pilot.press("n")
        await until(pilot, next_is(first, "reserve_stock"), "the second request")
        await pilot.press("i", "n")
        await until(pilot, held_at(first, "reserve_stock"), "the failed step")
        await pilot.press("q")
    run_id = first.stepper.run_id
    again = StepperApp(
        bench.path, SagaRunner(bench.nc, bench.db, recorded=True), SAGA, TEXT, {}, run_id, True
    )
    async with again.run_test(size=SIZE) as pilot:
        await until(pilot, held_at(again, "reserve_stock"), "the failed step, again")
        assert state(again, "reserve_stock") == "✘ failed: r/s/a?"
        # The events recorded before the resume, read at once, are drawn as wide as the log:
        # with their flow and size, not cut to a width guessed before the screen's layout.
        await until(pilot, lambda: "shop.cmd.payment.authorize" in events_text(again), "")
        (line,) = [x for x in events_text(again).splitlines() if "payment.authorize" in x]
        assert " #" in line
        assert "shop.cmd.payment.authorize" in line
        await pilot.press("r")
        await until(pilot, next_is(again, "create_shipment"), "the next step after the retry")
        await pilot.press("c")
        await until(pilot, lambda: again.report is not None, "the run's end", within=30)
    assert again.report is not None
    assert again.report.outcome == "completed"


async def test_a_failed_step_skipped_says_so_on_screen_and_in_show(bench: Bench) -> None:
    """The failed row stays an error in the journal; the skip is read from what followed."""
    app = stepper(bench, f"pilot-{uuid.uuid4().hex[:6]}")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, next_is(app, "authorize_payment"), "the first request")
        await pilot.press("n")
        await until(pilot, next_is(app, "reserve_stock"), "the second request")
        await pilot.press("i", "n")
        await until(pilot, held_at(app, "reserve_stock"), "the failed step")
        await pilot.press("s")
        await until(pilot, next_is(app, "create_shipment"), "the step after the skipped one")
        await until(pilot, lambda: state(app, "reserve_stock").startswith("↷"), "its state")
        assert state(app, "reserve_stock") == "↷ skipped after error"
        await pilot.press("n")  # the journal holds the skip once the next request is out
        await until(pilot, next_is(app, "complete_order"), "the request after that")
        assert state(app, "reserve_stock") == "↷ skipped after error"
        await pilot.press("q")
    shown = await asyncio.to_thread(run_qixtui, "orchestrate", "--show", str(bench.path))
    assert shown.returncode == 0, shown.stderr
    assert (
        "2 reserve_stock shop.cmd.stock.reserve -> error: failure injected by the stepper "
        "(then skipped)" in shown.stdout
    )


async def test_at_80x24_every_header_gets_a_line_and_the_steps_keep_their_state(
    bench: Bench,
) -> None:
    app = stepper(bench, f"pilot-{uuid.uuid4().hex[:6]}")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, next_is(app, "authorize_payment"), "the first request")
        await pilot.pause(0.1)
        table = app.screen.query_one("#steps", DataTable)
        assert "subject" not in table.columns  # no room: the subject is on the right
        meta = plain(app, "#request-meta").splitlines()
        assert meta[0] == "subject  shop.cmd.payment.authorize"
        assert [line.split(":")[0] for line in meta[2:]] == [
            "Qixtui-Saga-Run",
            "Qixtui-Saga-Step",
            "Idempotency-Key",
            "X-Correlation-ID",
            "traceparent",
            "Qixtui-Saga-Stepped",
        ]
        on_screen = screen_text(app)
        assert "shop.cmd.payment.authorize" in on_screen  # the subject wraps, never cut
        for line in meta[2:]:  # a header a line, cut at the edge: all above the payload
            assert line[:24] in on_screen
        await pilot.resize_terminal(140, 40)
        await pilot.pause(0.2)
        assert "subject" in table.columns
        await pilot.press("q")
        await until(pilot, lambda: app.screen.report is not None, "the run stopped")


async def test_stepper_snapshot(bench: Bench) -> None:
    app = stepper(bench, "snap-1", run_id="snap01")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, StepperScreen)
        await until(pilot, next_is(app, "authorize_payment"), "the first request")
        await pilot.press("down", "down", "b")
        # The run's correlation and trace ids are random; the picture shows fixed ones.
        screen.show_request(
            {
                "Qixtui-Saga-Run": "snap01",
                "Qixtui-Saga-Step": "authorize_payment",
                "Idempotency-Key": "snap01:authorize_payment:action",
                "X-Correlation-ID": "00000000-0000-4000-8000-000000000000",
                "traceparent": "00-" + "0" * 31 + "1-" + "0" * 15 + "1-01",
                "Qixtui-Saga-Stepped": "true",
            }
        )
        screen.query_one("#payload", TextArea).cursor_blink = False
        await pilot.pause(0.1)
        check("stepper", app.export_screenshot())
        await pilot.press("q")
        await until(pilot, lambda: screen.report is not None, "the run stopped")


async def unanswered_first_step(
    bench: Bench, subject: str, timing: tuple[str, str], order_id: str
) -> StepperApp:
    """The shop saga's stepper with its first request on `subject`, which a participant
    takes and never answers; `timing` rewrites that step's timeout (and retries)."""
    text = TEXT.replace('request = "shop.cmd.payment.authorize"', f'request = "{subject}"', 1)
    text = text.replace(*timing, 1)
    await bench.nc.subscribe(subject)
    await bench.nc.flush()
    runner = SagaRunner(bench.nc, bench.db, recorded=True)
    return StepperApp(bench.path, runner, load_saga_text(text), text, {"order_id": order_id})


async def test_a_step_in_flight_counts_down_its_timeout(bench: Bench) -> None:
    timing = ('timeout = "2s"', 'timeout = "1500ms"')
    app = await unanswered_first_step(bench, "pilot.silent", timing, "pilot-t")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, next_is(app, "authorize_payment"), "the first request")
        await pilot.press("n")
        table = app.screen.query_one("#steps", DataTable)
        await until(pilot, lambda: state(app, "authorize_payment") == "… in flight", "in flight")
        left: list[float] = []  # sampled until the timeout ends the flight
        while state(app, "authorize_payment") == "… in flight":
            cell = table.get_cell("authorize_payment", "time").plain
            left.append(float(cell.removesuffix("s left")))
            await pilot.pause(0.05)
        assert len(set(left)) >= 2
        assert left == sorted(left, reverse=True)
        assert 0 <= left[-1] < left[0] <= 1.5
        await until(pilot, lambda: plain(app, "#request-title") == "failed: authorize_payment", "")
        assert "timeout: no reply within 1.5s" in plain(app, "#request-meta")
        assert state(app, "authorize_payment") == "✘ failed: r/s/a?"
        await pilot.press("a")  # nothing before it to undo: the run fails cleanly
        screen = app.screen
        assert isinstance(screen, StepperScreen)
        await until(pilot, lambda: screen.report is not None, "the end of the run")
        assert state(app, "authorize_payment").startswith("✘ timeout")
        assert "failed: step `authorize_payment` failed: timeout" in plain(app, "#status")
        await pilot.press("q")
    assert app.report is not None
    assert (app.report.outcome, app.report.clean) == ("failed", True)


async def test_hostile_bytes_from_the_bus_are_shown_escaped_never_as_markup(bench: Bench) -> None:
    hostile = "[/x] [@click=app.quit] \x1b]52;c;aGk=\x07 \u202e"
    text = TEXT.replace('request = "shop.cmd.payment.authorize"', 'request = "pilot.hostile"', 1)

    async def answer(msg) -> None:  # type: ignore[no-untyped-def]
        await msg.respond(hostile.encode())  # raw control bytes, and not JSON

    await bench.nc.subscribe("pilot.hostile", cb=answer)
    await bench.nc.flush()
    runner = SagaRunner(bench.nc, bench.db, recorded=True)
    app = StepperApp(bench.path, runner, load_saga_text(text), text, {"order_id": hostile})
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, next_is(app, "authorize_payment"), "the first request")
        editor = app.screen.query_one("#payload", TextArea)
        assert "[/x] [@click=app.quit] \\u001b]52" in editor.text
        await pilot.press("n")
        await until(pilot, lambda: plain(app, "#request-title") == "failed: authorize_payment", "")
        reply = plain(app, "#reply")
        assert "[/x] [@click=app.quit] \\x1b]52;c;aGk=\\x07" in reply
        assert "\x1b" not in reply
        assert "\u202e" not in reply
        await until(pilot, lambda: "[@click=app.quit]" in events_text(app), "the reply event")
        assert "\x1b" not in events_text(app)
        assert app.is_running  # the [@click] did not quit the app, [/x] did not crash it
        await pilot.press("q")
    (sent,) = run_events(bench.path, app.stepper.run_id, "pilot.hostile")
    assert json.loads(sent.payload)["order_id"] == hostile  # sent as rendered, not as shown


async def test_a_lost_bus_is_said_and_leaves_the_step_in_doubt(
    own_server: EmbeddedServer, session_path: Path
) -> None:
    text = TEXT.replace('request = "shop.cmd.payment.authorize"', 'request = "pilot.silent"', 1)
    text = text.replace('timeout = "2s"', 'timeout = "20s"', 1)
    nc = await nats.connect(own_server.url, max_reconnect_attempts=10, reconnect_time_wait=0.3)
    await nc.subscribe("pilot.silent")  # a participant that never answers
    await nc.flush()
    store.create_session(session_path).close()
    db = open_journal(session_path)
    try:
        runner = SagaRunner(nc, db)
        app = StepperApp(session_path, runner, load_saga_text(text), text, {"order_id": "pl"})
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, next_is(app, "authorize_payment"), "the first request")
            await pilot.press("n")
            await until(pilot, lambda: state(app, "authorize_payment") == "… in flight", "sent")
            # no recorder here, as with --no-record: the screen says so, not "0 events"
            assert "the journal only in session.qix (--no-record)" in plain(app, "#status")
            assert "not recorded (--no-record)" in screen_text(app)
            own_server.kill()
            lost = "the bus connection is lost: waiting for it to come back"
            await until(pilot, lambda: lost in plain(app, "#status"), "the loss said")
            screen = app.screen
            assert isinstance(screen, StepperScreen)
            await until(pilot, lambda: screen.report is not None, "the runner gave up", 30)
            assert "running: the bus connection was lost and did not come back" in plain(
                app, "#status"
            )
            await pilot.press("q")
    finally:
        db.close()
        await nc.close()
    assert app.report is not None
    assert (app.report.outcome, app.report.clean) == ("running", False)
    assert [s.result for s in app.report.steps] == ["in_doubt"]


async def test_question_mark_shows_the_stepper_keys(bench: Bench) -> None:
    app = stepper(bench, f"pilot-{uuid.uuid4().hex[:6]}")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, next_is(app, "authorize_payment"), "the first request")
        await pilot.press("question_mark")
        await until(pilot, lambda: bool(app.screen.query("HelpPanel")), "the help panel")
        (panel,) = app.screen.query("HelpPanel")
        assert panel.region.width > 20  # beside the steps, with their keys (n Step, c, ...)
        await pilot.press("question_mark")
        await until(pilot, lambda: not app.screen.query("HelpPanel"), "the panel gone")
        await pilot.press("q")


async def test_an_abort_is_not_counted_as_an_attempt(bench: Bench) -> None:
    timing = ('timeout = "2s"\nretries = 0', 'timeout = "300ms"\nretries = 1')
    app = await unanswered_first_step(bench, "pilot.mute", timing, "pilot-a")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, next_is(app, "authorize_payment"), "the first request")
        await pilot.press("n")  # times out; the step's one retry is shown next
        await until(pilot, next_is(app, "authorize_payment (attempt 2)"), "the retry")
        await pilot.press("a")
        screen = app.screen
        assert isinstance(screen, StepperScreen)
        await until(pilot, lambda: screen.report is not None, "the end of the run")
        assert state(app, "authorize_payment") == "■ aborted"  # one attempt went out, not 2
        assert [r.result for r in screen.journal] == ["timeout", "aborted"]
        await pilot.press("q")


async def test_quit_while_waiting_for_the_bus_sends_nothing(
    own_server: EmbeddedServer, session_path: Path
) -> None:
    nc = await nats.connect(own_server.url, max_reconnect_attempts=600, reconnect_time_wait=0.1)
    store.create_session(session_path).close()
    db = open_journal(session_path)
    try:
        runner = SagaRunner(nc, db)
        app = StepperApp(session_path, runner, SAGA, TEXT, {"order_id": "pilot-q"})
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, next_is(app, "authorize_payment"), "the first request")
            own_server.kill()
            lost = "the bus connection is lost: waiting for it to come back"
            await until(pilot, lambda: lost in plain(app, "#status"), "the loss said")
            await pilot.press("n")  # waits for the bus: nothing journaled, nothing sent
            await pilot.pause(0.3)
            await pilot.press("q")
            screen = app.screen
            assert isinstance(screen, StepperScreen)
            await until(pilot, lambda: screen.report is not None, "the run stopped", 5)
    finally:
        db.close()
        await nc.close()
    assert app.report is not None
    assert (app.report.outcome, app.report.steps) == ("stopped", [])  # resumable, unsent
    check_db = store.open_session(session_path)
    assert store.saga_journal(check_db, app.stepper.run_id) == []
    check_db.close()
