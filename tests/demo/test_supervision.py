"""`qixtui demo` in its TUI, driven by Pilot against the real processes: a participant killed by
its pid and the bus killed under it are both on screen, and orders go on completing after each."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from textual.widgets import Static
from ui.sessions import screen_text

from qixtui.cli_demo import DemoStack, saga_arguments, shop_arguments
from qixtui.core import store
from qixtui.ui.app import Banner
from qixtui.ui.supervised import IncidentLine, Report, SupervisedApp

SIZE = (140, 40)
WAIT_S = 20.0


def completed_since(
    path: Path, since_ns: int, order_prefix: str = "ord-", subject: str = "shop.order.completed"
) -> int:
    """Orders (ids starting with `order_prefix`) completed after `since_ns`: the choreography
    announces it, a saga run sends the order its `complete` command."""
    db = store.open_session(path)
    try:
        return db.execute(
            "SELECT count(*) FROM events WHERE subject = ? AND ts_ns > ?"
            " AND json_extract(CAST(payload AS TEXT), '$.order_id') LIKE ?",
            (subject, since_ns, order_prefix + "%"),
        ).fetchone()[0]
    finally:
        db.close()


async def wait_for(pilot, check: Callable[[], bool], what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"never: {what}\n{screen_text(pilot.app)}"
        await pilot.pause(0.05)


def line_text(app: SupervisedApp) -> str:
    return str(app.screen.query_one("#incidents", IncidentLine).render())


async def test_a_killed_participant_and_a_killed_bus_show_and_the_demo_goes_on(tmp_path: Path):
    out = tmp_path / "demo.qix"
    stack = DemoStack(out, tmp_path, shop_arguments(seed=3, rate=20), saga_arguments(3, 20))
    stack.start()
    posted: list[SupervisedApp.Incident] = []

    def supervise(report: Report) -> None:
        stack.supervise(lambda i: report(i.number, i.line(), i.state))

    assert stack.recorder is not None
    app = SupervisedApp(
        out, supervise=supervise, recorder_pid=stack.recorder.pid, processes=stack.processes
    )
    try:
        async with app.run_test(
            size=SIZE,
            notifications=True,
            message_hook=lambda m: (
                posted.append(m) if isinstance(m, SupervisedApp.Incident) else None
            ),
        ) as pilot:
            line = app.screen.query_one("#incidents", IncidentLine)
            await wait_for(pilot, lambda: "✔ completed" in screen_text(app), "a completed flow")
            assert not line.has_class("-shown")
            # what to kill is on screen from the start, with the pids
            told = [str(n.message) for n in app._notifications if str(n.message).startswith("pids")]
            assert stack.participants is not None
            assert stack.recorder is not None
            assert f"shop participants {stack.participants.pid}" in told[0]
            assert f"qixtui record {stack.recorder.pid}" in told[0]

            # A participant dies: named with its pid and signal, restarted, orders go on.
            assert stack.participants is not None
            shop_pid = stack.participants.pid
            os.kill(shop_pid, signal.SIGKILL)
            killed_ns = time.time_ns()
            await wait_for(pilot, lambda: "back as pid" in line_text(app), "the shop back")
            text = line_text(app)
            assert f"shop participants (pid {shop_pid}) killed by SIGKILL" in text
            assert "1 incident" in text
            assert not line.has_class("-ongoing")
            assert stack.participants.pid != shop_pid
            # the notification said so the moment it happened, before the restart
            assert [(m.number, m.state) for m in posted] == [(1, "ongoing"), (1, "recovered")]
            assert "restarting" in posted[0].text
            await pilot.pause()
            assert "demo incident 1" in screen_text(app)  # the toast
            await wait_for(
                pilot,
                lambda: completed_since(out, killed_ns, "ord-3-r1-") > 0,
                "an order of the restarted shop completed",
            )

            # The bus dies: the banner says nothing is being recorded, then clears.
            assert stack.server.proc is not None
            server_pid = stack.server.proc.pid
            banner = app.screen.query_one("#banner", Banner)
            seen_banner: list[str] = []

            def banner_came_and_went() -> bool:
                app.refresh_status()  # sample the file more often than the 0.5 s status tick
                if banner.has_class("-shown"):
                    seen_banner.append(str(banner.render()))
                return bool(seen_banner) and not banner.has_class("-shown")

            stack.server.proc.kill()
            await wait_for(pilot, banner_came_and_went, "the NOT RECORDING banner, then none")
            assert seen_banner[0].startswith("NOT RECORDING since")
            await wait_for(pilot, lambda: "nats-server" in line_text(app), "the bus incident")
            await wait_for(pilot, lambda: "back as pid" in line_text(app), "the bus back")
            assert f"nats-server (pid {server_pid}) killed by SIGKILL" in line_text(app)
            assert "2 incidents" in line_text(app)
            assert stack.server.proc.pid != server_pid
            db = store.open_session(out)
            (gap,) = store.gaps(db)
            db.close()
            assert gap.end_ns is not None
            await wait_for(
                pilot,
                lambda: completed_since(out, gap.end_ns or 0) > 0,
                "an order completed after the bus came back",
            )
            status = str(app.screen.query_one("#status", Static).render())
            assert "● recording" in status
            assert "gaps 1" in status

            # The saga driver dies: restarted with new run ids, saga runs go on.
            assert stack.orchestrator is not None
            driver_pid = stack.orchestrator.pid
            os.kill(driver_pid, signal.SIGKILL)
            killed_ns = time.time_ns()
            gone = f"saga driver (pid {driver_pid}) killed by SIGKILL; back as pid"
            await wait_for(pilot, lambda: gone in line_text(app), "the saga driver back")
            assert "3 incidents" in line_text(app)
            await wait_for(
                pilot,
                lambda: completed_since(out, killed_ns, "orch-3-r1-", "shop.cmd.order.complete"),
                "a saga run of the restarted driver completed",
            )

            # The recorder is stopped (`kill PID`): it cannot be restarted, and the line says
            # so with a cross, not the check mark of something that came back.
            recorder_pid = stack.recorder.pid
            os.kill(recorder_pid, signal.SIGTERM)
            await wait_for(pilot, lambda: "not restarted" in line_text(app), "the recorder")
            assert line_text(app).startswith("✘ ")
            assert f"qixtui record (pid {recorder_pid}) stopped (exit code 0), unasked" in (
                line_text(app)
            )
    finally:
        result = stack.stop()
    assert [(i["what"], i["resolved"], i["lost"]) for i in result["incidents"]] == [
        ("shop participants", True, False),
        ("nats-server", True, False),
        ("saga driver", True, False),
        ("qixtui record", True, True),
    ]
    assert result["recorded"]["gaps"] == 1
    assert result["shop_restarts"] == 1  # so the shop's own counts are said to be partial
