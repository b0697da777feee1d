"""Two-flow diff on plain data: structure, per-step latency and payload fields."""

from __future__ import annotations

from shopflows import HAPPY, MS, SWAPPED, T0, Builder

from qixtui.core.flowdiff import FieldDiff, diff_flows, payload_diff, steps_of


def flows(*chains: list[tuple[str, int]]) -> Builder:
    b = Builder()
    for n, steps in enumerate(chains, start=1):
        b.chain(n, T0 + n * 1000 * MS, steps, "completed")
    return b


def diff(b: Builder, a: int = 1, other: int = 2):  # type: ignore[no-untyped-def]
    def part(fid: int):  # type: ignore[no-untyped-def]
        events = [e for e in b.events if e.flow_id == fid]
        ids = {e.id for e in events}
        return fid, events, [lk for lk in b.links if lk.event_id in ids]

    return diff_flows(*part(a), *part(other))


def test_identical_flows_have_only_same_rows() -> None:
    result = diff(flows(HAPPY, HAPPY))
    assert [r.kind for r in result.rows] == ["same"] * 5
    assert [r.label for r in result.rows] == [s for s, _ in HAPPY]
    assert all(r.delta_ns == 0 and not r.slower for r in result.rows)
    # payloads differ only in the order id
    assert result.rows[0].fields == [FieldDiff("/order_id", "changed", '"o-1"', '"o-2"')]


def test_swapped_steps_are_moved_and_slower_steps_marked() -> None:
    result = diff(flows(HAPPY, SWAPPED))
    kinds = [(r.kind, r.label) for r in result.rows]
    assert kinds == [
        ("same", "shop.order.placed"),
        ("same", "shop.stock.reserved"),
        ("moved", "shop.payment.authorized"),
        ("same", "shop.shipment.created"),
        ("same", "shop.order.completed"),
    ]
    moved = result.rows[2]
    assert moved.a is not None
    assert moved.b is not None
    assert (moved.a.offset_ns, moved.b.offset_ns) == (10 * MS, 20 * MS)
    # reserved: 15 ms after payment in A, 8 ms after the order in B (each waits on its cause)
    reserved = result.rows[1]
    assert reserved.delta_ns == (8 - 15) * MS
    assert not reserved.slower
    # shipment: 35 ms in A, 30 ms in B; completion: 10 ms in A, 5 ms in B
    assert [r.delta_ns for r in result.rows[3:]] == [-5 * MS, -5 * MS]
    assert (result.a_span_ns, result.b_span_ns) == (70 * MS, 55 * MS)


def test_missing_extra_and_slower() -> None:
    slow = [("shop.order.placed", 0), ("shop.payment.authorized", 40), ("shop.fraud.checked", 45)]
    result = diff(flows(HAPPY, slow))
    kinds = [(r.kind, r.label) for r in result.rows]
    assert kinds == [
        ("same", "shop.order.placed"),
        ("same", "shop.payment.authorized"),
        ("missing", "shop.stock.reserved"),  # at 25 ms, before the extra step at 45 ms
        ("extra", "shop.fraud.checked"),
        ("missing", "shop.shipment.created"),
        ("missing", "shop.order.completed"),
    ]
    authorized = result.rows[1]
    assert authorized.slower
    assert authorized.delta_ns == 30 * MS
    assert (result.count("missing"), result.count("extra"), result.slower) == (3, 1, 1)


def test_replies_are_labelled_by_their_request_and_timed_from_it() -> None:
    b = Builder()
    req = b.add(1, T0, "shop.cmd.payment.authorize", {"id": 1}, reply="_INBOX.1")
    b.add(1, T0 + 7 * MS, "_INBOX.1", {"ok": True}, answers=req)
    steps = steps_of(b.events, b.links)
    assert [(s.label, s.took_ns) for s in steps] == [
        ("shop.cmd.payment.authorize", 0),
        ("shop.cmd.payment.authorize (reply)", 7 * MS),
    ]


def test_payload_fields_nested_lists_and_non_json() -> None:
    a = b'{"items": [{"sku": "a", "qty": 1}], "note": "x", "amount": 1}'
    b = b'{"items": [{"sku": "a", "qty": 2}, {"sku": "b"}], "amount": 1.0, "new": null}'
    assert payload_diff(a, b) == [
        FieldDiff("/items/0/qty", "changed", "1", "2"),
        FieldDiff("/items/1", "added", None, '{"sku":"b"}'),
        FieldDiff("/note", "removed", '"x"', None),
        FieldDiff("/amount", "changed", "1", "1.0"),  # an int is not a float on the wire
        FieldDiff("/new", "added", None, "null"),
    ]
    assert payload_diff(b"\x00\x01", b"{}") == [FieldDiff("", "changed", "2 bytes", "2 bytes")]
    assert payload_diff(b"same", b"same") == []
    assert payload_diff(b'{"a/b": 1}', b'{"a/b": 2}')[0].path == "/a~1b"


def test_without_common_steps_rows_follow_time() -> None:
    a = [("shop.order.placed", 0), ("shop.payment.authorized", 10)]
    b = [("shop.cmd.x.go", 5), ("shop.cmd.y.go", 20)]
    result = diff(flows(a, b))
    assert [(r.kind, r.label) for r in result.rows] == [
        ("missing", "shop.order.placed"),
        ("extra", "shop.cmd.x.go"),
        ("missing", "shop.payment.authorized"),
        ("extra", "shop.cmd.y.go"),
    ]
