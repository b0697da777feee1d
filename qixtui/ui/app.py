"""The qixtui app: one code path for a live tap and a finished recording (it reads the file)."""

from __future__ import annotations

import datetime as dt
import re
import time
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.actions import SkipAction
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Input, Static
from textual.worker import get_current_worker

from qixtui.core import filters, store
from qixtui.core.filters import FilterError
from qixtui.core.model import Event
from qixtui.core.text import counted, json_text
from qixtui.ui import text as t
from qixtui.ui.data import IdIndex, Session, Stats, clock, scan
from qixtui.ui.rowlist import RowList
from qixtui.ui.signals import QuitOnTerminate
from qixtui.ui.widgets import DetailPane, StatusBar, Timeline, footer, format_event, format_flow

POLL_S = 0.1
DETAIL_DELAY_S = 0.03
SCAN_NOW = 2_000
SCAN_FIRST = 10_000
SCAN_CHUNK = 200_000
RECHECK_MATCHES = 20_000  # a live filter's matches whose flows are read again each second
# A live filter on flow state (status:, duration) is run again each second: it matched each
# event against its flow as the flow was when the event was scanned, and flows finish (a
# demo order in a tenth of a second). Past FLOW_STATE_MANY flows, every third second:
# reading their states takes ~50 ms a million.
FLOW_STATE_RESCAN_TICKS = 10
FLOW_STATE_MANY = 200_000
SPEEDS = ("1x", "10x", "max")
# Recording time per wall second at each speed; "max" also moves at least
# MAX_EVENTS_PER_TICK events each poll (a hundred a second), however far apart they are.
REPLAY_RATE = {"1x": 1, "10x": 10, "max": 100}
MAX_EVENTS_PER_TICK = 10
PAYLOAD_MODES = ("json", "text", "hex")
TIME_OF_DAY = re.compile(r"\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?")


class Banner(Static):
    DEFAULT_CSS = """
    Banner { height: 1; background: $error; color: $text; text-style: bold; padding: 0 1;
             display: none; }
    Banner.-shown { display: block; }
    """


class FilterBar(Horizontal):
    DEFAULT_CSS = """
    FilterBar { height: 3; }
    FilterBar Input { width: 1fr; }
    FilterBar Input.-invalid { border: tall $error; }
    FilterBar #filter-status { width: 48; height: 3; padding: 1 1; color: $text-muted; }
    FilterBar #filter-status.-invalid { color: $error; text-style: bold; }
    """

    def compose(self) -> ComposeResult:
        yield Input(
            placeholder="/ filter: shop.>  header:X-Correlation-ID=abc  json:/order_id=7  "
            "status:failed  duration>2s  text",
            id="filter",
        )
        yield Static(Text("no filter"), id="filter-status")


# Dotted tokens, the first starting with a letter (not 3.14): most likely a subject, which
# the filter reads as payload text unless it holds a wildcard or says `subject:`.
_SUBJECT_LIKE = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)+")


def filter_reading(flt: filters.Filter) -> str:
    """How the filter bar reads what is typed: the kind of each term, or how to spell a
    subject when a term that looks like one would be searched for as payload text."""
    if not flt.terms:
        return "no filter"
    for term in flt.terms:
        if term.kind == "text" and _SUBJECT_LIKE.fullmatch(str(term.value)):
            return "✔ payload text · a subject needs subject:"
    return f"✔ {', '.join(term.kind for term in flt.terms)} · enter applies"


class MainScreen(Screen[None]):
    """Flows on the left, every event on the right, the selected event below."""

    BINDINGS: ClassVar[list[BindingType]] = [
        # Priority: handled as the app reads the key, so keys typed right after it (a fast
        # typist, a paste, a busy screen) already go to the filter, not to the shortcuts.
        Binding("slash", "focus_filter", "Filter", id="main.filter", priority=True),
        Binding("escape", "show_all", "Show all", id="main.show_all"),
        Binding("w", "open_flow", "Waterfall", id="main.open_flow"),
        Binding("c", "open_compare", "Compare", id="main.compare"),
        Binding("f", "cell_filter", "Filter on cell", id="main.cell_filter"),
        # The payload pane's title names x; the replay bar names space, s and t.
        Binding("x", "app.payload_mode", "JSON/text/hex", show=False, id="main.payload_mode"),
        Binding("tab", "app.focus_next", "Next pane", show=False, id="main.focus_next"),
    ]
    DEFAULT_CSS = """
    #top { height: 1fr; }
    #flows-box { width: 38%; border-right: solid $primary; }
    #events-box { width: 1fr; }
    .list-title { height: 1; background: $primary-background; color: $text; padding: 0 1;
                  text-style: bold; text-wrap: nowrap; text-overflow: ellipsis; }
    .list-title.-lit { background: $accent; }
    """

    def compose(self) -> ComposeResult:
        app = self.app
        assert isinstance(app, QixtuiApp)
        yield Banner(id="banner")
        yield FilterBar()
        with Horizontal(id="top"):
            with Vertical(id="flows-box"):
                yield Static(Text("flows"), id="flows-title", classes="list-title")
                yield RowList(app.fetch_flows, format_flow, id="flows")
            with Vertical(id="events-box"):
                yield Static(Text("events"), id="events-title", classes="list-title")
                yield RowList(app.session.event_rows, format_event, id="events")
        yield DetailPane()
        if app.replay:
            yield Timeline(id="timeline")
        yield StatusBar(id="status")
        yield footer()

    def on_mount(self) -> None:
        app = self.app
        assert isinstance(app, QixtuiApp)
        # Watching a recorder (tap, demo): new flows come into view as they start, like new
        # events; a finished file opens at its first flow.
        self.query_one("#flows", RowList).follow = app.recorder_pid is not None
        self.query_one("#events", RowList).focus()
        app.main_ready()

    def on_unmount(self) -> None:
        app = self.app
        assert isinstance(app, QixtuiApp)
        app.closing = True

    def on_descendant_focus(self) -> None:
        # The list the keys go to says so in its title (a class: `:focus-within` does not
        # restyle the title when focus leaves).
        for name in ("flows", "events"):
            lit = self.focused is self.query_one(f"#{name}", RowList)
            self.query_one(f"#{name}-title", Static).set_class(lit, "-lit")

    on_descendant_blur = on_descendant_focus

    def action_focus_filter(self) -> None:
        if isinstance(self.focused, Input):
            raise SkipAction()  # typing a `/` (json:/order_id)
        self.set_focus(self.query_one("#filter", Input))  # at once, not queued like focus()

    def action_show_all(self) -> None:
        """Out of the filter bar; else a step back to every event: the flow first, then
        the typed filter."""
        app = self.app
        assert isinstance(app, QixtuiApp)
        if self.focused is self.query_one("#filter", Input):
            self.query_one("#events", RowList).focus()
        elif app.flow_filter is not None:
            app.set_flow(None)
        elif app.typed_filter:
            app.apply_filter("")

    def action_open_flow(self) -> None:
        app = self.app
        assert isinstance(app, QixtuiApp)
        app.action_open_flow()

    def action_open_compare(self) -> None:
        from qixtui.ui.comparescreen import open_compare

        open_compare(self.app)

    def action_cell_filter(self) -> None:
        """Turn the focused cell into a filter term: a header row, an event's subject, a flow."""
        app = self.app
        assert isinstance(app, QixtuiApp)
        focused = self.focused
        term: str | None = None
        if isinstance(focused, DataTable) and focused.id == "headers":
            event = app.current_event()
            if event and event.headers and 0 <= focused.cursor_row < len(event.headers):
                name, value = event.headers[focused.cursor_row]
                term = f"header:{name}={value}"
        elif isinstance(focused, RowList) and focused.id == "flows":
            flow_id = focused.row_id()
            term = f"flow:{flow_id}" if flow_id is not None else None
        else:
            event = app.current_event()
            term = f"subject:{event.subject}" if event else None
        if term is None:
            return
        shown = t.plain(term)
        if shown != term:
            # The filter bar shows its text as it is: these would steer the terminal.
            app.notify(
                f"{shown} holds control characters; filter on another part of it",
                markup=False,
                severity="warning",
            )
            return
        bar = self.query_one("#filter", Input)
        current = bar.value.strip()
        bar.value = f"{current} {filters.quote_term(term)}".strip()
        app.apply_filter(bar.value)

    @on(Input.Changed, "#filter")
    def validate_filter(self, event: Input.Changed) -> None:
        status = self.query_one("#filter-status", Static)
        try:
            flt = filters.parse(event.value)
        except FilterError as exc:
            event.input.add_class("-invalid")
            status.add_class("-invalid")
            status.update(Text(f"✘ {exc}"))
            return
        event.input.remove_class("-invalid")
        status.remove_class("-invalid")
        status.update(Text(filter_reading(flt)))

    @on(Input.Submitted, "#filter")
    def submit_filter(self, event: Input.Submitted) -> None:
        app = self.app
        assert isinstance(app, QixtuiApp)
        if app.apply_filter(event.value):
            self.query_one("#events", RowList).focus()

    @on(RowList.Highlighted, "#events")
    def event_highlighted(self, message: RowList.Highlighted) -> None:
        app = self.app
        assert isinstance(app, QixtuiApp)
        app.select_event(message.row_id)

    @on(RowList.Selected, "#flows")
    def flow_selected(self, message: RowList.Selected) -> None:
        app = self.app
        assert isinstance(app, QixtuiApp)
        if message.row_id is not None:
            app.set_flow(message.row_id)


class QixtuiCommands(Provider):
    """Command palette entries, named "noun: verb"."""

    def commands(self) -> list[tuple[str, Callable[[], object], str]]:
        app = self.app
        assert isinstance(app, QixtuiApp)
        out: list[tuple[str, Callable[[], object], str]] = [
            ("flow: open", app.action_open_flow, "Open the selected flow's waterfall"),
            ("flow: show all", partial(app.set_flow, None), "Stop narrowing events to a flow"),
            ("filter: clear", partial(app.apply_filter, ""), "Show every event"),
            (
                "filter: failed flows",
                partial(app.apply_filter, "status:failed"),
                "Events of failed flows",
            ),
            ("payload: cycle json/text/hex", app.action_payload_mode, "Change the payload view"),
            ("events: follow tail", app.action_follow, "Jump to the newest event and follow"),
            ("recording: export", app.action_export, "Write the shown events as JSON Lines"),
        ]
        if app.replay:
            out += [
                ("replay: play/pause", app.action_play, "Start or stop the time cursor"),
                ("replay: speed", app.action_speed, "Cycle 1x, 10x, max (100x or more)"),
                ("replay: jump to time", app.action_jump, "Move the time cursor: +5s or 12:00:01"),
                (
                    "recording: publish selection",
                    app.action_publish,
                    "Dry run, then publish the shown events onto a bus",
                ),
            ]
        return out + app.extra_commands()

    async def discover(self) -> Hits:
        for title, callback, help_text in self.commands():
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, callback, help_text in self.commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, text=title, help=help_text)


class QixtuiApp(QuitOnTerminate):
    """Reads one session file; tails it while a recorder writes it."""

    TITLE = "qixtui"
    COMMANDS: ClassVar = App.COMMANDS | {QixtuiCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit", id="app.quit"),
        # As in `record` and `server`: Ctrl-C stops (Textual's own asks for ctrl+q instead).
        Binding("ctrl+c", "quit", "Quit", show=False, id="app.interrupt"),
        Binding("question_mark", "help", "Help", id="app.help"),
        Binding("space", "play", "Play/pause", show=False, id="replay.play"),
        Binding("s", "speed", "Speed", show=False, id="replay.speed"),
        Binding("t", "jump", "Jump to time", show=False, id="replay.jump"),
        Binding("n", "step(1)", "Next in flow", id="replay.next", show=False),
        Binding("p", "step(-1)", "Prev in flow", id="replay.prev", show=False),
        Binding("P", "publish", "Publish selection", id="replay.publish", show=False),
    ]

    def __init__(
        self,
        path: Path,
        *,
        replay: bool = False,
        recorder_pid: int | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.path = path
        self.session = Session(path)
        self.replay = replay
        self.recorder_pid = recorder_pid
        self.clock_ns = clock_ns
        self.monotonic = monotonic  # the replay clock; tests drive it by hand
        self._played_at = 0.0
        self.typed_filter = filters.Filter()
        self.flow_filter: int | None = None
        self.payload_mode = "json"
        self.flow_index = IdIndex.empty_array()
        # The flows of the typed filter's matches, while one is typed (the flows list then
        # shows only those), and the filter they were found for.
        self.matched_flows: set[int] | None = None
        self.matched_source = ""
        self.scan_generation = 0
        self.scan_where = filters.Where()  # the current filter as planned for this file
        self.absorbed_flows: set[int] = set()  # listed flows merged away since
        self.seen_data_version = 0  # the file's PRAGMA data_version when a filter last ran
        self.scanning = False  # a scan worker runs for the current filter
        self.searching = False  # ... and it is the filter's first pass over the file
        self.publish_form: dict[str, str] = {}  # the publish screen's target and speed
        self.events_title = Text("events")  # the list, and the flow it is narrowed to
        self.filter_title = Text()  # the typed filter: after the count, which must show
        self.scan_from = 0  # the running scan looks at ids in (scan_from, scan_upto]
        self.scan_upto = 0
        self.rates: deque[tuple[float, int]] = deque(maxlen=20)
        self.ticks = 0
        self.playing = False
        self.speed = "1x"
        self.span = self.session.time_span()
        self.finished = False  # the recorder closed the file: nothing will change
        self.cursor_ns = self.span[0]
        self._selected_id: int | None = None
        self._detail_timer: Timer | None = None
        self.closing = False  # the main screen is going away: timers must not touch it
        self.recorder_gone_said = False
        self._replay_pick: int | None = None  # the event the replay clock last selected

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action in ("play", "speed", "jump", "publish") and not self.replay)

    # -- lifecycle ---------------------------------------------------------------------

    def get_default_screen(self) -> MainScreen:
        return MainScreen()

    def main_ready(self) -> None:
        """Fill the lists once the main screen exists, then start pulling new rows."""
        self._events = self.main.query_one("#events", RowList)
        self._flows = self.main.query_one("#flows", RowList)
        self.flow_index.ids = array("q", self.session.flow_ids())
        self.flow_index.hi = self.flow_index.ids[-1] if self.flow_index.ids else 0
        self.flows_list.set_index(self.flow_index)
        if not self.flows_list.follow:
            self.flows_list.cursor = 0 if len(self.flow_index) else -1
        self.events_list.set_index(self.session.full_index())
        if self.replay:
            self.events_list.follow = False
            self.events_list.move_to(0)
        self.refresh_status()
        self.poll_timer = self.set_interval(POLL_S, self.poll, name="poll session file")
        self.say_if_unindexed()
        subjects = store.recording_subjects(store.get_meta(self.session.db))
        if self.recorder_pid is not None and store.misses_replies(subjects):
            self.notify(store.REPLIES_HINT, markup=False, severity="warning", timeout=15)

    def say_if_unindexed(self) -> None:
        """A recording stopped before its recorder built the read indexes works, but every
        filter scans it: say so, and what builds them."""
        stats = self.session.stats()
        if self.connection_state(stats) not in ("finished", "incomplete"):
            return  # still being recorded: the recorder builds them when it stops
        if stats.total and not store.read_indexes_ready(self.session.db):
            self.notify(
                t.plain(
                    f"{self.path.name} has no indexes for filters yet, so each filter scans "
                    f"every event; `qixtui index {self.path}` builds them"
                ),
                markup=False,
                severity="warning",
                title="recording",
                timeout=20,
            )

    @property
    def main(self) -> MainScreen:
        for screen in self.screen_stack:
            if isinstance(screen, MainScreen):
                return screen
        raise LookupError("main screen not mounted")

    @property
    def events_list(self) -> RowList:
        return self._events

    @property
    def flows_list(self) -> RowList:
        return self._flows

    def fetch_flows(self, first: int, last: int) -> dict[int, object]:
        rows = self.session.flow_rows(first, last)
        ids = self.flow_index.ids
        if self.flows_list.index is self.flow_index and ids is not None:
            # Listed but not in the file: merged away by correlation since (dropped at the
            # next poll; counting the flows each second to notice cost 45 ms at a million).
            listed = ids[bisect_left(ids, first) : bisect_right(ids, last)]
            self.absorbed_flows.update(i for i in listed if i not in rows)
        return dict(rows)

    # -- polling: the only way new data arrives --------------------------------------------

    def poll(self) -> None:
        if self.closing:
            return
        self.ticks += 1
        max_id = self.session.max_id()
        index = self.events_list.index
        if index.ids is None and not self.current_filter():
            if max_id > index.hi:
                index.hi = max_id
                index.scanned_to = max_id
                self.events_list.grew()
        elif not self.scanning and max_id > index.scanned_to:
            self.start_scan(index, self.scan_generation)
        if not self.finished:
            self.poll_new_flows()
            if self.ticks % 10 == 0:
                self.poll_flows()
        if self.ticks % 5 == 0:
            self.refresh_status()
        if self.replay and self.playing:
            self.advance_replay()

    def poll_new_flows(self) -> None:
        """New flows join the list as their events do (one indexed read past the last)."""
        new = self.session.flow_ids(self.flow_index.hi)
        if new:
            assert self.flow_index.ids is not None
            self.flow_index.ids.extend(new)
            self.flow_index.hi = new[-1]
            if self.matched_flows is None:
                self.flows_list.grew()

    def poll_flows(self) -> None:
        # Statuses and counts change while flows run, and correlation moves events between
        # flows: redraw both lists once a second (growth alone redraws only new rows).
        self.flows_list.invalidate()
        self.events_list.invalidate()
        if self.absorbed_flows:
            self.drop_absorbed_flows()
        if self.matched_flows is not None and self.flow_filter is None:
            self.recheck_matched_flows()
        every = FLOW_STATE_RESCAN_TICKS * (3 if len(self.flow_index) > FLOW_STATE_MANY else 1)
        if self.ticks % every == 0 and self.flow_state_filter_is_stale():
            self.refilter_in_place()

    def drop_absorbed_flows(self) -> None:
        """Flows correlation merged away since they were listed (their rows read as missing,
        shown as `…`) leave the list, the same flow staying selected."""
        ids = self.flow_index.ids
        assert ids is not None
        selected = self.flows_list.row_id()
        for flow_id in sorted(self.absorbed_flows, reverse=True):
            pos = bisect_left(ids, flow_id)
            if pos < len(ids) and ids[pos] == flow_id:
                del ids[pos]
        self.absorbed_flows.clear()
        if self.flows_list.index is not self.flow_index:
            return  # a narrowed list follows merges itself
        self.flows_list.set_index(self.flow_index)
        pos = self.flow_index.position_of(selected) if selected is not None else None
        if pos is not None and not self.flows_list.follow:
            self.flows_list.move_to(pos)

    def flow_state_filter_is_stale(self) -> bool:
        """A filter on flow state (status:, duration) matched each event against its flow as
        it was then; flows finish while a recorder writes. Run again only when the file
        changed, nothing narrows to one flow, and its matches are read at once (few enough
        for an index to bound them): a scan in parts would move the selection each time.
        A scan of new events may be running (on a busy bus, nearly always): running the
        filter again supersedes it."""
        if self.replay or self.flow_filter is not None or self.searching:
            return False
        if not any(term.kind in ("status", "duration") for term in self.typed_filter.terms):
            return False
        if self.scan_where.rows is None:
            return False
        version = self.session.data_version()
        changed, self.seen_data_version = version != self.seen_data_version, version
        return changed

    def refilter_in_place(self) -> None:
        """The filter run again, with the same event and flow selected where they still
        match (a list that follows its tail goes on following it)."""
        event_id, flow_id = self.events_list.row_id(), self.flows_list.row_id()
        self.matched_flows = None  # the flows list is built again with the events
        self.refilter()
        for rows, row_id in ((self.events_list, event_id), (self.flows_list, flow_id)):
            pos = rows.index.position_of(row_id) if row_id is not None else None
            if pos is not None and not rows.follow:
                rows.move_to(pos)

    def recheck_matched_flows(self) -> None:
        """Correlation moves events while recording: a matched event's flow is absorbed by
        another, or a flowless match is adopted. The flows of the matches found so far, read
        again (once a second, for up to RECHECK_MATCHES matches)."""
        ids = self.events_list.index.ids
        if ids is None or not 0 < len(ids) <= RECHECK_MATCHES:
            return
        flows = self.session.flows_of(list(ids))
        if flows != self.matched_flows:
            self.matched_flows = flows
            self.flows_list.set_index(IdIndex(array("q", sorted(flows))))
            self.show_flows_title()

    def connection_state(self, stats: Stats) -> str:
        if self.recorder_pid is not None:
            return "recording" if store.pid_alive(self.recorder_pid) else "recorder stopped"
        if stats.stopped:
            return "finished"
        if stats.recorder_pid is not None and store.recorder_running(stats.recorder_pid):
            return "live"
        return "incomplete"

    def refresh_status(self) -> None:
        stats = self.session.stats()
        self.finished = stats.stopped and self.recorder_pid is None
        now = time.monotonic()
        self.rates.append((now, stats.total))
        first_t, first_n = self.rates[0]
        rate = (stats.total - first_n) / (now - first_t) if now > first_t else 0.0
        try:
            main = self.main
            status = main.query_one("#status", StatusBar)
        except (LookupError, NoMatches):
            return  # shutting down
        state = self.connection_state(stats)
        status.show(stats, state, rate, self.path.name, len(self.events_list.index))
        banner = main.query_one("#banner", Banner)
        if state == "recorder stopped":
            # Killed, or crashed: a status word alone went unnoticed while traffic flowed.
            banner.update(Text(f"NOT RECORDING: the recorder (pid {self.recorder_pid}) exited"))
            banner.add_class("-shown")
            if not self.recorder_gone_said:
                self.recorder_gone_said = True
                self.notify(
                    "the recorder exited: nothing new is recorded; what it wrote stays",
                    severity="error",
                    title="recording",
                    timeout=20,
                )
        elif stats.open_gap_since_ns is not None:
            banner.update(Text(f"NOT RECORDING since {clock(stats.open_gap_since_ns, date=True)}"))
            banner.add_class("-shown")
        else:
            banner.remove_class("-shown")
        if self.replay:
            self.refresh_timeline()

    # -- filtering -----------------------------------------------------------------------

    def current_filter(self) -> filters.Filter:
        terms = self.typed_filter.terms
        if self.flow_filter is not None:
            terms = (*terms, filters.Term("flow", value=self.flow_filter))
        return filters.Filter(terms, self.typed_filter.source)

    def apply_filter(self, text: str) -> bool:
        try:
            self.typed_filter = filters.parse(text)
        except FilterError as exc:
            self.notify(t.plain(exc), markup=False, severity="error", title="filter")
            return False
        bar = self.main.query_one("#filter", Input)
        if bar.value != text:
            bar.value = text
        self.refilter()
        return True

    def set_flow(self, flow_id: int | None) -> None:
        self.flow_filter = flow_id
        self.refilter()

    def refilter(self) -> None:
        self.scan_generation += 1
        # A scan still running belongs to the old filter: its batches are dropped.
        self.scanning = self.searching = False
        flt = self.current_filter()
        title = Text("events")
        if self.flow_filter is not None:
            title.append(f"  · flow #{self.flow_filter} (esc: all)", "cyan")
        self.events_title = title
        self.filter_title = Text()
        if self.typed_filter:
            self.filter_title = t.literal(self.typed_filter.source, "yellow")
        self.narrow_flows()
        events = self.events_list
        if not flt:
            events.set_index(self.session.full_index())
            self.show_matches()
            self.refresh_status()
            return
        index = IdIndex.empty_array()
        where = self.scan_where = filters.plan(self.session.db, flt)
        after = self.session.full_index().lo - 1
        if where.rows is not None:
            # An index bounds the matches: read them all now, through it.
            upto, limit = self.session.max_id(), where.rows + 1
        else:
            # The first few thousand ids are matched here, at once: a common filter fills
            # the screen without waiting for a thread; the worker takes the rest. Not past
            # the last id: what a recorder writes later would count as scanned already.
            upto, limit = min(after + SCAN_NOW, self.session.max_id()), SCAN_NOW
        ids, index.scanned_to, flows = scan(self.session.db, where, after, upto, limit)
        assert index.ids is not None
        index.ids.extend(ids)
        self.add_matched_flows(flows)
        events.set_index(index)
        self.scan_from = after
        if index.scanned_to < self.session.max_id():
            self.searching = True
            self.start_scan(index, self.scan_generation)
        else:
            self.refresh_status()  # matched at once: the shown count is final now
        self.show_matches()

    def narrow_flows(self) -> None:
        """The flows list follows the typed filter: only flows with a matching event, found
        by the same scans as the events. While a flow narrows the events the list stays as it
        was, the list that flow was picked from; one typed meanwhile shows every flow until
        the flow narrowing goes."""
        source = self.typed_filter.source if self.typed_filter else ""
        if self.matched_flows is not None and self.matched_source == source:
            return
        if not source or self.flow_filter is not None:
            if self.matched_flows is not None:
                self.matched_flows = None
                self.flows_list.set_index(self.flow_index)
        else:
            self.matched_flows = set()
            self.matched_source = source
            self.flows_list.set_index(IdIndex.empty_array())
        self.show_flows_title()

    def add_matched_flows(self, flows: list[int]) -> None:
        if self.matched_flows is None or self.flow_filter is not None:
            return
        new = sorted(set(flows) - self.matched_flows)
        if not new:
            return
        self.matched_flows.update(new)
        index = self.flows_list.index
        assert index.ids is not None
        if not index.ids or new[0] > index.ids[-1]:
            index.ids.extend(new)  # a live recording's new flows: the list grows at its end
            self.flows_list.grew()
        else:
            self.flows_list.set_index(IdIndex(array("q", sorted(self.matched_flows))))
        self.show_flows_title()

    def show_flows_title(self) -> None:
        title = Text("flows")
        if self.matched_flows is not None:
            title.append(f"  · {len(self.matched_flows):,} with a match", "green")
        self.main.query_one("#flows-title", Static).update(title)

    def start_scan(self, index: IdIndex, generation: int) -> None:
        self.scanning = True
        self.scan_upto = self.session.max_id()
        self.scan_worker(index, generation, self.scan_where, self.scan_upto)

    def show_matches(self) -> None:
        """The events title says what the filter found, and how far its scan has come."""
        if self.closing:
            return
        title = self.events_title.copy()
        found = len(self.events_list.index)
        if self.searching:
            index = self.events_list.index
            span = max(1, self.scan_upto - self.scan_from)
            done = min(99, max(0, (index.scanned_to - self.scan_from) * 100 // span))
            title.append(f"  · searching… {done}%, {found:,} found", "bold yellow")
            title.append(" (a new filter stops it)", "dim")
        elif self.current_filter():
            title.append(f"  · {found:,} match{'' if found == 1 else 'es'}", "green")
        if self.filter_title:
            title.append("  · ")
            title.append_text(self.filter_title)
        self.main.query_one("#events-title", Static).update(title)

    class ScanBatch(Message):
        """Ids a filter scan matched in one id range (one message per batch, never per row)."""

        def __init__(
            self, index: IdIndex, generation: int, ids: list[int], done_to: int, flows: list[int]
        ) -> None:
            super().__init__()
            self.index = index
            self.generation = generation
            self.ids = ids
            self.done_to = done_to
            self.flows = flows  # the flows those ids are in

    @work(thread=True, exclusive=True, group="scan", name="filter scan")
    def scan_worker(self, index: IdIndex, generation: int, where: filters.Where, upto: int) -> None:
        """Match the filter in id ranges, small first so the first screen comes quickly."""
        db = self.session.connect_again()
        worker = get_current_worker()
        chunk = SCAN_FIRST
        try:
            after = index.scanned_to
            while after < upto and not worker.is_cancelled:
                if generation != self.scan_generation:
                    break
                ids, done_to, flows = scan(db, where, after, min(upto, after + chunk), chunk)
                after = done_to
                chunk = min(SCAN_CHUNK, chunk * 4)
                self.post_message(self.ScanBatch(index, generation, ids, done_to, flows))
        finally:
            db.close()
            self.post_message(self.ScanBatch(index, generation, [], -1, []))

    def on_qixtui_app_scan_batch(self, batch: ScanBatch) -> None:
        if batch.generation != self.scan_generation or self.closing:
            return
        if batch.done_to < 0:
            self.scanning = self.searching = False
            self.refresh_status()
            self.show_matches()
            return
        assert batch.index.ids is not None
        batch.index.ids.extend(batch.ids)
        batch.index.scanned_to = batch.done_to
        if batch.ids:
            self.events_list.grew()
        self.add_matched_flows(batch.flows)
        self.show_matches()

    # -- the selected event ----------------------------------------------------------------

    def current_event(self) -> Event | None:
        return self.session.event(self._selected_id) if self._selected_id else None

    def select_event(self, event_id: int | None) -> None:
        """Show the event a moment later: a held key or a growing scan redraws it once."""
        self._selected_id = event_id
        if self._detail_timer is None:
            self._detail_timer = self.set_timer(DETAIL_DELAY_S, self._show_selected)

    @property
    def detail_pending(self) -> bool:
        """A selection is waiting to be drawn in the detail pane."""
        return self._detail_timer is not None

    def _show_selected(self) -> None:
        self._detail_timer = None
        if not self.closing:
            self.show_event(self._selected_id)

    def show_event(self, event_id: int | None) -> None:
        self._selected_id = event_id
        event = self.session.event(event_id) if event_id is not None else None
        links = self.session.links(event_id) if event_id is not None else []
        self.main.query_one(DetailPane).show(event, links, self.payload_mode)
        if event is not None and self.replay and event.id != self._replay_pick:
            # The user picked this event: the time cursor moves to it.
            self.cursor_ns = event.ts_ns
            self.refresh_timeline()
        if event is not None and self.replay and event.flow_id and not self.flows_list.has_focus:
            # Scrubbing through time, the flows list shows whose event is at the cursor.
            pos = self.flows_list.index.position_of(event.flow_id)
            if pos is not None:
                self.flows_list.move_to(pos)

    def action_payload_mode(self) -> None:
        self.payload_mode = PAYLOAD_MODES[(PAYLOAD_MODES.index(self.payload_mode) + 1) % 3]
        event = self.current_event()
        if event is not None:
            self.main.query_one(DetailPane).show_payload(event.payload, self.payload_mode)

    def action_follow(self) -> None:
        self.events_list.action_last()

    def action_open_flow(self) -> None:
        from qixtui.ui.flowscreen import FlowScreen

        # The flow the user points at: the flows list's cursor when that list has focus,
        # else the flow the events are narrowed to, else the selected event's.
        flows_list = self.flows_list
        flow_id = flows_list.row_id() if self.screen.focused is flows_list else self.flow_filter
        if flow_id is None:
            event = self.current_event()
            flow_id = event.flow_id if event else None
        if flow_id is None:
            flow_id = flows_list.row_id()
        if flow_id is None:
            self.notify("no flow selected", severity="warning")
            return
        self.push_screen(FlowScreen(flow_id))

    def extra_commands(self) -> list[tuple[str, Callable[[], object], str]]:
        """Palette entries a subclass adds (the demo's processes)."""
        return []

    def action_export(self) -> None:
        """The shown events as JSON Lines next to the recording."""
        stamp = dt.datetime.fromtimestamp(self.clock_ns() / 1e9).strftime("%Y%m%d-%H%M%S")
        out = self.path.with_name(f"{self.path.stem}-export-{stamp}.jsonl")
        self.export_worker(out, filters.build(self.current_filter()))

    @work(thread=True, name="export")
    def export_worker(self, out: Path, where: filters.Where) -> None:
        db = self.session.connect_again()
        count = 0
        try:
            with out.open("w", encoding="utf-8") as fh:
                rows = db.execute(
                    f"SELECT {store.EVENT_COLUMNS} FROM events WHERE {where.sql} ORDER BY id",
                    where.params,
                )
                for row in rows:
                    event = store.event_to_json(store.row_to_event(row))
                    fh.write(json_text(event) + "\n")
                    count += 1
        except OSError as exc:
            message = t.plain(f"export failed: {exc}")
            self.call_from_thread(
                self.notify, message, markup=False, severity="error", title="recording"
            )
            return
        finally:
            db.close()
        message = t.plain(f"exported {counted(count, 'event')} to {out.resolve()}")
        self.call_from_thread(self.notify, message, markup=False, title="recording")

    # -- replay --------------------------------------------------------------------------

    def action_publish(self) -> None:
        from qixtui.ui.publishscreen import PublishScreen, selection_filter

        selection = selection_filter(self.typed_filter.source, self.flow_filter)
        self.push_screen(
            PublishScreen(self.path, selection, self.session.meta(), self.publish_form)
        )

    def action_play(self) -> None:
        self.playing = not self.playing
        self._played_at = self.monotonic()
        if self.playing:
            self.events_list.follow = False
            if self.events_list.cursor >= len(self.events_list.index) - 1:
                self.events_list.move_to(0)
                self.cursor_ns = self.span[0]
        self.refresh_timeline()

    def action_speed(self) -> None:
        self.speed = SPEEDS[(SPEEDS.index(self.speed) + 1) % len(SPEEDS)]
        self.refresh_timeline()

    def action_jump(self) -> None:
        from qixtui.ui.flowscreen import JumpScreen

        self.push_screen(JumpScreen(), self.jump_to)

    def jump_to(self, answer: str | None) -> None:
        if not answer:
            return
        start, end = self.span
        answer = answer.strip()
        try:
            if answer.startswith("+"):
                target = start + filters.parse_duration_ns(answer[1:])
            elif TIME_OF_DAY.fullmatch(answer):  # on the recording's first day
                day = dt.datetime.fromtimestamp(start / 1e9).date()
                when = dt.datetime.combine(day, dt.time.fromisoformat(answer))
                target = int(when.timestamp() * 1e9)
            else:  # as --since takes it
                target = filters.parse_instant(answer)
        except (ValueError, FilterError):
            message = t.plain(f"not a time: {answer} (use +5s, 12:00:01 or 2026-11-26T12:00:01)")
            self.notify(message, markup=False, severity="error")
            return
        self.cursor_ns = min(max(target, start), end)
        if target != self.cursor_ns:
            where = "its start" if target < start else "its end"
            self.notify(
                t.plain(f"{answer} is outside the recording: at {where}, {clock(self.cursor_ns)}"),
                markup=False,
                severity="warning",
            )
        self.select_time(self.cursor_ns)
        self.refresh_timeline()

    def advance_replay(self) -> None:
        events = self.events_list
        if not len(events.index):  # a filter with no matches (yet), an empty recording
            self.playing = False
            self.refresh_timeline()
            return
        # Wall time since the last step, so late timer ticks neither slow nor speed replay.
        now = self.monotonic()
        elapsed, self._played_at = now - self._played_at, now
        before = events.cursor
        self.cursor_ns += round(elapsed * 1e9 * REPLAY_RATE[self.speed])
        if self.cursor_ns >= self.span[1]:
            self.cursor_ns = self.span[1]
            self.playing = False
        self.select_time(self.cursor_ns)
        if self.speed == "max" and events.cursor < before + MAX_EVENTS_PER_TICK:
            # Sparse stretches too go by quickly: never fewer events than this a tick.
            last = len(events.index) - 1
            events.move_to(min(last, before + MAX_EVENTS_PER_TICK))
            self._replay_pick = events.row_id()
            row = events.row(events.cursor)
            self.cursor_ns = max(self.cursor_ns, row[1] if row else self.cursor_ns)
            if events.cursor >= last:
                self.playing = False
        self.refresh_timeline()

    def select_time(self, ts_ns: int) -> None:
        """Move the cursor to the last shown event at or before ts_ns (binary search by page)."""
        events = self.events_list
        lo, hi = 0, len(events.index) - 1
        best = 0
        while lo <= hi:
            mid = (lo + hi) // 2
            row = events.row(mid)
            if row is not None and row[1] <= ts_ns:
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        self._replay_pick = events.row_id(best)
        if best != events.cursor:
            events.move_to(best)

    def action_step(self, direction: int) -> None:
        event = self.current_event()
        if event is None or event.flow_id is None:
            self.notify("the selected event has no flow", severity="warning")
            return
        target = self.session.next_in_flow(event.flow_id, event.id, direction > 0)
        if target is None:
            self.notify("no more events in this flow", severity="information")
            return
        pos = self.events_list.index.position_of(target)
        if pos is None:
            self.notify("that event is hidden by the filter", severity="warning")
            return
        self.events_list.follow = False
        self.events_list.move_to(pos)
        ts = self.session.ts_of(target)
        if ts is not None:
            self.cursor_ns = ts
        self.refresh_timeline()

    def refresh_timeline(self) -> None:
        if not self.replay:
            return
        self.span = self.session.time_span()
        self.main.query_one("#timeline", Timeline).show(
            self.span[0],
            self.span[1],
            self.cursor_ns,
            self.playing,
            self.speed,
            self.session.gaps(),
        )
