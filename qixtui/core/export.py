"""One flow for people and tools: a Mermaid sequence diagram and OpenTelemetry JSON spans."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

from qixtui.core.compare import FlowView, Lens
from qixtui.core.model import Event, Flow, Link
from qixtui.core.text import mermaid_text

SPAN_KIND_PRODUCER, SPAN_KIND_CONSUMER = 4, 5
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
UNKNOWN = "unknown"


# --- Mermaid ---------------------------------------------------------------------------------


def _mermaid_id(name: str, taken: dict[str, str]) -> str:
    if name not in taken:
        base = re.sub(r"[^A-Za-z0-9_]", "_", name) or "p"
        ident = f"p_{base}"
        while ident in taken.values():
            ident += "_"
        taken[name] = ident
    return taken[name]


def _mermaid_text(text: str) -> str:
    """Text after `:` or `as` on a Mermaid line (never empty)."""
    return mermaid_text(text).strip() or "-"


def to_mermaid(flow: Flow, events: Sequence[Event], links: Sequence[Link], lens: Lens) -> str:
    """A sequenceDiagram: requests `->>`, replies `-->>`, published events `-)` to the services
    that reacted to them (causation), or a note on the publisher when none is known."""
    view = FlowView(flow, events, links, lens)
    ids: dict[str, str] = {}
    body: list[str] = []
    reactors: dict[int, list[str]] = {}
    for event in view.events:
        cause = view.cause.get(event.id)
        if cause is not None and event.id not in view.reply_to:
            who = view.participant(event) or UNKNOWN
            if who not in reactors.setdefault(cause, []):
                reactors[cause].append(who)
    for event in view.events:
        label = _mermaid_text(view.label(event))
        sender = view.sender(event) or UNKNOWN
        request = view.reply_to.get(event.id)
        receiver = view.receiver(event)
        src = _mermaid_id(sender, ids)
        if request is not None:
            requester = view.sender(view.by_id[request]) or UNKNOWN
            body.append(f"    {src}-->>{_mermaid_id(requester, ids)}: {label}")
        elif receiver is not None:
            body.append(f"    {src}->>{_mermaid_id(receiver, ids)}: {label}")
        elif reactors.get(event.id):
            body.extend(f"    {src}-){_mermaid_id(r, ids)}: {label}" for r in reactors[event.id])
        else:
            body.append(f"    Note over {src}: {label}")
    head = ["sequenceDiagram"]
    head.extend(f"    participant {ident} as {_mermaid_text(name)}" for name, ident in ids.items())
    return "\n".join(head + body) + "\n"


# --- OpenTelemetry (OTLP/JSON) -------------------------------------------------------------


def _hex_id(*parts: object, size: int) -> str:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()
    return digest[: size * 2]


def trace_id(flow: Flow, events: Sequence[Event]) -> str:
    """The W3C trace id the flow carried, else one derived from the flow, stable per flow."""
    for event in events:
        match = _TRACEPARENT.match((event.header("traceparent") or "").strip().lower())
        if match and match.group(1) != "0" * 32:
            return match.group(1)
    return _hex_id("qixtui-flow", flow.flow_id, flow.started_ns, size=16)


def _attr(key: str, value: str | int) -> dict[str, Any]:
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}  # int64 is a string in JSON
    return {"key": key, "value": {"stringValue": value}}


def to_otlp(
    flow: Flow, events: Sequence[Event], links: Sequence[Link], lens: Lens
) -> dict[str, Any]:
    """An ExportTraceServiceRequest in OTLP/JSON: a producer span per message (a request's
    lasts until its reply), a consumer span per reply under its request, span links to the
    causing message; one resource per service."""
    view = FlowView(flow, events, links, lens)
    trace = trace_id(flow, view.events)
    span_ids = {e.id: _hex_id(trace, e.id, size=8) for e in view.events}
    by_service: dict[str, list[dict[str, Any]]] = {}
    for event in view.events:
        request = view.reply_to.get(event.id)
        reply = view.replies.get(event.id)
        attributes = [
            _attr("messaging.system", "nats"),
            _attr("messaging.destination.name", event.subject),
            _attr("messaging.message.body.size", len(event.payload)),
            _attr("qixtui.event.id", event.id),
            _attr("qixtui.flow.id", flow.flow_id),
        ]
        message_id = event.header("X-Message-ID") or event.header("Nats-Msg-Id")
        if message_id:
            attributes.append(_attr("messaging.message.id", message_id))
        if event.reply:
            attributes.append(_attr("messaging.nats.reply_to", event.reply))
        span: dict[str, Any] = {
            "traceId": trace,
            "spanId": span_ids[event.id],
            "startTimeUnixNano": str(event.ts_ns),
            "endTimeUnixNano": str(reply.ts_ns if reply else event.ts_ns),
        }
        if request is not None:
            service = view.sender(event) or UNKNOWN
            span.update(
                parentSpanId=span_ids[request],
                name=f"receive {view.by_id[request].subject}",
                kind=SPAN_KIND_CONSUMER,
            )
            attributes.append(_attr("messaging.operation.type", "receive"))
            attributes[1] = _attr("messaging.destination.name", view.by_id[request].subject)
        else:
            service = view.sender(event) or UNKNOWN
            span.update(name=f"send {event.subject}", kind=SPAN_KIND_PRODUCER)
            attributes.append(_attr("messaging.operation.type", "send"))
        cause = view.cause.get(event.id)
        if cause is not None:
            span["links"] = [
                {
                    "traceId": trace,
                    "spanId": span_ids[cause],
                    "attributes": [_attr("qixtui.link", "causation")],
                }
            ]
        span["attributes"] = attributes
        by_service.setdefault(service, []).append(span)
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [_attr("service.name", service)]},
                "scopeSpans": [{"scope": {"name": "qixtui", "version": "0.1.0"}, "spans": spans}],
            }
            for service, spans in by_service.items()
        ]
    }
