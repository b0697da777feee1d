"""The saga journal in a real session file: rows round-trip, one owner per run."""

from __future__ import annotations

from pathlib import Path

import pytest

from qixtui.core import store


def a_run(owner: int | None) -> store.SagaRunRecord:
    return store.SagaRunRecord(
        run_id="r1",
        saga="shop",
        definition='name = "shop"',
        vars={"order_id": "o-1", "amount": 42},
        correlation_id="c-1",
        trace_id="ab" * 16,
        status="running",
        started_ns=1,
        owner_pid=owner,
    )


def test_journal_rows_round_trip_and_an_unanswered_intent_stays_open(session_path: Path) -> None:
    db = store.create_session(session_path)
    store.insert_saga_run(db, a_run(owner=10))
    for seq in (1, 2):
        store.journal_intent(
            db,
            store.JournalRow(
                run_id="r1",
                seq=seq,
                step=f"s{seq}",
                kind="action",
                attempt=0,
                idempotency_key=f"r1:s{seq}:action",
                subject="a.b",
                payload=b"\x00{}",
                headers={"Idempotency-Key": f"r1:s{seq}:action"},
                in_doubt=False,
                intent_ns=100 + seq,
            ),
        )
    store.journal_result(db, "r1", 1, "ok", "", b'{"ok": true}', 200)
    rows = store.saga_journal(db, "r1")
    assert [(r.seq, r.result, r.reply, r.result_ns) for r in rows] == [
        (1, "ok", b'{"ok": true}', 200),
        (2, None, None, None),
    ]
    assert rows[0].payload == b"\x00{}"
    assert rows[1].headers == {"Idempotency-Key": "r1:s2:action"}
    run = store.saga_run(db, "r1")
    assert run is not None
    assert run.vars == {"order_id": "o-1", "amount": 42}


def test_a_run_has_one_owner_while_it_lives(session_path: Path) -> None:
    db = store.create_session(session_path)
    store.insert_saga_run(db, a_run(owner=10))
    with pytest.raises(store.SessionError, match="being run by process 10"):
        store.claim_saga_run(db, "r1", 20, alive=lambda pid: True)
    claimed = store.claim_saga_run(db, "r1", 20, alive=lambda pid: False)  # 10 died
    assert claimed.owner_pid == 20
    store.finish_saga_run(db, "r1", "completed", "done", 5)
    run = store.saga_run(db, "r1")
    assert run is not None
    assert (run.status, run.owner_pid, run.ended_ns) == ("completed", None, 5)
    with pytest.raises(store.SessionError, match="no saga run 'nope'"):
        store.claim_saga_run(db, "nope", 20)


def test_a_skipped_failed_step_is_read_from_what_followed_it() -> None:
    def row(seq: int, step: str, result: str, kind: str = "action") -> store.JournalRow:
        return store.JournalRow(
            "r", seq, step, kind, 0, f"r:{step}:{kind}", "s", b"", {}, False, seq, result
        )

    retried = [row(1, "a", "error"), row(2, "a", "ok")]
    skipped = [row(1, "a", "error"), row(2, "b", "ok")]
    undone = [row(1, "a", "ok"), row(2, "b", "error"), row(3, "a", "ok", "compensate")]
    last = [row(1, "a", "ok"), row(2, "b", "error")]
    assert store.skipped_after_failure(retried) == set()
    assert store.skipped_after_failure(skipped) == {1}
    assert store.skipped_after_failure(undone, "compensated") == set()
    # Found by review: the last step skipped left no row after it; the run still completed.
    assert store.skipped_after_failure(last, "completed") == {2}
    assert store.skipped_after_failure(last, "running") == set()
