"""One flow in depth: the waterfall, the causal tree and its events; and the jump-to-time prompt."""

from __future__ import annotations

from array import array
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Input, Static, Tree
from textual.widgets.tree import TreeNode

from qixtui.core import flowfile
from qixtui.core.model import Event
from qixtui.core.text import counted
from qixtui.ui import text as t
from qixtui.ui.data import IdIndex, Session, duration
from qixtui.ui.rowlist import RowList
from qixtui.ui.waterfall import Layout, layout, parents_of
from qixtui.ui.widgets import footer, format_event, status_text

LANE_LABEL = 14
TREE_LIMIT = 500


def render_waterfall(lay: Layout) -> Text:
    """The layout drawn as text: axis, one line per lane, a legend."""
    width = lay.width
    out = Text(no_wrap=True)
    axis = [" "] * width
    labels = [(0, "+0"), (width - 1, "+" + duration(lay.end_ns - lay.start_ns))]
    for col, label in labels:
        start = max(0, min(col, width - len(label)))
        axis[start : start + len(label)] = list(label)
    out.append(" " * LANE_LABEL + "".join(axis) + "\n", "dim")
    for lane_no, lane in enumerate(lay.lanes):
        cells = [" "] * width
        styles = [""] * width
        for a, b in lay.gaps:
            for c in range(max(0, a), min(width, b + 1)):
                cells[c], styles[c] = "░", "red"
        for col, _hidden in lay.folds:
            if 0 <= col < width:
                cells[col], styles[col] = "⋯", "dim"
        for bar in lay.bars:
            if bar.lane != lane_no:
                continue
            style = "bold yellow" if bar.critical else "cyan"
            if bar.reply_id is not None and bar.end > bar.start:
                cells[bar.start], styles[bar.start] = "├", style
                for c in range(bar.start + 1, bar.end):
                    cells[c], styles[c] = "─", style
                cells[bar.end], styles[bar.end] = "┤", style
            else:
                cells[bar.start] = "◆" if bar.critical else "●"
                styles[bar.start] = style
        out.append_text(t.literal(f"{t.plain(lane)[: LANE_LABEL - 1]:<{LANE_LABEL}}", "bold"))
        for ch, style in zip(cells, styles, strict=True):
            out.append(ch, style)
        out.append("\n")
    out.append(
        "● event  ├─┤ request→reply  ◆ critical path  ░ not recorded  ⋯ folded idle",
        "dim",
    )
    if lay.folds:
        hidden = sum(ns for _c, ns in lay.folds)
        out.append(f"  ({duration(hidden)} folded)", "dim")
    return out


class WaterfallView(Static):
    """The waterfall: drawn again for its own width, which the screen's does not give when
    a side panel (the `?` keys) takes part of the screen."""

    def on_resize(self) -> None:
        screen = self.screen
        if isinstance(screen, FlowScreen):
            screen.draw()


class FlowScreen(Screen[None]):
    """| Key | Action |
    |-----|--------|
    | z | fold/unfold idle stretches |
    | escape | back to the main screen |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back", id="flow.back"),
        Binding("z", "fold", "Fold idle", id="flow.fold"),
    ]
    DEFAULT_CSS = """
    FlowScreen #flow-head { height: 1; background: $primary-background; padding: 0 1; }
    FlowScreen #waterfall { height: auto; max-height: 50%; padding: 0 1;
                            border-bottom: solid $primary; }
    FlowScreen #flow-bottom { height: 1fr; }
    FlowScreen Tree { width: 45%; border-right: solid $primary; }
    """

    def __init__(self, flow_id: int) -> None:
        super().__init__()
        self.flow_id = flow_id
        self.fold = False

    @property
    def session(self) -> Session:
        from qixtui.ui.app import QixtuiApp

        app = self.app
        assert isinstance(app, QixtuiApp)
        return app.session

    def compose(self) -> ComposeResult:
        yield Static(id="flow-head")
        yield WaterfallView(id="waterfall")
        with Horizontal(id="flow-bottom"):
            yield Tree(Text("causes"), id="causal")
            with Vertical():
                yield RowList(self.session.event_rows, format_event, id="flow-events")
        yield footer()

    def on_mount(self) -> None:
        session = self.session
        flow = session.flow(self.flow_id)
        self.events = session.flow_events(self.flow_id)
        self.links = session.flow_links(self.flow_id)
        self.rules = flowfile.session_rules(session.db)
        head = Text(f"flow #{self.flow_id}  ")
        if flow is not None:
            head.append_text(status_text(flow.status))
            head.append(
                f"  {duration(flow.ended_ns - flow.started_ns)}  {counted(flow.events, 'event')}  "
            )
            head.append_text(t.literal(" → ".join(flow.variant), "dim"))
        self.query_one("#flow-head", Static).update(head)
        rows = self.query_one("#flow-events", RowList)
        rows.follow = False
        index = IdIndex(array("q", [e.id for e in self.events]))
        rows.set_index(index)
        rows.move_to(0)
        self.build_tree()
        self.draw()

    def draw(self) -> None:
        view = self.query_one("#waterfall", WaterfallView)
        room = view.content_size.width or self.size.width - 2  # not laid out yet: the screen's
        width = max(20, room - LANE_LABEL - 1)
        lay = layout(
            self.events,
            self.links,
            self.session.gaps(),
            width,
            fold_idle=self.fold,
            rules=self.rules,
        )
        view.update(render_waterfall(lay))

    def build_tree(self) -> None:
        tree = self.query_one("#causal", Tree)
        parents = parents_of(self.events, self.links)
        children: dict[int | None, list[Event]] = {}
        for event in self.events[:TREE_LIMIT]:
            children.setdefault(parents.get(event.id), []).append(event)

        start = min((e.ts_ns for e in self.events), default=0)

        # The subject first: each level indents, and at 80 columns a clock before it pushed
        # the subjects of the fourth level out of sight. The events list beside has the clock.
        def label(event: Event) -> Text:
            line = Text()
            line.append_text(t.literal(event.subject, "bold"))
            offset = event.ts_ns - start
            line.append(f" +{duration(offset)}" if offset >= 1_000 else " +0", "dim")
            return line

        def add(node: TreeNode[int], parent_id: int | None, depth: int) -> None:
            for event in children.get(parent_id, []):
                if depth >= 50 or event.id not in children:
                    node.add_leaf(label(event), data=event.id)
                else:
                    add(node.add(label(event), data=event.id, expand=True), event.id, depth + 1)

        tree.guide_depth = 2
        tree.root.expand()
        known = {e.id for e in self.events}
        roots = [p for p in children if p is None or p not in known]
        for root in roots:
            add(tree.root, root, 0)

    @on(Tree.NodeHighlighted, "#causal")
    def tree_moved(self, message: Tree.NodeHighlighted[int]) -> None:
        rows = self.query_one("#flow-events", RowList)
        if message.node.data is not None:
            pos = rows.index.position_of(message.node.data)
            if pos is not None:
                rows.move_to(pos)

    def action_fold(self) -> None:
        self.fold = not self.fold
        self.draw()


class JumpScreen(ModalScreen[str | None]):
    """Asks where the replay cursor should go."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss_none", "Cancel", id="jump.cancel")
    ]
    DEFAULT_CSS = """
    JumpScreen { align: center middle; }
    JumpScreen Input { width: 50; }
    """

    def compose(self) -> ComposeResult:
        jump = Input(placeholder="+5s from the start, or 12:00:01.5", id="jump")
        jump.border_title = "jump to a time · enter goes · esc cancels"
        yield jump

    @on(Input.Submitted, "#jump")
    def submitted(self, message: Input.Submitted) -> None:
        self.dismiss(message.value)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
