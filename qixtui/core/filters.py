"""Event filters: a small query language parsed into terms and built into one SQL WHERE clause.

Terms are separated by spaces and all must hold (and). Quote a term that holds spaces.

| term                   | matches events                                              |
|------------------------|-------------------------------------------------------------|
| `orders.*.created`     | whose subject matches the NATS wildcard (`*`, final `>`)    |
| `subject:a.b.c`        | whose subject matches (wildcards or not)                    |
| `header:NAME=value`    | with a header NAME (any case) whose value is exactly value  |
| `header:NAME`          | with a header NAME                                          |
| `json:/a/0/b=value`    | whose JSON payload has value at that JSON pointer           |
| `json:/a/b`            | whose JSON payload has that pointer                         |
| `status:failed`        | in a flow with that status                                  |
| `flow:12`              | in flow 12                                                  |
| `duration>2s`          | in a flow lasting more than 2 s (`<`, `>=`, `<=`; ns us ms s m h) |
| `hello`, `"two words"` | whose payload contains that text (bytes, case-sensitive)    |
| `text:a:b`             | the same, for text that would read as another term          |

The SQL runs over the `events` table (headers as JSON text of [name, value] pairs, payload a
BLOB); exact NATS subject matching needs `install_functions` on the connection. `build` gives
SQL for any file; `plan` asks the file first, so a term that matches few events is answered
through an index (see `store.build_read_indexes`) and says how few.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
import sqlite3
from dataclasses import dataclass, field
from typing import Any

import msgspec

from qixtui.core import store
from qixtui.core.model import FLOW_STATUSES
from qixtui.core.store import SQL_INT_MAX, subject_glob, subject_matches


class FilterError(ValueError):
    """A filter that cannot be parsed; the message says why, in one line."""


@dataclass(frozen=True)
class Term:
    kind: str  # subject, header, json, status, flow, duration, text
    name: str = ""
    op: str = ""
    value: Any = None


@dataclass(frozen=True)
class Filter:
    terms: tuple[Term, ...] = ()
    source: str = ""

    def __bool__(self) -> bool:
        return bool(self.terms)


@dataclass
class Where:
    sql: str = "1"
    params: list[Any] = field(default_factory=list)
    rows: int | None = None  # at most this many (<= RARE) match, when an index told `plan`


# Matches a filter may read through an index in one query and still answer in ~100 ms.
RARE = 5_000


_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000}
_UNITS["h"] = 60 * _UNITS["m"]
_DURATION = re.compile(r"^duration(>=|<=|>|<)(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)?$")
_PREFIXES = ("subject", "header", "json", "status", "flow", "text")
_PREFIX = re.compile(r"^([a-z_]+):")
_OPS = {">": ">", "<": "<", ">=": ">=", "<=": "<="}


def parse_instant(text: str) -> int:
    """A moment as ns since the epoch: a plain number of ns, or ISO 8601 (local time unless
    it names a zone). ValueError for anything else."""
    if text.isdigit() and int(text) <= SQL_INT_MAX:
        return int(text)
    return int(dt.datetime.fromisoformat(text).timestamp() * 1e9)


def parse_duration_ns(text: str) -> int:
    """`2s`, `150ms`, `1.5m` as nanoseconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)?", text)
    if not match:
        raise FilterError(f"not a duration: {text!r} (like 2s, 150ms, 1.5m)")
    try:
        return store.scaled_ns(match.group(1), _UNITS[match.group(2) or "s"])
    except ValueError:
        raise FilterError(f"duration {text!r} is longer than any recording") from None


def check_subject(pattern: str) -> None:
    """A subject pattern, stricter than NATS: here `orders.a*` is surely meant as a
    wildcard, so a wildcard inside a token is refused (NATS reads it as literal text)."""
    problem = store.subject_problem(pattern)
    if problem:
        raise FilterError(problem)
    for tok in pattern.split("."):
        if ">" in tok and tok != ">":
            raise FilterError(f"subject {pattern!r}: '>' must be a whole token")
        if "*" in tok and tok != "*":
            raise FilterError(f"subject {pattern!r}: '*' must be a whole token")


def pointer_to_path(pointer: str) -> str:
    """A JSON pointer (RFC 6901) as an SQLite JSON path; digit tokens index arrays."""
    if not pointer.startswith("/"):
        raise FilterError(f"JSON pointer {pointer!r} must start with '/'")
    path = "$"
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if token.isdigit():
            path += f"[{int(token)}]"
        elif '"' in token:
            raise FilterError(f"JSON pointer {pointer!r}: a key may not contain '\"'")
        else:
            path += f'."{token}"'
    return path


def _json_value(text: str) -> Any:
    """`42` and `1.5` compare as numbers, `true`/`false`/`null` as JSON, anything else as text
    (a JSON string in quotes is unquoted)."""
    try:
        value = msgspec.json.decode(text.encode())
    except (msgspec.DecodeError, RecursionError):
        return text
    if type(value) is int and abs(value) > SQL_INT_MAX:
        return float(value)  # as SQLite's json_extract reads such a number
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return text


def _parse_term(word: str) -> Term:
    duration = _DURATION.match(word)
    if duration:
        op, number, unit = duration.groups()
        return Term("duration", op=op, value=parse_duration_ns(number + (unit or "s")))
    if word.startswith("duration") and word[8:9] in ("<", ">", "="):
        raise FilterError(f"{word!r}: write duration>2s, duration<500ms, duration>=1m")
    prefix = _PREFIX.match(word)
    if prefix and prefix.group(1) in _PREFIXES:
        kind, rest = prefix.group(1), word[prefix.end() :]
        if not rest:
            raise FilterError(f"{kind}: needs a value")
        if kind == "subject":
            check_subject(rest)
            return Term("subject", value=rest)
        if kind == "header":
            name, eq, value = rest.partition("=")
            if not name:
                raise FilterError("header: needs a name, like header:X-Correlation-ID=abc")
            return Term("header", name=name, op="=" if eq else "exists", value=value)
        if kind == "json":
            pointer, eq, value = rest.partition("=")
            path = pointer_to_path(pointer)
            if not eq:
                return Term("json", name=path, op="exists")
            return Term("json", name=path, op="=", value=_json_value(value))
        if kind == "status":
            if rest not in FLOW_STATUSES:
                raise FilterError(f"status:{rest}: a flow is {', '.join(FLOW_STATUSES)}")
            return Term("status", value=rest)
        if kind == "text":
            return Term("text", value=rest)
        if not rest.isdigit() or int(rest) > SQL_INT_MAX:
            raise FilterError(f"flow:{rest}: a flow id is a number up to {SQL_INT_MAX}")
        return Term("flow", value=int(rest))
    if prefix and "." not in prefix.group(1):
        known = ", ".join(f"{p}:" for p in _PREFIXES)
        raise FilterError(f"unknown filter {prefix.group(0)!r} (known: {known}, duration>)")
    if "*" in word or ">" in word:
        check_subject(word)
        return Term("subject", value=word)
    return Term("text", value=word)


def parse(text: str) -> Filter:
    """Parse a filter line; raises FilterError saying what is wrong."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise FilterError(f"{exc}".replace("No closing quotation", "unclosed quote")) from None
    return Filter(tuple(_parse_term(w) for w in words), text.strip())


def quote_term(term: str) -> str:
    """A term written so `parse` reads it back as one word."""
    return shlex.quote(term)


def _subject_sql(pattern: str, where: Where) -> None:
    if "*" not in pattern and ">" not in pattern:
        where.sql += " AND subject = ?"
        where.params.append(pattern)
        return
    # GLOB narrows with an index-free scan; the function makes the exact token check.
    where.sql += " AND subject GLOB ? AND qx_subject_match(?, subject)"
    where.params += [subject_glob(pattern), pattern]


_PAYLOAD_TEXT = "CAST(payload AS TEXT)"
_encode = msgspec.json.encode


def build(flt: Filter) -> Where:
    """The WHERE clause (without the word) for events matching every term."""
    where = Where()
    for term in flt.terms:
        _term_sql(term, where)
    return _finish(where)


def _finish(where: Where) -> Where:
    if where.sql.startswith("1 AND "):
        where.sql = where.sql[len("1 AND ") :]
    return where


def _bound(where: Where, rows: int) -> None:
    if rows <= RARE:
        where.rows = rows if where.rows is None else min(where.rows, rows)


def _search_query(value: Any) -> str | None:
    """An FTS query whose hits include every event holding `value` as a header value or a JSON
    string or integer, or None when the index cannot promise that (escapes, floats)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value)
    if not text or not all(" " <= ch <= "~" for ch in text):
        return None  # JSON may escape it, and the escaped form tokenizes differently
    tokens = store.search_tokens(text)
    return " AND ".join(f'"{tok}"' for tok in tokens) or None


def _hits(db: sqlite3.Connection, table: str, query: str) -> int:
    """How many rows of an FTS index match, counted up to RARE + 1."""
    sql = f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {table} MATCH ? LIMIT ?)"
    return int(db.execute(sql, (query, RARE + 1)).fetchone()[0])


def _through_index(db: sqlite3.Connection, where: Where, table: str, query: str | None) -> None:
    """Narrow `where` to an FTS index's hits, and the payloads too large for the indexes,
    when they are few; the term's own SQL still decides (the index only promises that every
    match is among its hits)."""
    hits = RARE + 1 if query is None else _hits(db, table, query)
    if hits <= RARE:
        hits += db.execute("SELECT count(*) FROM unindexed_payloads").fetchone()[0]
    if hits <= RARE:
        where.sql += (
            f" AND id IN (SELECT rowid FROM {table} WHERE {table} MATCH ? "
            "UNION ALL SELECT id FROM unindexed_payloads)"
        )
        where.params.append(query)
    _bound(where, hits)


def plan(db: sqlite3.Connection, flt: Filter) -> Where:
    """Like `build`, shaped by what the file holds: rare subjects, flows, statuses, durations,
    header or JSON values and payload text go through an index and bound `rows`; common ones
    scan."""
    where = Where()
    indexed = store.read_indexes_ready(db)
    for term in flt.terms:
        if term.kind == "subject" and indexed:
            pattern = term.value
            sql = "SELECT subject FROM subjects WHERE subject = ?"
            params: list[Any] = [pattern]
            if "*" in pattern or ">" in pattern:
                sql = (
                    "SELECT subject FROM subjects "
                    "WHERE subject GLOB ? AND qx_subject_match(?, subject)"
                )
                params = [subject_glob(pattern), pattern]
            count = db.execute(
                f"SELECT coalesce(sum(events), 0) FROM subjects WHERE subject IN ({sql})", params
            ).fetchone()[0]
            where.sql += f" AND subject IN ({sql})"
            where.params += params
            _bound(where, count)
        elif term.kind in ("flow", "status", "duration"):
            if term.kind == "flow":
                cond, value = "flow_id = ?", term.value
            elif term.kind == "status":
                cond, value = "status = ?", term.value
            else:
                cond, value = f"ended_ns - started_ns {_OPS[term.op]} ?", term.value
            count = db.execute(
                f"SELECT coalesce(sum(events), 0) FROM flows WHERE {cond}", (value,)
            ).fetchone()[0]
            if term.kind == "flow" or count > RARE:
                _term_sql(term, where)
            else:
                # Few events: the flow index finds them, where `build` scans by id range.
                where.sql += f" AND flow_id IN (SELECT flow_id FROM flows WHERE {cond})"
                where.params.append(value)
            _bound(where, count)
        elif term.kind == "text" and indexed:
            _through_index(db, where, "search_text", store.text_search_query(term.value))
            _term_sql(term, where)
        elif term.kind in ("header", "json") and term.op == "=" and indexed:
            _through_index(db, where, "search", _search_query(term.value))
            _term_sql(term, where)
        else:
            _term_sql(term, where)
    return _finish(where)


def _term_sql(term: Term, where: Where) -> None:
    if term.kind == "subject":
        _subject_sql(term.value, where)
    elif term.kind == "text":
        where.sql += " AND instr(payload, CAST(? AS BLOB)) > 0"
        where.params.append(term.value)
    elif term.kind == "header":
        # The headers text is a JSON list of [name, value] pairs, written by msgspec. `["name",`
        # appears only where a pair starts with that name (inside a string a quote is
        # escaped), unless the name starts with `,` or `]`: then a value ending in `[` can
        # end just before it. So this byte test, any case, finds exactly the events with the
        # header, and such names get the pair checked whole; parsing every row's headers took
        # ten times as long.
        where.sql += " AND instr(lower(headers), lower(?)) > 0"
        where.params.append(f"[{_encode(term.name).decode()},")
        if term.op == "exists" and term.name[:1] in (",", "]"):
            where.sql += (
                " AND EXISTS (SELECT 1 FROM json_each(events.headers) h"
                " WHERE lower(json_extract(h.value, '$[0]')) = lower(?))"
            )
            where.params.append(term.name)
        if term.op == "=":
            # The value's own byte test first, then the pair checked whole.
            where.sql += (
                " AND instr(headers, ?) > 0 AND EXISTS (SELECT 1 FROM json_each(events.headers)"
                " h WHERE lower(json_extract(h.value, '$[0]')) = lower(?)"
                " AND json_extract(h.value, '$[1]') = ?)"
            )
            where.params += [_encode(term.value).decode(), term.name, term.value]
    elif term.kind == "json":
        last_key = re.findall(r'\."([^"]*)"', term.name)
        if last_key:
            # Cheap byte test first: only payloads naming the last key get parsed.
            where.sql += " AND instr(payload, CAST(? AS BLOB)) > 0"
            where.params.append(f'"{last_key[-1]}"')
        valid = f"json_valid({_PAYLOAD_TEXT})"
        if term.op == "exists":
            where.sql += (
                f" AND (CASE WHEN {valid} THEN json_type({_PAYLOAD_TEXT}, ?) END) IS NOT NULL"
            )
            where.params.append(term.name)
        elif isinstance(term.value, bool) or term.value is None:
            where.sql += f" AND (CASE WHEN {valid} THEN json_type({_PAYLOAD_TEXT}, ?) END) = ?"
            where.params += [
                term.name,
                {True: "true", False: "false", None: "null"}[term.value],
            ]
        else:
            where.sql += f" AND (CASE WHEN {valid} THEN json_extract({_PAYLOAD_TEXT}, ?) END) = ?"
            where.params += [term.name, term.value]
    elif term.kind == "status":
        # `+flow_id`: scan by id range; the flow index would visit every matching flow's
        # events for each range.
        where.sql += " AND +flow_id IN (SELECT flow_id FROM flows WHERE status = ?)"
        where.params.append(term.value)
    elif term.kind == "flow":
        where.sql += " AND flow_id = ?"
        where.params.append(term.value)
    elif term.kind == "duration":
        where.sql += (
            " AND +flow_id IN (SELECT flow_id FROM flows"
            f" WHERE ended_ns - started_ns {_OPS[term.op]} ?)"
        )
        where.params.append(term.value)


def install_functions(db: sqlite3.Connection) -> None:
    """Register the exact NATS subject match the built SQL calls."""
    db.create_function("qx_subject_match", 2, subject_matches, deterministic=True)
