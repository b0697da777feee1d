"""Hostile text from the bus is shown, never obeyed: no markup actions, no crash, no escapes
reaching the terminal."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import qixtui_command
from textual.widgets import Input, Static

from qixtui.core import store
from qixtui.core.model import Event
from qixtui.core.text import visible
from qixtui.ui.app import QixtuiApp
from qixtui.ui.flowscreen import FlowScreen
from qixtui.ui.rowlist import RowList
from ui.sessions import CORPUS, hostile_session, screen_text, settle

SIZE = (160, 50)


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    return hostile_session(tmp_path / "hostile.qix")


async def test_every_view_shows_the_corpus_as_text(hostile: Path) -> None:
    app = QixtuiApp(hostile, replay=True)
    async with app.run_test(size=SIZE) as pilot:
        events = app.screen.query_one("#events", RowList)
        for pos in range(len(CORPUS)):
            events.move_to(pos)
            await settle(pilot)
            text = screen_text(app)
            shown = visible(CORPUS[pos])
            assert f"evil.{shown}.x" in text  # subject, in the list and the detail pane
            assert f"H{shown}"[:18] in text  # header name (the column is 20 cells wide)
            assert f"v{shown}"[:30] in text  # header value
            assert f"correlation={shown}"[:34] in text  # derived key link (36 cells)
            for mode in ("text", "hex", "json"):
                await pilot.press("x")
                await settle(pilot)
                assert app.payload_mode == mode
        assert "[@click=app.quit]x[/]" in screen_text(app)
        assert "\\x1b]52;c;SGVsbG8=\\x07" in screen_text(app)
        app.set_flow(1)
        app.action_open_flow()
        await settle(pilot)
        assert isinstance(app.screen, FlowScreen)
        flow_text = screen_text(app)
        assert "fail[/x]" in flow_text
        assert "evil.[/oops].x" in flow_text  # the causal tree
        await pilot.press("z", "escape")
        # Hostile text typed into the filter bar and echoed in titles and notifications.
        await pilot.press("slash")
        app.screen.query_one("#filter", Input).value = '"[/oops] [@click=app.quit]x[/]"'
        await pilot.press("enter")
        await settle(pilot)
        await app.workers.wait_for_complete()
        await settle(pilot)
        assert "[/oops] [@click=app.quit]x[/]" in screen_text(app)
        app.apply_filter("[/")
        await settle(pilot)
        assert app.is_running


async def test_f_never_copies_control_characters_into_the_filter_bar(hostile: Path) -> None:
    """The filter bar shows its text as it is: a subject or header holding escapes is not
    turned into a filter term (it would reach the terminal), and the user is told why."""
    app = QixtuiApp(hostile)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        events = app.screen.query_one("#events", RowList)
        bar = app.screen.query_one("#filter", Input)
        for pos, bad in enumerate(CORPUS):
            bar.value = ""
            app.apply_filter("")
            await settle(pilot)
            events.move_to(pos)
            events.focus()
            await settle(pilot)
            await pilot.press("f")
            app.screen.query_one("#headers").focus()
            await pilot.press("f")
            await settle(pilot)
            if visible(bad) == bad:  # markup only: safe as text, so they became terms
                assert f"subject:evil.{bad}.x" in bar.value
                assert f"header:H{bad}=v{bad}" in bar.value
            else:
                assert bar.value == ""
                assert "holds control characters" in screen_text(app).replace("\n", " ")


async def test_json_nested_deeper_than_python_recurses_is_shown_as_text(tmp_path: Path) -> None:
    deep = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    path = tmp_path / "deep.qix"
    db = store.create_session(path, {"stopped_ns": "1"})
    with store.transaction(db):
        store.insert_events(db, [Event(1, "deep.object", None, None, deep, 1)])
    db.close()
    app = QixtuiApp(path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        for mode in ("text", "hex", "json"):
            await pilot.press("x")
            await settle(pilot)
            assert app.payload_mode == mode
            assert app.is_running
        payload = str(app.screen.query_one("#payload", Static).render())
        assert payload.startswith('{"a":{"a":')  # the text, not a pretty-printed tree


async def test_clicking_hostile_text_does_nothing(hostile: Path) -> None:
    app = QixtuiApp(hostile)
    async with app.run_test(size=SIZE) as pilot:
        events = app.screen.query_one("#events", RowList)
        events.move_to(0)
        await settle(pilot)
        lines = screen_text(app).splitlines()
        hits = [
            (x, y)
            for y, line in enumerate(lines)
            for x in [line.find("[@click=app.quit]")]
            if x >= 0
        ]
        assert len(hits) >= 3  # event list, detail subject, header name and value
        for x, y in hits:
            for dx in range(1, 20):
                await pilot.click(offset=(x + dx, y))
        await settle(pilot)
        assert app.is_running
        assert app.return_value is None
        assert not isinstance(app.screen, FlowScreen)


def test_no_escape_from_the_data_reaches_a_real_terminal(hostile: Path) -> None:
    """Run `qixtui replay` on a pseudo-terminal and read every byte it writes."""
    master, slave = os.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "50", "TZ": "UTC"}
    proc = subprocess.Popen(
        qixtui_command("replay", str(hostile)),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    out = bytearray()

    def read_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    out.extend(os.read(master, 65536))
                except OSError:
                    return

    try:
        read_for(6)
        for key in (b"x", b"x", b"\x1b[A", b"x", b"\x1b[A", b"\x1b[A", b"w"):
            os.write(master, key)
            read_for(0.6)
        os.write(master, b"\x1b")
        read_for(0.5)
        os.write(master, b"q")
        read_for(2)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
    # Textual's own pointer-shape OSC 22 is the one BEL-terminated sequence it may write.
    data = re.sub(rb"\x1b\]22;[a-z-]*\x07", b"", bytes(out))
    assert b"evil.\\x1b]52;c;SGVsbG8=\\x07.x" in data  # the data was drawn, visibly
    assert proc.returncode == 0
    for forbidden in (
        b"\x1b]52",  # OSC 52 clipboard write
        b"\x1b]0;pwned",  # window title
        b"\x07",  # BEL ends an OSC: none left once Textual's own OSC 22 is removed
        "\u009b".encode(),  # C1 CSI
        "\u202e".encode(),  # bidi override
        b"\x00",
        b"\x7f",
    ):
        assert forbidden not in data, forbidden
    # Textual clears the screen itself; the data's `\x1b[2J` must appear only escaped.
    assert b"\\x1b[2J" in data
