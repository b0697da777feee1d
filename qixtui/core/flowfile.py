"""Flows in a session file: recompute them with other rules, read one back, feed discovery."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence

from qixtui.core import store
from qixtui.core.correlate import Correlator, event_type, reply_type
from qixtui.core.model import Event, Flow, Link
from qixtui.core.rows import merged_into, reaching_back
from qixtui.core.rules import Rules, rules_from_json
from qixtui.core.writer import PART_EVENTS

PAGE = 5000


def recorrelate(db: sqlite3.Connection, rules: Rules, page_size: int = PAGE) -> int:
    """Replace every flow and link in one transaction: a crash leaves the old flows or the new
    ones, never a mix. The clock is the recording's own (event times, then its stop time), as
    the writer's was. Returns the number of flows.

    Page by page, as the recorder does it batch by batch: linked a part at a time, an event
    row rewritten only where its flow id changes (so rules that change little write
    little), and only merges and adoptions that reach back into earlier pages updated there,
    as the writer does. Later pages may still hold the old rules' flow ids, which such an
    update can move too: each page is compared with the file when it is read, so its own
    pass sets them right."""
    correlator = Correlator(rules)
    with store.transaction(db):
        meta = store.get_meta(db)
        db.execute("DELETE FROM flows")
        db.execute("DELETE FROM links")
        last_id = 0
        last_ts = 0
        while True:
            page = db.execute(
                f"SELECT {store.EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (last_id, page_size),
            ).fetchall()
            if not page:
                break
            events: list[Event] = []
            for start in range(0, len(page), PART_EVENTS):
                part = [store.row_to_event(row) for row in page[start : start + PART_EVENTS]]
                correlator.link(part)
                events += part
            filed = [row[6] for row in page]
            first = events[0].id
            last_id = events[-1].id
            last_ts = max(last_ts, max(e.ts_ns for e in events))
            found = correlator.batch_rows(last_ts)
            final = merged_into(found.merges)
            adopted = {event_id: flow_id for flow_id, event_id in found.assign}
            changed = []
            for event, old in zip(events, filed, strict=True):
                flow_id = adopted.get(event.id, event.flow_id)
                if flow_id is not None:
                    flow_id = final.get(flow_id, flow_id)
                if flow_id != old:
                    changed.append((flow_id, event.id))
            db.executemany("UPDATE events SET flow_id = ? WHERE id = ?", changed)
            store.apply_flow_rows(db, reaching_back(found, first, final))
        stopped = meta.get("stopped_ns", "")
        end_ns = int(stopped) if stopped.isdigit() else last_ts
        store.apply_flow_changes(db, correlator.finish(max(end_ns, last_ts)))
        store.stall_quiet_flows(db, max(end_ns, last_ts), correlator.stall_ns)
        store.set_meta(db, {"correlation_rules": rules.to_json()})
        return int(db.execute("SELECT count(*) FROM flows").fetchone()[0])


def session_rules(db: sqlite3.Connection) -> Rules:
    """The rules a session was last correlated with (the defaults if none were saved)."""
    saved = store.get_meta(db).get("correlation_rules")
    return rules_from_json(saved) if saved else Rules()


def get_flow(db: sqlite3.Connection, flow_id: int) -> Flow | None:
    row = db.execute(
        f"SELECT {store.FLOW_COLUMNS} FROM flows WHERE flow_id = ?", (flow_id,)
    ).fetchone()
    return store.row_to_flow(row) if row else None


def flow_events(db: sqlite3.Connection, flow_id: int) -> list[Event]:
    return list(store.iter_events(db, store.EventQuery(flow_id=flow_id)))


def flow_links(db: sqlite3.Connection, flow_id: int) -> list[Link]:
    """The stored links (replies, causes) of a flow's events."""
    rows = db.execute(
        "SELECT l.event_id, l.kind, l.key, l.parent_id FROM links l "
        "JOIN events e ON e.id = l.event_id WHERE e.flow_id = ? ORDER BY l.rowid",
        (flow_id,),
    )
    return [Link(event_id=r[0], kind=r[1], key=r[2], parent_id=r[3]) for r in rows]


def why_linked(
    db: sqlite3.Connection, events: Sequence[Event], correlator: Correlator | None = None
) -> list[Link]:
    """Every link of these events: the keys each carries under the session's rules (derived,
    not stored; pass a correlator built from them to reuse it), then the stored reply and
    causation links."""
    correlator = correlator or Correlator(session_rules(db))
    derived = [link for event in events for link in correlator.key_links(event)]
    ids = [event.id for event in events]
    stored: list[Link] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows = db.execute(
            "SELECT event_id, kind, key, parent_id FROM links "
            f"WHERE event_id IN ({','.join('?' * len(chunk))}) ORDER BY rowid",
            chunk,
        )
        stored.extend(Link(event_id=r[0], kind=r[1], key=r[2], parent_id=r[3]) for r in rows)
    return derived + stored


def traces(db: sqlite3.Connection) -> Iterator[list[tuple[str, int]]]:
    """Every flow as its (event type, ts_ns) steps in time order, replies named after their
    request, the same types as the flows' variants."""
    rows = db.execute(
        "SELECT e.flow_id, e.ts_ns, e.subject, p.subject FROM events e "
        "LEFT JOIN links l ON l.event_id = e.id AND l.kind = 'reply' AND l.parent_id IS NOT NULL "
        "LEFT JOIN events p ON p.id = l.parent_id "
        "WHERE e.flow_id IS NOT NULL ORDER BY e.flow_id, e.ts_ns, e.id"
    )
    types: dict[str, str] = {}
    current: int | None = None
    trace: list[tuple[str, int]] = []
    for flow_id, ts_ns, subject, request_subject in rows:
        if flow_id != current:
            if trace:
                yield trace
            trace = []
            current = flow_id
        source = request_subject or subject
        etype = types.get(source)
        if etype is None:
            etype = types[source] = event_type(source)
        trace.append((reply_type(etype) if request_subject else etype, ts_ns))
    if trace:
        yield trace
