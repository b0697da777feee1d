"""NATS MSG and HMSG frames split by hand: the recorder's per-message work on its read loop.

Plain typed Python with no import of nats, so a built wheel carries it compiled by mypyc
(hatch_build.py), like qixtui.core.correlate; an editable install runs it as it is.
"""

from __future__ import annotations

from typing import Any

# Built wheels carry this module compiled by mypyc (hatch_build.py); editable installs do not.
COMPILED = not __file__.endswith(".py")


def take_messages(
    buf: bytearray, recorded: set[int], now_ns: int, out: list[list[Any]]
) -> tuple[int, bool, int]:
    """Append the complete MSG/HMSG frames for `recorded` subscriptions at the start of `buf`
    to `out` as recorder frames, `[now_ns, subject, reply or None, header block or None,
    payload]` (subject and reply decoded, bad UTF-8 escaped), and stop at anything else.

    Returns the bytes those frames took, whether it stopped at a recorded frame that has not
    fully arrived, and the payload bytes handed over. The caller leaves the rest, and anything
    that does not parse, to nats-py's parser, which raises its own errors.
    """
    pos, size, payload_bytes = 0, len(buf), 0
    while True:
        if buf.startswith(b"HMSG ", pos):
            skip = 5
        elif buf.startswith(b"MSG ", pos):
            skip = 4
        else:
            return pos, False, payload_bytes
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return pos, True, payload_bytes
        # HMSG subject sid [reply] header-size total-size; MSG has no header size
        args = buf[pos + skip : end].split()
        if skip == 4:
            args.insert(len(args) - 1, bytearray(b"0"))
        if len(args) == 4:
            subject, sid, header_size, total_size = args
            reply = bytearray()
        elif len(args) == 5:
            subject, sid, reply, header_size, total_size = args
        else:
            return pos, False, payload_bytes
        if not (sid.isdigit() and header_size.isdigit() and total_size.isdigit()):
            return pos, False, payload_bytes
        start, header_len, total = end + 2, int(header_size), int(total_size)
        if header_len > total or int(sid) not in recorded:
            return pos, False, payload_bytes
        if start + total + 2 > size:
            return pos, True, payload_bytes
        out.append(
            [
                now_ns,
                subject.decode("utf-8", "backslashreplace"),
                reply.decode("utf-8", "backslashreplace") if reply else None,
                bytes(buf[start : start + header_len]) if header_len else None,
                bytes(buf[start + header_len : start + total]),
            ]
        )
        payload_bytes += total - header_len
        pos = start + total + 2
