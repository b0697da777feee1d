"""SVG snapshots of the real app at a fixed size, time zone and recording.

A changed screen fails with the new SVG written next to the stored one (`*.new.svg`); look at
it, then rerun with QIXTUI_SNAPSHOT_UPDATE=1 to accept it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from textual.widgets import Input

from qixtui.ui.app import QixtuiApp
from qixtui.ui.rowlist import RowList
from ui.sessions import settle

SNAPSHOTS = Path(__file__).parent / "snapshots"
SIZE = (120, 36)


async def settle_more(pilot) -> None:  # type: ignore[no-untyped-def]
    """Settle, then let tables size their columns before the picture is taken."""
    await settle(pilot)
    for _ in range(3):
        await pilot.pause(0.05)


def check(name: str, svg: str) -> None:
    stored = SNAPSHOTS / f"{name}.svg"
    fresh = SNAPSHOTS / f"{name}.new.svg"
    if os.environ.get("QIXTUI_SNAPSHOT_UPDATE") == "1" or not stored.exists():
        stored.write_text(svg, encoding="utf-8")
        fresh.unlink(missing_ok=True)
        if os.environ.get("QIXTUI_SNAPSHOT_UPDATE") != "1":
            pytest.fail(f"no stored snapshot; wrote {stored}, look at it and rerun")
        return
    if stored.read_text(encoding="utf-8") != svg:
        fresh.write_text(svg, encoding="utf-8")
        pytest.fail(f"{name} changed: compare {stored.name} with {fresh.name}")
    fresh.unlink(missing_ok=True)


async def test_main_screen(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        app.screen.query_one("#filter", Input).cursor_blink = False
        app.screen.query_one("#events", RowList).move_to(3)
        await settle_more(pilot)
        check("main_screen", app.export_screenshot())


async def test_flow_screen(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        app.set_flow(1)
        app.action_open_flow()
        await pilot.pause()
        await app.workers.wait_for_complete()
        await settle_more(pilot)
        check("flow_screen", app.export_screenshot())


async def test_filter_error(shop: Path) -> None:
    app = QixtuiApp(shop)
    async with app.run_test(size=SIZE) as pilot:
        bar = app.screen.query_one("#filter", Input)
        bar.cursor_blink = False
        await pilot.press("slash", *"status:failed json:order_id=7")
        await settle_more(pilot)
        check("filter_error", app.export_screenshot())


async def test_compare_screen_graphs(tmp_path: Path) -> None:
    from qixtui.ui.comparescreen import CompareApp
    from ui.test_compare_screen import compare_session, loaded

    app = CompareApp(compare_session(tmp_path / "compare.qix"))
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("2")
        await settle_more(pilot)
        check("compare_graphs", app.export_screenshot())
