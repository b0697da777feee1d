"""Payloads nested deeper than Python recurses (a hostile or broken publisher) are data that is
not JSON to us: every reader that decodes payloads treats them so, none crashes."""

from __future__ import annotations

import pytest

from qixtui.core import compare as cmp
from qixtui.core import filters
from qixtui.core.flowdiff import payload_diff
from qixtui.core.model import Event, Flow, Link
from qixtui.core.saga import Response, classify

DEPTH = 10_000
DEEP_OBJECT = b'{"a":' * DEPTH + b"1" + b"}" * DEPTH
DEEP_ARRAY = b"[" * DEPTH + b"]" * DEPTH


@pytest.mark.parametrize("deep", [DEEP_OBJECT, DEEP_ARRAY], ids=["object", "array"])
def test_the_flow_diff_compares_deep_payloads_whole(deep: bytes) -> None:
    [diff] = payload_diff(deep, b'{"a": 2}')
    assert diff.kind == "changed"
    assert payload_diff(deep, deep) == []


@pytest.mark.parametrize("deep", [DEEP_OBJECT, DEEP_ARRAY], ids=["object", "array"])
def test_a_saga_step_with_a_deep_reply_is_classified(deep: bytes) -> None:
    assert classify(None, Response("reply", deep)).kind == "ok"


def test_compare_reads_a_deep_reply_as_no_failure() -> None:
    request = Event(1_000, "svc.cmd.do", "_INBOX.q", None, b"{}", 1, 1)
    reply = Event(2_000, "_INBOX.q", None, None, DEEP_OBJECT, 2, 1)
    flow = Flow(1, "completed", 1_000, 2_000, 2)
    result = cmp.compare([flow], {1: [request, reply]}, {1: [Link(2, "reply", "_INBOX.q", 1)]})
    assert result.choreography.flows == 1
    assert result.choreography.failed == 0


def test_a_deep_json_filter_value_is_taken_as_text() -> None:
    flt = filters.parse("json:/a=" + DEEP_ARRAY.decode())
    assert len(flt.terms) == 1
