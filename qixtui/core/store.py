"""The session file: schema, migrations, the batched writer and read queries, without a UI."""

from __future__ import annotations

import base64
import functools
import itertools
import math
import os
import re
import sqlite3
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec

from qixtui.core.model import Drop, Event, Flow, FlowChanges, Gap, Headers, Link
from qixtui.core.rows import FlowRows, event_row, flow_row, flow_rows

APPLICATION_ID = 0x51495854  # "QIXT"
SCHEMA_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"

_json_encode = msgspec.json.Encoder().encode
_decode_headers = msgspec.json.Decoder(list[tuple[str, str]]).decode
_decode_strings = msgspec.json.Decoder(list[str]).decode


class SessionError(Exception):
    """A file that cannot be used as a session; the message is one line meant for the user."""


def _run_statements(db: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT first and break the migration's transaction.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _schema_v1(db: sqlite3.Connection) -> None:
    _run_statements(
        db,
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            ts_ns INTEGER NOT NULL,
            subject TEXT NOT NULL,
            reply TEXT,
            headers TEXT,
            payload BLOB NOT NULL,
            size INTEGER NOT NULL,
            flow_id INTEGER
        );
        CREATE INDEX events_flow ON events(flow_id);
        CREATE TABLE gaps (
            id INTEGER PRIMARY KEY,
            start_ns INTEGER NOT NULL,
            end_ns INTEGER,
            reason TEXT NOT NULL
        );
        CREATE TABLE drops (
            id INTEGER PRIMARY KEY,
            ts_ns INTEGER NOT NULL,
            subject TEXT NOT NULL,
            count INTEGER NOT NULL
        );
        CREATE TABLE flows (
            flow_id INTEGER PRIMARY KEY,
            status TEXT NOT NULL,
            started_ns INTEGER NOT NULL,
            ended_ns INTEGER NOT NULL,
            events INTEGER NOT NULL,
            services TEXT NOT NULL DEFAULT '[]',
            variant TEXT NOT NULL DEFAULT '[]',
            keys TEXT NOT NULL DEFAULT '[]',
            orchestrated INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE links (
            event_id INTEGER NOT NULL,
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            parent_id INTEGER
        );
        CREATE INDEX links_event ON links(event_id);
        CREATE TABLE subjects (subject TEXT PRIMARY KEY, events INTEGER NOT NULL);
        CREATE TABLE saga_runs (
            run_id TEXT PRIMARY KEY,
            saga TEXT NOT NULL,
            definition TEXT NOT NULL,
            vars TEXT NOT NULL,
            correlation_id TEXT NOT NULL,
            trace_id TEXT NOT NULL,
            status TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            started_ns INTEGER NOT NULL,
            ended_ns INTEGER,
            owner_pid INTEGER
        );
        CREATE TABLE saga_journal (
            run_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            step TEXT NOT NULL,
            kind TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            idempotency_key TEXT NOT NULL,
            subject TEXT NOT NULL,
            payload BLOB NOT NULL,
            headers TEXT NOT NULL,
            in_doubt INTEGER NOT NULL DEFAULT 0,
            intent_ns INTEGER NOT NULL,
            result TEXT,
            detail TEXT NOT NULL DEFAULT '',
            reply BLOB,
            result_ns INTEGER,
            PRIMARY KEY (run_id, seq)
        );
        CREATE TABLE replays (
            id INTEGER PRIMARY KEY,
            session TEXT NOT NULL,
            started_ns INTEGER NOT NULL,
            ended_ns INTEGER,
            target TEXT NOT NULL,
            target_server_id TEXT NOT NULL DEFAULT '',
            target_server_name TEXT NOT NULL DEFAULT '',
            plan TEXT NOT NULL,
            status TEXT NOT NULL,
            last_event_id INTEGER NOT NULL DEFAULT 0,
            last_seq INTEGER NOT NULL DEFAULT 0,
            confirmed_seq INTEGER NOT NULL DEFAULT 0,
            sent INTEGER NOT NULL DEFAULT 0,
            skipped TEXT NOT NULL DEFAULT '{}',
            replies INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            resumed_from INTEGER
        );
        """,
    )


# MIGRATIONS[n] takes a file from version n to n + 1; each runs inside one transaction.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_schema_v1]
assert len(MIGRATIONS) == SCHEMA_VERSION


def check_header(path: Path) -> None:
    """Check that `path` looks like a qixtui session without opening it through SQLite."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(100)
    except FileNotFoundError:
        raise SessionError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SessionError(f"{path}: is a directory, not a session file") from None
    except PermissionError:
        raise SessionError(f"{path}: permission denied") from None
    if size == 0:
        raise SessionError(f"{path}: empty file, not a qixtui session")
    if len(head) < 100 or not head.startswith(SQLITE_MAGIC):
        raise SessionError(f"{path}: not a qixtui session (not an SQLite database)")
    page_size = struct.unpack(">H", head[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    pages, user_version, application_id = (
        struct.unpack(">I", head[28:32])[0],
        struct.unpack(">i", head[60:64])[0],
        struct.unpack(">i", head[68:72])[0],
    )
    if application_id != APPLICATION_ID:
        raise SessionError(f"{path}: not a qixtui session (an SQLite database of another kind)")
    if user_version > SCHEMA_VERSION:
        raise SessionError(
            f"{path}: made by a newer qixtui (schema {user_version}, this one reads up to "
            f"{SCHEMA_VERSION}); upgrade qixtui to open it"
        )
    wal = Path(f"{path}-wal")
    if size < pages * page_size and not (wal.exists() and wal.stat().st_size > 0):
        raise SessionError(
            f"{path}: truncated session file ({size} of {pages * page_size} bytes present)"
        )


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        uri = f"file:{path.resolve()}?mode=ro"
        db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
    else:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 5000")
    return db


def ensure_new(path: Path) -> None:
    """Refuse to record over an existing file, before anything else is started."""
    if path.exists() and (path.is_dir() or path.stat().st_size > 0):
        raise SessionError(f"{path}: already exists; choose another output file")
    # A folder that is not there is more often a typo than a wish: not made behind one's back
    if not path.parent.is_dir():
        raise SessionError(f"{path}: no folder {path.parent}")
    if not os.access(path.parent, os.W_OK):
        raise SessionError(f"{path}: folder is not writable")


def ensure_appendable(path: Path) -> None:
    """Refuse to append to a file that is not a session this process may write, or that
    another recorder is writing now (their event ids would collide)."""
    db = open_session(path, readonly=False)
    try:
        meta = get_meta(db)
    finally:
        db.close()
    if being_recorded(meta):
        raise SessionError(
            f"{path}: still being recorded (process {meta['recorder_pid']}); "
            "append once that recorder stops"
        )


def create_session(path: Path, meta: dict[str, str] | None = None) -> sqlite3.Connection:
    """Create a new, empty session file and return a writable connection to it."""
    ensure_new(path)
    try:
        db = _connect(path, readonly=False)
    except (OSError, sqlite3.Error) as exc:
        raise SessionError(f"{path}: cannot create session file ({exc})") from None
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("PRAGMA journal_mode = WAL")
    _migrate(db, 0)
    if meta:
        set_meta(db, meta)
    return db


def open_session(path: Path | str, *, readonly: bool = True) -> sqlite3.Connection:
    """Open an existing session; viewing paths open it read-only so nothing is changed."""
    path = Path(path)
    check_header(path)
    try:
        db = _connect(path, readonly=readonly)
    except sqlite3.DatabaseError as exc:
        raise SessionError(f"{path}: unreadable session file ({exc})") from None
    try:
        if not readonly:
            _check_writable(db, path)
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version < SCHEMA_VERSION:
            if readonly:
                raise SessionError(
                    f"{path}: written by an older qixtui (schema {version}); "
                    "run `qixtui migrate FILE` to bring it forward"
                )
            _migrate(db, version)
        db.execute("SELECT count(*) FROM meta").fetchone()
    except sqlite3.DatabaseError as exc:
        db.close()  # a connection left to the garbage collector keeps the file locked
        raise SessionError(f"{path}: unreadable session file ({exc})") from None
    except SessionError:
        db.close()
        raise
    return db


def _check_writable(db: sqlite3.Connection, path: Path) -> None:
    """Refuse, before any work, a file this process may not change: SQLite opens it read-only
    instead and fails only at the first write. Setting the version it has is enough to ask,
    whatever the schema (rolled back: nothing changes)."""
    if not os.access(path.parent, os.W_OK):  # SQLite says only "readonly database" then
        raise SessionError(f"{path}: folder is not writable (SQLite keeps its journal there)")
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:  # another process held its write lock for 5 s
        raise SessionError(f"{path}: busy, another process is writing it ({exc})") from None
    try:
        db.execute(f"PRAGMA user_version = {version}")
    except sqlite3.OperationalError as exc:
        raise SessionError(f"{path}: cannot write to it ({exc})") from None
    finally:
        db.execute("ROLLBACK")


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: all of it lands, or none of it (connections are autocommit)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _migrate(db: sqlite3.Connection, version: int) -> None:
    with transaction(db):
        for step in MIGRATIONS[version:]:
            step(db)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def set_meta(db: sqlite3.Connection, meta: dict[str, str]) -> None:
    db.executemany(
        "INSERT INTO meta(key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        list(meta.items()),
    )


def get_meta(db: sqlite3.Connection) -> dict[str, str]:
    return dict(db.execute("SELECT key, value FROM meta").fetchall())


# --- writing -------------------------------------------------------------------------------


INSERT_EVENT = (
    "INSERT INTO events(id, ts_ns, subject, reply, headers, payload, size, flow_id) "
    "VALUES (?, ?, ?, NULLIF(?, ''), NULLIF(?, ''), ?, ?, NULLIF(?, 0))"
)
UPSERT_FLOW = (
    "INSERT INTO flows(flow_id, status, started_ns, ended_ns, events, services, variant, "
    "keys, orchestrated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(flow_id) DO UPDATE SET status = excluded.status, "
    "started_ns = excluded.started_ns, ended_ns = excluded.ended_ns, "
    "events = excluded.events, services = excluded.services, variant = excluded.variant, "
    "keys = excluded.keys, orchestrated = excluded.orchestrated"
)
INSERT_LINK = "INSERT INTO links(event_id, kind, key, parent_id) VALUES (?, ?, ?, ?)"

# Rows go in up to this many a statement: Python's sqlite3 pays for every statement it steps
# (a mutex, the GIL released and taken back, the VM started and reset), a quarter of what an
# event row cost when executemany stepped one statement a row.
ROWS_PER_STATEMENT = 64


@functools.cache
def _many_rows_sql(one_row_sql: str, rows: int) -> str:
    head, values, rest = one_row_sql.partition(" VALUES ")
    depth = 0
    for position, char in enumerate(rest):  # the row is the parenthesised group after VALUES
        depth += (char == "(") - (char == ")")
        if depth == 0:
            row, tail = rest[: position + 1], rest[position + 1 :]
            return f"{head}{values}{', '.join([row] * rows)}{tail}"
    raise ValueError(f"no VALUES row in {one_row_sql!r}")


def execute_rows(db: sqlite3.Connection, one_row_sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """`one_row_sql` (an INSERT of one VALUES row) for every row, as few statements as can be."""
    if not rows:
        return
    params = list(itertools.chain.from_iterable(rows))
    width = len(rows[0])
    step = ROWS_PER_STATEMENT * width
    full = len(params) - len(params) % step
    if full:
        sql = _many_rows_sql(one_row_sql, ROWS_PER_STATEMENT)
        for start in range(0, full, step):
            db.execute(sql, params[start : start + step])
    if full < len(params):
        db.execute(_many_rows_sql(one_row_sql, (len(params) - full) // width), params[full:])


def next_event_id(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT coalesce(max(id), 0) + 1 FROM events").fetchone()[0])


def insert_events(db: sqlite3.Connection, events: Iterable[Event]) -> None:
    """Insert events whose ids the caller assigned (the writer owns the id sequence)."""
    execute_rows(db, INSERT_EVENT, [event_row(e) for e in events])


def insert_links(db: sqlite3.Connection, links: Sequence[Link]) -> None:
    execute_rows(db, INSERT_LINK, [(lk.event_id, lk.kind, lk.key, lk.parent_id) for lk in links])


def upsert_flows(db: sqlite3.Connection, flows: Sequence[Flow]) -> None:
    execute_rows(db, UPSERT_FLOW, [flow_row(f) for f in flows])


def apply_flow_rows(db: sqlite3.Connection, rows: FlowRows) -> None:
    """Save what correlation changed; the caller holds the transaction."""
    execute_rows(db, INSERT_LINK, rows.links)
    # Merges move every event of the absorbed flow, before the flows' new summaries land.
    for absorbed, into in rows.merges:
        db.execute("UPDATE events SET flow_id = ? WHERE flow_id = ?", (into, absorbed))
        db.execute("DELETE FROM flows WHERE flow_id = ?", (absorbed,))
    if rows.assign:
        db.executemany("UPDATE events SET flow_id = ? WHERE id = ?", rows.assign)
    execute_rows(db, UPSERT_FLOW, rows.flows)


def apply_flow_changes(db: sqlite3.Connection, changes: FlowChanges) -> None:
    apply_flow_rows(db, flow_rows(changes))


def stall_quiet_flows(db: sqlite3.Connection, now_ns: int, stall_ns: int) -> None:
    """At the end of a recording, every flow still running but quiet for `stall` is stalled,
    including those correlation no longer remembered."""
    db.execute(
        "UPDATE flows SET status = 'stalled' WHERE status = 'running' AND ended_ns < ?",
        (now_ns - stall_ns,),
    )


def open_gap(db: sqlite3.Connection, start_ns: int, reason: str) -> int:
    cur = db.execute(
        "INSERT INTO gaps(start_ns, end_ns, reason) VALUES (?, NULL, ?)", (start_ns, reason)
    )
    return int(cur.lastrowid or 0)


def close_gap(db: sqlite3.Connection, gap_id: int, end_ns: int) -> None:
    db.execute("UPDATE gaps SET end_ns = ? WHERE id = ?", (end_ns, gap_id))


def add_drops(db: sqlite3.Connection, drops: Sequence[Drop]) -> None:
    db.executemany(
        "INSERT INTO drops(ts_ns, subject, count) VALUES (?, ?, ?)",
        [(d.ts_ns, d.subject, d.count) for d in drops],
    )


# --- indexes for filters, built once when a recording is closed ---------------------------

# Tokens of the search index: runs of letters, digits and these; JSON punctuation, `/` (some
# encoders write `\/`), backslashes and whitespace separate them. `search_tokens` splits ASCII
# text the same way.
SEARCH_TOKEN_CHARS = "!#$%&'()*+-.;<=>?@^_`|~"
_SEARCH_TOKENIZER = "unicode61 remove_diacritics 0 tokenchars '{}'".format(
    SEARCH_TOKEN_CHARS.replace("'", "''")
)


def search_tokens(text: str) -> list[str]:
    """The search index's tokens of printable ASCII text."""
    token: list[str] = []
    out: list[str] = []
    for ch in text:
        if ch.isascii() and (ch.isalnum() or ch in SEARCH_TOKEN_CHARS):
            token.append(ch)
        elif token:
            out.append("".join(token))
            token = []
    if token:
        out.append("".join(token))
    return out


def text_search_query(text: str) -> str | None:
    """A query of the payload trigram index whose hits include every payload holding `text`
    (printable ASCII, 3 characters or more), or None: shorter text has no trigram to look up,
    and the tokenizer folds a stray byte after a non-ASCII character into that character."""
    if len(text) < 3 or not text.isprintable() or not text.isascii():
        return None
    grams = dict.fromkeys(text[i : i + 3] for i in range(len(text) - 2))
    # Each trigram alone: the index keeps no positions (detail=none), so no phrase queries.
    return " AND ".join('"{}"'.format(gram.replace('"', '""')) for gram in grams)


# Payloads larger than this, or binary, stay out of the search indexes (build_read_indexes).
SEARCH_PAYLOAD_MAX = 65_536
# What the indexes take: text (no NUL byte, which text never holds) of a size they index fast.
_INDEXED_PAYLOAD = "size <= ? AND instr(payload, x'00') = 0"


def build_read_indexes(db: sqlite3.Connection) -> None:
    """Indexes that let a closed recording's filters find rare events without a scan: subject,
    flow status, the subjects dictionary, a word index of headers and payloads and a trigram
    index of payloads (any substring). Built once, after the last event: while recording,
    every index on events slows each insert."""
    with transaction(db):
        db.execute("CREATE INDEX IF NOT EXISTS events_subject ON events(subject)")
        db.execute("CREATE INDEX IF NOT EXISTS flows_status ON flows(status)")
        db.execute("DELETE FROM subjects")
        db.execute(
            "INSERT INTO subjects(subject, events) SELECT subject, count(*) FROM events "
            "GROUP BY subject"
        )
        # Contentless (content=''): the indexes hold tokens only, the text stays in events.
        # Indexing costs by the byte, and most for bytes that are not text: forty random 1 MB
        # payloads took a minute, 40,000 random 1 kB ones 37 s. Payloads past
        # SEARCH_PAYLOAD_MAX, or binary, are left out and listed instead; filters read them
        # directly. (Files indexed before had `search` read every payload whole.)
        db.execute("DROP TABLE IF EXISTS search")
        db.execute("DROP TABLE IF EXISTS search_text")
        db.execute(
            "CREATE VIRTUAL TABLE search USING fts5(headers, payload, content='', "
            f"detail='none', columnsize=0, tokenize=\"{_SEARCH_TOKENIZER}\")"
        )
        db.execute(
            "INSERT INTO search(rowid, headers, payload) "
            f"SELECT id, headers, CASE WHEN {_INDEXED_PAYLOAD} THEN payload END FROM events",
            (SEARCH_PAYLOAD_MAX,),
        )
        # Case-sensitive like the text filter; the bytes of a payload read as UTF-8 (an ASCII
        # byte is always one character there).
        db.execute(
            "CREATE VIRTUAL TABLE search_text USING fts5(payload, content='', "
            "detail='none', columnsize=0, tokenize='trigram case_sensitive 1')"
        )
        db.execute(
            "INSERT INTO search_text(rowid, payload) "
            f"SELECT id, payload FROM events WHERE {_INDEXED_PAYLOAD}",
            (SEARCH_PAYLOAD_MAX,),
        )
        db.execute("CREATE TABLE IF NOT EXISTS unindexed_payloads (id INTEGER PRIMARY KEY)")
        db.execute("DELETE FROM unindexed_payloads")
        db.execute(
            f"INSERT INTO unindexed_payloads SELECT id FROM events WHERE NOT ({_INDEXED_PAYLOAD})",
            (SEARCH_PAYLOAD_MAX,),
        )
        set_meta(db, {"indexed_to": str(next_event_id(db) - 1)})


def read_indexes_ready(db: sqlite3.Connection) -> bool:
    """The file's read indexes cover every event in it (a file indexed by an earlier qixtui
    lacks the list of payloads left out of them: not ready, so `qixtui index` redoes it)."""
    row = db.execute("SELECT value FROM meta WHERE key = 'indexed_to'").fetchone()
    current = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'unindexed_payloads'"
    ).fetchone()
    return row is not None and current is not None and int(row[0]) == next_event_id(db) - 1


# --- replays: the audit trail and resume position of `qixtui replay --publish` -------------

REPLAY_COLUMNS = (
    "id, session, started_ns, ended_ns, target, target_server_id, target_server_name, plan, "
    "status, last_event_id, last_seq, confirmed_seq, sent, skipped, replies, error, resumed_from"
)


def add_replay(db: sqlite3.Connection, row: dict[str, Any]) -> int:
    """Insert an audit row (keys from REPLAY_COLUMNS, `id` left out) and return its id."""
    names = list(row)
    cur = db.execute(
        f"INSERT INTO replays({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
        [row[n] for n in names],
    )
    return int(cur.lastrowid or 0)


def update_replay(db: sqlite3.Connection, replay_id: int, changes: dict[str, Any]) -> None:
    assigns = ", ".join(f"{name} = ?" for name in changes)
    db.execute(f"UPDATE replays SET {assigns} WHERE id = ?", [*changes.values(), replay_id])


def replays(db: sqlite3.Connection) -> list[dict[str, Any]]:
    names = [n.strip() for n in REPLAY_COLUMNS.split(",")]
    rows = db.execute(f"SELECT {REPLAY_COLUMNS} FROM replays ORDER BY id").fetchall()
    return [dict(zip(names, row, strict=True)) for row in rows]


# --- reading -------------------------------------------------------------------------------

EVENT_COLUMNS = "id, ts_ns, subject, reply, headers, payload, flow_id"


def row_to_event(row: Sequence[Any]) -> Event:
    headers: Headers | None = _decode_headers(row[4]) if row[4] else None
    return Event(
        ts_ns=row[1],
        subject=row[2],
        reply=row[3],
        headers=headers,
        payload=bytes(row[5]),
        id=row[0],
        flow_id=row[6],
    )


NATS_WHITE_SPACE = frozenset(" \t\r\n\f")  # what ends a subject in the protocol


def subject_problem(pattern: str) -> str | None:
    """What makes `pattern` no NATS subject pattern, or None when it is one. A `*` or `>`
    inside a longer token is literal text to NATS (`cpu.load>90`), so it is allowed."""
    if NATS_WHITE_SPACE.intersection(pattern):
        return f"subject {pattern!r} has white space"
    tokens = pattern.split(".")
    if any(tok == "" for tok in tokens):
        return f"subject {pattern!r} has an empty token"
    if ">" in tokens[:-1]:
        return f"subject {pattern!r}: '>' may only be the last token"
    return None


SQL_INT_MAX = 2**63 - 1  # SQLite's integers: a larger one cannot even be bound


def scaled_ns(number: str, unit_ns: int) -> int:
    """A duration's number times its unit, in ns; ValueError past SQLite's integers (no
    recording is that long), infinity included."""
    value = float(number) * unit_ns
    if not math.isfinite(value) or value > SQL_INT_MAX:
        raise ValueError(f"{number} is longer than any recording")
    return int(value)


def subject_glob(pattern: str) -> str:
    """A NATS wildcard pattern as an SQL GLOB that may over-match (`*` spans dots there);
    `subject_matches` makes the exact check."""
    glob = pattern.replace("[", "[[]").replace("?", "[?]")
    return glob[:-1] + "*" if glob.endswith(">") else glob


def recording_subjects(meta: dict[str, str]) -> list[str]:
    """What the recorder now writing a file subscribes to (`subjects` is every part's once a
    file was appended to; files from before hold only that)."""
    return meta.get("recording_subjects", meta.get("subjects", ">")).split(",")


def misses_replies(subjects: list[str]) -> bool:
    """Recording only these subjects leaves out the replies to requests, which nats clients
    send to inboxes under `_INBOX.` (a request without its reply stays flowless)."""
    inboxes = ("_INBOX.a.b", "_INBOX.a")  # nats-py's, and the one-token older style
    return not any(subject_matches(s, inbox) for s in subjects for inbox in inboxes)


REPLIES_HINT = "replies to requests arrive on _INBOX.>, which is not recorded; add -S '_INBOX.>'"


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is exactly one token, a final `>` one or more."""
    ptoks = pattern.split(".")
    stoks = subject.split(".")
    for i, ptok in enumerate(ptoks):
        if ptok == ">" and i == len(ptoks) - 1:
            return len(stoks) > i
        if i >= len(stoks):
            return False
        if ptok != "*" and ptok != stoks[i]:
            return False
    return len(stoks) == len(ptoks)


def subject_regex(patterns: list[str]) -> re.Pattern[str] | None:
    """One regex that fully matches what any of `patterns` matches (as `subject_matches`):
    the correlator tests every new subject against the status patterns, and a reply's inbox
    subject is new every time."""
    if not patterns:
        return None
    alternatives = []
    for pattern in patterns:
        ptoks = pattern.split(".")
        parts = ["[^.]*" if tok == "*" else re.escape(tok) for tok in ptoks]
        if ptoks[-1] == ">":
            parts[-1] = ".*"
        alternatives.append(r"\.".join(parts))
    return re.compile("|".join(f"(?:{alt})" for alt in alternatives), re.DOTALL)


@dataclass
class EventQuery:
    subject: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    flow_id: int | None = None
    after_id: int = 0
    limit: int | None = None


def events_where(
    *,
    after_id: int = 0,
    last_id: int | None = None,
    since_ns: int | None = None,
    until_ns: int | None = None,
    flow_id: int | None = None,
    status: str | None = None,
    subject: str | None = None,
) -> tuple[str, list[Any]]:
    """The WHERE clause selecting events; a subject pattern over-matches here and is checked
    exactly with `subject_matches` on the rows."""
    clauses = ["id > ?"]
    params: list[Any] = [after_id]
    for clause, value in (
        ("id <= ?", last_id),
        ("ts_ns >= ?", since_ns),
        ("ts_ns < ?", until_ns),
        ("flow_id = ?", flow_id),
        ("flow_id IN (SELECT flow_id FROM flows WHERE status = ?)", status),
        ("subject GLOB ?", subject_glob(subject) if subject else None),
    ):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    return " AND ".join(clauses), params


def iter_events(db: sqlite3.Connection, query: EventQuery) -> Iterator[Event]:
    where, params = events_where(
        after_id=query.after_id,
        since_ns=query.since_ns,
        until_ns=query.until_ns,
        flow_id=query.flow_id,
        subject=query.subject,
    )
    sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} ORDER BY id"
    remaining = query.limit
    for row in db.execute(sql, params):
        if query.subject and not subject_matches(query.subject, row[2]):
            continue
        yield row_to_event(row)
        if remaining is not None:
            remaining -= 1
            if remaining <= 0:
                return


def gaps(db: sqlite3.Connection) -> list[Gap]:
    return [
        Gap(start_ns=r[1], end_ns=r[2], reason=r[3], id=r[0])
        for r in db.execute("SELECT id, start_ns, end_ns, reason FROM gaps ORDER BY id")
    ]


def row_to_flow(row: Sequence[Any]) -> Flow:
    return Flow(
        flow_id=row[0],
        status=row[1],
        started_ns=row[2],
        ended_ns=row[3],
        events=row[4],
        services=_decode_strings(row[5]),
        variant=_decode_strings(row[6]),
        keys=_decode_strings(row[7]),
        orchestrated=bool(row[8]),
    )


FLOW_COLUMNS = (
    "flow_id, status, started_ns, ended_ns, events, services, variant, keys, orchestrated"
)


def flows(db: sqlite3.Connection, status: str | None = None) -> list[Flow]:
    sql = f"SELECT {FLOW_COLUMNS} FROM flows"
    params: tuple[Any, ...] = ()
    if status:
        sql += " WHERE status = ?"
        params = (status,)
    return [row_to_flow(r) for r in db.execute(sql + " ORDER BY started_ns, flow_id", params)]


def summary(db: sqlite3.Connection, path: Path) -> dict[str, Any]:
    """What `qixtui info` shows: the session's metadata, size and every kind of loss."""
    count, first, last, size = db.execute(
        "SELECT count(*), min(ts_ns), max(ts_ns), coalesce(sum(size), 0) FROM events"
    ).fetchone()
    dropped = db.execute("SELECT coalesce(sum(count), 0) FROM drops").fetchone()[0]
    drop_subjects = dict(
        db.execute("SELECT subject, sum(count) FROM drops GROUP BY subject ORDER BY 2 DESC")
    )
    flow_count = db.execute("SELECT count(*) FROM flows").fetchone()[0]
    meta = get_meta(db)
    return {
        "file": str(path),
        "file_bytes": file_size(path),
        "state": recording_state(meta),
        "meta": meta,
        "events": count,
        "payload_bytes": size,
        "first_ns": first,
        "last_ns": last,
        "flows": flow_count,
        "dropped": dropped,
        "dropped_by_subject": drop_subjects,
        "gaps": [msgspec.structs.asdict(g) for g in gaps(db)],
    }


def event_to_json(event: Event) -> dict[str, Any]:
    """The `events --json` shape: payload as text when it is UTF-8, else base64."""
    out: dict[str, Any] = {
        "id": event.id,
        "ts_ns": event.ts_ns,
        "subject": event.subject,
        "reply": event.reply,
        "headers": headers_object(event.headers),
        "size": len(event.payload),
        "flow_id": event.flow_id,
    }
    try:
        out["payload"] = event.payload.decode("utf-8")
    except UnicodeDecodeError:
        out["payload"] = base64.b64encode(event.payload).decode("ascii")
        out["payload_encoding"] = "base64"
    return out


def headers_object(headers: Headers | None) -> dict[str, str | list[str]]:
    """Headers as a JSON object; a name seen twice keeps all its values as a list."""
    out: dict[str, str | list[str]] = {}
    for name, value in headers or []:
        if name in out:
            prev = out[name]
            out[name] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[name] = value
    return out


# --- saga runs and their journal ----------------------------------------------------------
# Each write is its own tiny transaction: the recorder's writer shares the file (WAL lets one
# writer in at a time), and an intent must be on disk before its request goes out.


@dataclass
class SagaRunRecord:
    run_id: str
    saga: str
    definition: str  # the saga's TOML, so a run resumes without the original file
    vars: dict[str, Any]
    correlation_id: str
    trace_id: str
    status: str  # running | completed | compensated | failed
    started_ns: int
    reason: str = ""
    ended_ns: int | None = None
    owner_pid: int | None = None


@dataclass
class JournalRow:
    run_id: str
    seq: int
    step: str
    kind: str  # action | compensate
    attempt: int
    idempotency_key: str
    subject: str
    payload: bytes
    headers: dict[str, str]
    in_doubt: bool
    intent_ns: int
    result: str | None = None  # ok | error | timeout | no_responders | in_doubt; None = unknown
    detail: str = ""
    reply: bytes | None = None
    result_ns: int | None = None


_decode_object = msgspec.json.Decoder(dict[str, Any]).decode
_decode_str_object = msgspec.json.Decoder(dict[str, str]).decode
RUN_COLUMNS = (
    "run_id, saga, definition, vars, correlation_id, trace_id, status, started_ns, reason, "
    "ended_ns, owner_pid"
)
JOURNAL_COLUMNS = (
    "run_id, seq, step, kind, attempt, idempotency_key, subject, payload, headers, in_doubt, "
    "intent_ns, result, detail, reply, result_ns"
)


def recording_stopped(meta: dict[str, str]) -> bool:
    """The recorder that wrote this file last has stopped. A recorder appending to a finished
    session writes a new started_ns after the old stopped_ns."""
    stopped = meta.get("stopped_ns", "")
    return stopped.isdigit() and int(stopped) >= int(meta.get("started_ns", "0") or 0)


SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26


def session_file_problem(exc: sqlite3.DatabaseError) -> str | None:
    """What a user is told, in one line, about an SQLite error from the session file
    itself: damage found where a read reached, or the file's state (locked, read-only, disk
    full). None for anything else: a constraint or a misuse is a bug."""
    if (exc.sqlite_errorcode or 0) & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return (
            f"the session file is damaged ({exc}); what is before the damage may be saved "
            "with `sqlite3 FILE .recover`"
        )
    if isinstance(exc, sqlite3.OperationalError):
        return f"session file: {exc}"
    return None


def recording_state(meta: dict[str, str]) -> str:
    """finished (its recorder closed it), recording (a recorder writes it now), or
    incomplete (the recorder ended without closing it: killed, or the machine went down;
    everything committed is there, messages still on their way were lost)."""
    if recording_stopped(meta):
        return "finished"
    return "recording" if being_recorded(meta) else "incomplete"


def being_recorded(meta: dict[str, str]) -> bool:
    """A recorder is writing this file now: it has not stopped and its process runs."""
    pid = meta.get("recorder_pid", "")
    return not recording_stopped(meta) and pid.isdigit() and recorder_running(int(pid))


def recorder_running(pid: int) -> bool:
    """The recorder with this pid still runs. One killed before it could say it stopped
    leaves its pid behind, and pids are reused: not this process, and (where /proc tells)
    only a qixtui process."""
    if pid in (0, os.getpid()) or not pid_alive(pid):
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"qixtui" in command


def pid_alive(pid: int) -> bool:
    """The process runs: it exists, and is not a zombie (one that died but was not waited
    for yet, as tap's recorder after a kill -9, still answers signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc here: signal 0 is all there is to go by
    return state != "Z"


def insert_saga_run(db: sqlite3.Connection, run: SagaRunRecord) -> None:
    with transaction(db):
        db.execute(
            f"INSERT INTO saga_runs({RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run.run_id,
                run.saga,
                run.definition,
                _json_encode(run.vars).decode(),
                run.correlation_id,
                run.trace_id,
                run.status,
                run.started_ns,
                run.reason,
                run.ended_ns,
                run.owner_pid,
            ),
        )


def claim_saga_run(
    db: sqlite3.Connection, run_id: str, pid: int, alive: Callable[[int], bool] = pid_alive
) -> SagaRunRecord:
    """Become the one runner of a run; refused while another live process owns it."""
    with transaction(db):
        run = saga_run(db, run_id)
        if run is None:
            raise SessionError(f"no saga run {run_id!r} in this session")
        if run.owner_pid is not None and run.owner_pid != pid and alive(run.owner_pid):
            raise SessionError(
                f"saga run {run_id} is being run by process {run.owner_pid}; "
                "only one runner at a time"
            )
        db.execute("UPDATE saga_runs SET owner_pid = ? WHERE run_id = ?", (pid, run_id))
    run.owner_pid = pid
    return run


def finish_saga_run(
    db: sqlite3.Connection, run_id: str, status: str, reason: str, ended_ns: int | None
) -> None:
    """Record where a run stands and give up ownership."""
    with transaction(db):
        db.execute(
            "UPDATE saga_runs SET status = ?, reason = ?, ended_ns = ?, owner_pid = NULL "
            "WHERE run_id = ?",
            (status, reason, ended_ns, run_id),
        )


def journal_intent(db: sqlite3.Connection, row: JournalRow) -> None:
    with transaction(db):
        db.execute(
            "INSERT INTO saga_journal(run_id, seq, step, kind, attempt, idempotency_key, "
            "subject, payload, headers, in_doubt, intent_ns) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.run_id,
                row.seq,
                row.step,
                row.kind,
                row.attempt,
                row.idempotency_key,
                row.subject,
                row.payload,
                _json_encode(row.headers).decode(),
                int(row.in_doubt),
                row.intent_ns,
            ),
        )


def journal_result(
    db: sqlite3.Connection,
    run_id: str,
    seq: int,
    result: str,
    detail: str,
    reply: bytes | None,
    result_ns: int,
) -> None:
    with transaction(db):
        db.execute(
            "UPDATE saga_journal SET result = ?, detail = ?, reply = ?, result_ns = ? "
            "WHERE run_id = ? AND seq = ?",
            (result, detail, reply, result_ns, run_id, seq),
        )


def _row_to_run(row: Sequence[Any]) -> SagaRunRecord:
    return SagaRunRecord(
        run_id=row[0],
        saga=row[1],
        definition=row[2],
        vars=_decode_object(row[3]),
        correlation_id=row[4],
        trace_id=row[5],
        status=row[6],
        started_ns=row[7],
        reason=row[8],
        ended_ns=row[9],
        owner_pid=row[10],
    )


def saga_run(db: sqlite3.Connection, run_id: str) -> SagaRunRecord | None:
    row = db.execute(f"SELECT {RUN_COLUMNS} FROM saga_runs WHERE run_id = ?", (run_id,)).fetchone()
    return _row_to_run(row) if row else None


def saga_runs(db: sqlite3.Connection) -> list[SagaRunRecord]:
    sql = f"SELECT {RUN_COLUMNS} FROM saga_runs ORDER BY started_ns, run_id"
    return [_row_to_run(r) for r in db.execute(sql)]


class StepRow(Protocol):
    """A step as the journal and a run's report both have it."""

    @property
    def seq(self) -> int: ...
    @property
    def step(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def result(self) -> str | None: ...


def skipped_after_failure(rows: Sequence[StepRow], run_status: str = "") -> set[int]:
    """Seqs of failed steps the user skipped. That decision is not a row of its own: it is
    the next row being another step's request (the same step again is a retry, a
    compensation is giving up), as `SagaEngine.from_journal` reads it; a failed last step is
    skipped when the run still completed."""
    skipped = {
        row.seq
        for row, after in itertools.pairwise(rows)
        if skipped_for(row, after.step, after.kind)
    }
    if rows and run_status == "completed" and skipped_for(rows[-1], "", "action"):
        skipped.add(rows[-1].seq)
    return skipped


FAILED_RESULTS = ("error", "timeout", "no_responders")


def skipped_for(row: StepRow, next_step: str, next_kind: str) -> bool:
    """A failed step's row, followed by a request of `next_step`: was it skipped?"""
    return (
        row.result in FAILED_RESULTS and row.kind == next_kind == "action" and next_step != row.step
    )


def saga_journal(db: sqlite3.Connection, run_id: str) -> list[JournalRow]:
    sql = f"SELECT {JOURNAL_COLUMNS} FROM saga_journal WHERE run_id = ? ORDER BY seq"
    return [
        JournalRow(
            run_id=r[0],
            seq=r[1],
            step=r[2],
            kind=r[3],
            attempt=r[4],
            idempotency_key=r[5],
            subject=r[6],
            payload=bytes(r[7]),
            headers=_decode_str_object(r[8]),
            in_doubt=bool(r[9]),
            intent_ns=r[10],
            result=r[11],
            detail=r[12],
            reply=bytes(r[13]) if r[13] is not None else None,
            result_ns=r[14],
        )
        for r in db.execute(sql, (run_id,))
    ]


def file_size(path: Path) -> int:
    return sum(os.path.getsize(p) for p in (str(path), f"{path}-wal") if os.path.exists(p))
