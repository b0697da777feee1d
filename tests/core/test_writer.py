"""The writer's two stages in one process: records in, rows out, a session file written."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from qixtui.core import store
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
