"""A flow as OTLP/JSON (decoded with opentelemetry-proto) and as a Mermaid sequence diagram."""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from shopflows import MS, T0, Builder, build

from qixtui.core import compare as cmp
from qixtui.core import export
from qixtui.core.model import Event, Flow, Link

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def flow_of(b: Builder, flow_id: int) -> tuple[Flow, list[Event], list[Link]]:
    flow = next(f for f in b.flows if f.flow_id == flow_id)
    events = [e for e in b.events if e.flow_id == flow_id]
    ids = {e.id for e in events}
    return flow, events, [lk for lk in b.links if lk.event_id in ids]


def parse_otlp(doc: dict[str, Any]) -> ExportTraceServiceRequest:
    """OTLP/JSON writes trace and span ids as hex where the protobuf JSON mapping has base64;
    the OTLP spec's decoders convert them, so does this before json_format.Parse."""
    doc = copy.deepcopy(doc)
    for resource in doc["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                for item in [span, *span.get("links", [])]:
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if key in item:
                            raw = bytes.fromhex(item[key])
                            item[key] = base64.b64encode(raw).decode()
    return json_format.Parse(json.dumps(doc), ExportTraceServiceRequest())


def attrs(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        out[kv.key] = getattr(kv.value, kv.value.WhichOneof("value"))
    return out


def test_otlp_json_decodes_as_an_export_request() -> None:
    b = build()
    flow, events, links = flow_of(b, 13)
    doc = export.to_otlp(flow, events, links, cmp.Lens())
    request = parse_otlp(doc)
    services = {
        r.resource.attributes[0].value.string_value: [s for ss in r.scope_spans for s in ss.spans]
        for r in request.resource_spans
    }
    assert set(services) == {"orchestrator", "payment", "stock"}
    spans = [s for group in services.values() for s in group]
    assert len(spans) == len(events)
    trace = spans[0].trace_id
    assert len(trace) == 16
    assert all(s.trace_id == trace for s in spans)
    assert all(len(s.span_id) == 8 for s in spans)
    assert len({s.span_id for s in spans}) == len(spans)
    producers = [s for s in services["orchestrator"]]
    assert {s.kind for s in producers} == {Span.SPAN_KIND_PRODUCER}
    first = min(producers, key=lambda s: s.start_time_unix_nano)
    assert first.start_time_unix_nano == events[0].ts_ns
    assert first.end_time_unix_nano == events[1].ts_ns  # until its reply
    assert attrs(first)["messaging.system"] == "nats"
    assert attrs(first)["messaging.destination.name"] == "shop.cmd.payment.authorize"
    assert attrs(first)["messaging.operation.type"] == "send"
    replies = services["payment"]
    assert {s.kind for s in replies} == {Span.SPAN_KIND_CONSUMER}
    assert {s.parent_span_id for s in replies} <= {s.span_id for s in producers}
    assert all(attrs(s)["messaging.operation.type"] == "receive" for s in replies)


def test_otlp_reuses_the_traceparent_and_links_causes() -> None:
    b = Builder()
    parent = b.add(
        1, T0, "shop.order.placed", {}, headers=[("traceparent", f"00-{TRACE}-00f067aa0ba902b7-01")]
    )
    b.add(1, T0 + 5 * MS, "shop.payment.authorized", {}, cause=parent)
    b.finish(1, "running", orchestrated=False)
    flow, events, links = flow_of(b, 1)
    request = parse_otlp(export.to_otlp(flow, events, links, cmp.Lens()))
    spans = {s.name: s for r in request.resource_spans for ss in r.scope_spans for s in ss.spans}
    assert spans["send shop.order.placed"].trace_id.hex() == TRACE
    (link,) = spans["send shop.payment.authorized"].links
    assert link.span_id == spans["send shop.order.placed"].span_id
    assert link.trace_id.hex() == TRACE


PARTICIPANT = re.compile(r"^    participant (p_[A-Za-z0-9_]+) as ([^\n;#]|#\d+;)+$")
MESSAGE = re.compile(r"^    (p_[A-Za-z0-9_]+)(->>|-->>|-\))(p_[A-Za-z0-9_]+): ([^\n;]|#\d+;)+$")
NOTE = re.compile(r"^    Note over (p_[A-Za-z0-9_]+): ([^\n;]|#\d+;)+$")


def check_sequence_diagram(text: str) -> list[tuple[str, str, str]]:
    """The sequenceDiagram grammar we emit: header, participants first, then messages and
    notes between declared participants. Returns (from, arrow, to) for each message."""
    lines = text.rstrip("\n").split("\n")
    assert lines[0] == "sequenceDiagram"
    declared: set[str] = set()
    arrows: list[tuple[str, str, str]] = []
    body = False
    for line in lines[1:]:
        if m := PARTICIPANT.match(line):
            assert not body, "participants come first"
            declared.add(m.group(1))
        elif m := MESSAGE.match(line):
            body = True
            assert {m.group(1), m.group(3)} <= declared
            arrows.append((m.group(1), m.group(2), m.group(3)))
        elif m := NOTE.match(line):
            body = True
            assert m.group(1) in declared
        else:
            raise AssertionError(f"not sequenceDiagram syntax: {line!r}")
    return arrows


def test_mermaid_request_reply_arrows() -> None:
    b = build()
    text = export.to_mermaid(*flow_of(b, 13), cmp.Lens())
    arrows = check_sequence_diagram(text)
    assert arrows[:2] == [
        ("p_orchestrator", "->>", "p_payment"),
        ("p_payment", "-->>", "p_orchestrator"),
    ]
    assert len(arrows) == 6


def test_mermaid_events_go_to_the_services_that_reacted() -> None:
    text = export.to_mermaid(*flow_of(build(), 1), cmp.Lens())
    arrows = check_sequence_diagram(text)
    assert arrows[0] == ("p_order", "-)", "p_payment")
    assert text.rstrip().endswith("Note over p_order: shop.order.completed")


def test_mermaid_escapes_hostile_subjects() -> None:
    b = Builder()
    first = b.add(1, T0, "evil;x.a#b%%c.\x1b]52;c;AAAA\x07", {})
    b.add(1, T0 + MS, "svc.ok\nsequenceDiagram.x", {}, cause=first)
    b.add(1, T0 + 2 * MS, 'q.e<br/><img/src=x onerror="alert(1)">', {}, cause=first)
    b.add(1, T0 + 3 * MS, "q.#quot;&amp;", {}, cause=first)
    b.finish(1, "running", orchestrated=False)
    text = export.to_mermaid(*flow_of(b, 1), cmp.Lens())
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "<" not in text  # no HTML reaches a renderer (arrows use only `>`)
    assert "#quot;" not in text  # a literal entity in a subject is not decoded
    assert "&amp;" not in text
    check_sequence_diagram(text)


def test_mmdc_when_installed(tmp_path: Any) -> None:
    mmdc = shutil.which("mmdc")
    if mmdc is None:
        return  # the structure checks above stand in for the Mermaid CLI here
    import subprocess

    source = tmp_path / "flow.mmd"
    source.write_text(export.to_mermaid(*flow_of(build(), 13), cmp.Lens()))
    subprocess.run([mmdc, "-i", str(source), "-o", str(tmp_path / "flow.svg")], check=True)
