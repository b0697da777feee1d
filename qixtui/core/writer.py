"""The session writer: the one owner of a session file's connection, fed batches over a pipe.

It runs in its own process so SQLite inserts and correlation never share a core with the
bus client's read loop. Records arrive msgpack-encoded and tagged:

    ("E", [[ts_ns, subject, reply, header_block, payload], ...])  events, in receive order;
                                                              header_block: raw NATS bytes
    ("G+", start_ns, reason)                                  a gap opens
    ("G-", end_ns)                                            the open gap closes
    ("D", ts_ns, subject, count)                              slow-consumer drops
    ("M", {key: value})                                       session metadata
    ("X",)                                                    flush and stop
"""

from __future__ import annotations

import gc
import signal
import sqlite3
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec

from qixtui.core import store
from qixtui.core.model import Drop, Event, parse_header_block

IDLE_TICK_S = 1.0
TRANSACTION_EVENTS = 8_000
_decode_record = msgspec.msgpack.Decoder().decode
encode_record = msgspec.msgpack.Encoder().encode


class SessionWriter:
    """Applies records to a session file, one transaction per batch of records."""

    def __init__(self, db: sqlite3.Connection, correlator: Any | None = None) -> None:
        self.db = db
        self.next_id = store.next_event_id(db)
        self.open_gap_id: int | None = None
        self.correlator = correlator
        self.events_written = 0

    def apply(self, records: list[list[Any]]) -> None:
        # All events of a transaction are correlated together: a flow touched by several
        # records is summarised once, so a writer that falls behind catches up faster.
        rows: list[list[Any]] = []
        with store.transaction(self.db):
            for record in records:
                if record[0] == "E":
                    rows.extend(record[1])
                else:
                    self._apply_one(record)
            if rows:
                self._write_events(rows)

    def _apply_one(self, record: list[Any]) -> None:
        tag = record[0]
        if tag == "G+":
            if self.open_gap_id is None:
                self.open_gap_id = store.open_gap(self.db, record[1], record[2])
        elif tag == "G-":
            if self.open_gap_id is not None:
                store.close_gap(self.db, self.open_gap_id, record[1])
                self.open_gap_id = None
        elif tag == "D":
            store.add_drops(self.db, [Drop(ts_ns=record[1], subject=record[2], count=record[3])])
        elif tag == "M":
            store.set_meta(self.db, record[1])

    def _write_events(self, rows: list[list[Any]]) -> None:
        events = []
        next_id = self.next_id
        for ts_ns, subject, reply, headers, payload in rows:
            events.append(
                Event(
                    ts_ns=ts_ns,
                    subject=subject,
                    reply=reply or None,
                    headers=parse_header_block(headers) if headers else None,
                    payload=payload,
                    id=next_id,
                )
            )
            next_id += 1
        self.next_id = next_id
        if self.correlator is not None:
            changes = self.correlator.add_batch(events, time.time_ns())
            store.insert_events(self.db, events)
            store.apply_flow_changes(self.db, changes)
        else:
            store.insert_events(self.db, events)
        self.events_written += len(events)

    def tick(self) -> None:
        """No events for a while: let correlation notice flows that stalled meanwhile."""
        if self.correlator is not None:
            changes = self.correlator.add_batch([], time.time_ns())
            if changes.flows:
                with store.transaction(self.db):
                    store.apply_flow_changes(self.db, changes)


def tune_gc() -> None:
    """The writer allocates a few objects per event and keeps correlation state for
    thousands of flows: the default thresholds run a collection every 700 allocations and
    cost it a third of its speed. Nothing here builds reference cycles worth chasing often."""
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def run_writer(path: str, conn: Connection, correlator_factory: Any | None = None) -> None:
    """Process entry point: read records from `conn` until "X" or end of pipe, then exit.

    A killed parent closes the pipe; what was received is still committed.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the recorder decides when to stop
    db = store.open_session(Path(path), readonly=False)
    writer = SessionWriter(db, correlator_factory() if correlator_factory else None)
    tune_gc()
    stopping = False
    while not stopping:
        batch: list[list[Any]] = []
        try:
            if not conn.poll(IDLE_TICK_S):
                writer.tick()
                continue
            batch.append(_decode_record(conn.recv_bytes()))
            # What is already waiting joins the same transaction, up to a size that keeps
            # the memory a transaction needs small (a writer behind the bus finds a lot).
            events = len(batch[0][1]) if batch[0][0] == "E" else 0
            while events < TRANSACTION_EVENTS and len(batch) < 64 and conn.poll(0):
                batch.append(_decode_record(conn.recv_bytes()))
                if batch[-1][0] == "E":
                    events += len(batch[-1][1])
        except (EOFError, OSError):
            stopping = True
        if batch and batch[-1][0] == "X":
            stopping = True
        if batch:
            writer.apply(batch)
    if writer.correlator is not None:
        end_ns = time.time_ns()
        with store.transaction(db):
            store.apply_flow_changes(db, writer.correlator.finish(end_ns))
            store.stall_quiet_flows(db, end_ns, writer.correlator.stall_ns)
    store.build_read_indexes(db)
    # A finished session is one self-contained file that opens read-only anywhere; while a
    # viewer still has it open that needs a lock we cannot have, and WAL mode stays.
    try:
        db.execute("PRAGMA busy_timeout = 1000")
        db.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.OperationalError:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    db.close()
