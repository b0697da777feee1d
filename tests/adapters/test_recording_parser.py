"""The recorder's protocol fast path hands over exactly what nats-py's own parser would."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.protocol.parser import Parser

from qixtui_nats import frames
from qixtui_nats.recorder import RecordingClient, RecordingParser

RECORDED_SID, OTHER_SID = 1, 7


class _Client(RecordingClient):
    """A recording client that is never connected: it notes what the parser hands it."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, ...]] = []
        super().__init__(lambda frames: self.seen.extend(("msg", *f[1:]) for f in frames))
        self.recorded_sids.add(RECORDED_SID)
        self.slow_path = 0  # recorded messages that went through nats-py's parser

    async def _process_msg(self, sid, subject, reply, data, headers):  # type: ignore[override]
        if sid in self.recorded_sids:
            self.slow_path += 1
            await super()._process_msg(sid, subject, reply, data, headers)
        else:
            self.seen.append(("other", sid, subject, reply, data, headers))

    async def _process_ping(self) -> None:
        self.seen.append(("ping",))

    async def _process_pong(self) -> None:
        self.seen.append(("pong",))


def frame(kind: str, rng: random.Random) -> bytes:
    subject = rng.choice([b"shop.order.placed", b"a.\xff\xfe.b", b"x"])
    reply = rng.choice([b"", b"_INBOX.abc.1"])
    payload = rng.choice(
        [b"", b"{}", b"\r\nMSG x 1 2\r\n", bytes(rng.randrange(256) for _ in range(40))]
    )
    sid = rng.choice([RECORDED_SID, RECORDED_SID, OTHER_SID])
    space = b" " + reply if reply else b""
    if kind == "spaced":  # legal, though no server sends it: nats-py's parser takes these
        sep = rng.choice([b"  ", b"\t", b" \t"])
        return b"MSG%s%s%s%d%s%d\r\n%s\r\n" % (sep, subject, sep, sid, sep, len(payload), payload)
    if kind == "msg":
        return b"MSG %s %d%s %d\r\n%s\r\n" % (subject, sid, space, len(payload), payload)
    if kind == "hmsg":
        headers = rng.choice([b"NATS/1.0\r\n\r\n", b"NATS/1.0\r\nA: b\r\nA: c\r\n\r\n"])
        total = len(headers) + len(payload)
        return b"HMSG %s %d%s %d %d\r\n%s%s\r\n" % (
            subject,
            sid,
            space,
            len(headers),
            total,
            headers,
            payload,
        )
    return {"ping": b"PING\r\n", "pong": b"PONG\r\n", "ok": b"+OK\r\n"}[kind]


async def parsed(parser_class: type[Parser], stream: bytes, cuts: list[int]) -> list[tuple]:
    client = _Client()
    parser = parser_class(client)
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        await parser.parse(stream[start:end])
    return client.seen


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["msg", "hmsg", "hmsg", "spaced", "ping", "pong", "ok"]), max_size=30),
    st.randoms(use_true_random=False),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
async def test_the_fast_path_sees_what_nats_py_sees(kinds, rng, cut_points):
    stream = b"".join(frame(kind, rng) for kind in kinds)
    cuts = sorted({c for c in cut_points if 0 < c < len(stream)})
    expected = await parsed(Parser, stream, cuts)
    assert await parsed(RecordingParser, stream, cuts) == expected


async def test_a_malformed_line_is_nats_py_s_protocol_error():
    from nats.errors import ProtocolError

    with pytest.raises(ProtocolError):
        await parsed(RecordingParser, b"HMSG a 1 x y\r\nWHAT\r\n", [])


async def test_a_read_may_end_anywhere_in_a_frame():
    rng = random.Random(5)
    stream = b"".join(frame(kind, rng) for kind in ["hmsg", "msg", "ping", "hmsg", "msg", "pong"])
    expected = await parsed(Parser, stream, [])
    for cut in range(1, len(stream)):
        assert await parsed(RecordingParser, stream, [cut]) == expected, cut
    assert await parsed(RecordingParser, stream, list(range(1, len(stream)))) == expected


async def test_a_megabyte_payload_over_many_reads():
    payload = bytes(random.Random(3).randrange(256) for _ in range(1 << 20))
    headers = b"NATS/1.0\r\nA: b\r\n\r\n"
    stream = b"HMSG big 1 %d %d\r\n%s%s\r\nPING\r\n" % (
        len(headers),
        len(headers) + len(payload),
        headers,
        payload,
    )
    cuts = list(range(32_768, len(stream), 32_768))
    seen = await parsed(RecordingParser, stream, cuts)
    assert seen == await parsed(Parser, stream, cuts)
    assert seen[0][3:] == (headers, payload)


async def test_recorded_messages_take_the_fast_path():
    client = _Client()
    frames = [b"HMSG a.b 1 _INBOX.x 12 14\r\nNATS/1.0\r\n\r\nhi\r\n", b"MSG a.c 1 0\r\n\r\n"]
    await RecordingParser(client).parse(b"".join(frames * 50))
    assert len(client.seen) == 100
    assert client.slow_path == 0


@pytest.mark.skipif(
    "QIXTUI_EXPECT_COMPILED" not in os.environ,
    reason="set by .ci/run where it runs these tests against a built wheel",
)
def test_a_built_wheel_splits_frames_compiled():
    assert frames.COMPILED, frames.__file__
