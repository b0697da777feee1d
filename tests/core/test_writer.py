"""The writer's two stages in one process: records in, rows out, a session file written."""

from __future__ import annotations

import gc
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

from qixtui.core import store, writer
from qixtui.core.correlate import Correlator, correlate_all
from qixtui.core.model import Event
from qixtui.core.rules import RuleFlags, Rules
from qixtui.core.writer import CycleCollector, RowMaker, write_records


def test_events_are_never_moved_past_a_gap_or_a_stop_mark() -> None:
    maker = RowMaker(next_id=1)
    out = maker.prepare(
        [
            ["E", [[1, "a.b", None, None, b"1"]]],
            ["G-", 2],
            ["E", [[3, "a.b", None, None, b"3"]]],
            ["M", {"stopped_ns": "4"}],
            ["X"],
        ]
    )
    assert [record[0] for record in out] == ["R", "G-", "R", "M"]
    assert [row[0] for row in out[0][1]] == [1]
    assert [row[0] for row in out[2][1]] == [2]


def test_written_rows_read_back_exactly(tmp_path: Path) -> None:
    db = store.create_session(tmp_path / "w.qix")
    header = b"NATS/1.0\r\nX-Correlation-ID: o-1\r\n\r\n"
    write_records(
        db,
        [
            ["E", [[10, "a.b", "inbox.1", header, b"\x00\xff"], [11, "a.c", None, None, b""]]],
            ["G+", 12, "disconnected"],
            ["G-", 13],
            ["D", 14, "a.b", 3],
        ],
    )
    rows = db.execute("SELECT id, reply, headers, payload, size FROM events ORDER BY id").fetchall()
    assert rows == [
        (1, "inbox.1", '[["X-Correlation-ID","o-1"]]', b"\x00\xff", 2),
        (2, None, None, b"", 0),
    ]
    assert db.execute("SELECT start_ns, end_ns, reason FROM gaps").fetchall() == [
        (12, 13, "disconnected")
    ]
    assert db.execute("SELECT subject, count FROM drops").fetchall() == [("a.b", 3)]


@pytest.mark.parametrize("part", [writer.PART_EVENTS, 2, 1])
def test_merges_and_adoptions_inside_a_batch_land_in_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, part: int
) -> None:
    """Rows of a batch are written after correlating it, so a flow born and absorbed in the
    batch, or a flowless event adopted in it, is set in the event rows themselves, whichever
    part of the batch they were linked in; across batches the file is updated. Either way
    the file ends as correlation saw it."""
    monkeypatch.setattr(writer, "PART_EVENTS", part)
    rules = Rules().merged_with(RuleFlags(keys=["/order_id", "/shipment_id"]))

    now = time.time_ns()  # the prepare stage's clock: older events would be long forgotten

    def frame(eid: int, subject: str, payload: bytes, reply: str | None = None) -> list[Any]:
        return [now + eid, subject, reply, None, payload]

    batches = [
        [
            frame(1, "shop.order.placed", b'{"order_id": "o1"}'),
            frame(2, "shop.q.ask", b"{}", "_I.1"),
        ],
        [
            frame(3, "shop.shipment.made", b'{"shipment_id": "s1"}'),  # born here, then
            frame(4, "shop.shipment.bridge", b'{"order_id": "o1", "shipment_id": "s1"}'),
            frame(5, "shop.q.ask", b"{}", "_I.2"),  # flowless, adopted by its reply here
            frame(6, "_I.2", b'{"order_id": "o2"}'),
            frame(7, "_I.1", b'{"order_id": "o1"}'),  # adopts event 2 of the first batch
        ],
        [frame(8, "shop.order.placed", b'{"order_id": "o4"}')],
        [frame(9, "shop.order.fixed", b'{"order_id": "o4", "shipment_id": "s1"}')],  # 8 -> 1
        [  # a chain: 11 goes into 10, then 10 into 1
            frame(10, "shop.order.placed", b'{"order_id": "o7"}'),
            frame(11, "shop.shipment.made", b'{"shipment_id": "s7"}'),
            frame(12, "shop.shipment.bridge", b'{"order_id": "o7", "shipment_id": "s7"}'),
            frame(13, "shop.order.fixed", b'{"order_id": "o1", "shipment_id": "s7"}'),
        ],
    ]
    records: list[list[Any]] = []
    for batch in batches:  # a metadata record between them keeps the batches apart
        records += [["E", batch], ["M", {"batch": str(len(records))}]]
    prepared = [r for r in RowMaker(1, Correlator(rules)).prepare(records) if r[0] == "R"]
    # (merges, assign) left for UPDATEs: only what reaches back into an earlier batch
    assert [(r[3], r[4]) for r in prepared] == [
        ([], []),
        ([], [(1, 2)]),
        ([], []),
        ([(8, 1)], []),
        ([], []),
    ]
    db = store.create_session(tmp_path / "m.qix")
    write_records(db, records, Correlator(rules))

    in_file = dict(db.execute("SELECT id, flow_id FROM events").fetchall())
    assert in_file == {**{i: 1 for i in range(1, 14)}, 5: 6, 6: 6}
    flows = db.execute("SELECT flow_id, events FROM flows ORDER BY flow_id").fetchall()
    assert flows == [(1, 11), (6, 2)]
    events = [
        Event(ts_ns=f[0], subject=f[1], reply=f[2], headers=None, payload=f[4], id=f[0] - now)
        for batch in batches
        for f in batch
    ]
    assert {fid: sorted(ids) for fid, ids in correlate_all(events, rules).items()} == {
        1: [1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 13],
        6: [5, 6],
    }


def test_a_flow_absorbed_twice_in_a_batch_takes_its_older_events_along(tmp_path: Path) -> None:
    """Flow 1 (an earlier batch) goes into flow 2, then 2 into 5, all in one batch: event 1,
    already in the file, must end in flow 5, not in flow 2, which no longer exists."""
    rules = Rules().merged_with(RuleFlags(keys=["/order_id", "/shipment_id"]))
    now = time.time_ns()
    order = [now + 1, "shop.order.placed", None, None, b'{"order_id": "o1"}']
    shipment = [
        [now + i, "shop.shipment.made", None, None, b'{"shipment_id": "s2"}'] for i in (2, 3)
    ]
    bridge = [
        now + 4,
        "shop.shipment.bridge",
        None,
        None,
        b'{"order_id": "o1", "shipment_id": "s2"}',
    ]
    bigger = [
        [now + i, "shop.order.placed", None, None, b'{"order_id": "o9"}'] for i in range(5, 10)
    ]
    joined = [now + 10, "shop.order.fixed", None, None, b'{"order_id": "o9", "shipment_id": "s2"}']
    records: list[list[Any]] = [
        ["E", [order]],
        ["M", {"between": "batches"}],
        ["E", [*shipment, bridge, *bigger, joined]],
    ]
    db = store.create_session(tmp_path / "chain.qix")
    write_records(db, records, Correlator(rules))
    assert db.execute("SELECT DISTINCT flow_id FROM events").fetchall() == [(5,)]
    assert db.execute("SELECT flow_id, events FROM flows").fetchall() == [(5, 10)]


@pytest.mark.parametrize("end", ["tick", "finish"])
def test_a_stall_check_or_the_end_hands_out_the_open_batch_first(
    monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    monkeypatch.setattr(writer, "PART_EVENTS", 1)  # event 1's row is made before the merge
    rules = Rules().merged_with(RuleFlags(keys=["/a", "/b"]))
    now = time.time_ns()
    payloads = [b'{"a": "1"}', b'{"b": "2"}', b'{"b": "2"}', b'{"a": "1", "b": "2"}']
    maker = RowMaker(1, Correlator(rules))
    maker.take(["E", [[now + i, "s.x", None, None, p] for i, p in enumerate(payloads, 1)]])
    out = maker.tick(now + 10) if end == "tick" else maker.finish(now + 10)
    prepared = [r for r in out if r[0] == "R"]
    assert [row[7] for row in prepared[0][1]] == [2, 2, 2, 2]  # flow 1 went into flow 2
    assert {flow[0] for r in prepared for flow in r[5]} == {2}


def test_an_appending_recorder_is_not_stopped() -> None:
    assert store.recording_stopped({"started_ns": "5", "stopped_ns": "9"})
    assert not store.recording_stopped({"started_ns": "5"})
    # Appending to a finished session: the old stop mark predates the new start.
    assert not store.recording_stopped({"started_ns": "10", "stopped_ns": "9"})


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_the_writer_stages_free_reference_cycles_once_a_minute():
    collector = CycleCollector()
    try:
        assert not gc.isenabled()
        first, second = _Node(), _Node()
        first.other, second.other = second, first
        freed = weakref.ref(first)
        del first, second
        collector.now_and_then()
        assert freed() is not None  # not a minute yet: the cycle is still there
        collector.next_at = 0  # a minute later
        collector.now_and_then()
        assert freed() is None
    finally:
        collector.close()
