"""The waterfall grid: core's layout mapped onto columns, without a screen."""

from __future__ import annotations

from qixtui.core.model import Event, Gap
from qixtui.core.rules import Rules, ServiceRules
from qixtui.ui.waterfall import layout, parents_of, service_of

MS = 1_000_000


def ev(id: int, subject: str, ts_ms: int) -> Event:
    return Event(ts_ns=ts_ms * MS, subject=subject, reply=None, headers=None, payload=b"", id=id)


EVENTS = [
    ev(1, "shop.order.placed", 0),
    ev(2, "shop.cmd.payment", 10),  # a request
    ev(3, "_INBOX.x.1", 40),  # its reply
    ev(4, "shop.order.completed", 100),
]
LINKS = [
    (1, "header", "X-Correlation-ID=o-1", None),
    (3, "reply", "_INBOX.x.1", 2),
    (4, "causation", "m-2", 2),
]


def test_bars_sit_on_columns_by_time_and_a_request_spans_to_its_reply() -> None:
    lay = layout(EVENTS, LINKS, [], 101)
    assert lay.lanes == ["order", "payment"]  # a command belongs to the service it names
    bars = {b.event_id: b for b in lay.bars}
    assert set(bars) == {1, 2, 4}  # the reply is the end of its request's bar
    assert (bars[1].lane, bars[1].start, bars[1].end) == (0, 0, 0)
    assert (bars[2].lane, bars[2].start, bars[2].end, bars[2].reply_id) == (1, 10, 40, 3)
    assert (bars[4].start, bars[4].end) == (100, 100)
    assert lay.critical == {1, 2, 4}
    assert all(b.critical for b in lay.bars)


def test_gaps_and_folded_idle_time() -> None:
    events = [*EVENTS, ev(5, "shop.order.archived", 10_100)]
    gap = Gap(start_ns=5_000 * MS, end_ns=6_000 * MS, reason="disconnected")
    plain = layout(events, LINKS, [gap], 101)
    assert plain.folds == []
    assert plain.gaps == [(50, 59)]
    folded = layout(events, LINKS, [gap], 101, fold_idle=True)
    # 100 ms .. 10.1 s shrinks to the fold's own column, just after the event before it.
    starts = {b.event_id: b.start for b in folded.bars}
    assert folded.folds == [(starts[4] + 1, 10_000 * MS)]
    assert starts[5] == starts[4] + 2 == 100


def test_services_follow_the_session_rules() -> None:
    assert service_of("shop.order.placed") == "order"
    by_token_3 = Rules(services=ServiceRules(from_="subject:3"))
    assert layout(EVENTS, LINKS, [], 40, rules=by_token_3).lanes == [
        "placed",
        "payment",
        "completed",
    ]


def test_parents_come_from_links_inside_the_flow() -> None:
    assert parents_of(EVENTS, [*LINKS, (1, "causation", "m-0", 99)]) == {3: 2, 4: 2}
