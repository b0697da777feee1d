"""A flow laid out in time: one lane per service, requests joined to their replies, the
critical path and the causal tree, as plain data any view can draw."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import msgspec

from qixtui.core.correlate import event_service, event_type, reply_type
from qixtui.core.model import Event, Link
from qixtui.core.rules import Rules


class Bar(msgspec.Struct):
    """One event, or one request and its reply joined, on a lane."""

    event_id: int
    lane: int
    service: str
    label: str
    start_ns: int
    end_ns: int
    reply_id: int | None = None
    parent_id: int | None = None  # the cause, when a causation header named it
    critical: bool = False


class Waterfall(msgspec.Struct):
    start_ns: int
    end_ns: int
    lanes: list[str]
    bars: list[Bar]
    critical_path: list[int]  # event ids, earliest first


class TreeNode(msgspec.Struct):
    event_id: int
    label: str
    ts_ns: int
    via: str  # how it hangs off its parent: causation, reply, or root
    children: list[TreeNode] = []


def parents(links: Sequence[Link]) -> dict[int, tuple[int, str]]:
    """event id -> (parent event id, link kind) for replies and caused events."""
    out: dict[int, tuple[int, str]] = {}
    for link in links:
        if link.parent_id is not None and link.kind in ("reply", "causation"):
            out.setdefault(link.event_id, (link.parent_id, link.kind))
    return out


def layout(events: Sequence[Event], links: Sequence[Link], rules: Rules) -> Waterfall:
    events = sorted(events, key=lambda e: (e.ts_ns, e.id))
    by_id = {e.id: e for e in events}
    up = parents(links)
    replies: dict[int, Event] = {}  # request id -> its first reply
    for event in events:
        parent = up.get(event.id)
        if parent and parent[1] == "reply" and parent[0] in by_id:
            replies.setdefault(parent[0], event)
    joined = {reply.id for reply in replies.values()}
    lanes: list[str] = []
    bars: list[Bar] = []
    for event in events:
        if event.id in joined:
            continue
        parent = up.get(event.id)
        if parent and parent[1] == "reply" and parent[0] in by_id:
            request = by_id[parent[0]]  # a second reply to one request: its own bar
            service = event_service(request, rules) or "?"
            label = reply_type(event_type(request.subject))
        else:
            service = event_service(event, rules) or "?"
            label = event_type(event.subject)
        if service not in lanes:
            lanes.append(service)
        reply = replies.get(event.id)
        bars.append(
            Bar(
                event_id=event.id,
                lane=lanes.index(service),
                service=service,
                label=label,
                start_ns=event.ts_ns,
                end_ns=reply.ts_ns if reply else event.ts_ns,
                reply_id=reply.id if reply else None,
                parent_id=parent[0] if parent and parent[1] == "causation" else None,
            )
        )
    path = critical_path(bars)
    on_path = set(path)
    for bar in bars:
        bar.critical = bar.event_id in on_path
    start = events[0].ts_ns if events else 0
    end = max((b.end_ns for b in bars), default=start)
    return Waterfall(start_ns=start, end_ns=end, lanes=lanes, bars=bars, critical_path=path)


def critical_path(bars: Sequence[Bar]) -> list[int]:
    """Walk back from the bar that ends last: to its cause when known, else to the bar that
    ended last before it started (what it was waiting for)."""
    if not bars:
        return []
    by_id = {b.event_id: b for b in bars}
    ordered = sorted(bars, key=lambda b: (b.end_ns, b.start_ns, b.event_id))
    ends = [b.end_ns for b in ordered]
    current = ordered[-1]
    path = [current.event_id]
    seen = {current.event_id}
    while True:
        previous: Bar | None = None
        if current.parent_id is not None and current.parent_id in by_id:
            previous = by_id[current.parent_id]
        else:
            i = bisect.bisect_right(ends, current.start_ns) - 1
            while i >= 0 and ordered[i].event_id in seen:
                i -= 1
            previous = ordered[i] if i >= 0 else None
        if previous is None or previous.event_id in seen:
            break
        path.append(previous.event_id)
        seen.add(previous.event_id)
        current = previous
    return path[::-1]


def causal_tree(events: Sequence[Event], links: Sequence[Link]) -> list[TreeNode]:
    """Events under their cause or request; events whose parent is unknown are roots."""
    events = sorted(events, key=lambda e: (e.ts_ns, e.id))
    up = parents(links)
    nodes: dict[int, TreeNode] = {}
    for event in events:
        parent = up.get(event.id)
        via = parent[1] if parent else "root"
        nodes[event.id] = TreeNode(event.id, event.subject, event.ts_ns, via)
    roots: list[TreeNode] = []
    for event in events:
        parent = up.get(event.id)
        node = nodes[event.id]
        if parent and parent[0] in nodes and parent[0] != event.id:
            nodes[parent[0]].children.append(node)
        else:
            node.via = "root"
            roots.append(node)
    return roots
