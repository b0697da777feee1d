"""Replay rules without a bus: which events, when, on which subject, with which headers.

Everything here is pure: rows in, decisions out, time passed in. The publishing loop lives in
qixtui_nats.replayer; the dry run and the real run share these rules so what the dry run
reports is what the real run sends.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgspec

from qixtui.core import filters
from qixtui.core.model import Headers
from qixtui.core.store import events_where, scaled_ns, subject_matches

# Server-owned namespaces and inboxes: publishing into them calls the JetStream API (deletes
# streams), touches KV or object stores, the system account, service discovery, or answers
# somebody else's request. `$JSC` and `$NRG` are JetStream's cluster and raft internals.
DENIED: tuple[tuple[str, str], ...] = (
    ("$JS.>", "JetStream API or advisory ($JS.>)"),
    ("$JSC.>", "JetStream cluster internal ($JSC.>)"),
    ("$NRG.>", "raft internal ($NRG.>)"),
    ("$KV.>", "key-value store ($KV.>)"),
    ("$O.>", "object store ($O.>)"),
    ("$SYS.>", "system account ($SYS.>)"),
    ("$SRV.>", "service discovery ($SRV.>)"),
    ("_INBOX.>", "reply inbox (_INBOX.>)"),
)
RECORDED_REPLY = "recorded reply inbox"
BAD_SUBJECT = "subject not valid for publishing"

SESSION_HEADER = "Qixtui-Replay-Session"
SEQ_HEADER = "Qixtui-Replay-Seq"
MSG_ID_HEADER = "nats-msg-id"

_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_decode_headers = msgspec.json.Decoder(list[tuple[str, str]]).decode


class ReplayError(Exception):
    """An option or plan that cannot be replayed; the message is one line for the user."""


@dataclass(frozen=True)
class Selection:
    """Which recorded events a replay considers, as the user gave it."""

    subject: str | None = None
    flow_id: int | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    status: str | None = None
    limit: int | None = None
    # A filter in the TUI's language (`subject:orders.> status:failed flow:7`): what the
    # event list shows is what gets published. Its SQL calls `filters.install_functions`.
    filter: str | None = None


# Subjects used as a reply-to anywhere in the recording, in a temporary table of the reading
# connection (a read-only connection may still write its temp schema). Reading in pages of
# short statements holds no read lock between pages, so the audit row can be written to the
# same file (a long-lived read would block the writer in rollback-journal mode).
REPLIES_TABLE_SQL = "CREATE TEMP TABLE IF NOT EXISTS qixtui_replies (subject TEXT PRIMARY KEY)"
REPLIES_REFRESH_SQL = (
    "INSERT OR IGNORE INTO temp.qixtui_replies "
    "SELECT reply FROM events WHERE id > ? AND reply IS NOT NULL"
)
ROW_COLUMNS = "id, ts_ns, subject, reply, headers, payload, subject IN temp.qixtui_replies"


def _where(selection: Selection, after_id: int, last_id: int | None) -> tuple[str, list[Any]]:
    where, params = _base_where(selection, after_id, last_id)
    if selection.filter:
        built = filters.build(parse_filter(selection.filter))
        where, params = f"{where} AND ({built.sql})", [*params, *built.params]
    return where, params


def parse_filter(text: str) -> filters.Filter:
    try:
        return filters.parse(text)
    except filters.FilterError as exc:
        raise ReplayError(f"filter {text!r}: {exc}") from None


def _base_where(selection: Selection, after_id: int, last_id: int | None) -> tuple[str, list[Any]]:
    return events_where(
        after_id=after_id,
        last_id=last_id,
        since_ns=selection.since_ns,
        until_ns=selection.until_ns,
        flow_id=selection.flow_id,
        status=selection.status,
        subject=selection.subject,
    )


def selection_sql(
    selection: Selection,
    after_id: int = 0,
    page: int | None = None,
    last_id: int | None = None,
) -> tuple[str, list[Any]]:
    """The query for a selection, oldest first, after event `after_id`, up to `last_id`.

    The subject GLOB may over-match; `Replay` makes the exact check. `limit` counts
    published messages, so it is applied by `Replay`, not here; `page` bounds one query.
    Run REPLIES_TABLE_SQL and REPLIES_REFRESH_SQL on the connection first.
    """
    where, params = _where(selection, after_id, last_id)
    sql = f"SELECT {ROW_COLUMNS} FROM events WHERE {where} ORDER BY id"
    if page is not None:
        sql += " LIMIT ?"
        params.append(page)
    return sql, params


def oversize_bound_sql(
    selection: Selection,
    after_id: int,
    session: str,
    max_payload: int,
    last_id: int | None = None,
) -> tuple[str, list[Any]]:
    """Whether any selected event might exceed max_payload once replayed, as one query.

    An upper bound on a replayed message's size: a header pair costs 7 more bytes as JSON
    than on the wire (`["n","v"],` against `n: v\r\n`), so JSON length times k covers the
    `<session>:` a Nats-Msg-Id gains; the fixed part covers the added replay headers and
    the longest seq. When this says yes, the exact check (DryRun) decides.
    """
    k = 1 + -(-(len(session) + 1) // 7)
    fixed = len(header_block(None, session, 0)) + 20
    where, params = _where(selection, after_id, last_id)
    sql = (
        f"SELECT count(*) FROM events WHERE {where} "
        "AND size + coalesce(length(CAST(headers AS BLOB)), 0) * ? + ? > ?"
    )
    return sql, [*params, k, fixed, max_payload]


def deny_reason(subject: str, recorded_reply: bool) -> str | None:
    """Why a recorded subject must never be published, or None when it may be."""
    for pattern, reason in DENIED:
        if subject_matches(pattern, subject):
            return reason
    if recorded_reply:
        return RECORDED_REPLY
    if not subject or any(c in subject for c in " \t\r\n*>") or "" in subject.split("."):
        return BAD_SUBJECT
    return None


def check_session(session: str) -> str:
    if not _TOKEN.fullmatch(session):
        raise ReplayError(f"replay session id {session!r}: use letters, digits, - and _")
    return session


def check_prefix(prefix: str) -> str:
    """A subject prefix: valid tokens ending with a dot (`replay.x.`), no wildcards."""
    given = prefix
    if not prefix.endswith("."):
        prefix += "."
    tokens = prefix[:-1].split(".")
    if any(not t or any(c in t for c in " \t\r\n*>") for t in tokens):
        raise ReplayError(f"--prefix {given!r}: not a subject prefix (like replay.test.)")
    # Every message would land where replay never publishes: `$JS.API.` in front of a
    # recorded `STREAM.DELETE.ORDERS` deletes a stream.
    denied = deny_reason(prefix + "x", recorded_reply=False)
    if denied is not None:
        raise ReplayError(f"--prefix {given!r}: replay never publishes to the {denied}")
    return prefix


def default_prefix(session: str) -> str:
    return f"replay.{session}."


def parse_speed(value: str) -> float | None:
    """`max` (None: no waiting) or a positive factor: 1 keeps the original gaps."""
    if value.strip().lower() == "max":
        return None
    try:
        speed = float(value)
    except ValueError:
        raise ReplayError(f"--speed {value!r}: a number like 1 or 10, or max") from None
    if not speed > 0 or speed == float("inf"):
        raise ReplayError(f"--speed {value!r}: must be above 0 (or max)")
    return speed


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)?")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9}


def parse_duration(value: str) -> int:
    """`2s`, `500ms`, `1.5m`, or a plain number of seconds, as ns."""
    match = _DURATION.fullmatch(value.strip())
    if not match:
        raise ReplayError(f"--max-gap {value!r}: a duration like 2s, 500ms or 1m")
    unit = match.group(2) or "s"
    scale = 3600 * 10**9 if unit == "h" else _UNIT_NS[unit]
    try:
        return scaled_ns(match.group(1), scale)
    except ValueError:
        raise ReplayError(f"--max-gap {value!r} is longer than any recording") from None


class Schedule:
    """When each message is due, in ns after the first, from the recorded timestamps.

    Gaps longer than `max_gap_ns` are squashed to it before the speed divides them; a
    timestamp that goes backwards (a wall clock step) counts as no gap.
    """

    def __init__(self, speed: float | None, max_gap_ns: int | None = None) -> None:
        self.speed = speed
        self.max_gap_ns = max_gap_ns
        self._prev_ts: int | None = None
        self._offset = 0.0

    def due(self, ts_ns: int) -> int:
        if self._prev_ts is not None and self.speed is not None:
            gap = max(0, ts_ns - self._prev_ts)
            if self.max_gap_ns is not None:
                gap = min(gap, self.max_gap_ns)
            self._offset += gap / self.speed
        self._prev_ts = ts_ns
        return int(self._offset)


def header_block(
    headers: Headers | None, session: str, seq: int, keep_msg_id: bool = False
) -> bytes:
    """The NATS header block a replayed message carries.

    The recorded pairs keep their order and repeats; the replay's session and sequence are
    appended. `Nats-Msg-Id` becomes `<session>:<original>` unless kept: JetStream would drop
    replayed copies as duplicates of the originals, while repeats within the recording stay
    repeats (deduplicated as they were the first time).
    """
    return _HeaderBuilder(session, keep_msg_id).block(headers, seq)


class _HeaderBuilder:
    """Header blocks for one replay session, built with joins that stay in C: at full speed
    this runs once per message."""

    def __init__(self, session: str, keep_msg_id: bool) -> None:
        self.session = session
        self.keep_msg_id = keep_msg_id
        self._tail = f"{SESSION_HEADER}: {session}\r\n{SEQ_HEADER}: "

    def block(self, headers: Headers | None, seq: int) -> bytes:
        if not headers:
            return f"NATS/1.0\r\n{self._tail}{seq}\r\n\r\n".encode()
        if not self.keep_msg_id:
            session = self.session
            headers = [
                (name, f"{session}:{value}")
                if len(name) == 11 and name.lower() == MSG_ID_HEADER
                else (name, value)
                for name, value in headers
            ]
        lines = "\r\n".join(map(": ".join, headers))
        return f"NATS/1.0\r\n{lines}\r\n{self._tail}{seq}\r\n\r\n".encode()

    def from_json(self, headers_json: str | None, seq: int) -> bytes:
        """The block for headers as stored (JSON text); the Nats-Msg-Id rewrite only looks at
        the pairs when the text may hold one."""
        if not headers_json:
            return self.block(None, seq)
        headers = _decode_headers(headers_json)
        # Could the text name Nats-Msg-Id, in any case or written with escapes? (A lower()
        # and two finds cost a fifth of a case-insensitive regex search.)
        if self.keep_msg_id or not ("msg-id" in headers_json.lower() or "\\" in headers_json):
            lines = "\r\n".join(map(": ".join, headers))
            if lines:
                return f"NATS/1.0\r\n{lines}\r\n{self._tail}{seq}\r\n\r\n".encode()
        return self.block(headers, seq)


@dataclass(frozen=True)
class Plan:
    """A replay as the user asked for it; stored with its audit row so --resume repeats it.

    `prefix` None publishes on the original subjects; `speed` None is as fast as possible.
    `last_id` is the newest event when the replay was planned: what a recorder still
    writing adds later is not part of it, so the dry run and the real run see the same.
    """

    session: str
    prefix: str | None
    selection: Selection = field(default_factory=Selection)
    speed: float | None = 1.0
    max_gap_ns: int | None = None
    requests: bool = False
    keep_msg_id: bool = False
    last_id: int | None = None

    def to_json(self) -> str:
        return msgspec.json.encode(self).decode()

    @staticmethod
    def from_json(text: str) -> Plan:
        return msgspec.json.decode(text, type=Plan)


# One message to publish, as `Replay.page` returns it:
# (seq, event id, recorded ts_ns, source subject, target subject, was a request, header
# block, payload). A plain tuple: at full speed one is built per message.
OutRow = tuple[int, int, int, str, str, bool, bytes, bytes]


@dataclass(slots=True)
class Outgoing:
    """One message to publish: `request` True when the recorded one was a request."""

    seq: int
    event_id: int
    ts_ns: int
    source_subject: str
    subject: str
    request: bool
    headers: bytes
    payload: bytes

    @property
    def size(self) -> int:
        """What counts against the server's max_payload: headers and payload."""
        return len(self.headers) + len(self.payload)


class Replay:
    """Turns selected rows (ROW_COLUMNS) into numbered outgoing messages.

    Seqs count published messages from 1 and continue across a resume (`last_seq`), so the
    selection's limit counts what earlier runs already sent. Skipped events are counted by
    reason; `done` turns true once the limit is reached.
    """

    def __init__(self, plan: Plan, last_seq: int = 0) -> None:
        self.plan = plan
        self.seq = last_seq
        self.skipped: Counter[str] = Counter()
        # subject -> (why it is denied, or None; the subject it is published on)
        self._subjects: dict[str, tuple[str | None, str]] = {}
        self._headers = _HeaderBuilder(plan.session, plan.keep_msg_id)
        limit = plan.selection.limit
        self._remaining = None if limit is None else max(0, limit - last_seq)

    @property
    def done(self) -> bool:
        return self._remaining is not None and self._remaining <= 0

    def next(self, row: tuple[Any, ...]) -> Outgoing | None:
        out = self.page((row,))
        return Outgoing(*out[0]) if out else None

    def page(self, rows: Iterable[tuple[Any, ...]]) -> list[OutRow]:
        """The messages for a page of rows, in order; stops early once the limit is reached.

        The one implementation of the rules per row, so the dry run (through `next`) and the
        full-speed run (a page at a time) cannot disagree.
        """
        out: list[OutRow] = []
        pattern = self.plan.selection.subject
        prefix = self.plan.prefix
        subjects, skipped = self._subjects, self.skipped
        block = self._headers.from_json
        remaining, seq = self._remaining, self.seq
        for event_id, ts_ns, subject, reply, headers_json, payload, recorded_reply in rows:
            if pattern and not subject_matches(pattern, subject):
                continue
            known = subjects.get(subject)
            if known is None:
                target = subject if prefix is None else prefix + subject
                # the subject as recorded and as sent: a plan read back to resume a replay
                # has not been through check_prefix
                known = subjects[subject] = (
                    deny_reason(subject, recorded_reply=False)
                    or deny_reason(target, recorded_reply=False),
                    target,
                )
            reason, target = known
            if reason is None and recorded_reply:
                reason = RECORDED_REPLY
            if reason is not None:
                skipped[reason] += 1
                continue
            if remaining is not None:
                if remaining <= 0:
                    break
                remaining -= 1
            seq += 1
            out.append(
                (
                    seq,
                    event_id,
                    ts_ns,
                    subject,
                    target,
                    bool(reply),
                    block(headers_json, seq),
                    payload,
                )
            )
        self._remaining, self.seq = remaining, seq
        return out


def unanswered(requests: int, replies: int, no_responders: int) -> int:
    """Requests that got neither a reply nor the server's "no responders" by the time the
    run stopped waiting; never below zero. The JSON report's count and the text's."""
    return max(0, requests - replies - no_responders)


@dataclass
class SubjectTotals:
    target: str
    count: int = 0
    bytes: int = 0
    first_ns: int = 0
    last_ns: int = 0


@dataclass
class DryRun:
    """What a replay would publish: per-subject totals and the messages too large to send."""

    max_payload: int | None
    subjects: dict[str, SubjectTotals] = field(default_factory=dict)
    # (seq, event id, subject, size) of each message larger than max_payload
    oversize: list[tuple[int, int, str, int]] = field(default_factory=list)
    messages: int = 0
    bytes: int = 0
    requests: int = 0

    def add(self, out: Outgoing) -> None:
        totals = self.subjects.get(out.source_subject)
        if totals is None:
            totals = self.subjects[out.source_subject] = SubjectTotals(
                out.subject, first_ns=out.ts_ns
            )
        totals.count += 1
        totals.bytes += out.size
        totals.last_ns = out.ts_ns
        self.messages += 1
        self.bytes += out.size
        self.requests += out.request
        if self.max_payload is not None and out.size > self.max_payload:
            self.oversize.append((out.seq, out.event_id, out.source_subject, out.size))


def looks_like_source(
    meta: dict[str, str], server_id: str, server_name: str, cluster: str = "", address: str = ""
) -> bool:
    """Whether the target is (probably) a server the recording came from: by id or name,
    the first or any the recorder reconnected to (a restarted server has a new id; its
    name may not); by cluster, another node of one; or by address, one the recorder
    connected to (a server without a configured name has a new id and name at each start)."""
    ids = {meta.get("server_id", ""), *meta.get("server_ids", "").split(",")} - {""}
    names = {meta.get("server_name", ""), *meta.get("server_names", "").split(",")} - {""}
    clusters = set(meta.get("server_clusters", "").split(",")) - {""}
    addresses = {server_address(url) for url in meta.get("server", "").split(",")} - {""}
    return (
        server_id in ids
        or server_name in names
        or cluster in clusters
        or server_address(address) in addresses
    )


def server_address(url: str) -> str:
    """`host:port` of a server URL, the port NATS's default when none is given; "" for
    what is not one. Loopback names are one address."""
    if not url.strip():
        return ""
    try:
        parts = urlsplit(url.strip() if "://" in url else f"nats://{url.strip()}")
        port = parts.port or 4222
    except ValueError:
        return ""
    host = (parts.hostname or "").lower()
    if host in ("localhost", "::1"):
        host = "127.0.0.1"
    return f"{host}:{port}" if host else ""


def confirmation_name(server_id: str, server_name: str) -> str:
    """The name a user types to confirm publishing on the original subjects to a target that
    looks like a source: the target's own, whichever of the file's servers it is."""
    return server_name or server_id or "?"
