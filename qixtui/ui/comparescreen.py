"""Choreography against orchestration on one screen: the figures, the two process graphs,
and two flows' waterfalls on a shared time axis with their diff."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import msgspec
from rich import box
from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Static, TabbedContent, TabPane, Tabs

from qixtui.core import compare as cmp
from qixtui.core import flowfile, store
from qixtui.core.discover import Discovery, Edge, discover
from qixtui.core.flowdiff import DiffRow, FlowDiff, Step, diff_flows
from qixtui.core.model import Event, Flow, Link
from qixtui.core.rules import Rules
from qixtui.core.saga import SagaDef
from qixtui.core.text import counted
from qixtui.core.waterfall import Waterfall, layout
from qixtui.ui import text as t
from qixtui.ui.app import QixtuiApp
from qixtui.ui.data import IdIndex, duration
from qixtui.ui.rowlist import RowList
from qixtui.ui.widgets import footer, format_flow, status_text

LANE_LABEL = 16
DIFF_LABEL = 40
ROW_LOOK = {
    "same": ("=", "dim"),
    "missing": ("−", "bold red"),
    "extra": ("+", "bold magenta"),
    "moved": ("↔", "bold yellow"),
}


# --- what the screen shows, computed off the UI thread -----------------------------------------


@dataclass
class Loaded:
    result: cmp.Comparison
    discovered: Discovery
    plan: SagaDef | None
    plan_source: str
    picks: list[int]  # the flows to hold against each other first


def default_picks(result: cmp.Comparison, flows: list[Flow]) -> list[int]:
    """A completed flow of each style when there are both, else the first two flows."""
    status = {f.flow_id: f.status for f in flows}
    picks: list[int] = []
    for side in (result.choreography, result.orchestration):
        done = [fid for fid in side.flow_ids if status.get(fid) == "completed"]
        if done or side.flow_ids:
            picks.append((done or side.flow_ids)[0])
    for flow in flows:
        if len(picks) >= 2:
            break
        if flow.flow_id not in picks:
            picks.append(flow.flow_id)
    return picks[:2]


def load(path: Path, saga: SagaDef | None, steps: cmp.SagaSteps | None, source: str) -> Loaded:
    db = store.open_session(path, readonly=True)
    try:
        try:
            rules = flowfile.session_rules(db)
        except msgspec.MsgspecError:
            rules = Rules()
        lens = cmp.Lens.from_rules(rules)
        if saga is None:
            saga, source = cmp.session_saga(db)
        markers = cmp.Markers.from_rules(rules, (), cmp.compensation_requests(saga))
        flows, events, links = cmp.load_scope(db)
        result = cmp.compare(flows, events, links, lens=lens, markers=markers, saga=steps)
        choreographed = set(result.choreography.flow_ids)
        chor = [f for f in flows if f.flow_id in choreographed]
        found = discover(cmp.traces_of(chor, events, links, lens))
        return Loaded(result, found, saga, source, default_picks(result, flows))
    finally:
        db.close()


# --- drawing -----------------------------------------------------------------------------------


def _style_cell(lines: list[str]) -> Text:
    return t.literal("\n".join(lines) or "-", multiline=True)


def render_figures(result: cmp.Comparison) -> Table:
    table = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False)
    table.add_column("figure", style="dim", no_wrap=True)
    table.add_column("choreography", ratio=1)
    table.add_column("orchestration", ratio=1)
    c, o = result.choreography, result.orchestration
    for label, a, b in cmp.figure_rows(result):
        if label == "who talks to whom":
            a_lines = [f"{e.source} → {e.target} ×{e.count} ({e.via})" for e in c.edges]
            b_lines = [f"{e.source} → {e.target} ×{e.count} ({e.via})" for e in o.edges]
            table.add_row(Text(label), _style_cell(a_lines), _style_cell(b_lines))
        elif label == "critical path (top)":
            a_lines = [f"{x.share:>4.0%} {x.step}" for x in c.critical_path[:3]]
            b_lines = [f"{x.share:>4.0%} {x.step}" for x in o.critical_path[:3]]
            table.add_row(Text(label), _style_cell(a_lines), _style_cell(b_lines))
        else:
            table.add_row(Text(label), t.literal(a), t.literal(b))
    return table


def _activity_order(found: Discovery) -> list[str]:
    """Activities in the order the most frequent variants meet them."""
    order: list[str] = []
    for variant in found.variants:
        for step in variant.steps:
            if step not in order:
                order.append(step)
    return order


def render_discovered(found: Discovery) -> Text:
    """The directly-follows graph as an edge list under each activity."""
    out = Text(no_wrap=True)
    out.append(
        f"discovered choreography · {counted(found.flows, 'flow')} · "
        f"{counted(len(found.variants), 'variant')}\n",
        "bold",
    )
    if not found.flows:
        out.append("no choreographed flows in this session\n", "dim")
        return out
    out.append("▶ start\n", "green")
    starts = sorted(found.starts.items(), key=lambda kv: -kv[1])
    for n, (name, count) in enumerate(starts):
        out.append("  └─▶ " if n == len(starts) - 1 else "  ├─▶ ", "green")
        out.append_text(t.literal(name))
        out.append(f"  ×{count}\n", "dim")
    edges_from: dict[str, list[Edge]] = {}
    for edge in found.edges:
        edges_from.setdefault(edge.source, []).append(edge)
    for name in _activity_order(found):
        out.append("■ ", "cyan")
        out.append_text(t.literal(name, "bold"))
        out.append(f" ({found.activities[name]})\n", "dim")
        outgoing = [(e.target, e.count, e.median_ns) for e in edges_from.get(name, [])]
        if name in found.ends:
            outgoing.append(("■ end", found.ends[name], -1))
        for n, (target, count, median) in enumerate(outgoing):
            out.append("  └─▶ " if n == len(outgoing) - 1 else "  ├─▶ ", "cyan")
            out.append_text(t.literal(target, "green" if median < 0 else ""))
            out.append(f"  ×{count}", "dim")
            if median >= 0:
                out.append(f"  p50 {duration(median)}", "dim")
            out.append("\n")
    return out


def render_plan(saga: SagaDef | None, source: str) -> Text:
    """The saga's steps as boxes joined by arrows, each with its undo beside it."""
    out = Text(no_wrap=True)
    if saga is None:
        out.append("saga plan\n", "bold")
        out.append_text(t.literal(source, "dim"))
        return out
    out.append("saga plan · ", "bold")
    out.append_text(t.literal(saga.name, "bold"))
    out.append(f" · {counted(len(saga.steps), 'step')} · from ", "bold")
    out.append_text(t.literal(source, "dim"))
    out.append("\n ● start\n", "green")
    boxes: list[list[tuple[str, str]]] = []
    for i, step in enumerate(saga.steps, start=1):
        lines = [(f"{i} {step.name}" + ("  ◆ pivot" if step.pivot else ""), "bold")]
        lines.append((f"→ {step.request}", ""))
        if step.compensate is not None:
            lines.append((f"↺ {step.compensate.request}", "magenta"))
        boxes.append(lines)
    inner = max(len(t.plain(text)) for lines in boxes for text, _ in lines) + 2
    for step, lines in zip(saga.steps, boxes, strict=True):
        out.append(" │\n ▼\n", "dim")
        edge = "bold yellow" if step.pivot else "cyan"
        out.append("┌" + "─" * inner + "┐\n", edge)
        for text, style in lines:
            out.append("│ ", edge)
            out.append_text(t.literal(f"{t.plain(text):<{inner - 1}}", style))
            out.append("│\n", edge)
        out.append("└" + "─" * inner + "┘\n", edge)
    out.append(" │\n ● done\n", "green")
    out.append("a failed step runs the ↺ of those done, newest first;\n", "dim")
    out.append("after the ◆ pivot there is no undo", "dim")
    return out


def _marks(diff: FlowDiff) -> tuple[dict[int, str], dict[int, str]]:
    """event id -> mark, for A's and B's bars."""
    a: dict[int, str] = {}
    b: dict[int, str] = {}
    for row in diff.rows:
        if row.kind == "missing" and row.a:
            a[row.a.event_id] = "missing"
        elif row.kind == "extra" and row.b:
            b[row.b.event_id] = "extra"
        elif row.b is not None:
            if row.slower:
                b[row.b.event_id] = "slower"
            elif row.kind == "moved":
                b[row.b.event_id] = "moved"
    return a, b


MARK_LOOK = {
    "missing": ("−", "bold red"),
    "extra": ("+", "bold magenta"),
    "slower": ("▲", "bold red"),
    "moved": ("↔", "bold yellow"),
}


def _lanes(out: Text, fall: Waterfall, marks: dict[int, str], width: int, scale: float) -> None:
    def col(ns: int) -> int:
        return min(width - 1, max(0, round((ns - fall.start_ns) * scale)))

    for lane_no, lane in enumerate(fall.lanes):
        cells = [" "] * width
        styles = [""] * width
        for bar in fall.bars:
            if bar.lane != lane_no:
                continue
            mark = marks.get(bar.event_id) or (marks.get(bar.reply_id) if bar.reply_id else None)
            glyph, style = MARK_LOOK[mark] if mark else ("●", "cyan")
            start, end = col(bar.start_ns), col(bar.end_ns)
            if bar.reply_id is not None and end > start:
                cells[start], styles[start] = "├", style
                for c in range(start + 1, end):
                    cells[c], styles[c] = "─", style
                cells[end], styles[end] = glyph if mark else "┤", style
            else:
                cells[start], styles[start] = glyph, style
        out.append_text(t.literal(f"  {t.plain(lane)[: LANE_LABEL - 3]:<{LANE_LABEL - 2}}"))
        for ch, style in zip(cells, styles, strict=True):
            out.append(ch, style)
        out.append("\n")


def _flow_title(tag: str, flow: Flow | None, flow_id: int) -> Text:
    line = Text(f"{tag} #{flow_id} ", "bold magenta" if tag == "B" else "bold cyan")
    if flow is not None:
        line.append(" ")
        line.append_text(status_text(flow.status))
        line.append(f"  {'orchestrated ⚙' if flow.orchestrated else 'choreographed'}", "dim")
        line.append(
            f"  {duration(flow.ended_ns - flow.started_ns)}  {counted(flow.events, 'event')}"
        )
    return line


def render_pair(
    flows: list[tuple[Flow | None, int, list[Event], list[Link]]],
    diff: FlowDiff,
    rules: Rules,
    width: int,
) -> Text:
    """Both flows' waterfalls, each from its own start, on one time scale."""
    width = max(20, width - LANE_LABEL)
    falls = [layout(events, links, rules) for _, _, events, links in flows]
    longest = max(f.end_ns - f.start_ns for f in falls) or 1
    out = Text(no_wrap=True)
    axis = [" "] * width
    for col, label in ((0, "+0"), (width // 2, "+" + duration(longest // 2))):
        axis[col : col + len(label)] = list(label)
    last = "+" + duration(longest)
    axis[width - len(last) :] = list(last)
    out.append(" " * LANE_LABEL + "".join(axis) + "\n", "dim")
    out.append(" " * LANE_LABEL + "┴" + "─" * (width - 2) + "┴\n", "dim")
    marks = _marks(diff)
    for n, (flow, flow_id, _events, _links) in enumerate(flows):
        out.append_text(_flow_title("AB"[n], flow, flow_id))
        out.append("\n")
        _lanes(out, falls[n], marks[n], width, (width - 1) / longest)
    out.append("● event  ├─┤ request→reply  ", "dim")
    for key in ("extra", "missing", "slower", "moved"):
        glyph, style = MARK_LOOK[key]
        out.append(glyph, style)
        label = {"extra": "extra in B", "missing": "missing from B"}.get(key, f"{key} in B")
        out.append(f" {label}  ", "dim")
    return out


def _ns(ns: int) -> str:
    return duration(ns) if ns else "0"


def _timing(step: Step | None) -> str:
    if step is None:
        return f" {'·':>8} {'':>8}"
    return f" {'+' + _ns(step.offset_ns):>8} {_ns(step.took_ns):>8}"


def render_diff(diff: FlowDiff) -> Text:
    out = Text(no_wrap=True)
    out.append(f"diff A #{diff.a_flow} → B #{diff.b_flow}: ", "bold")
    counts = [
        (diff.count("missing"), "missing", "bold red"),
        (diff.count("extra"), "extra", "bold magenta"),
        (diff.count("moved"), "out of order", "bold yellow"),
        (diff.slower, "slower", "bold red"),
        (diff.payload_changes, "payload changes", "bold cyan"),
    ]
    out.append(", ".join(f"{n} {what}" for n, what, _ in counts) + "\n")
    head = f"   {'step':<{DIFF_LABEL}} {'A at':>8} {'took':>8} │ {'B at':>8} {'took':>8} │ Δ took\n"
    out.append(head, "dim")
    for row in diff.rows:
        _diff_row(out, row)
    return out


def _diff_row(out: Text, row: DiffRow) -> None:
    glyph, style = ROW_LOOK[row.kind]
    out.append(f" {glyph} ", style)
    out.append_text(t.literal(f"{t.plain(row.label)[:DIFF_LABEL]:<{DIFF_LABEL}}"))
    out.append(f"{_timing(row.a)} │{_timing(row.b)} │ ")
    if row.delta_ns is not None:
        sign = "+" if row.delta_ns >= 0 else "−"
        out.append(f"{sign}{_ns(abs(row.delta_ns))}", "bold red" if row.slower else "")
        if row.slower:
            out.append(" ▲ slower", "bold red")
    out.append("\n")
    for field in row.fields:
        out.append("       ")
        out.append_text(t.literal(field.path or "(payload)", "cyan"))
        out.append(": ")
        out.append_text(t.literal(field.a if field.a is not None else "(none)", "red"))
        out.append(" → ")
        out.append_text(t.literal(field.b if field.b is not None else "(none)", "green"))
        out.append("\n")
    if row.more_fields:
        out.append(f"       … {row.more_fields} more fields differ\n", "dim")


# --- the screen --------------------------------------------------------------------------------


class CompareScreen(Screen[None]):
    """| Key | Action |
    |-----|--------|
    | 1 / 2 / 3 | the styles' figures / their process graphs / two flows and their diff |
    | m | mark the highlighted flow: A, then B; once both are marked, a new A |
    | r | read the flows again (a recording goes on meanwhile) |
    | escape | back to the main screen |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back", id="compare.back"),
        Binding("1", "show_tab('styles')", "Figures", id="compare.styles"),
        Binding("2", "show_tab('graphs')", "Graphs", id="compare.graphs"),
        Binding("3", "show_tab('pair')", "Two flows", id="compare.pair"),
        Binding("m", "mark", "Mark A/B", id="compare.mark"),
        Binding("r", "read_again", "Read again", id="compare.read_again"),
    ]
    DEFAULT_CSS = """
    CompareScreen #compare-head { height: 1; background: $primary-background; padding: 0 1; }
    CompareScreen TabbedContent { height: 1fr; }
    CompareScreen ContentSwitcher { height: 1fr; }
    CompareScreen TabPane { height: 1fr; padding: 0; }
    CompareScreen #graph-row { height: auto; }
    CompareScreen #chor-graph { width: 1fr; padding: 0 1; }
    CompareScreen #saga-graph { width: 1fr; padding: 0 1; border-left: solid $primary; }
    CompareScreen #figures { padding: 0 1; }
    CompareScreen #conformance { padding: 0 1; height: auto; }
    CompareScreen #compare-flows { height: 7; border-bottom: solid $primary; }
    CompareScreen #pair-body { scrollbar-gutter: stable; }
    CompareScreen #pair-waterfall { padding: 0 1; border-bottom: solid $primary; }
    CompareScreen #pair-diff { padding: 0 1; }
    """

    def __init__(
        self,
        saga: SagaDef | None = None,
        steps: cmp.SagaSteps | None = None,
        saga_source: str = "",
    ) -> None:
        super().__init__()
        self.saga = saga
        self.steps = steps
        self.saga_source = saga_source
        self.marks: list[int] = []
        self.loaded: Loaded | None = None
        self.diff: FlowDiff | None = None
        self.read_at = ""  # while a recorder writes, the time the figures were read
        self.reads = 0  # reads started: only the last one's figures are shown (r, r, ...)

    @property
    def qapp(self) -> QixtuiApp:
        app = self.app
        assert isinstance(app, QixtuiApp)
        return app

    def compose(self) -> ComposeResult:
        yield Static(Text("comparing… (reading every flow)"), id="compare-head")
        with TabbedContent(initial="styles"):
            with TabPane("1 Figures", id="styles"), VerticalScroll():
                yield Static(id="figures")
                yield Static(id="conformance")
            with (
                TabPane("2 Process graphs", id="graphs"),
                VerticalScroll(),
                Horizontal(id="graph-row"),
            ):
                yield Static(id="chor-graph")
                yield Static(id="saga-graph")
            with TabPane("3 Two flows", id="pair"):
                yield RowList(self.qapp.fetch_flows, self.format_row, id="compare-flows")
                with VerticalScroll(id="pair-body"):
                    yield Static(id="pair-waterfall")
                    yield Static(id="pair-diff")
        yield footer()

    def on_mount(self) -> None:
        rows = self.query_one("#compare-flows", RowList)
        rows.follow = False
        self.read_flows()
        rows.move_to(0)

    def read_flows(self) -> None:
        """The flows as they are now; a growing recording gets the time, so figures that
        stay put are not taken for the live state."""
        app = self.qapp
        self.query_one("#compare-flows", RowList).set_index(
            IdIndex(array("q", app.session.flow_ids()))
        )
        live = app.connection_state(app.session.stats()) in ("recording", "live")
        self.read_at = time.strftime("%H:%M:%S") if live else ""
        self.reads += 1
        self.compute(app.path, self.reads)

    def action_read_again(self) -> None:
        self.query_one("#compare-head", Static).update(Text("comparing… (reading every flow)"))
        self.read_flows()

    def format_row(self, flow: Flow, width: int) -> Text:
        tag = "A" if self.marks[:1] == [flow.flow_id] else "B" if flow.flow_id in self.marks else ""
        line = Text(f"{tag:<2}", "bold magenta" if tag == "B" else "bold cyan")
        line.append_text(format_flow(flow, width - 2))
        return line

    def compute(self, path: Path, read: int) -> None:
        """Read every flow in a daemon thread of its own: on a large recording this takes
        seconds that quitting must not wait for (a worker's thread is joined at exit)."""

        app = self.app

        def run() -> None:
            try:
                loaded = load(path, self.saga, self.steps, self.saga_source or "--saga")
            except (sqlite3.Error, store.SessionError) as exc:
                message = str(exc)
            except Exception as exc:  # said on screen, not lost with the thread
                message = f"{type(exc).__name__}: {exc}"
            else:
                with contextlib.suppress(RuntimeError):  # the app has ended meanwhile
                    app.call_from_thread(self.show_loaded, loaded, read)
                return
            with contextlib.suppress(RuntimeError):
                app.call_from_thread(self.show_failure, message, read)

        threading.Thread(target=run, name="compare styles", daemon=True).start()

    def show_failure(self, message: str, read: int) -> None:
        if self.is_attached and read == self.reads:  # not closed, nor read again, meanwhile
            self.query_one("#compare-head", Static).update(t.literal(f"cannot compare: {message}"))

    def show_loaded(self, loaded: Loaded, read: int) -> None:
        if not self.is_attached or read != self.reads:  # closed, or read again, meanwhile
            return
        self.loaded = loaded
        result = loaded.result
        head = Text(no_wrap=True)
        if self.read_at:
            head.append(f"as of {self.read_at} (r: again)  ", "yellow")
        head.append("choreography ", "bold")
        head.append(counted(result.choreography.flows, "flow"), "cyan")
        head.append("  vs  orchestration ", "bold")
        head.append(counted(result.orchestration.flows, "flow"), "magenta")
        head.append_text(t.literal(f"   {result.split}", "dim"))
        self.query_one("#compare-head", Static).update(head)
        self.query_one("#figures", Static).update(render_figures(result))
        conf = Text()
        if result.conformance is not None:
            conf = t.literal(
                "\n".join(cmp.conformance_lines(result.conformance, False)), multiline=True
            )
        self.query_one("#conformance", Static).update(conf)
        self.query_one("#chor-graph", Static).update(render_discovered(loaded.discovered))
        self.query_one("#saga-graph", Static).update(render_plan(loaded.plan, loaded.plan_source))
        if not self.marks:
            self.marks = list(loaded.picks)
        self.show_pair()

    @on(TabbedContent.TabActivated)
    def tab_shown(self, message: TabbedContent.TabActivated) -> None:
        if message.pane.id == "pair":
            self.call_after_refresh(self.show_pair)  # its width is known once it is laid out

    def action_show_tab(self, tab: str) -> None:
        tabs = self.query_one(TabbedContent)
        if tab == "pair":
            tabs.active = tab
            self.query_one("#compare-flows", RowList).focus()
            return
        # Focus must leave the flows list first: focus that stays in a pane brings the pane
        # back (TabbedContent shows the pane holding the focused widget).
        tabs.query_one(Tabs).focus()
        tabs.active = tab

    def action_mark(self) -> None:
        flow_id = self.query_one("#compare-flows", RowList).row_id()
        if flow_id is None:
            return
        if len(self.marks) == 2:
            self.marks = [flow_id]  # a new pair: this one is A
        elif self.marks == [flow_id]:
            self.marks = []
        else:
            self.marks.append(flow_id)
        self.query_one("#compare-flows", RowList).invalidate()
        self.show_pair()

    def session_rules(self) -> Rules:
        try:
            return flowfile.session_rules(self.qapp.session.db)
        except msgspec.MsgspecError:
            return Rules()

    def on_resize(self) -> None:
        self.show_pair()

    def show_pair(self) -> None:
        if len(self.marks) < 2:
            chosen = f"A #{self.marks[0]}" if self.marks else "no flow"
            note = Text(f"{chosen} marked: press m on another flow to hold it against", "dim")
            self.query_one("#pair-waterfall", Static).update(note)
            self.query_one("#pair-diff", Static).update(Text(""))
            self.diff = None
            return
        session = self.qapp.session
        parts = []
        for flow_id in self.marks:
            events = session.flow_events(flow_id)
            links = [Link(*row) for row in session.flow_links(flow_id)]
            parts.append((session.flow(flow_id), flow_id, events, links))
        (_, a_id, a_events, a_links), (_, b_id, b_events, b_links) = parts
        self.diff = diff_flows(a_id, a_events, a_links, b_id, b_events, b_links)
        drawn = self.query_one("#pair-waterfall", Static).content_region.width
        width = drawn if drawn > 0 else self.size.width - 6  # a hidden tab has no size yet
        rules = self.session_rules()
        pair = render_pair(parts, self.diff, rules, width)
        self.query_one("#pair-waterfall", Static).update(pair)
        self.query_one("#pair-diff", Static).update(render_diff(self.diff))


class CompareApp(QixtuiApp):
    """A recording opened on its compare screen (`qixtui compare FILE --tui`)."""

    def __init__(
        self,
        path: Path,
        saga: SagaDef | None = None,
        steps: cmp.SagaSteps | None = None,
        saga_source: str = "",
    ) -> None:
        super().__init__(path, replay=True)
        self.compare_args = (saga, steps, saga_source)

    def on_mount(self) -> None:
        open_compare(self)


def open_compare(app: object) -> None:
    """Push the compare screen, with the saga the command line gave when there was one."""
    assert isinstance(app, QixtuiApp)
    args = app.compare_args if isinstance(app, CompareApp) else (None, None, "")
    app.push_screen(CompareScreen(*args))
