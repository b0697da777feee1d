"""Insert paths into the session file, compared in one run: the choice the writer makes.

Run: pytest -m benchmark -s tests/benchmarks/bench_store.py
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import sqlite_utils

from qixtui.core import store
from qixtui.core.model import Event
from qixtui.core.writer import encode_record, write_records

pytestmark = pytest.mark.benchmark

N = 100_000
BATCH = 4_000


def events() -> list[Event]:
    out = []
    for i in range(N):
        body = json.dumps(
            {"order_id": f"o-{i}", "customer_id": "c-42", "amount": 123.45, "note": "x" * 80}
        ).encode()
        headers = [("X-Correlation-ID", f"o-{i}"), ("traceparent", f"00-{i:032x}-{i:016x}-01")]
        out.append(
            Event(
                ts_ns=i,
                subject=f"bench.orders.{i % 16}",
                reply=None,
                headers=headers,
                payload=body,
                id=i + 1,
            )
        )
    return out


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_insert_paths(tmp_path: Path):
    evs = events()

    def executemany(path: Path, drop_index: bool) -> None:
        db = store.create_session(path)
        if drop_index:
            db.execute("DROP INDEX events_flow")
        for i in range(0, N, BATCH):
            with store.transaction(db):
                store.insert_events(db, evs[i : i + BATCH])
        db.close()

    def insert_all(path: Path) -> None:
        db = store.create_session(path)
        table = sqlite_utils.Database(db)["events"]
        cols = ["id", "ts_ns", "subject", "reply", "headers", "payload", "size", "flow_id"]
        for i in range(0, N, BATCH):
            rows = [dict(zip(cols, store.event_row(e), strict=True)) for e in evs[i : i + BATCH]]
            with store.transaction(db):
                table.insert_all(rows, batch_size=BATCH)
        db.close()

    def writer_records(path: Path) -> None:
        """The whole writer path from the pipe's bytes: decode, parse headers, insert."""
        from qixtui.core.writer import _decode_record

        raw = [
            encode_record(
                [
                    "E",
                    [
                        [
                            e.ts_ns,
                            e.subject,
                            None,
                            b"NATS/1.0\r\n"
                            + b"".join(f"{k}: {v}\r\n".encode() for k, v in e.headers or [])
                            + b"\r\n",
                            e.payload,
                        ]
                        for e in evs[i : i + BATCH]
                    ],
                ]
            )
            for i in range(0, N, BATCH)
        ]
        db = store.create_session(path)
        for blob in raw:
            write_records(db, [_decode_record(blob)])
        db.close()

    base = timed(lambda: executemany(tmp_path / "a.qix", drop_index=False))
    no_index = timed(lambda: executemany(tmp_path / "b.qix", drop_index=True))
    utils = timed(lambda: insert_all(tmp_path / "c.qix"))
    full = timed(lambda: writer_records(tmp_path / "d.qix"))
    # What closing a recording adds: the read indexes filters use (store.build_read_indexes).
    closing = store.open_session(tmp_path / "a.qix", readonly=False)
    indexing = timed(lambda: store.build_read_indexes(closing))
    closing.close()
    print(
        f"\n[store] {N:,} events in batches of {BATCH:,}\n"
        f"  executemany (flow index)   : {N / base:>9,.0f} ev/s  (baseline)\n"
        f"  executemany (no index)     : {N / no_index:>9,.0f} ev/s  ratio {base / no_index:.2f}\n"
        f"  sqlite-utils insert_all    : {N / utils:>9,.0f} ev/s  ratio {base / utils:.2f}\n"
        f"  writer from pipe bytes     : {N / full:>9,.0f} ev/s  ratio {base / full:.2f}\n"
        f"  read indexes at close      : {indexing:>9.2f} s for {N:,} events, once "
        f"({indexing / base:.2f} of the time recording them took; nothing per insert)"
    )
    assert (
        store.open_session(tmp_path / "d.qix").execute("SELECT count(*) FROM events").fetchone()[0]
        == N
    )


def index_seconds(path: Path, payloads: list[bytes]) -> float:
    db = store.create_session(path)
    rows = [Event(i, "bench.blob", None, [("K", "v")], p, i + 1) for i, p in enumerate(payloads)]
    with store.transaction(db):
        store.insert_events(db, rows)
    start = time.perf_counter()
    store.build_read_indexes(db)
    took = time.perf_counter() - start
    db.close()
    return took


def test_closing_a_recording_of_large_or_binary_payloads(tmp_path: Path):
    """Closing indexes the file; payloads over store.SEARCH_PAYLOAD_MAX, or binary, stay
    out of the indexes (forty random 1 MB payloads took a minute when they were in, 40,000
    random 1 kB ones 37 s). Baseline: 40,000 JSON payloads of 1 kB, indexed."""
    rng = random.Random(1)
    large = [rng.randbytes(1 << 20) for _ in range(40)]
    binary = [rng.randbytes(1 << 10) for _ in range(40_000)]
    words = [f"w{rng.randrange(100_000)}" for _ in range(100)]
    text = [
        json.dumps({"order_id": f"o-{i}", "note": " ".join(rng.choices(words, k=140))}).encode()[
            :1024
        ]
        for i in range(40_000)
    ]
    large_s = index_seconds(tmp_path / "large.qix", large)
    binary_s = index_seconds(tmp_path / "binary.qix", binary)
    text_s = index_seconds(tmp_path / "text.qix", text)
    print(
        f"\nindexing 40 random payloads of 1 MB: {large_s:.2f}s (ratio {large_s / text_s:.3f}); "
        f"40,000 random of 1 kB: {binary_s:.2f}s (ratio {binary_s / text_s:.3f}); "
        f"baseline, 40,000 JSON of 1 kB: {text_s:.2f}s"
    )
