"""The session writer: two processes behind the recorder, joined by pipes.

    recorder ──E G D M X──► prepare process ──R G D M S X──► write process ──► session file
    (bus client)            parse headers, number events,     the one owner of the SQLite
                            correlate, build rows             connection: executemany, commit

Each side of the split costs about half of what one process doing both did per event, so on
a 2-core machine neither is the recorder's limit any more: one process was, at ~21 µs an event.
Backpressure runs back up the pipes to the recorder, which counts drops past its backlog limit.

Records from the recorder, msgpack-encoded lists whose first item is a tag:

    ("E", [[ts_ns, subject, reply, header_block, payload], ...])  events, in receive order;
                                                              header_block: raw NATS bytes
    ("G+", start_ns, reason)                                  a gap opens
    ("G-", end_ns)                                            the open gap closes
    ("D", ts_ns, subject, count)                              slow-consumer drops
    ("M", {key: value})                                       session metadata
    ("X",)                                                    flush and stop

The prepare process passes G+, G-, D and M through in order and turns events into

    ("R", event_rows, link_rows, merges, assign, flow_rows)   rows for executemany
    ("S", now_ns, stall_ns)                                   the end: stall quiet flows
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

from qixtui.core import rows, store
from qixtui.core.model import Drop

IDLE_TICK_S = 1.0
# The write stage, behind the prepare stage, commits up to this many waiting events in one
# transaction. 8,000 (then in both stages) held ~60 MB more while draining a burst, for no
# CPU saved (the per-transaction cost is small next to 2,000 rows).
TRANSACTION_EVENTS = 2_000
# The prepare stage correlates up to this many waiting events as one batch: a flow touched all
# over a batch gets one flows row (bench_correlate's traffic: 0.22 rows an event, 0.28 with
# batches of 2,000, each row about as costly to write as an event). Only events already
# waiting join a batch: at a calm rate each record is one.
BATCH_EVENTS = 10_000
# Events the prepare stage turns into rows at a time (their objects fit the CPU's cache)
PART_EVENTS = 256
_decode_record = msgspec.msgpack.Decoder().decode
encode_record = msgspec.msgpack.Encoder().encode

Record = list[Any]


# -- what the write process reads: typed, so payloads arrive as bytearrays, which sqlite3
# binds without the adapter lookup it runs for bytes (see rows.event_row) --------------------


class _Rows(msgspec.Struct, array_like=True, tag="R"):
    events: list[tuple[int, int, str, str, str, bytearray, int, int]]
    links: list[tuple[int, str, str, int | None]]
    merges: list[tuple[int, int]]
    assign: list[tuple[int, int]]
    flows: list[tuple[int, str, int, int, int, str, str, str, int]]


class _GapOpen(msgspec.Struct, array_like=True, tag="G+"):
    start_ns: int
    reason: str


class _GapClose(msgspec.Struct, array_like=True, tag="G-"):
    end_ns: int


class _Dropped(msgspec.Struct, array_like=True, tag="D"):
    ts_ns: int
    subject: str
    count: int


class _Meta(msgspec.Struct, array_like=True, tag="M"):
    values: dict[str, str]


class _Stall(msgspec.Struct, array_like=True, tag="S"):
    now_ns: int
    stall_ns: int


class _Stop(msgspec.Struct, array_like=True, tag="X"):
    pass


_WriteRecord = _Rows | _GapOpen | _GapClose | _Dropped | _Meta | _Stall | _Stop
_decode_prepared = msgspec.msgpack.Decoder(_WriteRecord).decode


class RowMaker:
    """Recorder records in, write records out: headers parsed, events numbered from
    `next_id`, correlated when a correlator is given. No I/O.

    Records are taken one at a time (`take`), each turned into rows as it comes, and what
    they made is handed out together (`flush`): the events of a batch are correlated
    together (a flow touched by several records is summarised once, so a writer behind
    catches up faster), but never moved past a gap, drop or metadata record: a "stopped"
    mark must not land before the last events."""

    def __init__(self, next_id: int, correlator: Any | None = None) -> None:
        self.next_id = next_id
        self.correlator = correlator
        self._out: list[Record] = []
        self._first = next_id  # the open batch's first event
        self._event_rows: list[tuple[Any, ...]] = []

    def prepare(self, records: list[Record]) -> list[Record]:
        for record in records:
            self.take(record)
        return self.flush()

    def take(self, record: Record) -> None:
        if record[0] != "E":
            self._close_batch()
            if record[0] != "X":
                self._out.append(record)
            return
        frames = record[1]
        correlator = self.correlator
        # A part at a time, so the events made from a part are still in the CPU's cache when
        # they are correlated and turned into rows. The recorder sends records of a part at
        # most, each taken as it is decoded; the ~10,000-event records it sent when the stage
        # fell behind took every pass to memory: 50 more cache misses an event.
        for start in range(0, len(frames), PART_EVENTS):
            events = rows.received_events(frames[start : start + PART_EVENTS], self.next_id)
            self.next_id += len(events)
            if correlator is not None:
                correlator.link(events)
            self._event_rows.extend(rows.event_rows(events))

    def flush(self) -> list[Record]:
        """What the records taken since the last flush made."""
        self._close_batch()
        out, self._out = self._out, []
        return out

    def _close_batch(self) -> None:
        event_rows, first = self._event_rows, self._first
        if not event_rows:
            return
        self._event_rows, self._first = [], self.next_id
        if self.correlator is None:
            self._out.append(["R", event_rows, [], [], [], []])
            return
        found = self.correlator.batch_rows(time.time_ns())
        # This batch's rows are not written yet, so what correlation changed inside it goes
        # into them, not into UPDATEs after them (90% of merges and adoptions in
        # bench_correlate's traffic, a quarter of what correlation cost the writer). A flow
        # born here has an id from here: no row of the file holds it yet.
        final = rows.merged_into(found.merges)
        rows.retarget(event_rows, first, final, found.assign)
        self._out.append(["R", event_rows, *rows.reaching_back(found, first, final)])

    def tick(self, now_ns: int) -> list[Record]:
        """No events for a while: what is still to flush, and flows that stalled meanwhile."""
        out = self.flush()  # a stall check would otherwise close the open batch early
        if self.correlator is not None:
            changes = self.correlator.add_batch([], now_ns)
            if changes.flows:
                out.append(["R", [], *rows.flow_rows(changes)])
        return out

    def finish(self, now_ns: int) -> list[Record]:
        """The end: what is still to flush, the last stalls, and the writer's stall pass."""
        out = self.flush()
        if self.correlator is not None:
            changes = rows.flow_rows(self.correlator.finish(now_ns))
            out += [["R", [], *changes], ["S", now_ns, self.correlator.stall_ns]]
        return out


class SessionWriter:
    """Applies prepared records to a session file, one transaction per call."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.open_gap_id: int | None = None

    def apply(self, records: list[_WriteRecord]) -> None:
        db = self.db
        with store.transaction(db):
            for record in records:
                if isinstance(record, _Rows):
                    store.execute_rows(db, store.INSERT_EVENT, record.events)
                    store.apply_flow_rows(
                        db, rows.FlowRows(record.links, record.merges, record.assign, record.flows)
                    )
                elif isinstance(record, _GapOpen):
                    if self.open_gap_id is None:
                        self.open_gap_id = store.open_gap(db, record.start_ns, record.reason)
                elif isinstance(record, _GapClose):
                    if self.open_gap_id is not None:
                        store.close_gap(db, self.open_gap_id, record.end_ns)
                        self.open_gap_id = None
                elif isinstance(record, _Dropped):
                    store.add_drops(
                        db, [Drop(ts_ns=record.ts_ns, subject=record.subject, count=record.count)]
                    )
                elif isinstance(record, _Meta):
                    store.set_meta(db, record.values)
                elif isinstance(record, _Stall):
                    store.stall_quiet_flows(db, record.now_ns, record.stall_ns)


def write_records(db: sqlite3.Connection, records: list[Record], correlator: Any = None) -> None:
    """Both stages in this process, through the same encoding as the pipes: for tools and
    tests that write a session without a bus."""
    maker = RowMaker(store.next_event_id(db), correlator)
    prepared = [*maker.prepare(records), *maker.finish(time.time_ns())]
    SessionWriter(db).apply([_decode_prepared(encode_record(r)) for r in prepared])


COLLECT_EVERY_S = 60.0


class CycleCollector:
    """The recorder's processes allocate a few containers per event, and the writer stages
    keep correlation state for up to 50,000 flows: the collector's automatic passes over them
    cost about 6% of the prepare stage's instructions and 4.6% of the bus client's CPU. What
    they allocate per event forms no cycles (the rare cycle, such as an exception's
    traceback, waits for the pass once a minute)."""

    def __init__(self) -> None:
        gc.disable()
        gc.freeze()  # what importing made: never worth a pass
        self.next_at = time.monotonic() + COLLECT_EVERY_S

    def now_and_then(self) -> None:
        now = time.monotonic()
        if now >= self.next_at:
            gc.collect()
            self.next_at = now + COLLECT_EVERY_S

    def close(self) -> None:
        """Back to automatic collection (for a recorder run inside a longer-lived process)."""
        gc.unfreeze()
        gc.enable()


def _gather(conn: Connection, decode: Any, size: Any, take: Any, limit: int) -> tuple[Any, bool]:
    """Take the next records, each as soon as it is decoded (while it is in the CPU's
    cache): the first to arrive and what else is already waiting, up to `limit` events (a
    stage behind the one before it finds a lot; the bound keeps its memory small). Returns
    the last record taken, or None, and whether the pipe has ended; what came before still
    counts."""
    last = None
    events = records = 0
    try:
        while True:
            last = decode(conn.recv_bytes())
            take(last)
            events += size(last)
            records += 1
            if events >= limit or records >= 64 or not conn.poll(0):
                return last, False
    except (EOFError, OSError):
        return last, True


def _record_size(record: Record) -> int:
    return len(record[1]) if record[0] == "E" else 0


def _prepared_size(record: _WriteRecord) -> int:
    return len(record.events) if isinstance(record, _Rows) else 0


def ignore_stop_signals() -> None:
    """The recorder decides when a stage stops. Ctrl-C, `kill -- -PGID`, timeout or a closed
    terminal signal the whole process group: the recorder flushes and ends the pipe, and the
    stage writes what it was sent (a dead recorder ends the pipe too; SIGKILL still stops it)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def run_prepare(
    source: Connection, sink: Connection, next_id: int, correlator_factory: Any | None = None
) -> None:
    """Process entry point: recorder records from `source`, write records to `sink`, until
    "X" or end of pipe. A killed recorder closes the pipe; what was received still goes on."""
    ignore_stop_signals()
    maker = RowMaker(next_id, correlator_factory() if correlator_factory else None)
    collector = CycleCollector()

    def send(records: list[Record]) -> None:
        try:
            for record in records:
                sink.send_bytes(encode_record(record))
        except OSError:
            # The write stage is gone and nothing can reach the file: stop, and let the
            # recorder name the stage that died (exit status 1, no traceback).
            raise SystemExit(1) from None

    stopping = False
    while not stopping:
        try:
            waiting = source.poll(IDLE_TICK_S)
        except (EOFError, OSError):
            break
        if not waiting:
            send(maker.tick(time.time_ns()))
            continue
        last, stopping = _gather(source, _decode_record, _record_size, maker.take, BATCH_EVENTS)
        if last is not None and last[0] == "X":
            stopping = True
        send(maker.flush())
        collector.now_and_then()
    send([*maker.finish(time.time_ns()), ["X"]])
    sink.close()


def run_writer(path: str, source: Connection, recompute_rules: str | None = None) -> None:
    """Process entry point: apply write records from `source` until "X" or end of pipe,
    then recompute the flows of the whole file if `recompute_rules` (their JSON) are given,
    index and close the file."""
    ignore_stop_signals()
    db = store.open_session(Path(path), readonly=False)
    # Per connection, not stored in the file. In WAL mode NORMAL loses nothing committed when
    # a process dies (only a power cut can take the last commits back) and spares an fsync
    # per transaction; the saga journal's own connections keep FULL.
    db.execute("PRAGMA synchronous = NORMAL")
    writer = SessionWriter(db)
    collector = CycleCollector()
    stopping = False
    while not stopping:
        batch: list[_WriteRecord] = []
        last, stopping = _gather(
            source, _decode_prepared, _prepared_size, batch.append, TRANSACTION_EVENTS
        )
        if isinstance(last, _Stop):
            stopping = True
        if batch:
            writer.apply(batch)
        collector.now_and_then()
    if recompute_rules is not None:
        from qixtui.core.flowfile import recorrelate  # flowfile imports this module
        from qixtui.core.rules import rules_from_json

        recorrelate(db, rules_from_json(recompute_rules))
    store.build_read_indexes(db)
    # A finished session is one self-contained file that opens read-only anywhere; while a
    # viewer still has it open that needs a lock we cannot have, and WAL mode stays.
    try:
        db.execute("PRAGMA busy_timeout = 1000")
        db.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.OperationalError:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    db.close()
