"""The demo survives its bus restarting: the outage is a gap on disk and orders go on after it."""

from __future__ import annotations

import time
from pathlib import Path

from qixtui.cli_demo import DemoStack, shop_arguments
from qixtui.core import store


def test_demo_goes_on_after_the_bus_restarts(tmp_path: Path):
    out = tmp_path / "restart.qix"
    stack = DemoStack(out, tmp_path, shop_arguments(seed=3, rate=20))
    stack.start()
    try:
        time.sleep(2)
        stack.server.kill()
        time.sleep(1)
        stack.server.start()
        time.sleep(4)
    finally:
        result = stack.stop()
    assert result["recorded"]["gaps"] == 1
    db = store.open_session(out)
    (gap,) = store.gaps(db)
    assert gap.end_ns is not None
    after = db.execute(
        "SELECT count(*) FROM flows WHERE status = 'completed' AND started_ns > ?", (gap.end_ns,)
    ).fetchone()[0]
    assert after > 0, "no order completed after the bus came back"
