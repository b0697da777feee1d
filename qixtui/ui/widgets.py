"""The main screen's parts: row formats, the detail pane, the status bar and the replay timeline."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Footer, Static

from qixtui.core.model import Event, Flow, Gap
from qixtui.core.text import counted
from qixtui.ui import text as t
from qixtui.ui.data import Stats, clock, duration, human_bytes

STATUS_LOOK = {
    "completed": ("✔", "green"),
    "failed": ("✘", "bold red"),
    "compensated": ("↺", "yellow"),
    "stalled": ("◌", "magenta"),
    "running": ("●", "cyan"),
    "open": ("●", "cyan"),
}


def footer() -> Footer:
    """Each screen's keys in 80 columns: compact, and without the palette's ctrl+p (the help
    lists it). A footer that overflows also leaves stray letters at its right end."""
    return Footer(compact=True, show_command_palette=False)


def status_text(status: str) -> Text:
    symbol, colour = STATUS_LOOK.get(status, ("?", "dim"))
    return t.literal(f"{symbol} {status}", colour)


NARROW_EVENTS = 64  # below this many columns an event row drops its flow and size
NARROW_FLOWS = 34  # ... and a flow row its status word


def format_event(row: Any, width: int) -> Text:
    """id, ts_ns, subject, size, flow_id, payload head, reply -> one line."""
    _event_id, ts_ns, subject, size, flow_id, head, reply = row
    line = Text(no_wrap=True)
    line.append(clock(ts_ns), "dim")
    # Narrow (an 80-column terminal): the subject and the payload keep their room; the flow
    # and the size are in the detail pane below anyway.
    wide = width >= NARROW_EVENTS
    if wide:
        line.append(f" {'#' + str(flow_id) if flow_id is not None else '-':>6} ", "cyan")
        room = min(36, max(16, width // 3))
    else:
        line.append(" ")
        room = min(36, max(12, width - 26))
    line.append_text(t.literal(f"{t.plain(subject)[:room]:<{room}}", "bold"))
    line.append(f" {human_bytes(size):>6} " if wide else " ", "dim")
    line.append("↩ " if reply else "  ", "yellow")
    used = len(line.plain)
    line.append_text(t.literal(t.payload_preview(bytes(head or b""), max(0, width - used))))
    return line


def cut(text: Text) -> Text:
    """A cell that ends in … where its column cuts it."""
    text.overflow = "ellipsis"
    return text


def wrapped(value: str) -> Text:
    """A cell that wraps, anywhere in a word (ids have no spaces to wrap at); a newline or a
    tab in it shows escaped, as everywhere else."""
    text = t.literal(value)
    text.no_wrap = False
    return text


def format_flow(flow: Flow, width: int) -> Text:
    line = Text(no_wrap=True)
    line.append(f"#{flow.flow_id:<5} ", "cyan")
    symbol, colour = STATUS_LOOK.get(flow.status, ("?", "dim"))
    # Narrow: the symbol alone says the status, so the duration keeps its unit (139ms cut
    # to 139m read as minutes).
    status = f" {flow.status[:11]:<11}" if width >= NARROW_FLOWS else ""
    line.append_text(t.literal(f"{symbol}{status}", colour))
    line.append(f" {duration(flow.ended_ns - flow.started_ns):>7}", "")
    line.append(f" {flow.events:>5}ev ", "dim")
    if flow.orchestrated:
        line.append("⚙ ", "magenta")
    line.append_text(t.literal(",".join(flow.services)[:24], "bold"))
    line.append(" ")
    line.append_text(t.literal(" → ".join(flow.variant), "dim"))
    return line


class DetailPane(Vertical):
    """The selected event in full; read when selected, never before."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("x", "app.payload_mode", "JSON/text/hex", id="detail.payload_mode"),
    ]
    DEFAULT_CSS = """
    DetailPane { height: 45%; border-top: solid $primary; }
    DetailPane #detail-left { width: 1fr; }
    DetailPane #detail-meta { height: auto; }
    DetailPane DataTable { height: auto; max-height: 8; scrollbar-size-horizontal: 0; }
    DetailPane #payload-box { width: 1fr; border-left: solid $primary-darken-2; }
    DetailPane .caption { color: $text-muted; text-style: bold; }
    """

    def compose(self) -> ComposeResult:
        with Horizontal():
            with VerticalScroll(id="detail-left"):
                yield Static(Text("no event selected", style="dim"), id="detail-meta")
                yield Static(Text("headers"), classes="caption")
                yield DataTable(id="headers", cursor_type="row", zebra_stripes=True)
                yield Static(Text("why in this flow (links)"), classes="caption")
                yield DataTable(id="links", cursor_type="row")
            with VerticalScroll(id="payload-box"):
                yield Static(Text("payload"), id="payload-caption", classes="caption")
                yield Static(Text(""), id="payload")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shown: tuple[Event | None, list[tuple[str, str, int | None]], str] | None = None
        self.room = 0  # the width the tables' columns were laid out for

    def on_mount(self) -> None:
        self.lay_out_tables(56)

    def lay_out_tables(self, room: int) -> None:
        """Columns as wide as the pane allows, so a correlation id or a traceparent can be
        read whole when there is room. The widths follow the pane, never the rows: columns
        that resize to their rows make the pane jump as you scroll."""
        self.room = room
        name = max(12, min(20, room // 3))
        padding = 2  # a cell's, both sides together
        headers = self.query_one("#headers", DataTable)
        headers.clear(columns=True)
        headers.add_column("name", width=name)
        headers.add_column("value", width=max(12, room - name - 2 * padding))
        links = self.query_one("#links", DataTable)
        links.clear(columns=True)
        links.add_column("kind", width=9)
        links.add_column("key", width=max(12, room - 9 - 7 - 3 * padding))
        links.add_column("parent", width=7)

    def on_resize(self) -> None:
        # the tables' room: the left column's width, less its scroll bar
        room = self.query_one("#detail-left").size.width - 2
        if room > 0 and room != self.room:
            self.lay_out_tables(room)
            if self.shown is not None:
                self.show(*self.shown)

    def show(
        self, event: Event | None, links: list[tuple[str, str, int | None]], mode: str
    ) -> None:
        self.shown = (event, links, mode)
        meta = self.query_one("#detail-meta", Static)
        headers = self.query_one("#headers", DataTable)
        link_table = self.query_one("#links", DataTable)
        headers.clear()
        link_table.clear()
        if event is None:
            meta.update(Text("no event selected", style="dim"))
            self.query_one("#payload", Static).update(Text(""))
            return
        info = Text()
        info.append("subject  ", "dim")
        info.append_text(t.literal(event.subject, "bold"))
        info.append("\nreply-to ", "dim")
        info.append_text(t.literal(event.reply or "-"))
        info.append("\ntime     ", "dim")
        info.append(clock(event.ts_ns, date=True))
        info.append("\nevent    ", "dim")
        info.append(f"#{event.id}  flow {'#' + str(event.flow_id) if event.flow_id else '-'}")
        info.append(f"  {len(event.payload):,} bytes")
        meta.update(info)
        # Values wrap (a row as tall as its value): a correlation id or a traceparent is
        # read, and typed into a filter, whole.
        for name, value in event.headers or []:
            headers.add_row(cut(t.literal(name, "bold")), wrapped(value), height=None)
        for kind, key, parent in links:
            link_table.add_row(
                t.literal(kind), wrapped(key), Text(f"#{parent}" if parent else "-"), height=None
            )
        self.show_payload(event.payload, mode)

    def show_payload(self, payload: bytes, mode: str) -> None:
        if self.shown is not None:  # `x` comes here directly: a resize shows this mode again
            self.shown = (self.shown[0], self.shown[1], mode)
        body: Text | None = None
        shown = mode
        if mode == "json":
            body = t.payload_json(payload)
            if body is None:
                shown = t.not_json_why(payload)
                if not t.is_utf8(payload):
                    mode = "hex"  # binary: its bytes, not replacement characters
        if body is None and mode != "hex":
            body = t.payload_text(payload)
        if mode == "hex":
            # A dump row of n bytes takes 11 + 4n cells: as many bytes as fit (a multiple of
            # four, 16 at most), so rows never wrap in two.
            room = self.query_one("#payload-box").size.width - 2
            per_row = max(4, min(16, (room - 11) // 4 // 4 * 4)) if room > 0 else 16
            body = t.hex_dump(payload, per_row)
        caption = Text(f"payload · {shown} · {len(payload):,} bytes   ")
        caption.append("x: json/text/hex", "dim")
        self.query_one("#payload-caption", Static).update(caption)
        self.query_one("#payload", Static).update(body or Text(""))


class StatusBar(Static):
    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; color: $text; padding: 0 1; }
    """

    def show(self, stats: Stats, state: str, rate: float, path_name: str, shown: int) -> None:
        line = Text(no_wrap=True)
        colour = {"recording": "green", "live": "green", "finished": "cyan"}.get(state, "yellow")
        if stats.open_gap_since_ns is not None:
            state, colour = "NOT RECORDING", "bold red"
        line.append(f"● {state}", colour)
        if state in ("recording", "live"):  # a file no one writes to has no rate
            line.append(f"  {rate:,.0f} ev/s", "")
        line.append("  ")
        line.append(counted(stats.total, "event"), "bold")
        if shown != stats.total:
            line.append(f" ({shown:,} shown)", "dim")
        drops = "bold red" if stats.dropped else "dim"
        line.append(f"  drops {stats.dropped:,}", drops)
        line.append(f"  gaps {stats.gaps}", "bold red" if stats.gaps else "dim")
        line.append("  ")
        line.append_text(t.literal(path_name, "dim"))
        line.append(f" {human_bytes(stats.file_bytes)}", "dim")
        self.update(line)


class Timeline(Static):
    """Replay's time cursor over the whole recording, gaps in red."""

    DEFAULT_CSS = """
    Timeline { height: 2; background: $boost; padding: 0 1; }
    """

    def show(
        self,
        start_ns: int,
        end_ns: int,
        cursor_ns: int,
        playing: bool,
        speed: str,
        gaps: list[Gap],
    ) -> None:
        width = max(10, self.size.width - 2)
        span = max(1, end_ns - start_ns)
        head = Text(no_wrap=True)
        head.append("▶ playing" if playing else "⏸ paused", "bold green" if playing else "bold")
        head.append(f"  {speed}  ", "bold cyan")
        head.append(clock(cursor_ns), "bold")
        head.append(f"  +{duration(max(0, cursor_ns - start_ns))} of {duration(span)}", "dim")
        head.append("   space play · t jump · s speed · n/p flow step", "dim")  # keys first
        head.truncate(width, overflow="ellipsis")  # one line: the bar is the second
        bar = Text(no_wrap=True)
        cells = ["─"] * width
        styles = ["dim"] * width
        for gap in gaps:
            g_end = gap.end_ns if gap.end_ns is not None else end_ns
            a = int((gap.start_ns - start_ns) * (width - 1) / span)
            b = int((g_end - start_ns) * (width - 1) / span)
            for c in range(max(0, a), min(width, b + 1)):
                cells[c], styles[c] = "░", "bold red"
        pos = min(width - 1, max(0, int((cursor_ns - start_ns) * (width - 1) / span)))
        cells[pos], styles[pos] = "█", "bold yellow"
        for ch, style in zip(cells, styles, strict=True):
            bar.append(ch, style)
        self.update(head + Text("\n") + bar)
