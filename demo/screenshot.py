"""Regenerate demo/screenshot.svg, the README's picture of `qixtui demo`:

    python demo/screenshot.py

It runs the real demo (embedded bus, shop, saga driver, recorder) for a few seconds with a fixed
seed, drives its screen with Pilot, selects a completed order's last event and saves the SVG.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from qixtui.cli_demo import DemoStack, saga_arguments, shop_arguments
from qixtui.ui.rowlist import RowList
from qixtui.ui.supervised import Report, SupervisedApp

SEED = 11
SIZE = (140, 42)
RUN_S = 6.0
OUT = Path(__file__).with_name("screenshot.svg")


async def shoot(stack: DemoStack) -> str:
    def supervise(report: Report) -> None:
        stack.supervise(lambda i: report(i.number, i.line(), i.resolved))

    assert stack.recorder is not None
    app = SupervisedApp(stack.output, supervise=supervise, recorder_pid=stack.recorder.pid)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(RUN_S)
        events = app.screen.query_one("#events", RowList)
        events.follow = False
        db = app.session.db
        (last_completed,) = db.execute(
            "SELECT max(id) FROM events WHERE subject = 'shop.order.completed'"
        ).fetchone()
        position = events.index.position_of(last_completed)
        assert position is not None
        events.move_to(position)
        await pilot.pause(0.5)
        return app.export_screenshot(title="qixtui demo")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="qixtui-shot-") as work:
        stack = DemoStack(
            Path(work) / "demo.qix", Path(work), shop_arguments(SEED, 5), saga_arguments(SEED, 5)
        )
        stack.start()
        try:
            svg = asyncio.run(shoot(stack))
        finally:
            stack.stop()
    OUT.write_text(svg, encoding="utf-8")
    print(OUT)


if __name__ == "__main__":
    main()
