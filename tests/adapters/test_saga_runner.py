"""The saga runner against participants on a real nats-server, journaled in a real file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from helpers import run_qixtui
from nats.aio.client import Client
from shop_participants import Shop

from qixtui.core import store
from qixtui.core.saga import Held, Request, load_saga_text
from qixtui_nats.saga_runner import LOST_IN_FLIGHT, Choice, SagaRunner, open_journal
from qixtui_nats.server import EmbeddedServer

SHOP = Path(__file__).parent.parent / "sagas" / "shop.toml"


@pytest.fixture
async def nc(nats_server: EmbeddedServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture
def journal(session_path: Path):
    store.create_session(session_path).close()
    db = open_journal(session_path)
    yield db
    db.close()


def with_timeout(step: str, timeout: str) -> str:
    """The shop saga with one step's timeout changed."""
    text = SHOP.read_text()
    start = text.index(f'name = "{step}"')
    at = text.index('timeout = "', start)
    end = text.index("\n", at)
    return text[:at] + f'timeout = "{timeout}"' + text[end:]


def shop_saga(text: str | None = None):
    text = text or SHOP.read_text()
    return load_saga_text(text, "shop.toml"), text


async def run_shop(nc: Client, journal, shop: Shop, text: str | None = None):
    await shop.serve(nc)
    saga, source = shop_saga(text)
    return await SagaRunner(nc, journal).start(saga, source)


async def test_happy_run_completes_every_step_with_run_headers(nc, journal) -> None:
    shop = Shop()
    report = await run_shop(nc, journal, shop)
    assert report.outcome == "completed"
    assert [s.step for s in report.steps] == ["authorize", "reserve", "ship", "complete", "notify"]
    assert all(s.result == "ok" for s in report.steps)
    run_id = report.run_id
    for subject, headers, _ in shop.calls:
        step = subject.split(".")[-2] if "notify" not in subject else "notify"
        assert headers["Qixtui-Saga-Run"] == run_id
        assert headers["X-Correlation-ID"] == report.correlation_id
        assert headers["Idempotency-Key"].startswith(f"{run_id}:")
        assert headers["traceparent"].startswith("00-")
        assert "Qixtui-Saga-Stepped" not in headers  # no one held it: its times count
        del step
    traces = {h["traceparent"].split("-")[1] for _, h, _ in shop.calls}
    assert len(traces) == 1  # one trace for the whole run
    # Templates filled from variables and earlier replies.
    notify = shop.calls[-1][2]
    assert notify["message"] == f"order order-{run_id} shipped as ship-order-{run_id}"
    assert shop.calls[0][2]["amount"] == 42
    run = store.saga_run(journal, run_id)
    assert run is not None
    assert (run.status, run.owner_pid) == ("completed", None)
    rows = store.saga_journal(journal, run_id)
    assert [(r.step, r.kind, r.result) for r in rows] == [
        (s, "action", "ok") for s in ["authorize", "reserve", "ship", "complete", "notify"]
    ]
    assert all(r.intent_ns <= (r.result_ns or 0) for r in rows)
    assert json.loads(rows[0].reply or b"")["payment_id"] == f"pay-order-{run_id}"


async def test_declined_payment_compensates_nothing_and_fails_cleanly(nc, journal) -> None:
    shop = Shop(decline=True)
    outcomes = await nc.subscribe("qixtui.saga.>")
    report = await run_shop(nc, journal, shop)
    assert report.outcome == "failed"  # nothing before it to undo, so nothing compensated
    announced = await outcomes.next_msg(timeout=2)
    assert announced.subject == "qixtui.saga.shop.failed"
    assert json.loads(announced.data)["outcome"] == "failed"
    assert json.loads(announced.data)["stepped"] is False  # no one held the run
    assert report.announced  # the bus confirmed it
    assert report.clean
    assert "declined" in report.reason
    assert shop.subjects_called() == ["shop.cmd.payment.authorize"]
    rows = store.saga_journal(journal, report.run_id)
    assert [(r.step, r.kind, r.result) for r in rows] == [("authorize", "action", "error")]


async def test_stock_failure_refunds_the_payment(nc, journal) -> None:
    shop = Shop(out_of_stock=True)
    report = await run_shop(nc, journal, shop)
    assert report.outcome == "compensated"
    assert shop.subjects_called() == [
        "shop.cmd.payment.authorize",
        "shop.cmd.stock.reserve",
        "shop.cmd.payment.refund",
    ]
    refund = shop.calls[-1]
    assert refund[2] == {
        "order_id": f"order-{report.run_id}",
        "payment_id": f"pay-order-{report.run_id}",
    }
    assert refund[1]["Idempotency-Key"] == f"{report.run_id}:authorize:compensate"
    rows = store.saga_journal(journal, report.run_id)
    assert [(r.step, r.kind, r.result) for r in rows][-1] == ("authorize", "compensate", "ok")


async def test_a_skipped_compensation_leaves_the_run_failed_in_the_recording(nc, journal) -> None:
    shop = Shop(out_of_stock=True)
    await shop.serve(nc)
    outcomes = await nc.subscribe("qixtui.saga.>")

    async def gate(asked: Request | Held, headers: dict[str, str]) -> Choice:
        if isinstance(asked, Held):
            return Choice("compensate")
        return Choice("skip" if asked.kind == "compensate" else "send")

    saga, source = shop_saga()
    report = await SagaRunner(nc, journal, gate=gate).start(saga, source)
    assert report.outcome == "failed"
    assert "skipped by the user: undo authorize" in report.reason
    assert "shop.cmd.payment.refund" not in shop.subjects_called()
    announced = await outcomes.next_msg(timeout=2)
    assert announced.subject == "qixtui.saga.shop.failed"  # never refunded: not compensated
    assert json.loads(announced.data)["stepped"] is True  # a gate decided: compare leaves it out
    # each request a person let go says so too, for a run that never gets to announce its end
    assert [h.get("Qixtui-Saga-Stepped") for _, h, _ in shop.calls] == ["true", "true"]


async def test_an_end_the_bus_did_not_take_is_reported(
    nats_server: EmbeddedServer, journal
) -> None:
    client = await nats.connect(nats_server.url)

    async def gate(asked: Request | Held, headers: dict[str, str]) -> Choice:
        await client.close()  # the bus is gone before the run ends
        return Choice("abort")

    saga, source = shop_saga()
    report = await SagaRunner(client, journal, gate=gate).start(saga, source)
    assert report.outcome == "failed"
    assert not report.announced
    assert report.to_json()["announced"] is False


async def test_shipping_failure_compensates_in_reverse_order(nc, journal) -> None:
    shop = Shop(silent={"shop.cmd.shipping.create"})
    text = with_timeout("ship", "200ms")
    report = await run_shop(nc, journal, shop, text)
    assert report.outcome == "compensated"
    assert shop.subjects_called()[-2:] == ["shop.cmd.stock.release", "shop.cmd.payment.refund"]


async def test_silent_participant_times_out_after_the_step_timeout(nc, journal) -> None:
    shop = Shop(silent={"shop.cmd.payment.authorize"})
    text = with_timeout("authorize", "1200ms")
    started = time.monotonic()
    report = await run_shop(nc, journal, shop, text)
    elapsed = time.monotonic() - started
    assert report.steps[0].result == "timeout"
    assert report.steps[0].detail == "no reply within 1.2s"
    assert report.steps[0].ms >= 1200  # the configured timeout, not nats-py's 0.5 s default
    assert elapsed < 5
    assert (report.outcome, report.clean) == ("failed", True)


async def test_no_responders_is_reported_at_once(nc, journal) -> None:
    shop = Shop()
    # Nobody serves stock.
    await shop.serve(nc, ["shop.cmd.payment.authorize", "shop.cmd.payment.refund"])
    saga, text = shop_saga()
    report = await SagaRunner(nc, journal).start(saga, text)
    reserve = report.steps[1]
    assert (reserve.step, reserve.result) == ("reserve", "no_responders")
    assert reserve.ms < 1000  # at once, not after the 2 s timeout
    assert shop.subjects_called() == ["shop.cmd.payment.authorize", "shop.cmd.payment.refund"]


async def test_step_after_pivot_is_retried_not_compensated(nc, journal) -> None:
    shop = Shop(silent={"shop.cmd.order.complete"})
    text = with_timeout("complete", "100ms")
    report = await run_shop(nc, journal, shop, text)
    assert report.outcome == "failed"
    assert not report.clean
    assert shop.subjects_called().count("shop.cmd.order.complete") == 4  # 1 + 3 retries
    keys = {h["Idempotency-Key"] for s, h, _ in shop.calls if s == "shop.cmd.order.complete"}
    assert keys == {f"{report.run_id}:complete:action"}
    assert not any("refund" in s or "release" in s for s in shop.subjects_called())


async def test_second_runner_is_refused_while_the_owner_lives(nc, journal) -> None:
    report = await run_shop(nc, journal, Shop(decline=True))
    with store.transaction(journal):
        journal.execute("UPDATE saga_runs SET owner_pid = 1 WHERE run_id = ?", (report.run_id,))
    with pytest.raises(store.SessionError, match="only one runner at a time"):
        await SagaRunner(nc, journal).resume(report.run_id)


def client(url: str, attempts: int) -> Any:
    """A client that gives up reconnecting after `attempts`."""
    return nats.connect(url, max_reconnect_attempts=attempts, reconnect_time_wait=0.2)


async def run_held_at_reserve(url: str, journal, attempts: int):  # type: ignore[no-untyped-def]
    """A run whose reserve request the shop holds unanswered: the runner's and the shop's
    clients, the shop, and the run's task."""
    runner_nc, shop_nc = await client(url, attempts), await client(url, attempts)
    shop = Shop(hold={"shop.cmd.stock.reserve"})
    await shop.serve(shop_nc)
    saga, text = shop_saga()
    run = asyncio.create_task(SagaRunner(runner_nc, journal).start(saga, text))
    await asyncio.wait_for(shop.held.wait(), 10)
    return runner_nc, shop_nc, shop, run


async def test_a_bus_lost_mid_request_leaves_the_step_in_doubt_not_compensated(
    own_server: EmbeddedServer, journal, session_path: Path
) -> None:
    # The bus dies while a step waits for its reply and does not come back in time: the step
    # is in doubt and the run stops resumable. Timing out instead would fail the step and
    # then give up the refund no participant ever saw.
    runner_nc, shop_nc, shop, run = await run_held_at_reserve(own_server.url, journal, 2)
    own_server.kill()
    report = await asyncio.wait_for(run, 30)
    assert (report.outcome, report.clean) == ("running", False)
    assert "the bus connection was lost" in report.reason
    rows = store.saga_journal(journal, report.run_id)
    assert [(r.step, r.kind, r.result) for r in rows] == [
        ("authorize", "action", "ok"),
        ("reserve", "action", "in_doubt"),
    ]
    assert rows[1].detail == LOST_IN_FLIGHT
    shown = await asyncio.to_thread(run_qixtui, "orchestrate", "--show", str(session_path))
    assert f"2 reserve shop.cmd.stock.reserve -> IN DOUBT: {LOST_IN_FLIGHT}" in shown.stdout
    assert f"resume with: qixtui orchestrate --resume {report.run_id} " in shown.stdout
    shop.release.set()
    for nc in (runner_nc, shop_nc):
        with contextlib.suppress(Exception):
            await nc.close()

    own_server.start()  # back on the same port: the run goes on where it stopped
    runner_nc, shop_nc = await client(own_server.url, 2), await client(own_server.url, 2)
    try:
        await shop.serve(shop_nc)
        resumed = await SagaRunner(runner_nc, journal).resume(report.run_id)
    finally:
        await runner_nc.close()
        await shop_nc.close()
    assert resumed.outcome == "completed"
    reserves = [h for s, h, _ in shop.calls if s == "shop.cmd.stock.reserve"]
    assert len(reserves) == 2
    assert reserves[0]["Idempotency-Key"] == reserves[1]["Idempotency-Key"]
    assert not any(s.endswith(("refund", "release")) for s in shop.subjects_called())


async def test_a_bus_back_within_the_reconnect_window_resends_the_step(
    own_server: EmbeddedServer, journal
) -> None:
    # A server restart while a step waits: the step is in doubt, resent with the same key
    # once the client is back, and the run completes without a resume.
    runner_nc, shop_nc, shop, run = await run_held_at_reserve(own_server.url, journal, 60)
    try:
        own_server.kill()
        shop.release.set()
        own_server.start()
        report = await asyncio.wait_for(run, 30)
    finally:
        await runner_nc.close()
        await shop_nc.close()
    assert report.outcome == "completed", report.reason
    results = [(s.step, s.result) for s in report.steps]
    assert results[:3] == [("authorize", "ok"), ("reserve", "in_doubt"), ("reserve", "ok")]
