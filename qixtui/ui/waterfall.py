"""The waterfall of one flow laid out on a character grid: lanes, bars, gaps, folded idle time.

Plain data in and out (no Textual), so the layout is tested without a screen.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from qixtui.core.model import Event, Gap


def service_of(subject: str) -> str:
    """The default services rule, `subject:2`: token 2 names the service (token 1 if alone)."""
    tokens = subject.split(".")
    return tokens[1] if len(tokens) > 1 else tokens[0]


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


def parents_of(
    events: list[Event], links: list[tuple[int, str, str, int | None]]
) -> dict[int, int]:
    """Each event's cause: the parent from its links, else the request its reply answers."""
    ids = {e.id for e in events}
    parents: dict[int, int] = {}
    for event_id, _kind, _key, parent in links:
        if parent is not None and parent in ids and event_id not in parents and parent != event_id:
            parents[event_id] = parent
    inbox = {e.reply: e.id for e in events if e.reply}
    for e in events:
        if e.id not in parents and e.subject in inbox and inbox[e.subject] != e.id:
            parents[e.id] = inbox[e.subject]
    return parents


def replies_of(events: list[Event]) -> dict[int, int]:
    """request id -> id of the first reply on its reply subject."""
    inbox = {e.reply: e.id for e in events if e.reply}
    out: dict[int, int] = {}
    for e in events:
        request = inbox.get(e.subject)
        if request is not None and request not in out and request != e.id:
            out[request] = e.id
    return out


def critical_path(events: list[Event], parents: dict[int, int]) -> set[int]:
    """The chain of causes behind the flow's last event: what its end waited on."""
    if not events:
        return set()
    node: int | None = max(events, key=lambda e: (e.ts_ns, e.id)).id
    path: set[int] = set()
    while node is not None and node not in path:
        path.add(node)
        node = parents.get(node)
    return path


def layout(
    events: list[Event],
    links: list[tuple[int, str, str, int | None]],
    gaps: list[Gap],
    width: int,
    *,
    fold_idle: bool = False,
    idle_ns: int = 1_000_000_000,
) -> Layout:
    """Place a flow's events on `width` columns, one lane per service in order of appearance."""
    width = max(8, width)
    if not events:
        return Layout(width, [], [], [])
    events = sorted(events, key=lambda e: (e.ts_ns, e.id))
    start, end = events[0].ts_ns, events[-1].ts_ns
    parents = parents_of(events, links)
    replies = replies_of(events)
    critical = critical_path(events, parents)

    # Idle stretches longer than idle_ns (and a tenth of the flow) shrink to one column each.
    folds_ns: list[tuple[int, int]] = []
    if fold_idle:
        threshold = max(idle_ns, (end - start) // 10)
        for a, b in itertools.pairwise(events):
            if b.ts_ns - a.ts_ns > threshold:
                folds_ns.append((a.ts_ns, b.ts_ns))
    shown_ns = max(1, (end - start) - sum(b - a for a, b in folds_ns))
    cols = max(2, width - len(folds_ns))

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
        return min(width - 1, round((ts - start - hidden) * (cols - 1) / shown_ns) + folds_before)

    lanes: list[str] = []
    bars: list[Bar] = []
    reply_ids = set(replies.values())
    for e in events:
        service = service_of(e.subject)
        if e.id in reply_ids and e.id in parents:
            # A reply is drawn as the end of its request's bar, in the requester's lane.
            continue
        if service not in lanes:
            lanes.append(service)
        reply = replies.get(e.id)
        reply_ts = next((r.ts_ns for r in events if r.id == reply), None)
        bars.append(
            Bar(
                lane=lanes.index(service),
                start=col(e.ts_ns),
                end=col(reply_ts) if reply_ts is not None else col(e.ts_ns),
                event_id=e.id,
                reply_id=reply,
                critical=e.id in critical or (reply is not None and reply in critical),
            )
        )
    gap_cols = [
        (col(g.start_ns), col(g.end_ns if g.end_ns is not None else end))
        for g in gaps
        if g.start_ns <= end and (g.end_ns is None or g.end_ns >= start)
    ]
    folds = [(col(a) + 1, b - a) for a, b in folds_ns]
    return Layout(width, lanes, bars, gap_cols, folds, start, end, critical)
