"""The session file: creation, validation of what is opened, read-back, migrations."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from helpers import recorder_stand_in, run_qixtui
from hypothesis import given
from hypothesis import strategies as st

from qixtui.core import store
from qixtui.core.model import Event, Flow
from qixtui.core.rows import parse_header_block


def make_session(path: Path, n: int = 3) -> None:
    db = store.create_session(path, {"server": "nats://127.0.0.1:4222"})
    events = [
        Event(
            ts_ns=1_000 + i,
            subject=f"a.{i}",
            reply=None,
            headers=[("X", str(i))],
            payload=bytes([i % 256]) * (i % 300),
            id=i + 1,
        )
        for i in range(n)
    ]
    with store.transaction(db):
        store.insert_events(db, events)
    db.execute("PRAGMA journal_mode = DELETE")
    db.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip_keeps_bytes_headers_and_order(tmp_path: Path):
    path = tmp_path / "s.qix"
    db = store.create_session(path)
    payloads = [b"", b"\x00\xff\xfe", "é".encode(), b"x" * 1_000_000]
    events = [
        Event(
            ts_ns=i,
            subject="s",
            reply="_INBOX.1" if i else None,
            headers=[("A", "1"), ("A", "2")] if i == 1 else None,
            payload=p,
            id=i + 1,
        )
        for i, p in enumerate(payloads)
    ]
    with store.transaction(db):
        store.insert_events(db, events)
    got = list(store.iter_events(db, store.EventQuery()))
    assert [e.payload for e in got] == payloads
    assert got[1].headers == [("A", "1"), ("A", "2")]
    assert store.event_to_json(got[1])["headers"] == {"A": ["1", "2"]}
    assert store.event_to_json(got[1])["payload_encoding"] == "base64"
    assert "payload_encoding" not in store.event_to_json(got[2])


def test_rows_go_in_many_a_statement_with_the_rest_in_a_shorter_one(tmp_path: Path):
    db = store.create_session(tmp_path / "s.qix")
    count = 2 * store.ROWS_PER_STATEMENT + 5
    events = [
        Event(i, f"s.{i}", "r" if i % 2 else None, [("K", str(i))] if i % 3 else None, b"p", i + 1)
        for i in range(count)
    ]
    flows = [Flow(i + 1, "running", i, i, 1, ["svc"], ["s"], [f"k={i}"]) for i in range(count)]
    with store.transaction(db):
        store.insert_events(db, events)
        store.upsert_flows(db, flows)
        # the same flow twice in one statement: the later row wins, as one row at a time would
        store.upsert_flows(db, [Flow(1, "failed", 0, 5, 2), Flow(1, "completed", 0, 9, 3)])
    assert list(store.iter_events(db, store.EventQuery())) == events
    stored = store.flows(db)
    assert stored[1:] == flows[1:]
    assert stored[0] == Flow(1, "completed", 0, 9, 3)


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("shop.>", "shop.order.placed", True),
        ("shop.>", "shop", False),
        ("shop.*.placed", "shop.order.placed", True),
        ("shop.*", "shop.order.placed", False),
        ("shop.*.placed", "shop.a.b.placed", False),
        ("a.[x]", "a.[x]", True),
    ],
)
def test_subject_patterns(tmp_path: Path, pattern: str, subject: str, matches: bool):
    assert store.subject_matches(pattern, subject) is matches
    path = tmp_path / "p.qix"
    db = store.create_session(path)
    with store.transaction(db):
        store.insert_events(
            db, [Event(ts_ns=1, subject=subject, reply=None, headers=None, payload=b"", id=1)]
        )
    found = list(store.iter_events(db, store.EventQuery(subject=pattern)))
    assert bool(found) is matches


_TOKENS = st.sampled_from(["a", "b", "", "*", ">", "x.y", "a+", "(", "é"])


@given(st.lists(st.lists(_TOKENS, min_size=1, max_size=4), min_size=1, max_size=3), _TOKENS)
def test_one_regex_matches_what_the_patterns_match(pattern_tokens, subject_tail):
    """The correlator's compiled status patterns agree with `subject_matches`."""
    patterns = [".".join(tokens) for tokens in pattern_tokens]
    regex = store.subject_regex(patterns)
    assert regex is not None
    for tokens in pattern_tokens:
        for subject in (
            ".".join(tokens),
            ".".join(t if t not in ("*", ">") else subject_tail for t in tokens),
            ".".join([*tokens, subject_tail]),
            ".".join(tokens[:-1]),
        ):
            expected = any(store.subject_matches(p, subject) for p in patterns)
            assert bool(regex.fullmatch(subject)) is expected, (patterns, subject)


def test_viewing_opens_read_only_and_changes_nothing(tmp_path: Path):
    path = tmp_path / "ro.qix"
    make_session(path)
    before = digest(path)
    db = store.open_session(path)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        db.execute("DELETE FROM events")
    db.close()
    assert run_qixtui("info", str(path)).returncode == 0
    assert run_qixtui("events", str(path), "--json").returncode == 0
    assert digest(path) == before


def test_events_as_text_says_which_payloads_are_base64(tmp_path: Path):
    path = tmp_path / "b.qix"
    db = store.create_session(path)
    with store.transaction(db):
        store.insert_events(
            db,
            [
                Event(ts_ns=1, subject="a.text", reply=None, headers=None, payload=b"hi!", id=1),
                Event(ts_ns=2, subject="a.bin", reply=None, headers=None, payload=b"\xff\0", id=2),
            ],
        )
    db.close()
    lines = run_qixtui("events", str(path)).stdout.splitlines()
    assert lines[0].endswith(" a.text 3B hi!")
    assert lines[1].endswith(" a.bin 2B (base64) /wA=")


@pytest.mark.parametrize(
    ("verb", "pattern", "says"),
    [
        ("events", "shop.>.x", "'>' may only be the last token"),
        ("events", "shop..x", "has an empty token"),
        ("replay", "shop.>.x", "'>' may only be the last token"),
        ("replay", "shop.a\tb", "has white space"),
    ],
)
def test_a_bad_subject_pattern_is_one_line_not_an_empty_answer(
    tmp_path: Path, verb: str, pattern: str, says: str
):
    path = tmp_path / "s.qix"
    make_session(path)
    extra = ["--publish"] if verb == "replay" else []
    result = run_qixtui(verb, str(path), *extra, "--subject", pattern)
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"qixtui: subject {pattern!r}")
    assert says in line


def test_a_wildcard_inside_a_token_is_literal_text_as_in_nats(tmp_path: Path):
    path = tmp_path / "s.qix"
    db = store.create_session(path, {})
    subjects = ["cpu.load>90", "a.b*"]
    store.insert_events(db, [Event(i, s, None, None, b"", i) for i, s in enumerate(subjects, 1)])
    db.close()
    for pattern in subjects:
        found = run_qixtui("events", str(path), "--subject", pattern, "--json")
        assert found.returncode == 0, found.stderr
        assert [json.loads(line)["subject"] for line in found.stdout.splitlines()] == [pattern]


HUGE = "9" * 23


@pytest.mark.parametrize(
    "args",
    [
        ["events", "FILE", "--since", HUGE],
        ["events", "FILE", "--flow", HUGE],
        ["flow", "FILE", HUGE],
        ["replay", "FILE", "--publish", "--filter", f"flow:{HUGE}"],
        ["replay", "FILE", "--publish", "--filter", f"duration>{'9' * 400}s"],
        ["replay", "FILE", "--publish", "--max-gap", f"{'9' * 400}s"],
        ["correlate", "FILE", "--stall", f"{'9' * 400}s"],
    ],
    ids=["since", "flow-option", "flow-argument", "filter", "infinite", "max-gap", "stall"],
)
def test_numbers_too_large_for_sqlite_are_refused_not_a_traceback(tmp_path: Path, args):
    path = tmp_path / "s.qix"
    make_session(path)
    result = run_qixtui(*[str(path) if a == "FILE" else a for a in args])
    assert result.returncode in (1, 2)  # our one line, or click's usage error
    assert "Traceback" not in result.stderr
    assert HUGE in result.stderr or "longer than any recording" in result.stderr


def corrupt_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    cases: dict[str, tuple[Path, str]] = {}
    empty = tmp_path / "empty.qix"
    empty.write_bytes(b"")
    cases["empty"] = (empty, "empty file")
    text = tmp_path / "notes.qix"
    text.write_text("hello, I am not a database\n" * 10)
    cases["text"] = (text, "not an SQLite database")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t(x)").connection.commit()
    cases["other sqlite"] = (other, "another kind")
    truncated = tmp_path / "truncated.qix"
    make_session(truncated, 2000)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    cases["truncated"] = (truncated, "truncated")
    newer = tmp_path / "newer.qix"
    make_session(newer)
    db = sqlite3.connect(newer)
    db.execute(f"PRAGMA user_version = {store.SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    cases["newer"] = (newer, "newer qixtui")
    cases["missing"] = (tmp_path / "nope.qix", "no such file")
    cases["directory"] = (tmp_path, "is a directory")
    return cases


def test_bad_files_get_one_line_and_stay_untouched(tmp_path: Path):
    for name, (path, message) in corrupt_cases(tmp_path).items():
        before = digest(path) if path.is_file() else None
        with pytest.raises(store.SessionError, match=message):
            store.open_session(path)
        for verb in ("info", "events"):
            result = run_qixtui(verb, str(path))
            assert result.returncode == 1, (name, verb)
            assert result.stdout == ""
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, (name, verb, result.stderr)
            assert message in lines[0]
            assert "Traceback" not in result.stderr
        if before is not None:
            assert digest(path) == before, name


def damaged_session(path: Path) -> Path:
    """A whole file whose middle pages hold garbage: it opens, and reads fail on reaching them."""
    make_session(path, 5000)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2 // 4096 * 4096
    data[middle : middle + 16 * 4096] = b"\xa5" * (16 * 4096)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("verb", ["info", "events", "compare", "correlate"])
def test_a_file_damaged_inside_gets_one_line_not_a_traceback(tmp_path: Path, verb: str):
    path = damaged_session(tmp_path / "damaged.qix")
    before = digest(path)
    result = run_qixtui(verb, str(path))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"qixtui {verb}: the session file is damaged (database disk image is malformed); "
        "what is before the damage may be saved with `sqlite3 FILE .recover`"
    ]
    assert digest(path) == before


def test_only_damage_and_the_files_state_are_said_as_file_problems(tmp_path: Path):
    """Found by review: a constraint error was reported as a damaged file."""
    path = tmp_path / "s.qix"
    make_session(path)
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError) as clash:
        db.execute("INSERT INTO events(id, ts_ns, subject, size) VALUES (1, 1, 'a', 0)")
    assert store.session_file_problem(clash.value) is None  # a bug: keeps its traceback
    with pytest.raises(sqlite3.OperationalError) as missing:
        db.execute("SELECT x FROM nowhere")
    assert store.session_file_problem(missing.value) == "session file: no such table: nowhere"
    db.close()
    damaged = damaged_session(tmp_path / "d.qix")
    db = sqlite3.connect(damaged)
    with pytest.raises(sqlite3.DatabaseError) as broken:
        db.execute("SELECT count(*), sum(length(payload)) FROM events").fetchone()
    assert (store.session_file_problem(broken.value) or "").startswith(
        "the session file is damaged (database disk image is malformed)"
    )
    db.close()


def test_older_schema_is_migrated_forward_only_when_writing(tmp_path: Path):
    path = tmp_path / "old.qix"
    make_session(path)
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 0")
    db.commit()
    db.close()
    with pytest.raises(store.SessionError, match="older qixtui"):
        store.open_session(path)
    # Version 0 -> 1 recreates the schema; on a real old file each step alters it in place.
    db = sqlite3.connect(path)
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        db.execute(f"DROP TABLE {table}")
    db.commit()
    db.close()
    writable = store.open_session(path, readonly=False)
    assert writable.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    writable.close()
    store.open_session(path).close()


def test_a_file_it_may_not_write_is_refused_on_opening_for_writing(tmp_path: Path):
    """SQLite opens a write-protected file read-only and fails only at the first write: the
    probe finds out first. (A read-only connection stands in for the protection, which root,
    who runs CI, does not feel.)"""
    path = tmp_path / "ro.qix"
    make_session(path)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    with pytest.raises(store.SessionError, match="cannot write to it"):
        store._check_writable(db, path)
    db.close()
    if os.geteuid() != 0:  # the real thing, where permissions apply
        path.chmod(0o444)
        with pytest.raises(store.SessionError, match="cannot write to it"):
            store.open_session(path, readonly=False)
    store.open_session(path).close()  # reading is fine either way


def test_a_dead_child_not_yet_waited_for_is_not_alive():
    """tap's recorder killed with -9 stays a zombie until tap waits for it: not recording."""
    child = subprocess.Popen(["sleep", "0"])
    assert store.pid_alive(os.getpid())
    deadline = time.monotonic() + 10
    while store.pid_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not store.pid_alive(child.pid)
    assert Path(f"/proc/{child.pid}").exists()  # still there, as a zombie
    child.wait()


def test_being_recorded_needs_a_live_qixtui_process_not_just_the_pid():
    """A recorder killed before it said it stopped leaves its pid; pids get reused."""
    started = {"started_ns": "5"}
    with recorder_stand_in() as pid:
        assert store.being_recorded({**started, "recorder_pid": str(pid)})
        assert not store.being_recorded({**started, "recorder_pid": str(pid), "stopped_ns": "6"})
    other = subprocess.Popen(["sleep", "30"])  # alive, but not a recorder
    try:
        assert not store.being_recorded({**started, "recorder_pid": str(other.pid)})
    finally:
        other.kill()
        other.wait()
    assert not store.being_recorded({**started, "recorder_pid": str(os.getpid())})  # this one


def test_create_refuses_to_overwrite(tmp_path: Path):
    path = tmp_path / "exists.qix"
    make_session(path)
    with pytest.raises(store.SessionError, match="already exists"):
        store.create_session(path)


def split_header_block(raw: bytes) -> list[tuple[str, str]]:
    """The plain reading of a header block the parser must agree with: decode, split lines,
    cut each at its first colon, strip ASCII whitespace."""
    lines = raw.decode("utf-8", "backslashreplace").split("\r\n")
    pairs = []
    if lines[0].startswith("NATS/1.0 "):
        status, _, description = lines[0][9:].strip(" \t\n\r\x0b\x0c").partition(" ")
        pairs += [("Status", status)] if status else []
        pairs += [("Description", description)] if description else []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep and name:
            pairs.append((name.strip(" \t\n\r\x0b\x0c"), value.strip(" \t\n\r\x0b\x0c")))
    return pairs


PIECES = [
    b"NATS/1.0",
    b" 503",
    b" ",
    b"\t",
    b"\r",
    b"\n",
    b"\r\n",
    b":",
    b"A",
    b"\xff",
    "é".encode(),
]


@given(st.lists(st.sampled_from(PIECES), max_size=40))
def test_header_blocks_read_as_their_plain_reading(pieces):
    raw = b"".join(pieces)
    assert parse_header_block(raw) == split_header_block(raw)


def test_header_block_parsing():
    raw = b"NATS/1.0\r\nA: 1\r\nB: two words\r\nA: 2\r\nBad: \xff\r\n\r\n"
    assert parse_header_block(raw) == [("A", "1"), ("B", "two words"), ("A", "2"), ("Bad", "\\xff")]
    # UTF-8 kept, bad bytes escaped wherever they are, only ASCII whitespace stripped.
    raw = "NATS/1.0\r\nCity: Zürich \r\nN\xe9:\xa0x\xa0\r\nno colon\r\n: empty\r\n\r\n".encode()
    raw = raw.replace("N\xe9".encode(), b"N\xe9")
    assert parse_header_block(raw) == [("City", "Zürich"), ("N\\xe9", "\xa0x\xa0")]
    assert parse_header_block(b"NATS/1.0 503\r\n\r\n") == [("Status", "503")]
    assert parse_header_block(b"NATS/1.0 404 No Messages\r\n\r\n") == [
        ("Status", "404"),
        ("Description", "No Messages"),
    ]


def test_which_subscriptions_leave_replies_out() -> None:
    assert store.misses_replies(["pay.>"])
    assert not store.misses_replies([">"])
    assert not store.misses_replies(["pay.>", "_INBOX.>"])
    assert not store.misses_replies(["_INBOX.*"])  # one-token inboxes, an older style
