"""A list of many rows drawn with the Line API: only visible rows are read, a page at a time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from rich.segment import Segment
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.geometry import Size
from textual.message import Message
from textual.reactive import var
from textual.scroll_view import ScrollView
from textual.strip import Strip

from qixtui.ui.data import IdIndex

PAGE = 128
NEAR = 16  # ids this close share one read: a few rows too many beat another query

# Reads the rows whose ids fall in [first, last]; returns them by id.
Fetch = Callable[[int, int], dict[int, Any]]
# Draws one row into at most `width` cells.
Format = Callable[[Any, int], Text]


class RowList(ScrollView, can_focus=True):
    """Rows by position over an IdIndex, with a cursor and tail-follow.

    | Key | Action |
    |-----|--------|
    | up/down, pageup/pagedown, home | move the cursor (turns follow off) |
    | end | last row, follow the tail again |
    | enter | select the row |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "move(-1)", "Up", show=False, id="rows.up"),
        Binding("down", "move(1)", "Down", show=False, id="rows.down"),
        Binding("pageup", "page(-1)", "Page up", show=False, id="rows.page_up"),
        Binding("pagedown", "page(1)", "Page down", show=False, id="rows.page_down"),
        Binding("home", "first", "First", show=False, id="rows.first"),
        Binding("end", "last", "End: follow", show=False, id="rows.follow"),
        Binding("enter", "select", "Select", show=False, id="rows.select"),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {"rowlist--cursor"}
    DEFAULT_CSS = """
    RowList { background: $surface; overflow-x: hidden; }  /* rows are cut to the width */
    RowList > .rowlist--cursor { background: $accent 40%; }
    RowList:focus > .rowlist--cursor { background: $accent; color: $text; }
    """

    follow: var[bool] = var(True)
    cursor: var[int] = var(-1, always_update=True)

    class Highlighted(Message):
        """The cursor moved to a row."""

        def __init__(self, rows: RowList, row_id: int | None) -> None:
            super().__init__()
            self.rows = rows
            self.row_id = row_id

        @property
        def control(self) -> RowList:
            return self.rows

    class Selected(Highlighted):
        """Enter or a click on a row."""

    def __init__(
        self, fetch: Fetch, fmt: Format, *, name: str | None = None, id: str | None = None
    ) -> None:
        super().__init__(name=name, id=id)
        self.fetch = fetch
        self.fmt = fmt
        self.index = IdIndex()
        self._pages: LRUCache[int, dict[int, Any]] = LRUCache(64)
        self._strips: LRUCache[tuple[int, int, bool, int], Strip] = LRUCache(512)
        self._cached_len = 0  # how many rows the index had when the caches were filled

    # -- data --------------------------------------------------------------------------

    def set_index(self, index: IdIndex) -> None:
        """Show another set of rows (a new filter): the cursor goes to the end when following,
        else to the selected row or the nearest one before it."""
        selected = self.row_id()
        self.index = index
        self.invalidate()
        self._resize()
        if self.follow:
            self._to_end()
        elif len(index):
            pos = index.position_at_or_before(selected) if selected is not None else 0
            self.move_to(max(0, pos))
        else:
            self.cursor = -1

    def grew(self) -> None:
        """The index gained rows at the end; keep the tail in view when following. Rows already
        drawn stay cached (a tailed list grows ten times a second): only the page that was
        partial is read again."""
        if self._cached_len:
            self._pages.discard((self._cached_len - 1) // PAGE)
        self._cached_len = len(self.index)
        self._resize()
        if self.follow:
            self._to_end()
        elif self.cursor < 0 and len(self.index):
            self.cursor = 0  # the first rows of a new filter: select the first
        else:
            self.refresh()

    def invalidate(self) -> None:
        """Read and draw every row again: rows changed (a flow's status, an event's flow)."""
        self._pages.clear()
        self._strips.clear()
        self._cached_len = len(self.index)
        self.refresh()

    def _resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self.index))

    def row_id(self, pos: int | None = None) -> int | None:
        pos = self.cursor if pos is None else pos
        return self.index[pos] if 0 <= pos < len(self.index) else None

    def row(self, pos: int) -> Any:
        page = pos // PAGE
        rows = self._pages.get(page)
        if rows is None:
            first = page * PAGE
            rows = self._read(first, min(len(self.index), first + PAGE) - 1)
            self._pages[page] = rows
        return rows.get(self.index[pos])

    def _read(self, first: int, last: int) -> dict[int, Any]:
        """Rows at positions first..last, one read per run of nearby ids: a rare filter's page
        spans most of the file and must not read the rows between its matches."""
        rows: dict[int, Any] = {}
        start = prev = self.index[first]
        for pos in range(first + 1, last + 1):
            row_id = self.index[pos]
            if row_id - prev > NEAR:
                rows.update(self.fetch(start, prev))
                start = row_id
            prev = row_id
        rows.update(self.fetch(start, prev))
        return rows

    # -- drawing -------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        pos = round(self.scroll_offset.y) + y
        width = self.size.width
        style = self.rich_style
        if pos >= len(self.index):
            return Strip.blank(width, style)
        selected = pos == self.cursor
        key = (pos, self.index[pos], selected, width)
        strip = self._strips.get(key)
        if strip is None:
            row = self.row(pos)
            text = self.fmt(row, width) if row is not None else Text("…", style="dim")
            text.truncate(width, overflow="ellipsis", pad=True)
            text.no_wrap = True
            if selected:
                text.stylize(self.get_component_rich_style("rowlist--cursor"))
            segments = [
                Segment(s.text, style + s.style if s.style else style)
                for s in text.render(self.app.console)
            ]
            strip = Strip(segments).crop_extend(0, width, style)
            self._strips[key] = strip
        return strip.apply_offsets(0, pos)

    def on_focus(self) -> None:
        self.invalidate()  # the cursor's look depends on focus

    def on_blur(self) -> None:
        self.invalidate()

    def on_resize(self) -> None:
        self._strips.clear()
        self._resize()

    # -- cursor and follow -----------------------------------------------------------------

    def watch_cursor(self, old: int, new: int) -> None:
        self.refresh()
        self.post_message(self.Highlighted(self, self.row_id(new)))

    # Scrolls are forced: right after the list grows past one screen, Textual has not laid
    # out its scrollbar yet and refuses to scroll, leaving the cursor's row out of view.

    def _to_end(self) -> None:
        if len(self.index):
            self.cursor = len(self.index) - 1
        self.scroll_end(animate=False, immediate=True, x_axis=False, force=True)

    def _show_cursor(self) -> None:
        top = round(self.scroll_offset.y)
        height = max(1, self.scrollable_content_region.height)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True, force=True)
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False, immediate=True, force=True)

    def move_to(self, pos: int) -> None:
        if not len(self.index):
            return
        pos = max(0, min(len(self.index) - 1, pos))
        self.follow = pos == len(self.index) - 1 and self.follow
        self.cursor = pos
        self._show_cursor()

    def action_move(self, delta: int) -> None:
        if delta < 0:
            self.follow = False
        self.move_to(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        if direction < 0:
            self.follow = False
        height = max(1, self.scrollable_content_region.height)
        self.move_to(self.cursor + direction * height)
        self.scroll_to(y=self.scroll_offset.y + direction * height, animate=False, immediate=True)

    def action_first(self) -> None:
        self.follow = False
        self.move_to(0)

    def action_last(self) -> None:
        self.follow = True
        self._to_end()

    def action_select(self) -> None:
        self.post_message(self.Selected(self, self.row_id()))

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if new < old and new < self.max_scroll_y:
            self.follow = False  # the user looked back: stop pulling them to the tail

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        pos = round(self.scroll_offset.y) + offset.y
        if 0 <= pos < len(self.index):
            self.follow = False
            self.cursor = pos
            self.post_message(self.Selected(self, self.row_id(pos)))
