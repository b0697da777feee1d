"""Order plans: decided from (seed, order number) alone; the knobs shape the mix."""

from __future__ import annotations

from collections import Counter

import pytest

from qixtui_demo import catalog
from qixtui_demo.orchestrated import run_variables
from qixtui_demo.plan import DEFAULT_LATENCY, Knobs, Latency, parse_latency, plan_order


def test_same_seed_same_orders_in_any_order_of_asking():
    knobs = Knobs(seed=3)
    forward = [plan_order(knobs, n) for n in range(1, 50)]
    backward = [plan_order(knobs, n) for n in range(49, 0, -1)]
    assert forward == backward[::-1]
    other = [plan_order(Knobs(seed=4), n) for n in range(1, 50)]
    assert {p.order_id for p in forward}.isdisjoint(p.order_id for p in other)


def test_the_outcome_follows_from_the_basket():
    knobs = Knobs(seed=9, decline_rate=0.2, stockout_rate=0.2)
    plans = [plan_order(knobs, n) for n in range(1, 2001)]
    mix = Counter(p.expected for p in plans)
    assert 300 < mix["failed"] < 500  # about 20 %
    assert 250 < mix["compensated"] < 400  # about 20 % of the other 80 %
    for p in plans:
        declined = catalog.declines(catalog.quote(p.items))
        missing = catalog.missing_sku(p.items)
        assert p.expected == ("failed" if declined else "compensated" if missing else "completed")


def test_customers_are_shared_between_orders():
    plans = [plan_order(Knobs(seed=1), n) for n in range(1, 101)]
    assert len({p.customer_id for p in plans}) < 30


def test_latency_specs():
    all_slow = parse_latency("50:1.2", DEFAULT_LATENCY)
    assert set(all_slow.values()) == {Latency(50, 1.2)}
    one = parse_latency("payment=200", DEFAULT_LATENCY)
    assert one["payment"] == Latency(200, DEFAULT_LATENCY["payment"].spread)
    assert one["stock"] == DEFAULT_LATENCY["stock"]
    lat = Latency(100, 0.5)
    assert lat.sample(0.0) == pytest.approx(0.1)  # the median
    assert lat.sample(1.0) > lat.sample(0.0) > lat.sample(-1.0)


@pytest.mark.parametrize("spec", ["fast", "payment=x", "nobody=5", "-3", "5:-1"])
def test_bad_latency_specs_say_why(spec):
    with pytest.raises(ValueError, match="latency"):
        parse_latency(spec, DEFAULT_LATENCY)


def test_a_restarted_shop_places_the_same_plan_under_new_order_ids():
    first = [plan_order(Knobs(seed=3), n) for n in range(1, 30)]
    again = [plan_order(Knobs(seed=3, incarnation=1), n) for n in range(1, 30)]
    assert again[0].order_id == "ord-3-r1-00001"
    assert {p.order_id for p in first}.isdisjoint(p.order_id for p in again)
    assert [(p.items, p.expected) for p in first] == [(p.items, p.expected) for p in again]
    runs = [run_variables(3, n) for n in range(1, 30)]
    rerun = [run_variables(3, n, incarnation=1) for n in range(1, 30)]
    assert rerun[0]["order_id"] == "orch-3-r1-00001"
    assert {r["order_id"] for r in runs}.isdisjoint(r["order_id"] for r in rerun)
    assert [r | {"order_id": ""} for r in runs] == [r | {"order_id": ""} for r in rerun]
