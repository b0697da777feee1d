"""Untrusted text made visible: control, escape and bidi characters shown, never obeyed."""

from __future__ import annotations

import json
import re

# C0 controls but tab and newline, DEL, C1 controls, and the bidi embedding/override/isolate
# characters that can reorder what a reader sees.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_ONE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str, *, multiline: bool = False) -> str:
    """`text` with every character that could steer a terminal written out as an escape.

    One line by default (newline and tab escaped too); `multiline=True` keeps them.
    """
    return (_UNSAFE if multiline else _UNSAFE_ONE_LINE).sub(_escape, text)


# What JSON leaves raw that a terminal acts on: DEL, C1 controls and bidi characters (JSON
# escapes the C0 controls itself). Only strings can hold them, where an escape means the same.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_json_encode = json.JSONEncoder(ensure_ascii=False).encode


def json_text(value: object) -> str:
    """`value` as JSON that keeps text readable (UTF-8, not escapes) and is safe to print
    on a terminal: what came off the bus gets no say in how it is shown."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", _json_encode(value))


# What would end a Mermaid statement (`;`), start a comment (`%%`), open HTML or an entity
# (`<`, `&`, `#`) or close a quoted label (`"`): written as Mermaid's numeric entities.
_MERMAID_SPECIAL = re.compile(r'[#;%<>&"]')


def mermaid_text(text: str) -> str:
    """Untrusted text safe in a Mermaid label or message, on one line."""
    return _MERMAID_SPECIAL.sub(lambda m: f"#{ord(m.group())};", visible(text))


def not_utf8(path: object, exc: UnicodeDecodeError) -> str:
    """Why a file named as text could not be read: one line (a session file given by
    mistake, say)."""
    return f"{path}: not a UTF-8 text file (byte {exc.start:,} is not UTF-8)"


def time_span(ns: int | float) -> str:
    """A time span for a person: milliseconds below a second, seconds from there."""
    return f"{ns / 1e9:.2f}s" if ns >= 1_000_000_000 else f"{ns / 1e6:.1f}ms"


def counted(count: int, noun: str) -> str:
    """`1 message`, `2 messages`, `2 replies`: a count with its noun."""
    if count == 1:
        return f"{count:,} {noun}"
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
        return f"{count:,} {noun[:-1]}ies"
    return f"{count:,} {noun}s"


def clipped(text: str, limit: int) -> str:
    """At most `limit` characters: a longer text keeps its start and says it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
