"""The one way bus- or file-sourced strings reach the screen: escaped, and never markup."""

from __future__ import annotations

import json

from rich.style import Style
from rich.text import Text

from qixtui.core.text import visible

PREVIEW_BYTES = 200
DETAIL_BYTES = 64 * 1024


def literal(value: object, style: str | Style = "", *, multiline: bool = False) -> Text:
    """Untrusted text as a Rich Text: control characters shown as escapes, brackets literal."""
    return Text(visible(str(value), multiline=multiline), style=style, no_wrap=not multiline)


def plain(value: object, *, multiline: bool = False) -> str:
    """Escaped text for places that take no markup at all (Input values, file names in logs)."""
    return visible(str(value), multiline=multiline)


def payload_preview(payload: bytes, limit: int = 120) -> str:
    """One escaped line from the start of a payload, for lists."""
    head = payload[:PREVIEW_BYTES].decode("utf-8", errors="replace")
    line = visible(head)
    return line[:limit] + ("…" if len(line) > limit or len(payload) > PREVIEW_BYTES else "")


def payload_json(payload: bytes) -> Text | None:
    """Pretty JSON, or None when it cannot be shown so (`not_json_why` says why)."""
    try:
        return literal(_pretty(payload), multiline=True)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def not_json_why(payload: bytes) -> str:
    """Why `payload_json` shows no JSON, and what shows instead: bytes that are not UTF-8 as
    hex, the rest as text (valid JSON too large or too deep is not 'not JSON')."""
    if not is_utf8(payload):
        return "hex (not UTF-8)"
    if len(payload) > DETAIL_BYTES:
        return "text (too large to format)"
    try:
        _pretty(payload)
    except RecursionError:
        return "text (nested too deep to format)"
    except (ValueError, UnicodeDecodeError):
        pass
    return "text (not JSON)"


def payload_view(payload: bytes) -> Text:
    """A payload as the detail pane first shows it: pretty JSON, hex for bytes that are not
    UTF-8, else text."""
    body = payload_json(payload)
    if body is not None:
        return body
    return payload_text(payload) if is_utf8(payload) else hex_dump(payload)


def is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _pretty(payload: bytes) -> str:
    if len(payload) > DETAIL_BYTES:
        raise ValueError("too large to format")
    return json.dumps(json.loads(payload), indent=2, ensure_ascii=False)


def payload_text(payload: bytes) -> Text:
    head = payload[:DETAIL_BYTES].decode("utf-8", errors="replace")
    out = literal(head, multiline=True)
    if len(payload) > DETAIL_BYTES:
        out.append(f"\n… {len(payload) - DETAIL_BYTES:,} more bytes", style="dim")
    return out


def hex_dump(payload: bytes, width: int = 16) -> Text:
    """Offset, hex bytes and printable ASCII (everything else as '.')."""
    data = payload[:DETAIL_BYTES]
    lines = []
    for offset in range(0, len(data), width):
        chunk = data[offset : offset + width]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        ascii_ = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{offset:08x}  {hexes:<{width * 3 - 1}}  {ascii_}")
    out = Text("\n".join(lines))
    if len(payload) > DETAIL_BYTES:
        out.append(f"\n… {len(payload) - DETAIL_BYTES:,} more bytes", style="dim")
    return out
