"""The filter language: parsing, error messages, and the SQL it builds run on a real file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from qixtui.core import filters, store
from qixtui.core.model import Event, Flow


def _event(i: int, subject: str, payload: bytes, headers=None, flow: int | None = None) -> Event:
    return Event(
        ts_ns=1_000 + i, subject=subject, reply=None, headers=headers, payload=payload, id=i,
        flow_id=flow,
    )  # fmt: skip


@pytest.fixture
def db(session_path: Path) -> sqlite3.Connection:
    conn = store.create_session(session_path)
    events = [
        _event(1, "orders.1.created", b'{"order_id": 1, "amount": 10}', [("X-Trace", "a")], 1),
        _event(2, "orders.2.created", b'{"order_id": 2, "ok": true}', [("x-trace", "b")], 2),
        _event(3, "orders.2.paid.late", b"plain hello world", None, 2),
        _event(4, "shop.order.placed", b'{"data": {"items": [{"sku": "A-1"}]}}', None, 3),
        _event(5, "shop.x", b"\xff\xfe not json", [("Dup", "1"), ("Dup", "2")], None),
    ]
    with store.transaction(conn):
        store.insert_events(conn, events)
        store.upsert_flows(
            conn,
            [
                Flow(1, "completed", 1_000, 1_000 + 3_000_000_000, 1),
                Flow(2, "failed", 1_000, 1_000 + 500_000_000, 2),
                Flow(3, "completed", 1_000, 1_000 + 10, 1),
            ],
        )
    filters.install_functions(conn)
    return conn


def ids(db: sqlite3.Connection, text: str) -> list[int]:
    where = filters.build(filters.parse(text))
    return [
        r[0]
        for r in db.execute(f"SELECT id FROM events WHERE {where.sql} ORDER BY id", where.params)
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [1, 2, 3, 4, 5]),
        ("orders.*.created", [1, 2]),
        ("orders.>", [1, 2, 3]),
        ("orders.*", []),
        ("*.2.>", [2, 3]),
        ("subject:shop.x", [5]),
        ("shop.>", [4, 5]),
        ("header:x-trace=a", [1]),
        ("header:X-TRACE", [1, 2]),
        ("header:Dup=2", [5]),
        ("json:/order_id=2", [2]),
        ("json:/amount", [1]),
        ("json:/ok=true", [2]),
        ("json:/order_id=99999999999999999999", []),  # too large for SQLite: a real number
        ("json:/data/items/0/sku=A-1", [4]),
        ('json:/data/items/0/sku="A-1"', [4]),
        ("hello", [3]),
        ('"hello world"', [3]),
        ("text:order_id", [1, 2]),
        ("status:failed", [2, 3]),
        ("flow:1", [1]),
        ("duration>2s", [1]),
        ("duration<=500ms", [2, 3, 4]),
        ("orders.> status:failed hello", [3]),
    ],
)
def test_filters_select_the_right_events(
    db: sqlite3.Connection, text: str, expected: list[int]
) -> None:
    assert ids(db, text) == expected


def test_a_header_filter_matches_names_only_never_the_same_text_in_a_value(
    session_path: Path,
) -> None:
    db = store.create_session(session_path)
    events = [
        _event(1, "a", b"", [("Note", "X-Trace")]),
        _event(2, "a", b"", [("Note", '["x-trace",'), ("Other", "1")]),
        _event(3, "a", b"", [('Say "hi"', "1"), ("\x1b[2J", "esc")]),
        _event(4, "a", b"", [("Ünïcode", "ü"), ("x-trace", "X-Trace")]),
        _event(5, "a", b"", None),
        # Found by review: a value ending in `[` next to a name starting with `,` or `]`
        _event(6, "a", b"", [("q[", ",x"), ("a", "x["), (",z", "v")]),
    ]
    with store.transaction(db):
        store.insert_events(db, events)
    filters.install_functions(db)
    assert ids(db, "header:X-Trace") == [4]
    assert ids(db, "header:x-trace=X-Trace") == [4]
    assert ids(db, "header:Note=X-Trace") == [1]
    assert ids(db, 'header:"say \\"HI\\""') == [3]
    assert ids(db, "header:\x1b[2J") == [3]
    assert ids(db, "header:Ünïcode") == [4]
    assert ids(db, "header:Other=1") == [2]
    assert ids(db, "header:Other=2") == []
    assert ids(db, "header:,") == []
    assert ids(db, "header:],[") == []
    assert ids(db, "header:,z") == [6]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("foo:bar", "unknown filter 'foo:'"),
        ('"open', "unclosed quote"),
        ("orders.>.x", "'>' may only be the last token"),
        ("orders.a*", "'*' must be a whole token"),
        ("cpu.load>90", "'>' must be a whole token"),
        ("json:order_id=1", "must start with '/'"),
        ("flow:abc", "a flow id is a number"),
        ("header:=x", "header: needs a name"),
        ("duration>soon", "write duration>2s"),
        ("status:", "status: needs a value"),
        ("status:bogus", "a flow is running, completed"),
        ("subject:orders..x", "empty token"),
        ('"subject:orders x"', "white space"),
        ("flow:99999999999999999999", "a flow id is a number up to"),
        ("duration>99999999999999999999h", "longer than any recording"),
        ("duration>" + "9" * 400, "longer than any recording"),  # float: infinity
    ],
)
def test_bad_filters_say_why(text: str, message: str) -> None:
    with pytest.raises(filters.FilterError) as info:
        filters.parse(text)
    assert message in str(info.value)


def test_quote_term_round_trips() -> None:
    term = filters.quote_term("header:X-Name=two words")
    assert filters.parse(term).terms == (filters.Term("header", "X-Name", "=", "two words"),)


def test_pointer_escapes() -> None:
    assert filters.pointer_to_path("/a~1b/m~0n/3") == '$."a/b"."m~n"[3]'


def test_durations() -> None:
    assert filters.parse_duration_ns("1.5m") == 90_000_000_000
    assert filters.parse_duration_ns("150ms") == 150_000_000


CASES = [
    "",
    "orders.*.created",
    "orders.>",
    "*.2.>",
    "subject:shop.x",
    "subject:no.such",
    "header:x-trace=a",
    "header:Dup=2",
    "header:Route=a/b",
    'header:Quote=say "hi"',
    "json:/order_id=2",
    "json:/path=a/b",
    "json:/name=café",
    "json:/data/items/0/sku=A-1",
    "json:/ok=true",
    "hello",
    "status:failed",
    "flow:1",
    "flow:99",
    "duration>2s",
    "orders.> status:failed hello",
    "ell",  # inside a word
    "lo wo",
    'text:\'"path": "a-b"\'',  # quotes inside the trigram query
    "refund",  # after bytes that are not UTF-8
    "fund\x80",
    "no such text",
    "hi",  # too short for a trigram: scans
    "café",  # not ASCII: scans, the trigram index would miss event 9
]


@pytest.fixture
def escapes(db: sqlite3.Connection) -> sqlite3.Connection:
    """Values the way other encoders write them: `\\/`, `\\u00e9`, an escaped quote."""
    more = [
        _event(6, "route.a", rb'{"path": "a\/b", "name": "caf\u00e9"}', [("Route", "a/b")], 3),
        _event(7, "route.b", b'{"path": "a-b"}', [("Quote", 'say "hi"')], None),
        _event(8, "bin.x", b"\x00\xff\xc3refund\x80\xe2\x82 hi", None, None),
        # The trigram tokenizer folds the stray \x80 into the é before it.
        _event(9, "bin.y", b"caf\xc3\xa9\x80", None, None),
    ]
    with store.transaction(db):
        store.insert_events(db, more)
    return db


@pytest.mark.parametrize("indexed", [False, True])
@pytest.mark.parametrize("text", CASES)
def test_plan_selects_what_build_selects(
    escapes: sqlite3.Connection, text: str, indexed: bool
) -> None:
    if indexed:
        store.build_read_indexes(escapes)
    where = filters.plan(escapes, filters.parse(text))
    got = [r[0] for r in escapes.execute(f"SELECT id FROM events WHERE {where.sql}", where.params)]
    assert sorted(got) == ids(escapes, text)
    if where.rows is not None:
        assert len(got) <= where.rows


def test_plan_bounds_rare_terms_through_indexes(db: sqlite3.Connection) -> None:
    assert filters.plan(db, filters.parse("subject:shop.x")).rows is None  # no indexes yet
    assert filters.plan(db, filters.parse("status:failed")).rows == 2  # the flows table knows
    store.build_read_indexes(db)
    assert store.read_indexes_ready(db)
    assert filters.plan(db, filters.parse("orders.*.created")).rows == 2
    assert filters.plan(db, filters.parse("header:x-trace=a")).rows == 1
    assert filters.plan(db, filters.parse("json:/amount=10")).rows == 1
    assert filters.plan(db, filters.parse("json:/order_id=2")).rows == 2  # and header Dup=2
    assert filters.plan(db, filters.parse("json:/order_id=2 flow:3")).rows == 1
    assert filters.plan(db, filters.parse("hello")).rows == 1  # through the trigram index
    assert filters.plan(db, filters.parse("lo")).rows is None  # no trigram in it: scans
    with store.transaction(db):
        store.insert_events(db, [_event(6, "late.one", b"{}")])
    assert not store.read_indexes_ready(db)  # an event the indexes have not seen
    assert filters.plan(db, filters.parse("subject:late.one")).rows is None


def test_payloads_too_large_for_the_indexes_are_still_found(
    db: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "SEARCH_PAYLOAD_MAX", 40)
    big = b'{"order_id": 7, "pad": "' + b"z" * 100 + b'", "note": "needle here"}'
    with store.transaction(db):
        store.insert_events(db, [_event(6, "big.one", big), _event(7, "bin", b"\x00\x01pin")])
    store.build_read_indexes(db)
    assert store.read_indexes_ready(db)
    # too large, and binary (event 5's payload is not UTF-8, but holds no NUL: indexed)
    assert db.execute("SELECT id FROM unindexed_payloads").fetchall() == [(6,), (7,)]
    cases = (("needle", [6]), ("json:/order_id=7", [6]), ("hello", [3]), ("pin", [7]))
    for text, expected in cases:
        where = filters.plan(db, filters.parse(text))
        assert where.rows is not None, text  # answered through the index, plus the big one
        got = [r[0] for r in db.execute(f"SELECT id FROM events WHERE {where.sql}", where.params)]
        assert sorted(got) == expected == ids(db, text), text


def test_search_tokens_split_like_the_index() -> None:
    assert store.search_tokens('ord-42 a/b "x"\\y,z:{1}') == [
        "ord-42",
        "a",
        "b",
        "x",
        "y",
        "z",
        "1",
    ]


def test_a_file_indexed_by_an_earlier_qixtui_is_not_ready(db: sqlite3.Connection) -> None:
    """Files indexed by an earlier qixtui indexed every payload whole and list none left
    out: filters scan, and `qixtui index` redoes them instead of calling them indexed."""
    store.build_read_indexes(db)
    db.execute("DROP TABLE unindexed_payloads")
    assert not store.read_indexes_ready(db)
    assert filters.plan(db, filters.parse("hello")).rows is None
    store.build_read_indexes(db)
    assert store.read_indexes_ready(db)
