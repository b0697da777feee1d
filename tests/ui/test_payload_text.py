"""What the payload pane says when it shows a payload as text instead of JSON."""

from __future__ import annotations

import json

from qixtui.ui import text


def test_the_pane_says_why_a_payload_is_not_shown_as_json() -> None:
    small = b'{"a": [1, 2]}'
    assert text.payload_json(small) is not None
    large = json.dumps({"blob": "x" * (text.DETAIL_BYTES + 10)}).encode()
    deep = b"[" * 2000 + b"]" * 2000
    for payload, why in (
        (large, "text (too large to format)"),
        (deep, "text (nested too deep to format)"),
        (b'{"a": ', "text (not JSON)"),
        (b"\xff\xfe", "hex (not UTF-8)"),
        (b"\xff" * (text.DETAIL_BYTES + 1), "hex (not UTF-8)"),
    ):
        assert text.payload_json(payload) is None
        assert text.not_json_why(payload) == why
