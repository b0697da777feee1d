"""Publishing a selection from replay mode onto a real nats-server, driven by Pilot."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nats
from helpers import collect, run_qixtui
from textual.widgets import Button, Checkbox, DataTable, Input, Static

from qixtui.core import store
from qixtui.ui.app import QixtuiApp
from qixtui.ui.publishscreen import PublishScreen
from qixtui_nats.server import EmbeddedServer
from ui.sessions import settle

SIZE = (140, 40)


async def done(pilot: Any) -> None:
    """Wait for the screen's bus worker and the messages it posts back."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.pause(0.3)  # the progress timer's next tick


def text_of(screen: PublishScreen, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


async def open_publish(pilot: Any, app: QixtuiApp, url: str) -> PublishScreen:
    await pilot.press("P")
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, PublishScreen)
    screen.query_one("#url", Input).value = url
    return screen


async def test_publish_selection_dry_runs_first_then_sends_exactly_the_shown_events(
    shop: Path, nats_server: EmbeddedServer
) -> None:
    source = store.open_session(shop)
    failed = {
        r[0]: r[1]
        for r in source.execute(
            "SELECT subject, payload FROM events WHERE flow_id IN "
            "(SELECT flow_id FROM flows WHERE status = 'failed')"
        )
    }
    source.close()
    assert len(failed) == 3
    nc, seen = await collect(nats_server.url, ">")
    app = QixtuiApp(shop, replay=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("slash", *"status:failed", "enter")
        await settle(pilot)
        screen = await open_publish(pilot, app, nats_server.url)
        assert "status:failed" in text_of(screen, "#publish-selection")
        assert screen.query_one("#publish", Button).disabled

        await pilot.press("ctrl+r")
        await done(pilot)
        summary = text_of(screen, "#summary")
        assert "dry run: nothing sent" in summary
        assert "Would publish 3 messages" in summary
        table = screen.query_one("#subjects", DataTable)
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        prefix = f"replay.{screen.session}."
        assert sorted((r[0], r[4], r[5]) for r in rows) == sorted(
            ("1", s, prefix + s) for s in failed
        )
        await nc.flush()
        await asyncio.sleep(0.2)
        assert seen == []  # the dry run sent nothing
        assert not screen.query_one("#publish", Button).disabled

        await pilot.press("ctrl+y")
        await done(pilot)
        assert screen.outcome is not None
        assert screen.outcome.status == "done"
        progress = text_of(screen, "#progress-line")
        assert "sent 3 / 3" in progress
        assert "msg/s" in progress
        assert "timing error median" in progress
        assert "done" in progress
        await nc.flush()
        await asyncio.sleep(0.2)
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, PublishScreen)
    await nc.close()

    got = {m.subject.removeprefix(prefix): m for m in seen}
    assert len(seen) == 3
    assert set(got) == set(failed)
    for subject, msg in got.items():
        assert msg.subject == prefix + subject
        assert msg.data == failed[subject]
        assert msg.headers["Qixtui-Replay-Session"] == screen.session
    assert sorted(int(m.headers["Qixtui-Replay-Seq"]) for m in seen) == [1, 2, 3]
    db = store.open_session(shop)
    audit = store.replays(db)
    db.close()
    assert [(r["status"], r["sent"], r["session"]) for r in audit] == [("done", 3, screen.session)]


async def test_original_subjects_on_the_source_server_need_its_name_typed(
    shop: Path, nats_server: EmbeddedServer
) -> None:
    probe = await nats.connect(nats_server.url)
    name = probe._server_info["server_name"]
    await probe.close()
    db = store.open_session(shop, readonly=False)
    with store.transaction(db):
        store.set_meta(db, {"server_name": name})
    db.close()
    app = QixtuiApp(shop, replay=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        screen = await open_publish(pilot, app, nats_server.url)
        screen.query_one("#original", Checkbox).value = True
        await pilot.pause()
        assert screen.query_one("#prefix", Input).disabled
        await pilot.press("ctrl+r")
        await done(pilot)
        summary = text_of(screen, "#summary")
        assert "\nThe target looks like the server this was recorded from." in summary
        assert "\\x0a" not in summary
        confirm = screen.query_one("#confirm", Input)
        assert confirm.display
        assert screen.query_one("#publish", Button).disabled
        confirm.value = name + "x"
        await pilot.pause()
        assert screen.query_one("#publish", Button).disabled
        await pilot.press("ctrl+y")
        await pilot.pause()
        assert screen.outcome is None  # nothing started
        confirm.value = name
        await pilot.pause()
        assert not screen.query_one("#publish", Button).disabled
        # A changed form needs a new dry run before anything can be sent.
        screen.query_one("#speed", Input).value = "max"
        await pilot.pause()
        assert screen.query_one("#publish", Button).disabled
        assert "run the dry run again" in text_of(screen, "#summary")
    db = store.open_session(shop)
    assert store.replays(db) == []
    db.close()


async def test_escape_stops_a_paced_publish_and_the_audit_row_says_where(
    shop: Path, nats_server: EmbeddedServer
) -> None:
    nc, seen = await collect(nats_server.url, "replay.>")
    app = QixtuiApp(shop, replay=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        screen = await open_publish(pilot, app, nats_server.url)
        await pilot.press("ctrl+r")
        await done(pilot)
        # Every event but the recorded reply: the shop waits 4 s before its last two.
        assert "Would publish 11 messages" in text_of(screen, "#summary")
        assert text_of(screen, "#notes") == "never published: 1 (reply inbox (_INBOX.>))"
        await pilot.press("ctrl+y")
        while screen.replayer is None or screen.replayer.progress.sent < 9:
            await pilot.pause(0.05)
        await pilot.press("escape")
        await done(pilot)
        assert screen.outcome is not None
        assert screen.outcome.status == "stopped"
        assert "stopped" in text_of(screen, "#progress-line")
        assert text_of(screen, "#summary") == (
            f"replay stopped: sent {screen.outcome.sent} messages; run a new dry run to publish "
            "again"
        )
        assert isinstance(app.screen, PublishScreen)  # the first escape only stops
        assert screen.query_one("#publish", Button).disabled  # a new dry run first
    await nc.flush()
    db = store.open_session(shop)
    audit = store.replays(db)
    db.close()
    assert [(r["status"], r["last_seq"]) for r in audit] == [("stopped", 9)]
    assert sorted(int(m.headers["Qixtui-Replay-Seq"]) for m in seen) == list(range(1, 10))
    # What the screen's notice says continues it: the CLI resumes the stored plan.
    resumed = await asyncio.to_thread(
        run_qixtui, "replay", str(shop), "--publish", "-s", nats_server.url, "--resume", "--yes"
    )
    assert resumed.returncode == 0, resumed.stderr
    await nc.flush()
    await asyncio.sleep(0.2)
    await nc.close()
    assert sorted(int(m.headers["Qixtui-Replay-Seq"]) for m in seen) == list(range(1, 12))


async def test_oversize_messages_are_listed_and_publishing_is_refused(shop: Path) -> None:
    with EmbeddedServer(config="max_payload: 120") as small:
        nc, seen = await collect(small.url, ">")
        app = QixtuiApp(shop, replay=True)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("slash", *"status:failed", "enter")
            await settle(pilot)
            screen = await open_publish(pilot, app, small.url)
            await pilot.press("ctrl+r")
            await done(pilot)
            notes = text_of(screen, "#notes")
            assert "2 messages larger than the target's max_payload" in notes
            assert "shop.order.placed 121B" in notes
            assert "shop.payment.declined 125B" in notes
            assert screen.query_one("#publish", Button).disabled
            await pilot.press("ctrl+y")
            await done(pilot)
            assert screen.outcome is None
        await nc.flush()
        await asyncio.sleep(0.2)
        await nc.close()
    assert seen == []


async def test_the_command_palette_opens_it_in_replay_mode_only(shop: Path) -> None:
    app = QixtuiApp(shop, replay=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"publish selection")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, PublishScreen)
        assert "every event" in text_of(app.screen, "#publish-selection")
    live = QixtuiApp(shop)
    async with live.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("P")
        await pilot.pause()
        assert not isinstance(live.screen, PublishScreen)


async def test_the_form_keeps_its_target_and_speed_between_openings(shop: Path) -> None:
    """Found by a tester: each opening went back to nats://127.0.0.1:4222 and speed 1."""
    app = QixtuiApp(shop, replay=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        screen = await open_publish(pilot, app, "nats://127.0.0.1:14333")
        screen.query_one("#speed", Input).value = "max"
        prefix = screen.query_one("#prefix", Input).value
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("P")
        await pilot.pause()
        again = app.screen
        assert isinstance(again, PublishScreen)
        assert again is not screen
        assert again.query_one("#url", Input).value == "nats://127.0.0.1:14333"
        assert again.query_one("#speed", Input).value == "max"
        assert again.query_one("#prefix", Input).value != prefix  # each run its own subjects
