"""What the shop's messages carry besides the payload: trace context, ids, CloudEvents.

Styles are deliberately mixed, as across real teams: some services send X-Message-ID and
X-Correlation-ID, others CloudEvents binary-mode headers; all of them propagate W3C trace context
(same trace id, a new span id per hop) and name their cause in X-Causation-ID.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from qixtui_demo.plan import hex_id, uuid_of

CE_TYPE_PREFIX = "com.example.shop."


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """A header value by case-insensitive name."""
    if not headers:
        return None
    lname = name.lower()
    for key, value in headers.items():
        if key.lower() == lname:
            return value
    return None


def message_id(headers: Mapping[str, str] | None) -> str | None:
    return header(headers, "X-Message-ID") or header(headers, "ce-id")


@dataclass(frozen=True)
class Cause:
    """The event a service is reacting to, as far as its headers tell."""

    trace_id: str | None = None
    span_id: str | None = None
    message_id: str | None = None
    correlation_id: str | None = None

    @classmethod
    def of(cls, headers: Mapping[str, str] | None) -> Cause:
        trace_id = span_id = None
        parts = (header(headers, "traceparent") or "").split("-")
        if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
            trace_id, span_id = parts[1], parts[2]
        return cls(
            trace_id=trace_id,
            span_id=span_id,
            message_id=message_id(headers),
            correlation_id=header(headers, "X-Correlation-ID"),
        )


@dataclass(frozen=True)
class Style:
    """How one service labels what it publishes."""

    cloudevents: bool = False
    correlation: bool = False  # sends X-Correlation-ID


def event_headers(
    style: Style,
    service: str,
    subject: str,
    key: tuple[object, ...],
    cause: Cause | None,
    correlation_id: str | None = None,
) -> dict[str, str]:
    """Headers for one event; `key` identifies it (seed, order, subject), so a republish of
    the same event carries the same ids, as an at-least-once retry would."""
    mid = uuid_of("message", *key)
    trace_id = cause.trace_id if cause and cause.trace_id else hex_id(16, "trace", *key[:2])
    headers: dict[str, str] = {"traceparent": f"00-{trace_id}-{hex_id(8, 'span', mid)}-01"}
    if style.cloudevents:
        headers |= {
            "ce-specversion": "1.0",
            "ce-id": mid,
            "ce-type": CE_TYPE_PREFIX + subject.removeprefix("shop."),
            "ce-source": f"/shop/{service}",
            "ce-time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "content-type": "application/json",
        }
    else:
        headers["X-Message-ID"] = mid
    if style.correlation and correlation_id:
        headers["X-Correlation-ID"] = correlation_id
    if cause and cause.message_id:
        headers["X-Causation-ID"] = cause.message_id
    return headers
