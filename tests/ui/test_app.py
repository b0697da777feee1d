"""The app on real session files, driven by Pilot; every test asserts what is on screen."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import sys
from pathlib import Path

import pytest
from helpers import recorder_stand_in
from textual import events
from textual.keys import _character_to_key
from textual.widgets import Input, Static, Tree

from qixtui.core import store
from qixtui.core.model import Event, Flow
from qixtui.ui.app import QixtuiApp
from qixtui.ui.flowscreen import FlowScreen
from qixtui.ui.rowlist import RowList
from ui.sessions import MS, T0, damaged_session, screen_text, settle, shop_session, until

SIZE = (140, 40)


def static_text(app: QixtuiApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


async def test_opens_a_recording_with_flows_events_and_status(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        text = screen_text(app)
        assert "✔ completed" in text
        assert "✘ failed" in text
        assert "◌ stalled" in text
        assert "shop.pricing.quote" in text
        assert "12 events" in text
        assert "finished" in text
        assert "gaps 1" in text
        assert "shop.qix" in text
        # Newest at the bottom, selected, and shown in the detail pane.
        assert app.screen.query_one("#events", RowList).cursor == 11
        assert "shop.heartbeat.stock" in static_text(app, "#detail-meta")


async def test_selecting_a_flow_narrows_the_events(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        flows = app.screen.query_one("#flows", RowList)
        flows.focus()
        await pilot.press("down", "enter")
        await settle(pilot)
        await app.workers.wait_for_complete()
        await settle(pilot)
        events = app.screen.query_one("#events", RowList)
        assert len(events.index) == 3
        text = screen_text(app)
        assert "flow #2" in text
        assert "shop.payment.declined" in text
        assert "shop.pricing.quote" not in text
        await pilot.press("escape")
        await settle(pilot)
        assert len(events.index) == 12


async def test_a_typed_filter_narrows_the_flows_list_to_flows_with_a_match(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        flows = app.screen.query_one("#flows", RowList)
        await settle(pilot)
        assert list(flows.index) == [1, 2, 3]
        # Authorized payments happened in orders 1 and 3; the heartbeat is in no flow.
        await pilot.press("slash", *"subject:shop.payment.authorized", "enter")
        await settle(pilot)
        await app.workers.wait_for_complete()
        await settle(pilot)
        assert list(flows.index) == [1, 3]
        text = screen_text(app)
        assert "flows  · 2 with a match" in text
        assert "✘ failed" not in text  # order 2's row is gone

        # Picking a flow from the narrowed list keeps the list, so another can be picked.
        flows.focus()
        await pilot.press("down", "enter")
        await settle(pilot)
        await app.workers.wait_for_complete()
        await settle(pilot)
        assert app.flow_filter == 3
        assert list(flows.index) == [1, 3]
        assert len(app.screen.query_one("#events", RowList).index) == 1

        # Another filter typed while a flow narrows the events: every flow, until the flow
        # narrowing goes; then the flows of the new filter's matches.
        app.apply_filter("subject:shop.order.cancelled")
        await app.workers.wait_for_complete()
        await settle(pilot)
        assert list(flows.index) == [1, 2, 3]
        assert "with a match" not in screen_text(app)
        await pilot.press("escape")
        await settle(pilot)
        await app.workers.wait_for_complete()
        await settle(pilot)
        assert list(flows.index) == [2]

        await pilot.press("escape", "escape")  # the flow, then the typed filter
        await settle(pilot)
        await app.workers.wait_for_complete()
        await settle(pilot)
        assert list(flows.index) == [1, 2, 3]
        assert "with a match" not in screen_text(app)


async def test_a_filter_matching_only_flowless_events_leaves_the_flows_list_empty(
    shop: Path,
) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("slash", *"subject:shop.heartbeat.>", "enter")
        await settle(pilot)
        await app.workers.wait_for_complete()
        await settle(pilot)
        assert len(app.screen.query_one("#events", RowList).index) == 1
        assert len(app.screen.query_one("#flows", RowList).index) == 0
        assert "flows  · 0 with a match" in screen_text(app)


async def test_flow_screen_shows_waterfall_tree_and_events(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        app.screen.query_one("#flows", RowList).focus()
        await pilot.press("enter", "w")
        await settle(pilot)
        assert isinstance(app.screen, FlowScreen)
        text = screen_text(app)
        assert "flow #1" in text
        assert "├" in text
        assert "┤" in text
        assert "◆" in text  # the critical path
        for lane in ("order", "pricing", "payment", "stock"):
            assert f"\n{lane} " in "\n" + "\n".join(x.strip("│ ") for x in text.splitlines())
        tree = app.screen.query_one("#causal", Tree)
        root_children = tree.root.children
        assert str(root_children[0].label) == "shop.order.placed +0"
        assert str(root_children[0].children[0].label) == "shop.pricing.quote +40ms"
        assert len(app.screen.query_one("#flow-events", RowList).index) == 6
        await pilot.press("escape")
        assert not isinstance(app.screen, FlowScreen)


async def test_the_waterfall_is_drawn_again_for_the_room_the_keys_panel_leaves(
    shop: Path,
) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        app.screen.query_one("#flows", RowList).focus()
        await pilot.press("enter", "w")
        await settle(pilot)
        view = app.screen.query_one("#waterfall", Static)
        lines_before = view.size.height
        await pilot.press("question_mark")
        await settle(pilot)
        assert app.screen.query("HelpPanel")  # the panel took part of the screen
        # one lane a line, as before: no line wrapped in the narrower room
        assert view.size.height == lines_before
        assert max(map(len, str(view.render()).splitlines())) <= view.content_size.width


async def test_a_long_filter_is_cut_after_the_match_count(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        long_filter = "shop.order.placed header:traceparent=00-" + "7b41" * 10
        await pilot.press("slash", *long_filter, "enter")
        await settle(pilot)
        await app.workers.wait_for_complete()
        await settle(pilot)
        line = next(x for x in screen_text(app).splitlines() if "events  · " in x)
        shown = line.split("events  · ", 1)[1].rstrip()
        assert shown.startswith("0 matches  · shop.order.placed")
        assert shown.endswith("…")  # cut on its line, not wrapped out of sight


async def test_the_causal_tree_keeps_deep_subjects_in_sight_at_80_columns(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=(80, 24)) as pilot:
        app.screen.query_one("#flows", RowList).focus()
        await pilot.press("enter", "w")
        await settle(pilot)
        tree_lines = [line.split("│")[0] for line in screen_text(app).splitlines()]
        # the chain placed → quote → authorized → reserved → completed, five levels deep
        deepest = next(line for line in tree_lines if "shop.order.completed" in line)
        assert "shop.stock.reserved" in "\n".join(tree_lines)
        assert deepest.index("shop.order.completed") > 8  # indented under its causes


async def test_w_opens_the_flow_under_the_flows_cursor(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        flows = app.screen.query_one("#flows", RowList)
        flows.focus()
        await pilot.press("down")  # flow #2, not the selected event's flow
        await settle(pilot)
        assert flows.row_id() == 2
        await pilot.press("w")
        await settle(pilot)
        assert isinstance(app.screen, FlowScreen)
        assert "flow #2" in screen_text(app)


async def test_keys_typed_at_once_after_slash_go_to_the_filter(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        # As a terminal delivers a fast typist's (or tmux's) keys: all queued before the
        # app handles the first. `s` and `p` are shortcuts too (speed, previous event).
        for char in "/shop.p json:/id":
            app.post_message(events.Key(_character_to_key(char), char))
        await settle(pilot)
        assert app.screen.query_one("#filter", Input).value == "shop.p json:/id"


async def test_an_80_by_24_terminal_keeps_subjects_units_and_the_timeline(shop: Path) -> None:
    app = QixtuiApp(shop, replay=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.screen.query_one("#events", RowList).move_to(0)
        await settle(pilot)
        lines = screen_text(app).splitlines()
        assert any("shop.payment.authorized" in line for line in lines)  # whole subjects
        flow_rows = [line for line in lines if line.startswith("#1 ")]
        assert "320ms" in flow_rows[0]  # the unit is never cut off (139m read as minutes)
        assert any("░" in line or "█" in line for line in lines)  # the timeline's bar shows


async def test_the_focused_lists_title_is_lit(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)

        def lit() -> list[str]:
            return [
                n
                for n in ("flows", "events")
                if app.screen.query_one(f"#{n}-title").has_class("-lit")
            ]

        assert lit() == ["events"]
        app.screen.query_one("#flows", RowList).focus()
        await settle(pilot)
        assert lit() == ["flows"]
        await pilot.press("slash")
        await settle(pilot)
        assert lit() == []


async def test_idle_stretch_folds(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        await app.workers.wait_for_complete()
        app.set_flow(3)
        app.action_open_flow()
        await settle(pilot)
        assert "s folded)" not in static_text(app, "#waterfall")
        assert "░" in static_text(app, "#waterfall")  # the recorded gap inside the flow
        await pilot.press("z")
        await settle(pilot)
        lanes = static_text(app, "#waterfall").splitlines()[1:-1]
        assert any("⋯" in lane for lane in lanes)
        assert "4.00s folded" in static_text(app, "#waterfall")


async def filter_to(app: QixtuiApp, pilot, text: str) -> None:  # type: ignore[no-untyped-def]
    await pilot.press("slash")
    bar = app.screen.query_one("#filter", Input)
    bar.value = text
    await pilot.press("enter")
    await settle(pilot)
    await app.workers.wait_for_complete()
    await settle(pilot)


async def test_filter_by_header(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        await filter_to(app, pilot, "header:tenant=blue")
        events = app.screen.query_one("#events", RowList)
        assert len(events.index) == 1
        assert "shop.order.completed" in static_text(app, "#detail-meta")
        assert "(1 shown)" in screen_text(app)


async def test_filter_by_json_pointer(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        await filter_to(app, pilot, "json:/order_id=2")
        events = app.screen.query_one("#events", RowList)
        assert len(events.index) == 3
        text = screen_text(app)
        assert "shop.payment.declined" in text
        assert "shop.payment.authorized" not in text


async def test_invalid_filter_is_shown_as_such(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("slash", *"json:order")
        await settle(pilot)
        bar = app.screen.query_one("#filter", Input)
        assert bar.has_class("-invalid")
        assert "must start with '/'" in static_text(app, "#filter-status")
        await pilot.press("enter")
        await settle(pilot)
        assert len(app.screen.query_one("#events", RowList).index) == 12


async def test_f_on_a_header_cell_filters_by_it(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        events = app.screen.query_one("#events", RowList)
        events.move_to(5)  # shop.order.completed, with headers X-Correlation-ID and Tenant
        await settle(pilot)
        table = app.screen.query_one("#headers")
        table.focus()
        await pilot.press("down", "f")
        await settle(pilot)
        await app.workers.wait_for_complete()
        await settle(pilot)
        assert app.screen.query_one("#filter", Input).value == "header:Tenant=blue"
        assert len(events.index) == 1


async def test_a_long_header_value_wraps_whole_in_its_cell(tmp_path: Path) -> None:
    trace = "00-84da7e9d2d4bbd3016e32171c49b7b82-6076a841d00e0d6b-01"
    cid = "ee230346-4038-4659-9bf7-1a2e1ef95a55-" + "z" * 40  # longer than any pane here
    path = tmp_path / "h.qix"
    db = store.create_session(path, {"stopped_ns": str(T0 + 10**9)})
    with store.transaction(db):
        headers = [("traceparent", trace), ("X-Correlation-ID", cid)]
        store.insert_events(db, [Event(T0, "shop.order.placed", None, headers, b"{}", 1)])
    db.close()
    app = QixtuiApp(path, replay=True)
    async with app.run_test(size=SIZE) as pilot:
        app.screen.query_one("#events", RowList).move_to(0)
        await settle(pilot)
        left = app.screen.query_one("#detail-left")
        pane = "\n".join(line[: left.size.width] for line in screen_text(app).splitlines())
        # whole, over as many lines as they take: their ends are on screen too
        assert trace[:20] in pane
        assert "0d6b-01" in pane.replace("\n", "").replace(" ", "")
        assert cid[:20] in pane
        assert "z" * 20 in pane


async def test_payload_json_text_and_hex(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        app.screen.query_one("#events", RowList).move_to(0)
        await settle(pilot)
        assert '"order_id": 1,' in static_text(app, "#payload")  # pretty JSON
        await pilot.press("x")
        assert '{"order_id": 1, "amount": 30}' in static_text(app, "#payload")
        await pilot.press("x")
        await settle(pilot)
        payload = static_text(app, "#payload")
        assert "00000000  7b 22 6f 72" in payload
        assert "hex" in static_text(app, "#payload-caption")
        # As many bytes a row as fit the pane: no dump row wraps in two.
        room = app.screen.query_one("#payload-box").size.width - 2
        rows = payload.splitlines()
        assert rows
        assert all(len(row) <= room for row in rows)
        assert all(row[:8].isalnum() and row[8:10] == "  " for row in rows)  # offsets lead


async def test_tail_follow_turns_off_when_scrolling_up_and_back_on_with_end(
    live_shop: tuple[Path, sqlite3.Connection],
) -> None:
    path, writer = live_shop
    app = QixtuiApp(path)
    async with app.run_test(size=SIZE) as pilot:
        events = app.screen.query_one("#events", RowList)

        async def append(n: int) -> None:
            first = store.next_event_id(writer)
            rows = [
                Event(T0 + (5_000 + i) * MS, f"live.tick.{i}", None, None, b"{}", i)
                for i in range(first, first + n)
            ]
            with store.transaction(writer):
                store.insert_events(writer, rows)
            while len(events.index) < first + n - 1:  # the poll timer picks them up
                await pilot.pause(0.05)
            await settle(pilot)

        await append(50)
        assert events.follow
        assert events.cursor == 61
        assert "live.tick.62" in screen_text(app)
        await pilot.press("up", "up", "up")
        assert not events.follow
        await append(10)
        assert events.cursor == 58  # stayed where the user looked
        assert "live.tick.72" not in screen_text(app)
        await pilot.press("end")
        await settle(pilot)
        assert events.follow
        assert events.cursor == 71
        assert "live.tick.72" in screen_text(app)


async def test_escape_steps_back_to_every_event(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        app.apply_filter("shop.payment.>")
        app.set_flow(2)
        await app.workers.wait_for_complete()
        await settle(pilot)
        events = app.screen.query_one("#events", RowList)
        events.focus()
        narrowed = len(events.index)
        await pilot.press("escape")  # the flow goes, the typed filter stays
        await app.workers.wait_for_complete()
        await settle(pilot)
        assert app.flow_filter is None
        assert app.typed_filter
        assert len(events.index) >= narrowed
        await pilot.press("escape")
        await app.workers.wait_for_complete()
        await settle(pilot)
        assert not app.typed_filter
        assert app.screen.query_one("#filter", Input).value == ""
        assert len(events.index) == 12
        assert "shop.heartbeat.stock" in screen_text(app)


async def test_a_filter_on_a_live_recording_keeps_every_new_match(
    live_shop: tuple[Path, sqlite3.Connection],
) -> None:
    """Events written after the filter was applied, up to the first scan's id bound, had
    been counted as scanned and never shown."""
    path, writer = live_shop
    app = QixtuiApp(path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.apply_filter("live.>")
        await app.workers.wait_for_complete()
        first = store.next_event_id(writer)
        rows = [
            Event(T0 + (5_000 + i) * MS, f"live.tick.{i}", None, None, b"{}", i)
            for i in range(first, first + 30)
        ]
        with store.transaction(writer):
            store.insert_events(writer, rows)
        events = app.screen.query_one("#events", RowList)
        for _ in range(100):  # the poll timer scans what is new
            if len(events.index) == 30:
                break
            await pilot.pause(0.05)
        await settle(pilot)
        assert len(events.index) == 30
        assert "30 matches" in screen_text(app)


async def test_on_a_live_recording_the_narrowed_flows_list_gains_new_matching_flows(
    live_shop: tuple[Path, sqlite3.Connection],
) -> None:
    path, writer = live_shop
    app = QixtuiApp(path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.apply_filter("live.match.>")
        await app.workers.wait_for_complete()
        await settle(pilot)
        flows = app.screen.query_one("#flows", RowList)
        assert len(flows.index) == 0
        first = store.next_event_id(writer)
        subjects = ["live.match.a", "live.other", "live.match.b"]
        new = [
            Event(T0 + (6_000 + i) * MS, subject, None, None, b"{}", first + i, first + i)
            for i, subject in enumerate(subjects)
        ]
        with store.transaction(writer):
            store.insert_events(writer, new)
            store.upsert_flows(writer, [Flow(e.id, "running", e.ts_ns, e.ts_ns, 1) for e in new])
        for _ in range(60):  # the poll timer scans what is new; flows are read once a second
            if len(flows.index) == 2 and app.flow_index.hi == first + 2:
                break
            await pilot.pause(0.05)
        await settle(pilot)
        assert list(flows.index) == [first, first + 2]  # not the flow of live.other
        assert "flows  · 2 with a match" in screen_text(app)


async def test_a_new_flow_joins_the_list_at_the_next_tick_not_the_next_second(
    live_shop: tuple[Path, sqlite3.Connection],
) -> None:
    """Found by a tester: following the tail, the flows list trailed the events by a flow or
    two (it read new flows once a second)."""
    path, writer = live_shop
    app = QixtuiApp(path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.poll_timer.pause()  # this test ticks itself
        flows = app.screen.query_one("#flows", RowList)
        event_id = store.next_event_id(writer)
        with store.transaction(writer):
            new = Event(T0 + 6_000 * MS, "shop.order.placed", None, None, b"{}", event_id, 99)
            store.insert_events(writer, [new])
            store.upsert_flows(writer, [Flow(99, "running", new.ts_ns, new.ts_ns, 1)])
        app.ticks = 10 * (app.ticks // 10) + 1  # the tick after it is not a whole second's
        app.poll()
        await settle(pilot)
        assert list(flows.index)[-1] == 99
        assert len(app.screen.query_one("#events", RowList).index) == event_id


async def test_the_narrowed_flows_list_follows_merges_and_adoptions(
    live_shop: tuple[Path, sqlite3.Connection],
) -> None:
    """Found by review: a match's flow was read once, when its event was scanned."""
    path, writer = live_shop
    app = QixtuiApp(path)
    async with app.run_test(size=SIZE) as pilot:
        flows = app.screen.query_one("#flows", RowList)

        async def narrowed_to(text: str) -> list[int]:
            app.apply_filter(text)
            await app.workers.wait_for_complete()
            await settle(pilot)
            return list(flows.index)

        async def then(change: str, expected: list[int]) -> None:
            with store.transaction(writer):
                writer.execute(change)
            for _ in range(60):  # flows are read again once a second
                if list(flows.index) == expected:
                    break
                await pilot.pause(0.05)
            assert list(flows.index) == expected

        await settle(pilot)
        assert await narrowed_to("subject:shop.payment.declined") == [2]
        writer.execute("DELETE FROM flows WHERE flow_id = 2")
        await then("UPDATE events SET flow_id = 1 WHERE flow_id = 2", [1])  # absorbed by 1
        assert await narrowed_to("subject:shop.heartbeat.stock") == []  # flowless
        await then("UPDATE events SET flow_id = 3 WHERE subject = 'shop.heartbeat.stock'", [3])
        assert "flows  · 1 with a match" in screen_text(app)


async def test_watching_a_recorder_the_flows_list_follows_new_flows(tmp_path: Path) -> None:
    path = shop_session(tmp_path / "live.qix", stopped=False)
    writer = store.open_session(path, readonly=False)
    with recorder_stand_in() as pid:
        app = QixtuiApp(path, recorder_pid=pid)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            flows = app.screen.query_one("#flows", RowList)
            assert flows.follow
            assert flows.row_id() == 3  # the newest flow, not the first
            first = store.next_event_id(writer)
            new = [Event(T0 + 9_000 * MS, "live.new", None, None, b"{}", first, first)]
            with store.transaction(writer):
                store.insert_events(writer, new)
                store.upsert_flows(writer, [Flow(first, "running", T0, T0, 1)])
            while flows.row_id() != first:  # the poll timer picks it up
                await pilot.pause(0.05)
    writer.close()
    # A finished file opens at its first flow.
    app = QixtuiApp(shop_session(tmp_path / "done.qix"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.screen.query_one("#flows", RowList).row_id() == 1


async def test_the_first_events_into_an_empty_recording_show_the_newest(tmp_path: Path) -> None:
    """The list selected the newest event but still showed the oldest: the list grew past a
    screen before its scrollbar was laid out, and Textual refused the scroll."""
    path = tmp_path / "empty.qix"
    with recorder_stand_in() as pid:
        db = store.create_session(path, {"recorder_pid": str(pid)})
        app = QixtuiApp(path, recorder_pid=pid)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            first = [
                Event(T0 + i * MS, f"pay.intent.{i}", None, None, b"{}", i + 1) for i in range(60)
            ]
            with store.transaction(db):
                store.insert_events(db, first)
            events = app.screen.query_one("#events", RowList)
            while events.cursor != 59:  # the poll timer reads them
                await pilot.pause(0.05)
            await settle(pilot)
            text = screen_text(app)
            assert "pay.intent.59 " in text
            assert "pay.intent.0 " not in text
        db.close()


async def test_a_recorder_that_dies_under_the_screen_is_a_banner_not_a_status_word(
    tmp_path: Path,
) -> None:
    path = shop_session(tmp_path / "live.qix", stopped=False)
    recorder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)"
    )
    try:
        app = QixtuiApp(path, recorder_pid=recorder.pid)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert "NOT RECORDING" not in screen_text(app)
            recorder.kill()
            await recorder.wait()
            while not app.recorder_gone_said:  # the status is refreshed twice a second
                await pilot.pause(0.05)
            await settle(pilot)
            text = screen_text(app)
            assert f"NOT RECORDING: the recorder (pid {recorder.pid}) exited" in text
            assert "recorder stopped" in text
            assert [n.message for n in app._notifications] == [
                "the recorder exited: nothing new is recorded; what it wrote stays"
            ]
    finally:
        if recorder.returncode is None:
            recorder.kill()
            await recorder.wait()


async def test_tapping_some_subjects_only_says_replies_are_left_out(tmp_path: Path) -> None:
    path = tmp_path / "narrow.qix"
    with recorder_stand_in() as pid:
        store.create_session(path, {"recorder_pid": str(pid), "subjects": "pay.>"}).close()
        app = QixtuiApp(path, recorder_pid=pid)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert [n.message for n in app._notifications] == [store.REPLIES_HINT]


async def test_replay_plays_at_10x(shop: Path) -> None:
    wall = [100.0]
    app = QixtuiApp(shop, replay=True, monotonic=lambda: wall[0])
    async with app.run_test(size=SIZE) as pilot:
        events = app.screen.query_one("#events", RowList)
        assert events.cursor == 0
        assert "⏸ paused" in static_text(app, "#timeline")
        await pilot.press("s")
        await pilot.press("space")
        assert "▶ playing  10x" in static_text(app, "#timeline")
        wall[0] += 0.3  # 300 ms of wall time is 3 s of recording at 10x
        while app.cursor_ns == T0:  # the poll timer takes the step
            await pilot.pause(0.05)
        assert app.cursor_ns == T0 + 3_000_000_000
        await pilot.press("space")
        assert "⏸ paused" in static_text(app, "#timeline")
        assert "+3.00s of 4.60s" in static_text(app, "#timeline")
        assert "█" in static_text(app, "#timeline")
        # The selection follows the cursor: the last event at or before +3 s (flow 3 placed).
        assert events.cursor == 9
        assert "shop.order.placed" in static_text(app, "#detail-meta")
        # ... and so does the flows list: the flow whose event is at the cursor
        await until(pilot, lambda: app.flows_list.row_id() == 3, "flow 3 highlighted")
        wall[0] += 1.0
        await pilot.pause(0.3)
        assert app.cursor_ns == T0 + 3_000_000_000  # paused means paused


async def test_replay_at_max_never_crawls_through_sparse_events(shop: Path) -> None:
    """It moved one event a poll: ten a second, slower than 1x on a busy recording."""
    wall = [100.0]
    app = QixtuiApp(shop, replay=True, monotonic=lambda: wall[0])
    async with app.run_test(size=SIZE) as pilot:
        events = app.screen.query_one("#events", RowList)
        await pilot.press("s", "s")
        assert "⏸ paused  max" in static_text(app, "#timeline")
        await pilot.press("space")
        wall[0] += 0.001  # 100 ms of recording at 100x: two events, but ten a tick at least
        while events.cursor == 0:
            await pilot.pause(0.05)
        # Its first move: ten events (a busy machine may let the second tick in as well).
        assert events.cursor >= 10
        while app.playing:
            await pilot.pause(0.05)
        assert events.cursor == 11
        assert app.cursor_ns == T0 + 4_600 * MS  # the time follows the event selected
        # Nothing to play (a filter matching nothing): it stops, instead of an IndexError.
        app.apply_filter("no-such-payload-text")
        await app.workers.wait_for_complete()
        await pilot.press("space")
        wall[0] += 0.01
        await pilot.pause(0.3)
        assert not app.playing


async def test_replay_steps_through_a_flow(shop: Path) -> None:
    app = QixtuiApp(shop, replay=True)
    async with app.run_test(size=SIZE) as pilot:
        events = app.screen.query_one("#events", RowList)
        await pilot.press("n")
        assert events.cursor == 1
        await pilot.press("n", "n")
        assert events.cursor == 3  # via the pricing reply, all flow 1
        await pilot.press("p")
        assert events.cursor == 2
        assert "_INBOX.q1" in static_text(app, "#detail-meta")


async def run_command(pilot, typed: str) -> None:  # type: ignore[no-untyped-def]
    """Open the palette, type, take the first hit."""
    await pilot.press("ctrl+p")
    await settle(pilot)
    await pilot.press(*typed)
    await pilot.pause(0.3)
    await pilot.press("enter")
    await settle(pilot)


async def test_command_palette_has_noun_verb_commands(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        await run_command(pilot, "filter: fail")
        await app.workers.wait_for_complete()
        await settle(pilot)
        assert app.screen.query_one("#filter", Input).value == "status:failed"
        assert len(app.screen.query_one("#events", RowList).index) == 3


async def test_the_palette_jumps_in_time_in_replay(shop: Path) -> None:
    from qixtui.ui.flowscreen import JumpScreen

    app = QixtuiApp(shop, replay=True)
    async with app.run_test(size=SIZE) as pilot:
        await run_command(pilot, "replay: jump")
        assert isinstance(app.screen, JumpScreen)
        assert "jump to a time" in screen_text(app)
        await pilot.press(*"+4s", "enter")
        await settle(pilot)
        assert app.cursor_ns == T0 + 4_000 * MS


async def test_every_binding_has_an_id(shop: Path) -> None:
    from qixtui.ui import app as app_module
    from qixtui.ui import flowscreen, rowlist, widgets

    classes = [
        app_module.QixtuiApp,
        app_module.MainScreen,
        flowscreen.FlowScreen,
        flowscreen.JumpScreen,
        rowlist.RowList,
        widgets.DetailPane,
    ]
    for cls in classes:
        for binding in cls.BINDINGS:
            assert binding.id, f"{cls.__name__} {binding.key} has no id"  # type: ignore[union-attr]


async def test_mouse_click_selects_an_event(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.click("#events", offset=(20, 1))
        await settle(pilot)
        assert app.screen.query_one("#events", RowList).cursor == 1
        assert "shop.pricing.quote" in static_text(app, "#detail-meta")


async def test_jump_to_time_moves_the_replay_cursor(shop: Path) -> None:
    app = QixtuiApp(shop, replay=True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("t")
        await settle(pilot)
        await pilot.press(*"+4.55s", "enter")
        await settle(pilot)
        assert app.cursor_ns == T0 + 4_550 * MS
        assert app.screen.query_one("#events", RowList).cursor == 10  # payment at +4.5 s
        assert "+4.55s of 4.60s" in static_text(app, "#timeline")
        assert not [n for n in app._notifications if "outside" in str(n.message)]
        await pilot.press("t")
        await settle(pilot)
        await pilot.press(*"+99h", "enter")  # it went to the end without a word
        await settle(pilot)
        assert app.cursor_ns == T0 + 4_600 * MS
        (notice,) = [str(n.message) for n in app._notifications if "outside" in str(n.message)]
        assert notice.startswith("+99h is outside the recording: at its end, ")
        # a date and time, as `--since` takes it
        at = dt.datetime.fromtimestamp((T0 + 2_000 * MS) / 1e9).isoformat(timespec="seconds")
        await pilot.press("t")
        await settle(pilot)
        await pilot.press(*at, "enter")
        await settle(pilot)
        assert app.cursor_ns == (T0 + 2_000 * MS) // 10**9 * 10**9
        await pilot.press("t")  # or in ns, as --since takes it too
        await settle(pilot)
        await pilot.press(*str(T0 + 3_000 * MS), "enter")
        await settle(pilot)
        assert app.cursor_ns == T0 + 3_000 * MS
        assert not [n for n in app._notifications if "not a time" in str(n.message)]


async def test_export_writes_the_shown_events(shop: Path) -> None:
    app = QixtuiApp(shop, clock_ns=lambda: T0)
    async with app.run_test(size=SIZE) as pilot:
        app.set_flow(2)
        await settle(pilot)
        app.action_export()
        await app.workers.wait_for_complete()
        await settle(pilot)
        said = [str(n.message) for n in app._notifications if "exported" in str(n.message)]
    exports = list(shop.parent.glob("shop-export-*.jsonl"))
    assert len(exports) == 1
    assert said == [f"exported 3 events to {exports[0].resolve()}"]  # where, whatever the cwd
    lines = [json.loads(line) for line in exports[0].read_text().splitlines()]
    assert [e["subject"] for e in lines] == [
        "shop.order.placed",
        "shop.payment.declined",
        "shop.order.cancelled",
    ]


async def test_ctrl_c_quits_as_q_does(shop: Path) -> None:
    """As `record` and `server` stop on Ctrl-C; Textual's default only says to use ctrl+q."""
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+c")
        await pilot.pause()
        assert not app.is_running


async def test_the_filter_bar_says_how_it_reads_a_subject_typed_bare(shop: Path) -> None:
    """A subject copied from the list, without a wildcard, is payload text: say so."""
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("slash", *"shop.order.placed")
        await settle(pilot)
        assert "✔ payload text · a subject needs subject:" in screen_text(app)
        await pilot.press("ctrl+u", *"subject:shop.order.placed json:/order_id=1")
        await settle(pilot)
        assert "✔ subject, json · enter applies" in screen_text(app)


async def test_a_file_damaged_inside_ends_the_screen_with_the_error_kept(tmp_path: Path) -> None:
    """Textual would print a traceback on exit; the command prints the error in one line."""
    app = QixtuiApp(damaged_session(tmp_path / "damaged.qix"), replay=True)
    async with app.run_test(size=SIZE) as pilot:
        app.apply_filter("needle")  # a scan of every event reaches the damaged pages
        for _ in range(200):
            if app.read_error is not None:
                break
            await pilot.pause(0.05)
    assert isinstance(app.read_error, sqlite3.DatabaseError)
    assert "malformed" in str(app.read_error)
    assert app.return_code == 1


@pytest.mark.parametrize("events_keep_coming", [False, True])
async def test_a_live_status_filter_drops_flows_that_finished_since(
    live_shop: tuple[Path, sqlite3.Connection], events_keep_coming: bool
) -> None:
    """Found by testers: status:running kept listing flows that had completed since; and in
    the demo, with new events every moment, a scan of them was always running when the
    filter was due to run again, so it never did."""
    path, writer = live_shop
    with store.transaction(writer):
        writer.execute("UPDATE flows SET status = 'running' WHERE flow_id IN (1, 3)")
    app = QixtuiApp(path)
    async with app.run_test(size=SIZE) as pilot:
        flows = app.screen.query_one("#flows", RowList)
        app.apply_filter("status:running")
        await app.workers.wait_for_complete()
        await settle(pilot)
        assert list(flows.index) == [1, 3]
        with store.transaction(writer):
            writer.execute("UPDATE flows SET status = 'completed' WHERE flow_id = 1")
        next_id = store.next_event_id(writer)
        # a flow-state filter runs again every second
        for i in range(60):  # three seconds; an event of flow 3 every 50 ms, if they come
            if list(flows.index) == [3]:
                break
            if events_keep_coming:
                tick = Event(T0 + (6_000 + i) * MS, "shop.tick", None, None, b"{}", next_id + i, 3)
                with store.transaction(writer):
                    store.insert_events(writer, [tick])
            await pilot.pause(0.05)
        assert list(flows.index) == [3]
        shown = list(app.screen.query_one("#events", RowList).index)
        assert app.session.flows_of(shown) == {3}  # flow 3's events alone
        assert len(shown) >= 2


async def test_a_flow_merged_away_while_recording_leaves_the_flows_list(
    live_shop: tuple[Path, sqlite3.Connection],
) -> None:
    """Found by a tester: the absorbed flow's row stayed, as `…`, until a restart."""
    path, writer = live_shop
    app = QixtuiApp(path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        flows = app.screen.query_one("#flows", RowList)
        flows.focus()
        flows.move_to(2)  # flow 3 selected
        assert list(flows.index) == [1, 2, 3]
        with store.transaction(writer):
            writer.execute("UPDATE events SET flow_id = 1 WHERE flow_id = 2")
            writer.execute("DELETE FROM flows WHERE flow_id = 2")
        # the flows are read again once a second
        await until(pilot, lambda: list(flows.index) == [1, 3], "flow 2 gone", within=3)
        assert flows.row_id() == 3
        assert "…" not in screen_text(app).split("events")[0]


async def test_the_rate_shows_only_while_a_recorder_writes(
    shop: Path, live_shop: tuple[Path, sqlite3.Connection]
) -> None:
    """Found by a tester: a finished file's status bar said `0 ev/s`."""
    with recorder_stand_in() as pid:
        for app, rate_shown in (
            (QixtuiApp(shop), False),
            (QixtuiApp(live_shop[0], recorder_pid=pid), True),
        ):
            async with app.run_test(size=SIZE) as pilot:
                await settle(pilot)
                app.refresh_status()
                await settle(pilot)
                status = next(x for x in screen_text(app).splitlines() if "drops" in x)
                assert ("ev/s" in status) is rate_shown, status
