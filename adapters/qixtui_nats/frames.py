"""NATS MSG and HMSG frames split by hand: the recorder's per-message work on its read loop.

Plain typed Python with no import of nats, so a built wheel carries it compiled by mypyc
(hatch_build.py), like qixtui.core.correlate; an editable install runs it as it is.
Written byte by byte on purpose: compiled, indexing and slicing `bytes` are C array reads,
while bytearray methods (startswith, find, split) and int() of a slice are generic calls: those
cost 15,000 instructions a frame, this 4,800.
"""

from __future__ import annotations

from typing import Any, Final

# Built wheels carry this module compiled by mypyc (hatch_build.py); editable installs do not.
COMPILED = not __file__.endswith(".py")

_SPACE: Final = 32
_CR: Final = 13
_LF: Final = 10
_ZERO: Final = 48
_NINE: Final = 57


def _number_before(buf: bytes, lo: int, hi: int) -> tuple[int, int]:
    """The decimal number that ends at `hi` and where it starts (hi when there is none)."""
    value, scale, i = 0, 1, hi
    while i > lo:
        digit = buf[i - 1]
        if digit < _ZERO or digit > _NINE:
            break
        value += (digit - _ZERO) * scale
        scale *= 10
        i -= 1
    return value, i


def take_messages(
    buf: bytes, recorded: set[int], now_ns: int, out: list[list[Any]]
) -> tuple[int, int, int]:
    """Append the complete MSG/HMSG frames for `recorded` subscriptions at the start of `buf`
    to `out` as recorder frames, `[now_ns, subject, reply or None, header block or None,
    payload]` (subject and reply decoded, bad UTF-8 escaped), and stop at anything else.

    Returns the bytes those frames took; 0, or when it stopped at a recorded frame that has
    not fully arrived, the length `buf` needs before that frame can be complete; and the
    payload bytes handed over. The caller leaves anything else, and anything that does not
    parse (such as separators other than one space), to nats-py's parser, which raises its
    own errors.
    """
    pos, size, payload_bytes = 0, len(buf), 0
    while pos + 4 < size:
        # "HMSG subject sid [reply] header-size total-size" or "MSG subject sid [reply] size"
        first = buf[pos]
        if (
            first == 72  # H
            and buf[pos + 1] == 77  # M
            and buf[pos + 2] == 83  # S
            and buf[pos + 3] == 71  # G
            and buf[pos + 4] == _SPACE
        ):
            with_headers, start = True, pos + 5
        elif first == 77 and buf[pos + 1] == 83 and buf[pos + 2] == 71 and buf[pos + 3] == _SPACE:
            with_headers, start = False, pos + 4
        else:
            break
        end = start
        while end < size and buf[end] != _CR:
            end += 1
        if end + 1 >= size:
            return pos, size + 1, payload_bytes
        if buf[end + 1] != _LF:
            break
        subject_end = start
        while subject_end < end and buf[subject_end] != _SPACE:
            subject_end += 1
        i = subject_end + 1
        sid = 0
        while i < end and _ZERO <= buf[i] <= _NINE:
            sid = sid * 10 + buf[i] - _ZERO
            i += 1
        if subject_end == start or i == subject_end + 1 or i >= end or buf[i] != _SPACE:
            break
        total, total_start = _number_before(buf, i + 1, end)
        header_len, rest_end = 0, total_start
        if with_headers:
            if total_start == end or buf[total_start - 1] != _SPACE:
                break
            header_len, rest_end = _number_before(buf, i + 1, total_start - 1)
            if rest_end == total_start - 1:
                break
        elif total_start == end:
            break
        # what is left between the sid and the sizes is the reply subject, if anything
        reply_start = i + 1
        if rest_end > reply_start:
            if buf[rest_end - 1] != _SPACE:
                break
            reply_end = rest_end - 1
            j = reply_start
            while j < reply_end and buf[j] != _SPACE:
                j += 1
            if j != reply_end or j == reply_start:
                break
        else:
            reply_end = reply_start
        if header_len > total or sid not in recorded:
            break
        body = end + 2
        if body + total + 2 > size:
            return pos, body + total + 2, payload_bytes
        out.append(
            [
                now_ns,
                buf[start:subject_end].decode("utf-8", "backslashreplace"),
                buf[reply_start:reply_end].decode("utf-8", "backslashreplace")
                if reply_end > reply_start
                else None,
                buf[body : body + header_len] if header_len else None,
                buf[body + header_len : body + total],
            ]
        )
        payload_bytes += total - header_len
        pos = body + total + 2
    return pos, 0, payload_bytes
