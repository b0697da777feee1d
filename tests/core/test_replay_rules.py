"""Replay rules: selection, schedule, deny list, subject and header rewrite, the dry run."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qixtui.core import filters, store
from qixtui.core.model import Event, Flow, FlowChanges
from qixtui.core.replay import (
    BAD_SUBJECT,
    RECORDED_REPLY,
    REPLIES_REFRESH_SQL,
    REPLIES_TABLE_SQL,
    DryRun,
    Outgoing,
    Plan,
    Replay,
    ReplayError,
    Schedule,
    Selection,
    check_prefix,
    confirmation_name,
    deny_reason,
    header_block,
    looks_like_source,
    oversize_bound_sql,
    parse_duration,
    parse_speed,
    selection_sql,
)
from qixtui.core.rows import parse_header_block

MS = 1_000_000


@pytest.mark.parametrize(
    "subject",
    [
        "$JS.API.STREAM.DELETE.ORDERS",
        "$JS.EVENT.ADVISORY.API",
        "$KV.config.key",
        "$O.files.chunk",
        "$SYS.REQ.SERVER.PING",
        "$SRV.PING",
        "_INBOX.abc.def",
        "$JSC.something",
    ],
)
def test_server_namespaces_are_never_published(subject: str) -> None:
    assert deny_reason(subject, recorded_reply=False) is not None


def test_recorded_reply_inboxes_are_never_published() -> None:
    assert deny_reason("my.inbox.1", recorded_reply=True) == RECORDED_REPLY
    assert deny_reason("my.inbox.1", recorded_reply=False) is None


@pytest.mark.parametrize("subject", ["", "a..b", "a b", "orders.*", "orders.>", ".a"])
def test_unpublishable_subjects_are_skipped(subject: str) -> None:
    assert deny_reason(subject, recorded_reply=False) == BAD_SUBJECT


def test_lookalikes_of_denied_subjects_pass() -> None:
    for subject in ["JS.API.x", "KV.x", "INBOX.x", "orders.$JS.API", "$JSX.y"]:
        assert deny_reason(subject, recorded_reply=False) is None, subject


def test_prefix_is_checked_and_ends_with_a_dot() -> None:
    assert check_prefix("replay.test") == "replay.test."
    assert check_prefix("r.") == "r."
    for bad in ["a..b.", "a.*.", "a.>", " a.", ".", "x y."]:
        with pytest.raises(ReplayError):
            check_prefix(bad)


@pytest.mark.parametrize("prefix", ["$JS.API.", "$JS", "$SYS.", "_INBOX.x.", "$KV.cfg."])
def test_a_prefix_into_a_server_namespace_is_refused(prefix: str) -> None:
    # `$JS.API.` before a recorded STREAM.DELETE.ORDERS deleted a stream (a tester's)
    with pytest.raises(ReplayError, match=r"replay never publishes to the .*\(\$|_INBOX"):
        check_prefix(prefix)


def test_speed_and_duration_parsing() -> None:
    assert parse_speed("max") is None
    assert parse_speed("MAX") is None
    assert parse_speed("10") == 10.0
    assert parse_speed("0.5") == 0.5
    for bad in ["0", "-1", "fast", "inf", "nan"]:
        with pytest.raises(ReplayError):
            parse_speed(bad)
    assert parse_duration("2s") == 2_000_000_000
    assert parse_duration("500ms") == 500 * MS
    assert parse_duration("1.5m") == 90_000_000_000
    assert parse_duration("3") == 3_000_000_000
    assert parse_duration("1h") == 3600 * 10**9
    for bad in ["", "2 weeks", "-1s", "s"]:
        with pytest.raises(ReplayError):
            parse_duration(bad)


def test_schedule_keeps_gaps_at_1x() -> None:
    sched = Schedule(1.0)
    stamps = [1000 * MS, 1010 * MS, 1050 * MS, 1050 * MS]
    assert [sched.due(t) for t in stamps] == [0, 10 * MS, 50 * MS, 50 * MS]


def test_schedule_speed_divides_and_max_gap_squashes() -> None:
    sched = Schedule(10.0, max_gap_ns=2000 * MS)
    stamps = [0, 100 * MS, 60_100 * MS, 60_200 * MS]
    # 100 ms -> 10 ms; a 60 s idle stretch -> 2 s -> 200 ms; 100 ms -> 10 ms
    assert [sched.due(t) for t in stamps] == [0, 10 * MS, 210 * MS, 220 * MS]


def test_schedule_max_speed_never_waits_and_clock_steps_back_count_as_no_gap() -> None:
    assert [Schedule(None).due(t) for t in [5, 10**12, 3]] == [0, 0, 0]
    sched = Schedule(1.0)
    assert [sched.due(t) for t in [100 * MS, 90 * MS, 95 * MS]] == [0, 0, 5 * MS]


def test_header_block_keeps_order_and_repeats_and_adds_replay_headers() -> None:
    pairs = [("B-Name", "2"), ("a-name", "1"), ("B-Name", "3"), ("Nats-Msg-Id", "m-7")]
    block = header_block(pairs, "s1", 42)
    assert block.startswith(b"NATS/1.0\r\n")
    assert block.endswith(b"\r\n\r\n")
    assert parse_header_block(block) == [
        ("B-Name", "2"),
        ("a-name", "1"),
        ("B-Name", "3"),
        ("Nats-Msg-Id", "s1:m-7"),
        ("Qixtui-Replay-Session", "s1"),
        ("Qixtui-Replay-Seq", "42"),
    ]
    kept = parse_header_block(header_block(pairs, "s1", 42, keep_msg_id=True))
    assert ("Nats-Msg-Id", "m-7") in kept
    assert parse_header_block(header_block(None, "s", 1)) == [
        ("Qixtui-Replay-Session", "s"),
        ("Qixtui-Replay-Seq", "1"),
    ]


def test_plan_survives_its_audit_row() -> None:
    plan = Plan(
        session="ab12",
        prefix=None,
        selection=Selection(subject="orders.>", flow_id=3, since_ns=5, status="failed", limit=9),
        speed=None,
        max_gap_ns=2 * 10**9,
        requests=True,
        keep_msg_id=True,
    )
    assert Plan.from_json(plan.to_json()) == plan


def test_looks_like_source_by_id_or_name() -> None:
    meta = {"server_id": "NABC", "server_name": "prod-1"}
    assert looks_like_source(meta, "NABC", "other")
    assert looks_like_source(meta, "NXYZ", "prod-1")
    assert not looks_like_source(meta, "NXYZ", "staging")
    assert not looks_like_source({}, "", "")


def test_looks_like_source_by_cluster_or_address() -> None:
    meta = {"server_id": "NABC", "server": "nats://localhost:4333,tls://b.example:4222"}
    meta["server_clusters"] = "prod"
    assert looks_like_source(meta, "N2", "prod-2", "prod")  # another node of the cluster
    assert not looks_like_source(meta, "N2", "prod-2", "staging")
    assert looks_like_source(meta, "NEW", "NEW", "", "nats://127.0.0.1:4333")  # restarted
    assert looks_like_source(meta, "NEW", "NEW", "", "B.example")  # default port
    assert not looks_like_source(meta, "NEW", "NEW", "", "nats://127.0.0.1:4334")
    assert not looks_like_source({"server": "nats://:bad"}, "N", "N", "", "nats://:bad")
    assert confirmation_name("NABC", "prod-1") == "prod-1"
    assert confirmation_name("NABC", "") == "NABC"  # a server with no name: its id


# --- against a session file (real SQLite) -------------------------------------------------


def make_session(path: Path) -> sqlite3.Connection:
    db = store.create_session(path, {"server_id": "N1"})
    events = [
        Event(1000 * MS, "orders.created", None, [("X-Correlation-ID", "o-1")], b"a", id=1),
        Event(1010 * MS, "orders.a.b", "app.reply.1", None, b"bb", id=2, flow_id=7),
        Event(1020 * MS, "app.reply.1", None, None, b"ccc", id=3, flow_id=7),
        Event(1030 * MS, "$JS.API.STREAM.DELETE.X", "_INBOX.q", None, b"", id=4),
        Event(1040 * MS, "_INBOX.q", None, None, b"{}", id=5),
        Event(1050 * MS, "orders.shipped", None, None, b"d" * 100, id=6, flow_id=8),
        Event(1060 * MS, "orders.created", None, None, b"e", id=7, flow_id=8),
    ]
    with store.transaction(db):
        store.insert_events(db, events)
        store.apply_flow_changes(
            db,
            FlowChanges(flows=[Flow(7, "failed", 1010 * MS, 1020 * MS, 2), Flow(8, "ok", 0, 0, 2)]),
        )
    return db


def run(
    db: sqlite3.Connection, plan: Plan, after_id: int = 0, last_seq: int = 0
) -> tuple[Replay, list[Outgoing]]:
    replay = Replay(plan, last_seq)
    db.execute(REPLIES_TABLE_SQL)
    filters.install_functions(db)
    db.execute(REPLIES_REFRESH_SQL, (0,))
    sql, params = selection_sql(plan.selection, after_id, last_id=plan.last_id)
    return replay, [o for row in db.execute(sql, params) if (o := replay.next(row))]


def test_replay_skips_denied_and_recorded_replies_and_numbers_the_rest(tmp_path: Path) -> None:
    db = make_session(tmp_path / "s.qix")
    replay, out = run(db, Plan(session="s", prefix="r.s."))
    assert [(o.seq, o.event_id, o.subject) for o in out] == [
        (1, 1, "r.s.orders.created"),
        (2, 2, "r.s.orders.a.b"),
        (3, 6, "r.s.orders.shipped"),
        (4, 7, "r.s.orders.created"),
    ]
    assert out[1].request
    assert not out[0].request
    assert out[0].payload == b"a"
    assert parse_header_block(out[0].headers)[0] == ("X-Correlation-ID", "o-1")
    assert out[0].size == len(out[0].headers) + 1
    assert sum(replay.skipped.values()) == 3
    assert replay.skipped[RECORDED_REPLY] == 1


def test_a_resumed_plan_never_publishes_into_a_server_namespace(tmp_path: Path) -> None:
    # A plan read back from the file to resume a replay has not been through check_prefix.
    db = make_session(tmp_path / "s.qix")
    replay, out = run(db, Plan.from_json(Plan(session="s", prefix="$JS.API.").to_json()))
    assert out == []
    assert replay.skipped["JetStream API or advisory ($JS.>)"] >= 4  # all 4 sent before


def test_selection_by_subject_flow_status_time_and_limit(tmp_path: Path) -> None:
    db = make_session(tmp_path / "s.qix")

    def ids(selection: Selection, after_id: int = 0, last_seq: int = 0) -> list[int]:
        plan = Plan(session="s", prefix=None, selection=selection)
        return [o.event_id for o in run(db, plan, after_id, last_seq)[1]]

    assert ids(Selection(subject="orders.*")) == [1, 6, 7]
    assert ids(Selection(subject="orders.>")) == [1, 2, 6, 7]
    assert ids(Selection(flow_id=8)) == [6, 7]
    assert ids(Selection(status="failed")) == [2]
    assert ids(Selection(since_ns=1010 * MS, until_ns=1060 * MS)) == [2, 6]
    assert ids(Selection(limit=2)) == [1, 2]
    # The TUI's filter language: what its event list shows is what gets published.
    assert ids(Selection(filter="subject:orders.* flow:8")) == [6, 7]
    assert ids(Selection(filter="status:failed")) == [2]
    assert ids(Selection(filter="header:X-Correlation-ID=o-1")) == [1]
    assert ids(Selection(filter="text:bb")) == [2]
    # A resume continues after the saved event and counts what was already sent.
    assert ids(Selection(limit=3), after_id=2, last_seq=2) == [6]
    assert ids(Selection(), after_id=2, last_seq=2) == [6, 7]


def test_dry_run_totals_and_oversize(tmp_path: Path) -> None:
    db = make_session(tmp_path / "s.qix")
    plan = Plan(session="s", prefix="r.")
    out = run(db, plan)[1]
    report = DryRun(max_payload=len(out[2].headers) + 99)
    for o in out:
        report.add(o)
    assert report.messages == 4
    assert report.bytes == sum(o.size for o in out)
    assert report.requests == 1
    created = report.subjects["orders.created"]
    assert (created.target, created.count) == ("r.orders.created", 2)
    assert (created.first_ns, created.last_ns) == (1000 * MS, 1060 * MS)
    # 100 payload bytes + headers is one byte over; headers count toward max_payload.
    assert report.oversize == [(3, 6, "orders.shipped", out[2].size)]


header_names = st.sampled_from(["Nats-Msg-Id", "nats-msg-id", "X-Correlation-ID", "ä-name", "T"])
header_values = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=40
)


@settings(max_examples=200, deadline=None)
@given(
    pairs=st.lists(st.tuples(header_names, header_values), max_size=8),
    payload_size=st.integers(0, 300),
    session=st.sampled_from(["s", "ab12cd34", "a-much-longer-session-id-0123456789"]),
    seq=st.integers(1, 10**12),
)
def test_oversize_bound_never_misses_a_message_too_large(
    pairs: list[tuple[str, str]], payload_size: int, session: str, seq: int
) -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    store.MIGRATIONS[0](db)
    event = Event(1, "orders.x", None, pairs or None, b"p" * payload_size, id=1)
    store.insert_events(db, [event])
    db.execute(REPLIES_TABLE_SQL)
    db.execute(REPLIES_REFRESH_SQL, (0,))
    plan = Plan(session=session, prefix="r.")
    sql, params = selection_sql(plan.selection)
    out = Replay(plan, last_seq=seq - 1).next(db.execute(sql, params).fetchone())
    assert out is not None
    for max_payload in (out.size - 1, out.size // 2, 0):
        bound_sql, bound_params = oversize_bound_sql(plan.selection, 0, session, max_payload)
        assert db.execute(bound_sql, bound_params).fetchone()[0] == 1
    exact_ok, exact_params = oversize_bound_sql(plan.selection, 0, session, 10**9)
    assert db.execute(exact_ok, exact_params).fetchone()[0] == 0


def test_selection_pages(tmp_path: Path) -> None:
    db = make_session(tmp_path / "s.qix")
    db.execute(REPLIES_TABLE_SQL)
    sql, params = selection_sql(Selection(), after_id=1, page=2)
    assert [row[0] for row in db.execute(sql, params)] == [2, 3]


def test_a_plan_stops_at_the_newest_event_when_it_was_made(tmp_path: Path) -> None:
    db = make_session(tmp_path / "s.qix")
    plan = Plan(session="s", prefix="r.", last_id=2)
    assert [o.event_id for o in run(db, plan)[1]] == [1, 2]
    sql, params = oversize_bound_sql(plan.selection, 0, "s", 0, plan.last_id)
    assert db.execute(sql, params).fetchone()[0] == 2


stored_names = st.sampled_from(
    ["Nats-Msg-Id", "NATS-MSG-ID", "nats-msg-idx", "X-Msg-Id", "ä-name", "T", "Back\\slash"]
)


@settings(max_examples=300, deadline=None)
@given(
    pairs=st.lists(st.tuples(stored_names, header_values), max_size=6),
    keep_msg_id=st.booleans(),
    ascii_json=st.booleans(),
    seq=st.integers(0, 10**9),
)
def test_headers_from_stored_json_match_the_header_rules(
    pairs: list[tuple[str, str]], keep_msg_id: bool, ascii_json: bool, seq: int
) -> None:
    """The full-speed path builds header blocks from the stored JSON text and only looks at
    the pairs when the text may name Nats-Msg-Id; whatever JSON spelling a file holds
    (msgspec's UTF-8 or escaped ASCII), the block is the one the rules describe."""
    text = json.dumps(pairs, ensure_ascii=ascii_json) if pairs or ascii_json else None
    row = (1, 5, "orders.x", None, text, b"p", 0)
    plan = Plan(session="s9", prefix="r.", keep_msg_id=keep_msg_id)
    out = Replay(plan, last_seq=seq).next(row)
    assert out is not None
    lines = "".join(
        f"{name}: s9:{value}\r\n"
        if name.lower() == "nats-msg-id" and not keep_msg_id
        else f"{name}: {value}\r\n"
        for name, value in pairs
    )
    expected = (
        f"NATS/1.0\r\n{lines}Qixtui-Replay-Session: s9\r\nQixtui-Replay-Seq: {seq + 1}\r\n\r\n"
    )
    assert out.headers == expected.encode()
    assert out.headers == header_block(pairs, "s9", seq + 1, keep_msg_id)


def test_a_msg_id_name_spelled_with_json_escapes_is_still_rewritten() -> None:
    row = (1, 5, "orders.x", None, '[["Nats-\\u004dsg-Id","m-1"]]', b"", 0)
    out = Replay(Plan(session="s9", prefix="r."), last_seq=0).next(row)
    assert out is not None
    assert parse_header_block(out.headers)[0] == ("Nats-Msg-Id", "s9:m-1")


def test_a_bad_filter_is_a_replay_error() -> None:
    with pytest.raises(ReplayError, match="filter"):
        selection_sql(Selection(filter="json:nope"))
