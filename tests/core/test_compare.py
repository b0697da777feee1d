"""Core tests for choreography vs orchestration metrics and conformance to a saga."""

from __future__ import annotations

from collections import defaultdict

import msgspec
import pytest
from shopflows import COMPENSATION, FAILURE, HAPPY, MAP, MS, SWAPPED, T0, Builder, build

from qixtui.core import compare as cmp
from qixtui.core.correlate import event_service
from qixtui.core.model import Event, Link
from qixtui.core.rules import Rules

STEPS = ["authorize", "reserve", "ship", "complete"]


def keyed(b: Builder) -> tuple[dict[int, list[Event]], dict[int, list[Link]]]:
    events: dict[int, list[Event]] = defaultdict(list)
    for event in b.events:
        assert event.flow_id is not None
        events[event.flow_id].append(event)
    owner = {e.id: e.flow_id for e in b.events}
    links: dict[int, list[Link]] = defaultdict(list)
    for link in b.links:
        flow_id = owner[link.event_id]
        assert flow_id is not None
        links[flow_id].append(link)
    return events, links


def run(b: Builder, **kw: object) -> cmp.Comparison:
    events, links = keyed(b)
    return cmp.compare(
        b.flows,
        events,
        links,
        markers=cmp.Markers(FAILURE, COMPENSATION),
        saga=cmp.parse_mapping(MAP, STEPS),
        **kw,  # type: ignore[arg-type]
    )


def test_percentiles_are_nearest_rank() -> None:
    p = cmp.percentiles(range(1, 101))
    assert (p.count, p.p50, p.p95, p.p99, p.max) == (100, 50, 95, 99, 100)
    assert cmp.percentiles([7]).p99 == 7
    assert cmp.percentiles([]) == cmp.Percentiles(0, None, None, None)


def test_styles_counts_and_latencies() -> None:
    result = run(build())
    chor, orch = result.choreography, result.orchestration
    assert (chor.flows, chor.completed, chor.compensated) == (5, 4, 1)
    assert (orch.flows, orch.completed, orch.compensated) == (3, 2, 1)
    assert chor.flow_ids == [1, 2, 3, 4, 5]
    assert orch.flow_ids == [11, 12, 13]
    # completed choreography: three happy flows of 70 ms and the swapped one of 55 ms
    assert chor.latency_ns.p50 == 70 * MS
    assert chor.latency_ns.count == 4
    assert chor.latency_ns.mean == (3 * 70 + 55) * MS / 4
    # orchestrated: 33 ms and the same calls at half speed, 66 ms
    assert (orch.latency_ns.p50, orch.latency_ns.p99) == (33 * MS, 66 * MS)
    assert orch.messages_per_flow.max == 8
    assert chor.messages_per_flow.mean == 5


def test_split_by_subject_pattern_instead_of_the_flag() -> None:
    b = build()
    for flow in b.flows:
        flow.orchestrated = False
    result = run(b, orchestrated_subject="shop.cmd.>")
    assert result.orchestration.flow_ids == [11, 12, 13]
    assert "shop.cmd.>" in result.split


def test_edges_say_how_the_pair_was_found() -> None:
    result = run(build())
    orch = {(e.source, e.target, e.via): e.count for e in result.orchestration.edges}
    assert orch[("orchestrator", "payment", "request")] == 4  # 3 authorize + 1 refund
    assert orch[("payment", "orchestrator", "reply")] == 4
    assert result.orchestration.coupling == 4  # every service only with the orchestrator
    chor = {(e.source, e.target, e.via): e.count for e in result.choreography.edges}
    assert chor[("order", "payment", "causation")] == 5
    assert result.choreography.coupling > result.orchestration.coupling


def test_edges_fall_back_to_the_sequence_without_causation() -> None:
    b = Builder()
    for subject, at in HAPPY[:3]:
        b.add(1, T0 + at * MS, subject, {"order_id": "o-1"})
    b.finish(1, "running", orchestrated=False)
    result = run(b)
    edges = {(e.source, e.target, e.via) for e in result.choreography.edges}
    assert edges == {("order", "payment", "sequence"), ("payment", "stock", "sequence")}


def test_failure_detection_and_compensation_times() -> None:
    result = run(build())
    # choreography: cancelled at 35 ms, refunded at 50 ms
    assert result.choreography.detect_failure_ns.p50 == 35 * MS
    assert result.choreography.compensate_ns.p50 == 15 * MS
    # orchestration: the reserve reply says ok=false at 7 ms; the refund's reply at 15 ms
    assert result.orchestration.detect_failure_ns.p50 == 7 * MS
    assert result.orchestration.compensate_ns.p50 == 8 * MS


def test_a_step_that_timed_out_is_a_detected_failure() -> None:
    """No reply says no: the saga's compensation, or its failure announcement, is the
    moment the failure was known."""
    b = build()
    run_header = [("Qixtui-Saga-Run", "run-14")]
    start = T0 + 20_000 * MS
    b.add(14, start, "shop.cmd.payment.authorize", {}, run_header, reply="_INBOX.t14")
    b.add(14, start + 2000 * MS, "qixtui.saga.shop.failed", {}, run_header)
    b.finish(14, "failed", orchestrated=True)
    run_header = [("Qixtui-Saga-Run", "run-15")]
    start = T0 + 30_000 * MS
    paid = b.add(15, start, "shop.cmd.payment.authorize", {}, run_header, reply="_INBOX.a15")
    b.add(15, start + 3 * MS, "_INBOX.a15", {"ok": True}, run_header, answers=paid)
    b.add(15, start + 4 * MS, "shop.cmd.stock.reserve", {}, run_header, reply="_INBOX.s15")
    refund = b.add(15, start + 2004 * MS, "shop.cmd.payment.refund", {}, run_header, "_INBOX.r15")
    b.add(15, start + 2010 * MS, "_INBOX.r15", {"ok": True}, run_header, answers=refund)
    b.finish(15, "compensated", orchestrated=True)
    detected = run(b).orchestration.detect_failure_ns
    assert detected.count == 3  # the ok=false reply of build()'s flow 13, and these two
    assert (detected.p50, detected.max) == (2000 * MS, 2004 * MS)


def test_critical_path_names_the_slowest_step() -> None:
    result = run(build())
    top = result.orchestration.critical_path[0]
    assert top.step == "shop.cmd.shipping.create (reply)"
    assert top.total_ns == (20 + 40) * MS
    assert top.flows == 2
    assert result.choreography.critical_path[0].step == "shop.shipment.created"
    assert sum(s.share for s in result.orchestration.critical_path) <= 1.0


def test_out_of_order_variant_deviates_at_that_step() -> None:
    conf = run(build()).conformance
    assert conf is not None
    by_steps = {tuple(v.steps): v for v in conf.variants}
    swapped = by_steps[tuple(s for s, _ in SWAPPED)]
    assert not swapped.conforms
    assert [(d.kind, d.step, d.position) for d in swapped.deviations] == [
        ("out_of_order", "reserve", 0)
    ]
    assert by_steps[tuple(s for s, _ in HAPPY)].conforms
    assert by_steps[tuple(s for s, _ in HAPPY)].count == 3
    (compensated,) = [v for v in conf.variants if "authorize:compensate" in v.mapped]
    assert compensated.conforms
    assert compensated.expected == ["authorize", "authorize:compensate"]
    assert (conf.flows, conf.conforming_flows) == (5, 4)
    assert "shop.order.placed" in conf.unmapped_types


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        (["a.pay.ok", "a.ship.ok"], [("missing", "reserve", 1), ("missing", "complete", 3)]),
        (
            ["a.pay.ok", "a.stock.ok", "a.stock.ok", "a.ship.ok", "a.done.ok"],
            [("extra", "reserve", 2)],
        ),
        (
            ["a.pay.ok", "a.stock.ok", "a.pay.undo", "a.stock.undo"],
            [("out_of_order", "authorize:compensate", 2)],
        ),
        (["a.pay.ok", "a.stock.ok", "a.stock.undo", "a.pay.undo"], []),
        (["a.placed", "a.declined"], []),  # the first step failed: nothing to undo
        (["a.placed", "a.pay.undo"], [("missing", "authorize", 0)]),  # undone, never done
    ],
)
def test_missing_extra_and_compensation_order(
    variant: list[str], expected: list[tuple[str, str, int]]
) -> None:
    saga = cmp.parse_mapping(
        [
            "authorize=a.pay.ok",
            "reserve=a.stock.ok",
            "ship=a.ship.ok",
            "complete=a.done.ok",
            "authorize:compensate=a.pay.undo",
            "reserve:compensate=a.stock.undo",
        ],
        STEPS,
    )
    (result,) = cmp.conformance([(variant, 1)], saga).variants
    assert [(d.kind, d.step, d.position) for d in result.deviations] == expected
    assert result.conforms is (not expected)


def test_mapping_errors_name_the_item() -> None:
    with pytest.raises(ValueError, match="no step `pay`"):
        cmp.parse_mapping(["pay=a.b"], STEPS)
    with pytest.raises(ValueError, match="STEP=SUBJECT"):
        cmp.parse_mapping(["authorize"], STEPS)
    with pytest.raises(ValueError, match="STEP:compensate"):
        cmp.parse_mapping(["authorize:undo=a.b"], STEPS)
    mapped = cmp.parse_mapping(["ship=a.ship.ok"], STEPS)
    conf = cmp.conformance([(["a.ship.ok"], 2)], mapped)
    assert conf.unmapped_steps == ["authorize", "reserve", "complete"]
    assert conf.conforming_flows == 2


@pytest.mark.parametrize(
    ("services", "subject", "service"),
    [
        ({}, "shop.cmd.payment.authorize", "payment"),
        ({}, "shop.payment.authorized", "payment"),
        ({}, "orders", "orders"),
        ({"from": "subject:2"}, "shop.cmd", "cmd"),  # nothing after `cmd` to name
        ({"from": "subject:2"}, "shop.command.stock.reserve", "stock"),
        ({"from": "subject:3"}, "eu.shop.cmd.stock.reserve", "stock"),
        ({"from": "subject:2", "command_tokens": []}, "shop.cmd.stock.reserve", "cmd"),
    ],
)
def test_services_read_command_subjects(
    services: dict[str, object], subject: str, service: str
) -> None:
    rules = msgspec.convert({"services": services}, Rules)
    event = Event(0, subject, None, None, b"")
    assert event_service(event, rules) == service
    assert cmp.Lens.from_rules(rules).service_of(event) == service


def test_a_request_from_an_unknown_sender_is_inferred_from_the_sequence() -> None:
    b = Builder()
    placed = b.add(1, T0, "shop.order.placed", {"order_id": "o-1"})
    quote = b.add(1, T0 + MS, "shop.pricing.quote", {}, reply="_INBOX.q", cause=placed)
    b.add(1, T0 + 2 * MS, "_INBOX.q", {"price": 1}, answers=quote)
    b.finish(1, "running", orchestrated=False)
    edges = {(e.source, e.target, e.via) for e in run(b).choreography.edges}
    # the quote's requester is not the service that published its cause, and is unknown:
    # the edge comes from the service seen before it, and the reply goes back to no one
    assert edges == {("order", "pricing", "sequence")}


def test_traces_feed_discovery_with_reply_labels() -> None:
    b = build()
    events, links = keyed(b)
    traces = cmp.traces_of([f for f in b.flows if f.flow_id == 11], events, links, cmp.Lens())
    assert [step for step, _ in traces[0]][:2] == [
        "shop.cmd.payment.authorize",
        "shop.cmd.payment.authorize (reply)",
    ]
    assert [ts for _, ts in traces[0]] == sorted(ts for _, ts in traces[0])


def test_a_runs_outcome_is_no_service_and_no_edge() -> None:
    b = build()
    run_header = [("Qixtui-Saga-Run", "run-11")]
    b.add(11, T0 + 10_040 * MS, "qixtui.saga.shop.completed", {}, headers=run_header)
    b.flows = [f for f in b.flows if f.flow_id != 11]
    b.finish(11, "completed", orchestrated=True)
    orch = run(b).orchestration
    assert {e.target for e in orch.edges} | {e.source for e in orch.edges} == {
        "orchestrator", "payment", "stock", "shipping", "order"
    }  # fmt: skip
    assert orch.coupling == 4
    assert orch.services_per_flow.max == 4  # payment, stock, shipping, order


def test_a_run_stepped_by_hand_counts_but_is_left_out_of_the_times() -> None:
    b = build()
    run_header = [("Qixtui-Saga-Run", "run-11")]
    # run 11 was stepped by a person, who paused a minute before announcing the end
    b.add(11, T0 + 70_000 * MS, "qixtui.saga.shop.completed", {"stepped": True}, run_header)
    b.flows = [f for f in b.flows if f.flow_id != 11]
    b.finish(11, "completed", orchestrated=True)
    result = run(b)
    orch = result.orchestration
    assert (orch.flows, orch.completed, orch.stepped) == (3, 2, 1)
    assert orch.latency_ns.count == 1  # flow 12 alone; flow 13 compensated
    assert orch.latency_ns.max == 66 * MS  # not the minute
    assert orch.messages_per_flow.max == 9  # still counted: its messages and edges
    assert ("stepped by hand (no times)", "0", "1") in cmp.figure_rows(result)
    assert "stepped by hand (no times)" not in {r[0] for r in cmp.figure_rows(run(build()))}


def test_a_run_stepped_then_stopped_or_resumed_unattended_is_still_stepped() -> None:
    # No announcement says so (stopped, or resumed with --auto: `"stepped": false`), but the
    # requests the person let go carry the stepped header.
    b = build()
    stepped = [("Qixtui-Saga-Run", "run-11"), ("Qixtui-Saga-Stepped", "true")]
    b.add(11, T0 + 70_000 * MS, "shop.cmd.payment.authorize", {}, stepped)
    b.add(11, T0 + 70_010 * MS, "qixtui.saga.shop.completed", {"stepped": False},
          [("Qixtui-Saga-Run", "run-11")])  # fmt: skip
    b.flows = [f for f in b.flows if f.flow_id != 11]
    b.finish(11, "completed", orchestrated=True)
    orch = run(b).orchestration
    assert orch.stepped == 1
    assert orch.latency_ns.max == 66 * MS  # flow 12's: not the minute flow 11 waited
