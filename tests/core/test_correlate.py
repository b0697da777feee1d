"""The correlator on plain in-memory events: keys, merges, status, robustness, memory."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any
from unittest import mock

import msgspec
import pytest
from flowgen import (
    CONVENTIONS,
    FIELD_KEYS,
    Message,
    expand_replies,
    flow_messages,
    interleave,
    noise,
    reply_tag,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from qixtui.core import correlate, flowfile, rows, store
from qixtui.core.correlate import Correlator, correlate_all, event_type
from qixtui.core.flowfile import recorrelate
from qixtui.core.model import Event
from qixtui.core.rules import RuleFlags, Rules, RulesError

RULES = Rules().merged_with(
    RuleFlags(
        keys=FIELD_KEYS,
        terminal=["shop.order.completed"],
        failure=["shop.order.cancelled"],
        compensation=["shop.payment.refunded"],
    )
)
SECOND = 1_000_000_000


def to_events(messages: list[Message], start_ns: int = 0, step_ns: int = 1000) -> list[Event]:
    events = []
    for i, (msg, reply) in enumerate(expand_replies(messages), 1):
        events.append(
            Event(
                ts_ns=start_ns + i * step_ns,
                subject=msg.subject,
                reply=reply,
                headers=msg.headers or None,
                payload=msg.payload,
                id=i,
            )
        )
    return events


def label(event: Event, seen: dict[str, int]) -> tuple[str, int]:
    """(flow tag, position within that flow): the same message whatever the interleaving."""
    tag = event.header("Test-Flow") or reply_tag(event.payload)
    seen[tag] = seen.get(tag, 0) + 1
    return tag, seen[tag]


def memberships(events: list[Event], batch: int) -> set[frozenset[tuple[str, int]]]:
    correlator = Correlator(RULES)
    groups: dict[int, set[tuple[str, int]]] = {}
    seen: dict[str, int] = {}
    labels = {e.id: label(e, seen) for e in events}
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        changes = correlator.add_batch(chunk, chunk[-1].ts_ns)
        for absorbed, into in changes.merges:
            groups.setdefault(into, set()).update(groups.pop(absorbed, set()))
        for event_id, flow_id in changes.assign:
            groups.setdefault(flow_id, set()).add(labels[event_id])
        for event in chunk:
            if event.flow_id is not None:
                groups.setdefault(event.flow_id, set()).add(labels[event.id])
    return {frozenset(g) for g in groups.values()}


# Traffic Hypothesis draws: flows of the given conventions plus heartbeats, interleaved by a
# seed, correlated in batches of a drawn size.
traffic_cases = given(
    conventions=st.lists(st.sampled_from(CONVENTIONS), min_size=1, max_size=12),
    noise_count=st.integers(0, 6),
    order_seed=st.integers(0, 2**32),
    batch=st.integers(1, 40),
)


def generated_flows(conventions: list[str], noise_count: int, seed: int) -> list[list[Message]]:
    rng = random.Random(seed)
    groups = [flow_messages(n, c, rng) for n, c in enumerate(conventions)]
    return groups + [[noise(i, rng)] for i in range(noise_count)]


@settings(max_examples=60, deadline=None)
@traffic_cases
def test_flows_do_not_depend_on_interleaving(
    conventions: list[str], noise_count: int, order_seed: int, batch: int
) -> None:
    groups = generated_flows(conventions, noise_count, 1)
    one_by_one = to_events([m for g in groups for m in g])
    shuffled = to_events(interleave(groups, random.Random(order_seed)))
    expected = memberships(one_by_one, 1)
    assert memberships(shuffled, batch) == expected
    # and every flow is exactly one generated flow, all of it
    assert {next(iter(g))[0] for g in expected} == {f"f{n}" for n in range(len(conventions))}
    for group in expected:
        tag = next(iter(group))[0]
        assert all(t == tag for t, _ in group)


@settings(max_examples=40, deadline=None)
@traffic_cases
def test_rows_made_directly_are_the_rows_of_the_changes(
    conventions: list[str], noise_count: int, order_seed: int, batch: int
) -> None:
    """The recorder links a batch in parts and takes its rows straight from the correlator:
    once retargeted, its event rows and flow rows are those of add_batch on the whole batch."""
    groups = generated_flows(conventions, noise_count, 2)
    plain = to_events(interleave(groups, random.Random(order_seed)))
    direct = [msgspec.structs.replace(e) for e in plain]
    part = random.Random(order_seed).randint(1, batch)
    via_changes, via_rows = Correlator(RULES), Correlator(RULES)
    for start in range(0, len(plain), batch):
        now = plain[min(start + batch, len(plain)) - 1].ts_ns
        changes = rows.flow_rows(via_changes.add_batch(plain[start : start + batch], now))
        wanted = rows.event_rows(plain[start : start + batch])
        for flow_id, event_id in changes.assign:  # adopted here: the rows say so
            if event_id > start:
                wanted[event_id - start - 1] = (*wanted[event_id - start - 1][:7], flow_id)
        made: list[tuple[Any, ...]] = []
        for at in range(start, min(start + batch, len(plain)), part):
            events = direct[at : min(at + part, start + batch)]
            via_rows.link(events)
            made += rows.event_rows(events)
        found = via_rows.batch_rows(now)
        assert found == changes
        rows.retarget(made, start + 1, rows.merged_into(found.merges), found.assign)
        assert made == wanted
    assert any(e.flow_id is not None for e in plain)


@settings(max_examples=30, deadline=None)
@traffic_cases
def test_recorrelating_a_file_page_by_page_finds_what_correlation_finds(
    conventions: list[str],
    noise_count: int,
    order_seed: int,
    batch: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """`qixtui correlate` pages through the file and rewrites only the flow ids that change:
    flows merged across pages, adopted events and the previous rules' flow ids still on file
    must all end as correlating the whole stream does."""
    groups = generated_flows(conventions, noise_count, 3)
    events = to_events(interleave(groups, random.Random(order_seed)))
    db = store.create_session(tmp_path_factory.mktemp("recorrelate") / "s.qix")
    try:
        store.insert_events(db, events)
        recorrelate(db, Rules(), page_size=batch)  # other flows on file first
        # pages linked in parts, as the recorder's batches are
        with mock.patch.object(flowfile, "PART_EVENTS", random.Random(order_seed).randint(1, 9)):
            recorrelate(db, RULES, page_size=batch)
        on_file: dict[int, set[int]] = {}
        for event_id, flow_id in db.execute("SELECT id, flow_id FROM events"):
            if flow_id is not None:
                on_file.setdefault(flow_id, set()).add(event_id)
        flows = dict(db.execute("SELECT flow_id, events FROM flows").fetchall())
    finally:
        db.close()
    expected = correlate_all([msgspec.structs.replace(e) for e in events], RULES)
    assert {frozenset(ids) for ids in on_file.values()} == {
        frozenset(ids) for ids in expected.values()
    }
    assert flows == {flow_id: len(ids) for flow_id, ids in on_file.items()}


def test_recorrelating_moves_an_earlier_page_to_where_its_flow_ended(tmp_path: Path) -> None:
    """Flow 1 (page one) goes into flow 10, then 10 into 13, all in page two."""
    rules = Rules().merged_with(RuleFlags(keys=["/order_id", "/shipment_id"]))
    payloads = [
        b'{"order_id": "o1"}',
        *[b'{"beat": 1}'] * 8,
        *[b'{"shipment_id": "s2"}'] * 2,
        b'{"order_id": "o1", "shipment_id": "s2"}',
        *[b'{"order_id": "o9"}'] * 5,
        b'{"order_id": "o9", "shipment_id": "s2"}',
    ]
    db = store.create_session(tmp_path / "chain.qix")
    store.insert_events(db, [ev(i, "shop.x", p) for i, p in enumerate(payloads, 1)])
    recorrelate(db, rules, page_size=9)
    flow_ids = db.execute("SELECT DISTINCT flow_id FROM events WHERE flow_id IS NOT NULL")
    assert flow_ids.fetchall() == [(13,)]
    assert db.execute("SELECT flow_id, events FROM flows").fetchall() == [(13, 10)]


def ev(
    id: int,
    subject: str,
    payload: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    ts: int | None = None,
    reply: str | None = None,
) -> Event:
    return Event(
        ts_ns=id * 1000 if ts is None else ts,
        subject=subject,
        reply=reply,
        headers=headers,
        payload=payload,
        id=id,
    )


def test_a_late_bridge_merges_the_smaller_flow_into_the_larger() -> None:
    c = Correlator(RULES)
    first = [ev(1, "a.b", b'{"order_id": 1}'), ev(2, "a.c", b'{"order_id": 1}')]
    c.add_batch(first, 2000)
    c.add_batch([ev(3, "s.x", b'{"shipment_id": "s"}')], 3000)
    bridge = ev(4, "s.y", b'{"order_id": 1, "shipment_id": "s"}')
    changes = c.add_batch([bridge], 4000)
    assert changes.merges == [(3, 1)]
    assert bridge.flow_id == 1
    assert [(f.flow_id, f.events) for f in changes.flows] == [(1, 4)]
    assert sorted(changes.flows[0].keys) == ["order_id=1", "shipment_id=s"]
    assert changes.links == []  # key links are derived, not stored
    kinds = {(lk.event_id, lk.kind, lk.key) for lk in c.key_links(bridge)}
    assert kinds == {(4, "field", "order_id=1"), (4, "field", "shipment_id=s")}
    # the absorbed flow's key now leads to the survivor
    later = ev(5, "s.z", b'{"shipment_id": "s"}')
    c.add_batch([later], 5000)
    assert later.flow_id == 1


def test_a_batch_sets_every_events_flow_id_across_a_merge_inside_it() -> None:
    order = ev(1, "a.b", b'{"order_id": 1}')
    shipment = ev(2, "s.x", b'{"shipment_id": "s"}')
    heartbeat = ev(3, "shop.heartbeat.payment", b"{}")
    heartbeat.flow_id = 2  # left over from correlating these events before
    bridge = ev(4, "s.y", b'{"order_id": 1, "shipment_id": "s"}')
    changes = Correlator(RULES).add_batch([order, shipment, heartbeat, bridge], 4000)
    assert changes.merges == [(2, 1)]
    assert [e.flow_id for e in (order, shipment, heartbeat, bridge)] == [1, 1, None, 1]


def test_a_shared_customer_id_never_merges_orders() -> None:
    events = [
        ev(i, "shop.order.placed", msgspec.json.encode({"customer_id": "c", "order_id": i}))
        for i in range(1, 6)
    ]
    flows = correlate_all(events, RULES)
    assert sorted(flows.values()) == [[1], [2], [3], [4], [5]]


def test_events_without_keys_stay_flowless() -> None:
    heartbeat = ev(1, "shop.heartbeat.payment", b'{"customer_id": "c", "seq": 1}')
    with_id_only = ev(2, "x.y", b"{}", [("Nats-Msg-Id", "m1")])
    bare_request = ev(3, "$JS.API.INFO", b"", reply="_INBOX.a.1")
    bare_reply = ev(4, "_INBOX.a.1", b"{}")
    assert correlate_all([heartbeat, with_id_only, bare_request, bare_reply], RULES) == {}


def test_reply_without_headers_joins_its_request_and_names_it() -> None:
    request = ev(1, "shop.cmd.payment.authorize", b"{}", [("X-Correlation-ID", "k")], reply="_I.1")
    reply = ev(2, "_I.1", b'{"ok": true}')
    c = Correlator(RULES)
    changes = c.add_batch([request, reply], 2000)
    assert reply.flow_id == request.flow_id == 1
    assert ("reply", "_I.1", 1) in {(lk.kind, lk.key, lk.parent_id) for lk in changes.links}
    assert changes.flows[0].variant == [
        "shop.cmd.payment.authorize",
        "shop.cmd.payment.authorize (reply)",
    ]
    # a command subject belongs to the service after `cmd`, and so does its reply
    assert changes.flows[0].services == ["payment"]


@pytest.mark.parametrize("source", ["subject", "header"])
def test_service_names_make_an_event_noun_and_a_command_one_service(source: str) -> None:
    names = {"shipment": "shipping"}
    by = "subject:2" if source == "subject" else "header:Service"
    rules = msgspec.structs.replace(
        RULES, services=msgspec.structs.replace(RULES.services, from_=by, names=names)
    )

    def event(i: int, subject: str, service: str) -> Event:
        return ev(i, subject, b"{}", [("X-Correlation-ID", "k"), ("Service", service)])

    events = [
        event(1, "shop.shipment.created", "shipment"),
        event(2, "shop.cmd.shipping.create", "shipping"),
        event(3, "shop.order.completed", "order"),
    ]
    changes = Correlator(rules).add_batch(events, 3000)
    assert changes.flows[0].services == ["shipping", "order"]
    assert [correlate.event_service(e, rules) for e in events] == ["shipping", "shipping", "order"]


def test_a_flowless_request_is_adopted_when_its_reply_has_a_key() -> None:
    c = Correlator(RULES)
    request = ev(1, "shop.pricing.quote", b"{}", reply="_I.2")
    assert c.add_batch([request], 1000).flows == []
    reply = ev(2, "_I.2", b'{"order_id": 9}')
    changes = c.add_batch([reply], 2000)
    assert changes.assign == [(1, 2)]
    assert changes.flows[0].events == 2


def test_a_flowless_message_is_adopted_once_by_its_reply_or_by_a_citing_event() -> None:
    """A flowless request with a message id can be found two ways; adopted through one, the
    other must lead to the same flow instead of adopting it a second time."""
    c = Correlator(RULES)
    request = ev(1, "shop.pricing.quote", b"", [("X-Message-ID", "m1")], reply="_I.3")
    c.add_batch([request], 1000)
    reply = ev(2, "_I.3", b'{"order_id": 9}')
    citing = ev(3, "shop.order.priced", b"", [("X-Causation-ID", "m1")])
    changes = c.add_batch([reply, citing], 3000)
    assert changes.assign == [(1, 2)]
    assert reply.flow_id == citing.flow_id == 2
    assert [(f.flow_id, f.events) for f in changes.flows] == [(2, 3)]


def test_flowless_message_ids_and_inboxes_are_forgotten_after_retain() -> None:
    c = Correlator(RULES, retain_ns=10 * SECOND)
    for i in range(1, 2_001):
        ts = i * SECOND // 10
        flowless = ev(i, "x.y", headers=[("X-Message-ID", f"m{i}")], reply=f"_I.{i}", ts=ts)
        c.add_batch([flowless], ts)
    # two generations of ten seconds at ten a second, each entry in two tables
    assert c.remembered_keys <= 2 * 2 * 101
    late_reply = ev(3_000, "_I.1", b'{"order_id": 1}', ts=201 * SECOND)
    changes = c.add_batch([late_reply], 201 * SECOND)
    assert changes.assign == []  # its request was forgotten: nothing to adopt


def test_causation_chains_form_a_flow_with_parent_links() -> None:
    c = Correlator(RULES)
    cause = ev(1, "a.x", b"", [("X-Message-ID", "m1")])
    effect = ev(2, "a.y", b"", [("X-Message-ID", "m2"), ("X-Causation-ID", "m1")])
    grandchild = ev(3, "a.z", b"", [("X-Causation-ID", "m2")])
    c.add_batch([cause], 1000)
    changes = c.add_batch([effect, grandchild], 3000)
    assert changes.assign == [(1, 2)]
    assert grandchild.flow_id == effect.flow_id == 2
    parents = {(lk.event_id, lk.parent_id) for lk in changes.links if lk.kind == "causation"}
    assert {(2, 1), (3, 2)} <= parents


def test_trace_and_correlation_headers_are_keys_in_any_case() -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    a = ev(1, "a.b", headers=[("TRACEPARENT", f"00-{trace}-00f067aa0ba902b7-01")])
    b = ev(2, "a.c", headers=[("traceparent", f"00-{trace}-11f067aa0ba902b7-01")])
    c = ev(3, "a.d", headers=[("correlation-id", "x")])
    d = ev(4, "a.e", headers=[("ce-correlationid", "x")])
    zero = ev(5, "a.f", headers=[("traceparent", f"00-{'0' * 32}-00f067aa0ba902b7-01")])
    # not version-traceid-parentid-flags: no trace key, so neither joins a flow
    short = ev(6, "a.g", headers=[("traceparent", f"00-{trace}-01")])
    dashed = ev(7, "a.h", headers=[("traceparent", f"00-{trace[:31]}--00f067aa0ba902b7-01")])
    assert sorted(correlate_all([a, b, c, d, zero, short, dashed], RULES).values()) == [
        [1, 2],
        [3, 4],
    ]


def test_cloudevents_structured_and_plain_payloads_share_the_field_key() -> None:
    plain = ev(1, "a.b", b'{"order_id": "o-1"}')
    structured = ev(2, "a.c", b'{"specversion": "1.0", "data": {"order_id": "o-1"}}')
    numeric = ev(3, "a.d", b'{"order_id": 7}')
    as_text = ev(4, "a.e", b'{"order_id": "7"}')
    assert sorted(correlate_all([plain, structured, numeric, as_text], RULES).values()) == [
        [1, 2],
        [3, 4],
    ]


def test_a_named_payload_key_joins_another_pointer_to_the_same_id() -> None:
    events = [
        ev(1, "pay.intent.created", b'{"payment_id": "p-1"}'),
        ev(2, "pay.auth.ok", b'{"payment": {"id": "p-1", "by": "card"}}'),
        ev(3, "pay.auth.ok", b'{"payment": {"id": "p-2"}}'),
        ev(4, "ledger.posted", b'{"entry": {"a=b": "p-2"}}'),
    ]
    keys = ["/payment_id", "/payment/id=payment_id", "/entry/a=b=payment_id"]
    named = Rules().merged_with(RuleFlags(keys=keys))
    assert sorted(correlate_all(events, named).values()) == [[1, 2], [3, 4]]
    # Unnamed, /payment/id is the key `id`: another key space.
    apart = Rules().merged_with(RuleFlags(keys=["/payment_id", "/payment/id"]))
    assert sorted(correlate_all(events, apart).values()) == [[1], [2], [3]]
    with pytest.raises(RulesError, match="not a JSON pointer"):
        Rules().merged_with(RuleFlags(keys=["payment_id=x"])).validate()
    # Found by review: a name it could not take was read as part of the field, silently.
    for bad in ["/payment/id=payment.id", "/payment/id=", "/payment/id=a b"]:
        with pytest.raises(RulesError, match="after '=' comes the key's name"):
            Rules().merged_with(RuleFlags(keys=[bad])).validate()


def test_subject_keys_take_the_configured_token() -> None:
    rules = Rules().merged_with(RuleFlags(subject_keys=["orders.*.>:2"]))
    events = [
        ev(1, "orders.17.created"),
        ev(2, "orders.17.paid"),
        ev(3, "orders.18.created"),
        ev(4, "other.17.created"),
    ]
    assert sorted(correlate_all(events, rules).values()) == [[1, 2], [3]]


def test_a_named_subject_key_joins_the_payload_key_of_that_name() -> None:
    audit = ["tenant.*.audit:2=order_id"]
    events = [
        ev(1, "shop.order.placed", b'{"order_id": "o-1"}'),
        ev(2, "tenant.o-1.audit"),
        ev(3, "tenant.o-2.audit"),
    ]
    named = Rules().merged_with(RuleFlags(keys=["/order_id"], subject_keys=audit))
    assert sorted(correlate_all(events, named).values()) == [[1, 2], [3]]
    apart = Rules().merged_with(RuleFlags(keys=["/order_id"], subject_keys=["tenant.*.audit:2"]))
    assert sorted(correlate_all(events, apart).values()) == [[1], [2], [3]]
    for bad in ["tenant.*.audit:2=", "tenant.*.audit:2=a b", "tenant.*.audit:=x"]:
        with pytest.raises(RulesError, match="subject key"):
            Rules().merged_with(RuleFlags(subject_keys=[bad])).validate()


def test_hostile_payloads_are_skipped_not_fatal() -> None:
    deep = b'{"order_id": "d", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    big = b'{"pad": "' + b"x" * 1_000_000 + b'", "order_id": "big"}'
    events = [
        ev(1, "a.b", b'{"order_id": "\xff\xfe"}'),  # invalid UTF-8 inside the value
        ev(2, "a.b", b"\xff\xfe\x00 binary"),
        ev(3, "a.b", deep),
        ev(4, "a.b", big),
        ev(5, "a.b", b'{"order_id": '),
        ev(6, "a.b", b'{"data": "not an object", "order_id": "big"}'),
        ev(7, "a.b", b'  \n {"order_id": "big"}'),
        ev(8, "a.b", b'{"order_id": {"nested": 1}}'),
        ev(9, "a.b", b'{"order_id": null}'),
        ev(10, "a.b", b"[1, 2]"),
    ]
    assert correlate_all(events, RULES) == {4: [4, 6, 7]}


def test_status_follows_the_rules() -> None:
    rules = Rules().merged_with(
        RuleFlags(
            headers=["K"],
            terminal=["t.done"],
            failure=["t.failed"],
            compensation=["t.undo"],
            stall="10s",
        )
    )
    c = Correlator(rules)
    flows = [
        [ev(1, "t.start", headers=[("K", "done")]), ev(2, "t.done", headers=[("K", "done")])],
        [ev(3, "t.start", headers=[("K", "fail")]), ev(4, "t.failed", headers=[("K", "fail")])],
        [
            ev(5, "t.start", headers=[("K", "comp")]),
            ev(6, "t.undo", headers=[("K", "comp")]),
            ev(7, "t.failed", headers=[("K", "comp")]),
        ],
        [ev(8, "t.start", headers=[("K", "quiet"), ("Qixtui-Saga-Run", "r1")])],
    ]
    changes = c.add_batch([e for f in flows for e in f], 8000)
    status = {f.flow_id: f.status for f in changes.flows}
    assert status == {1: "completed", 3: "failed", 5: "compensated", 8: "running"}
    assert [f.orchestrated for f in changes.flows if f.flow_id == 8] == [True]
    stalled = c.add_batch([], 8000 + 11 * SECOND)
    assert [(f.flow_id, f.status) for f in stalled.flows] == [(8, "stalled")]
    revived = ev(9, "t.step", headers=[("K", "quiet")], ts=8000 + 12 * SECOND)
    again = c.add_batch([revived], 8000 + 12 * SECOND)
    assert [(f.flow_id, f.status) for f in again.flows] == [(8, "running")]
    assert [(f.flow_id, f.status) for f in c.finish(8000 + 30 * SECOND).flows] == [(8, "stalled")]


def test_memory_stays_bounded_over_a_long_recording() -> None:
    rules = Rules().merged_with(RuleFlags(stall="1s"))
    c = Correlator(rules)
    ts = 0
    for i in range(1, 20_001):
        ts = i * 100_000_000  # one flow every 0.1 s for ~33 minutes
        headers = [("X-Correlation-ID", f"k{i}"), ("X-Message-ID", f"m{i}")]
        c.add_batch([ev(i, "a.b", headers=headers, reply=f"_I.{i}", ts=ts)], ts)
    # ten minutes of quiet flows kept (at 10/s), not all twenty thousand
    assert c.remembered_flows <= 6_100
    assert c.remembered_keys <= 3 * 6_100
    late = ev(30_000, "a.c", headers=[("X-Correlation-ID", "k1")], ts=ts)
    c.add_batch([late], ts)
    assert late.flow_id == 30_000  # k1 was forgotten: a new flow, as documented


def test_event_types_hide_ids() -> None:
    assert event_type("orders.12345.created") == "orders.*.created"
    assert event_type("shop.v2.order.placed") == "shop.v2.order.placed"
    assert event_type("t.3f2a9c1e-77b0.x") == "t.*.x"


def test_a_busy_bus_of_one_message_flows_keeps_a_bounded_number(tmp_path) -> None:
    """Unique keys at a high rate (every message its own flow) must not grow memory until
    `stall` passes: the least recently touched flows are forgotten past MAX_FLOWS, and the
    end of the recording still marks them stalled in the file."""
    from qixtui.core import store
    from qixtui.core.correlate import MAX_FLOWS

    c = Correlator(RULES)
    db = store.create_session(tmp_path / "busy.qix", {})
    total = MAX_FLOWS + 5_000
    with store.transaction(db):
        for start in range(1, total + 1, 1_000):
            batch = [
                ev(i, "bench.x", headers=[("X-Correlation-ID", f"u{i}")], ts=i * 25_000)
                for i in range(start, start + 1_000)
            ]
            store.insert_events(db, batch)
            store.apply_flow_changes(db, c.add_batch(batch, batch[-1].ts_ns))
        assert c.remembered_flows == MAX_FLOWS
        end = total * 25_000 + 31 * SECOND
        store.apply_flow_changes(db, c.finish(end))
        store.stall_quiet_flows(db, end, c.stall_ns)
    statuses = dict(db.execute("SELECT status, count(*) FROM flows GROUP BY status").fetchall())
    assert statuses == {"stalled": total}


@pytest.mark.skipif(
    "QIXTUI_EXPECT_COMPILED" not in os.environ,
    reason="set by .ci/run where it runs these tests against a built wheel",
)
def test_a_built_wheel_runs_compiled_correlation_and_rows():
    assert correlate.COMPILED, correlate.__file__
    assert rows.COMPILED, rows.__file__
