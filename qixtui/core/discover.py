"""Process discovery: variants and the directly-follows graph of flows, as DOT or Mermaid."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import msgspec

from qixtui.core.text import mermaid_text, time_span, visible


class Edge(msgspec.Struct):
    """`target` directly followed `source` in `count` flows' steps."""

    source: str
    target: str
    count: int
    median_ns: int
    p95_ns: int


class Variant(msgspec.Struct):
    steps: list[str]
    count: int


class Discovery(msgspec.Struct):
    flows: int
    variants: list[Variant]  # most frequent first
    activities: dict[str, int]  # event type -> occurrences
    starts: dict[str, int]  # event type -> flows that begin with it
    ends: dict[str, int]
    edges: list[Edge]  # most frequent first


def _nearest_rank(ordered: list[int], fraction: float) -> int:
    rank = max(1, math.ceil(len(ordered) * fraction))
    return ordered[min(rank, len(ordered)) - 1]


def discover(traces: Iterable[Sequence[tuple[str, int]]]) -> Discovery:
    """Each trace is one flow's (event type, ts_ns) steps in time order."""
    variants: Counter[tuple[str, ...]] = Counter()
    gaps: dict[tuple[str, str], list[int]] = {}
    starts: Counter[str] = Counter()
    ends: Counter[str] = Counter()
    flows = 0
    for trace in traces:
        if not trace:
            continue
        flows += 1
        types = tuple(step[0] for step in trace)
        variants[types] += 1
        starts[types[0]] += 1
        ends[types[-1]] += 1
        prev_type, prev_ts = trace[0]
        for etype, ts in trace[1:]:
            key = (prev_type, etype)
            bucket = gaps.get(key)
            if bucket is None:
                gaps[key] = [ts - prev_ts]
            else:
                bucket.append(ts - prev_ts)
            prev_type, prev_ts = etype, ts
    activities: Counter[str] = Counter()
    for types, n in variants.items():
        for etype in types:
            activities[etype] += n
    edges = []
    for (source, target), deltas in gaps.items():
        deltas.sort()
        edges.append(
            Edge(
                source=source,
                target=target,
                count=len(deltas),
                median_ns=_nearest_rank(deltas, 0.5),
                p95_ns=_nearest_rank(deltas, 0.95),
            )
        )
    edges.sort(key=lambda e: (-e.count, e.source, e.target))
    return Discovery(
        flows=flows,
        variants=[
            Variant(list(steps), n)
            for steps, n in sorted(variants.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        activities=dict(activities.most_common()),
        starts=dict(starts.most_common()),
        ends=dict(ends.most_common()),
        edges=edges,
    )


def _dot_quote(text: str) -> str:
    """A quoted DOT string showing `text` as every other view does: control and bidi
    characters written out by `visible` (raw, they reached the terminal, or were dropped on
    the way, and two subjects read the same), then backslash and quote escaped for DOT, and
    `&` written as `&amp;`: graphviz reads HTML entities in any label (`a&lt;b` drew `a<b`)."""
    escaped = visible(text).replace("&", "&amp;").replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _node_ids(found: Discovery) -> dict[str, str]:
    return {name: f"n{i}" for i, name in enumerate(found.activities)}


def to_dot(found: Discovery) -> str:
    """Graphviz DOT; node names are escaped, so any subject renders."""
    ids = _node_ids(found)
    lines = [
        "digraph flows {",
        "  rankdir=LR;",
        '  node [shape=box, style=rounded, fontname="Helvetica"];',
        '  start [shape=circle, label="", width=0.2, style=filled, fillcolor=black];',
        '  end [shape=doublecircle, label="", width=0.2];',
    ]
    for name, count in found.activities.items():
        lines.append(f"  {ids[name]} [label={_dot_quote(f'{name} ({count})')}];")
    for name, count in found.starts.items():
        lines.append(f"  start -> {ids[name]} [label={_dot_quote(str(count))}];")
    for e in found.edges:
        label = f"{e.count} · p50 {time_span(e.median_ns)} · p95 {time_span(e.p95_ns)}"
        lines.append(f"  {ids[e.source]} -> {ids[e.target]} [label={_dot_quote(label)}];")
    for name, count in found.ends.items():
        lines.append(f"  {ids[name]} -> end [label={_dot_quote(str(count))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(found: Discovery) -> str:
    ids = _node_ids(found)
    lines = ["flowchart LR", "  start((start))", "  finish(((end)))"]
    for name, count in found.activities.items():
        lines.append(f'  {ids[name]}["{mermaid_text(f"{name} ({count})")}"]')
    for name, count in found.starts.items():
        lines.append(f"  start -->|{count}| {ids[name]}")
    for e in found.edges:
        label = mermaid_text(f"{e.count}, p50 {time_span(e.median_ns)}, p95 {time_span(e.p95_ns)}")
        lines.append(f'  {ids[e.source]} -->|"{label}"| {ids[e.target]}')
    for name, count in found.ends.items():
        lines.append(f"  {ids[name]} -->|{count}| finish")
    return "\n".join(lines) + "\n"
