"""The waterfall of one flow on a character grid: core's layout (lanes, request/reply bars,
critical path) mapped onto columns, with gaps and folded idle time.

Plain data in and out (no Textual), so the grid is tested without a screen.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from qixtui.core import waterfall as core
from qixtui.core.correlate import event_service
from qixtui.core.model import Event, Gap, Link
from qixtui.core.rules import Rules

# A link as the session file stores it: event id, kind, key, parent id.
LinkRow = tuple[int, str, str, int | None]


def service_of(subject: str, rules: Rules | None = None) -> str:
    """The service a subject is attributed to under `rules` (the defaults if none)."""
    event = Event(ts_ns=0, subject=subject, reply=None, headers=None, payload=b"")
    return event_service(event, rules or Rules()) or "?"


@dataclass
class Bar:
    lane: int
    start: int  # first column
    end: int  # last column (== start for a point event)
    event_id: int
    reply_id: int | None = None  # a request answered by this reply
    critical: bool = False


@dataclass
class Layout:
    width: int
    lanes: list[str]
    bars: list[Bar]
    gaps: list[tuple[int, int]]  # column ranges with nothing recorded
    folds: list[tuple[int, int]] = field(default_factory=list)  # (column, ns hidden)
    start_ns: int = 0
    end_ns: int = 0
    critical: set[int] = field(default_factory=set)


def _links(rows: Sequence[LinkRow]) -> list[Link]:
    return [Link(event_id, kind, key, parent) for event_id, kind, key, parent in rows]


def parents_of(events: Sequence[Event], links: Sequence[LinkRow]) -> dict[int, int]:
    """Each event's cause or request within the flow, as core reads the links."""
    ids = {e.id for e in events}
    return {
        event_id: parent
        for event_id, (parent, _via) in core.parents(_links(links)).items()
        if parent in ids and parent != event_id
    }


def layout(
    events: Sequence[Event],
    links: Sequence[LinkRow],
    gaps: Sequence[Gap],
    width: int,
    *,
    fold_idle: bool = False,
    idle_ns: int = 1_000_000_000,
    rules: Rules | None = None,
) -> Layout:
    """Core's waterfall of the flow on `width` columns."""
    width = max(8, width)
    if not events:
        return Layout(width, [], [], [])
    wf = core.layout(events, _links(links), rules or Rules())
    start, end = wf.start_ns, wf.end_ns

    # Idle stretches longer than idle_ns (and a tenth of the flow) shrink to one column each,
    # the fold mark's own, between the columns of the events on either side.
    folds_ns: list[tuple[int, int]] = []
    if fold_idle:
        threshold = max(idle_ns, (end - start) // 10)
        times = sorted({e.ts_ns for e in events} | {b.end_ns for b in wf.bars})
        folds_ns = [(a, b) for a, b in itertools.pairwise(times) if b - a > threshold]
    shown_ns = max(1, (end - start) - sum(b - a for a, b in folds_ns))
    cols = max(2, width - 2 * len(folds_ns))

    def col(ts: int) -> int:
        ts = min(max(ts, start), end)
        hidden = 0
        folds_before = 0
        for a, b in folds_ns:
            if ts >= b:
                hidden += b - a
                folds_before += 1
            elif ts > a:
                hidden += ts - a
                break
        shift = 2 * folds_before
        return min(width - 1, round((ts - start - hidden) * (cols - 1) / shown_ns) + shift)

    bars = [
        Bar(
            lane=bar.lane,
            start=col(bar.start_ns),
            end=col(bar.end_ns),
            event_id=bar.event_id,
            reply_id=bar.reply_id,
            critical=bar.critical,
        )
        for bar in wf.bars
    ]
    gap_cols = [
        (col(g.start_ns), col(g.end_ns if g.end_ns is not None else end))
        for g in gaps
        if g.start_ns <= end and (g.end_ns is None or g.end_ns >= start)
    ]
    folds = [(col(a) + 1, b - a) for a, b in folds_ns]
    return Layout(width, wf.lanes, bars, gap_cols, folds, start, end, set(wf.critical_path))
