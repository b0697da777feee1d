"""Two flows held against each other: steps one has and the other lacks or has out of order,
how long each step took in each, and how their JSON payloads differ field by field."""

from __future__ import annotations

import json
from collections import defaultdict, deque
from collections.abc import Sequence
from typing import Any

import msgspec

from qixtui.core.compare import lcs_pairs
from qixtui.core.correlate import event_type, reply_type
from qixtui.core.model import Event, Link

MAX_FIELDS = 40  # field differences kept per step; the count says how many there were
VALUE_CHARS = 60


class Step(msgspec.Struct):
    """One event of a flow, as the diff reads it."""

    event_id: int
    label: str  # the event type; a reply is its request's type + " (reply)"
    offset_ns: int  # since the flow's first event
    took_ns: int  # since what it waited for: its request or cause, else the event before


class FieldDiff(msgspec.Struct):
    path: str  # JSON pointer; "" for the whole payload when it is not JSON
    kind: str  # added | removed | changed
    a: str | None  # the value in A, as compact JSON (None: absent)
    b: str | None


class DiffRow(msgspec.Struct):
    kind: str  # same | missing (A only) | extra (B only) | moved (both, out of order)
    label: str
    a: Step | None
    b: Step | None
    delta_ns: int | None = None  # B's took minus A's, when both have the step
    slower: bool = False  # B took notably longer than A at this step
    fields: list[FieldDiff] = []
    more_fields: int = 0  # differences beyond MAX_FIELDS


class FlowDiff(msgspec.Struct):
    a_flow: int
    b_flow: int
    a_span_ns: int
    b_span_ns: int
    rows: list[DiffRow]

    def count(self, kind: str) -> int:
        return sum(1 for r in self.rows if r.kind == kind)

    @property
    def slower(self) -> int:
        return sum(1 for r in self.rows if r.slower)

    @property
    def payload_changes(self) -> int:
        return sum(1 for r in self.rows if r.fields)


def steps_of(events: Sequence[Event], links: Sequence[Link]) -> list[Step]:
    """A flow's events in time order as steps."""
    ordered = sorted(events, key=lambda e: (e.ts_ns, e.id))
    by_id = {e.id: e for e in ordered}
    waits: dict[int, tuple[int, str]] = {}
    for link in links:
        if link.parent_id in by_id and link.kind in ("reply", "causation"):
            waits.setdefault(link.event_id, (link.parent_id, link.kind))
    out: list[Step] = []
    start = ordered[0].ts_ns if ordered else 0
    for i, event in enumerate(ordered):
        parent = waits.get(event.id)
        if parent and parent[1] == "reply":
            label = reply_type(event_type(by_id[parent[0]].subject))
        else:
            label = event_type(event.subject)
        before = by_id[parent[0]].ts_ns if parent else ordered[i - 1].ts_ns if i else event.ts_ns
        out.append(Step(event.id, label, event.ts_ns - start, max(0, event.ts_ns - before)))
    return out


def _compact(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"


def _pointer_token(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _walk(a: Any, b: Any, path: str, out: list[FieldDiff]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            sub = f"{path}/{_pointer_token(str(key))}"
            if key not in b:
                out.append(FieldDiff(sub, "removed", _compact(a[key]), None))
            elif key not in a:
                out.append(FieldDiff(sub, "added", None, _compact(b[key])))
            else:
                _walk(a[key], b[key], sub, out)
    elif isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            sub = f"{path}/{i}"
            if i >= len(b):
                out.append(FieldDiff(sub, "removed", _compact(a[i]), None))
            elif i >= len(a):
                out.append(FieldDiff(sub, "added", None, _compact(b[i])))
            else:
                _walk(a[i], b[i], sub, out)
    elif a != b or type(a) is not type(b):
        out.append(FieldDiff(path, "changed", _compact(a), _compact(b)))


def _json(payload: bytes) -> tuple[bool, Any]:
    try:
        return True, json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):  # too deep: compared whole
        return False, None


def payload_diff(a: bytes, b: bytes) -> list[FieldDiff]:
    """Field by field when both are JSON, else one whole-payload difference (or none)."""
    if a == b:
        return []
    a_ok, a_doc = _json(a)
    b_ok, b_doc = _json(b)
    if a_ok and b_ok:
        out: list[FieldDiff] = []
        _walk(a_doc, b_doc, "", out)
        return out
    return [FieldDiff("", "changed", f"{len(a)} bytes", f"{len(b)} bytes")]


def diff_flows(
    a_flow: int,
    a_events: Sequence[Event],
    a_links: Sequence[Link],
    b_flow: int,
    b_events: Sequence[Event],
    b_links: Sequence[Link],
    *,
    slower_ratio: float = 1.5,
    slower_min_ns: int = 1_000_000,
) -> FlowDiff:
    """Align B's steps to A's (longest common subsequence of event types). A step both have
    but the alignment could not keep in place is `moved`, shown where B has it. B's step is
    slower when it took `slower_ratio` times A's and at least `slower_min_ns` more."""
    sa, sb = steps_of(a_events, a_links), steps_of(b_events, b_links)
    pairs = lcs_pairs([s.label for s in sa], [s.label for s in sb])
    kept_a = {i for i, _ in pairs}
    partner_of_b = {j: i for i, j in pairs}
    waiting: dict[str, deque[int]] = defaultdict(deque)
    for i, step in enumerate(sa):
        if i not in kept_a:
            waiting[step.label].append(i)
    moved_a: set[int] = set()
    for j, step in enumerate(sb):
        if j not in partner_of_b and waiting[step.label]:
            i = waiting[step.label].popleft()
            partner_of_b[j] = i
            moved_a.add(i)

    payloads = {e.id: e.payload for e in [*a_events, *b_events]}

    def both(kind: str, a: Step, b: Step) -> DiffRow:
        delta = b.took_ns - a.took_ns
        slower = b.took_ns >= a.took_ns * slower_ratio and delta >= slower_min_ns
        fields = payload_diff(payloads[a.event_id], payloads[b.event_id])
        return DiffRow(
            kind,
            b.label,
            a,
            b,
            delta,
            slower,
            fields[:MAX_FIELDS],
            max(0, len(fields) - MAX_FIELDS),
        )

    # the A index of the next anchor at or after each B position
    next_anchor = [len(sa)] * (len(sb) + 1)
    for j in range(len(sb) - 1, -1, -1):
        partner = partner_of_b.get(j)
        anchored = partner is not None and partner in kept_a
        next_anchor[j] = partner if anchored and partner is not None else next_anchor[j + 1]

    rows: list[DiffRow] = []
    i = 0
    for j, step in enumerate(sb):
        partner = partner_of_b.get(j)
        if partner is None or partner not in kept_a:
            # between anchors, A's unmatched steps take their place by time
            while i < next_anchor[j] and sa[i].offset_ns <= step.offset_ns:
                if i not in moved_a:
                    rows.append(DiffRow("missing", sa[i].label, sa[i], None))
                i += 1
        if partner is not None and partner in kept_a:
            # A's steps before this anchor that B lacks come first
            for k in range(i, partner):
                if k not in kept_a and k not in moved_a:
                    rows.append(DiffRow("missing", sa[k].label, sa[k], None))
            i = partner + 1
            rows.append(both("same", sa[partner], step))
        elif partner is not None:
            rows.append(both("moved", sa[partner], step))
        else:
            rows.append(DiffRow("extra", step.label, None, step))
    for k in range(i, len(sa)):
        if k not in kept_a and k not in moved_a:
            rows.append(DiffRow("missing", sa[k].label, sa[k], None))
    a_span = sa[-1].offset_ns if sa else 0
    b_span = sb[-1].offset_ns if sb else 0
    return FlowDiff(a_flow, b_flow, a_span, b_span, rows)
