"""Untrusted text becomes visible text: nothing in it can steer a terminal."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from qixtui.core.text import clipped, counted, json_text, visible

CORPUS = [
    "[@click=app.quit]x[/]",
    '[link="file:///etc/passwd"]x[/link]',
    "\x1b]52;c;SGVsbG8=\x07",
    "\x1b]0;pwned\x07",
    "\x1b[2J",
    "\u009b31m",
    "\u202eevil",
    "nul\x00del\x7f",
]


def is_safe(text: str) -> bool:
    return not any(
        ord(c) < 0x20
        or 0x7F <= ord(c) <= 0x9F
        or c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
        for c in text
    )


def test_corpus_is_made_visible():
    for item in CORPUS:
        assert is_safe(visible(item))
    assert visible("\x1b[2J") == "\\x1b[2J"
    assert visible("\u009b31m") == "\\x9b31m"
    assert visible("\u202e") == "\\u202e"
    assert visible("a\tb\nc") == "a\\x09b\\x0ac"
    assert visible("a\tb\nc", multiline=True) == "a\tb\nc"
    assert visible("plain é 中文") == "plain é 中文"


@given(st.text())
def test_any_text_comes_out_safe(text: str):
    assert is_safe(visible(text))


@given(st.dictionaries(st.text(), st.text() | st.integers() | st.lists(st.text())))
def test_json_output_is_safe_and_means_the_same(value: dict) -> None:
    # `events --json` printed a payload's U+202E as it was
    text = json_text(value)
    assert is_safe(text)
    assert json.loads(text) == value


def test_json_keeps_readable_text_readable() -> None:
    assert json_text({"a": "é 中文 \u202e"}) == '{"a": "é 中文 \\u202e"}'


def test_counts_carry_their_noun() -> None:
    assert [counted(n, "message") for n in (0, 1, 2, 1500)] == [
        "0 messages",
        "1 message",
        "2 messages",
        "1,500 messages",
    ]
    assert (counted(2, "reply"), counted(2, "key"), counted(1, "reply")) == (
        "2 replies",
        "2 keys",
        "1 reply",
    )


def test_a_long_text_is_clipped_and_says_so() -> None:
    assert clipped("abc", 3) == "abc"
    assert clipped("abcd", 3) == "ab…"
