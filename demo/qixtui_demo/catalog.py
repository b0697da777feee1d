"""The shop's catalogue and house rules: prices, sold-out items, the card limit.

Outcomes follow from the data an order carries, never from timing: payment declines an amount
above the card limit, stock fails an order holding a sold-out item. The same rules answer the
choreographed events and the orchestration commands, so a saga can ask for a decline with a big
amount or for a stock failure with a sold-out SKU.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

CURRENCY = "EUR"
CARD_LIMIT = 1000.0  # payment declines any amount above this

PRICES: dict[str, float] = {
    "sku-mug": 12.5,
    "sku-tea-sampler": 18.0,
    "sku-notebook": 6.9,
    "sku-pour-over": 34.0,
    "sku-grinder": 89.0,
    "sku-kettle": 59.0,
    "sku-beans-1kg": 24.5,
    "sku-espresso-pro": 1450.0,  # above the card limit on its own
    "sku-retro-console": 199.0,  # sold out
    "sku-limited-print": 45.0,  # sold out
}
SOLD_OUT = frozenset({"sku-retro-console", "sku-limited-print"})
EVERYDAY = tuple(sku for sku in PRICES if sku not in SOLD_OUT and PRICES[sku] < CARD_LIMIT / 4)
BIG_TICKET = "sku-espresso-pro"

CITIES = ("Lyon", "Porto", "Gent", "Leipzig", "Bergen", "Turku", "Graz", "Bilbao")
STREETS = ("Mill Lane", "Harbour St", "Station Rd", "Elm Row", "Canal Walk", "Market Sq")


def quote(items: Iterable[Mapping[str, Any]]) -> float:
    """The price of a basket; unknown SKUs cost nothing (the stock check rejects them)."""
    return round(sum(PRICES.get(str(i["sku"]), 0.0) * int(i["qty"]) for i in items), 2)


def declines(amount: float) -> bool:
    return amount > CARD_LIMIT


def missing_sku(items: Iterable[Mapping[str, Any]]) -> str | None:
    """The first item stock cannot reserve, or None when all can be."""
    for item in items:
        sku = str(item["sku"])
        if sku in SOLD_OUT or sku not in PRICES:
            return sku
    return None
