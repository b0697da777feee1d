"""compare on a real recording: both styles run on a real nats-server, recorded by
`qixtui record`; flows are written with the store functions (by correlation id, replies by
their inbox, causes by message id) and the report is checked against `events --json`."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from pathlib import Path

import nats
from compare_checks import check_against_events
from helpers import run_qixtui
from test_record import start_recorder, stop_recorder, wait_for_events

from qixtui.core import store
from qixtui.core.model import Flow, Link
from qixtui_nats.server import EmbeddedServer


async def run_shop(url: str, prefix: str) -> int:
    """Two choreographed orders (one fails and is refunded), two orchestrated runs (one
    compensated); returns how many messages went over the bus."""
    nc = await nats.connect(url)
    sent = 0

    async def emit(subject: str, cause: nats.aio.msg.Msg | None, corr: str, body: dict) -> None:
        nonlocal sent
        headers = {"X-Correlation-ID": corr, "X-Message-ID": uuid.uuid4().hex}
        if cause is not None and cause.headers:
            headers["X-Causation-ID"] = cause.headers["X-Message-ID"]
        await nc.publish(f"{prefix}.{subject}", json.dumps(body).encode(), headers=headers)
        sent += 1

    def corr(msg: nats.aio.msg.Msg) -> str:
        assert msg.headers is not None
        return msg.headers["X-Correlation-ID"]

    async def on_placed(msg: nats.aio.msg.Msg) -> None:
        await emit("payment.authorized", msg, corr(msg), json.loads(msg.data))

    async def on_authorized(msg: nats.aio.msg.Msg) -> None:
        body = json.loads(msg.data)
        failed = body["sku"] == "none-left"
        await emit("stock.failed" if failed else "stock.reserved", msg, corr(msg), body)

    async def on_reserved(msg: nats.aio.msg.Msg) -> None:
        await emit("order.completed", msg, corr(msg), json.loads(msg.data))

    async def on_failed(msg: nats.aio.msg.Msg) -> None:
        await emit("order.cancelled", msg, corr(msg), json.loads(msg.data))
        await emit("payment.refunded", msg, corr(msg), json.loads(msg.data))

    async def command(msg: nats.aio.msg.Msg) -> None:
        nonlocal sent
        ok = json.loads(msg.data).get("sku") != "none-left" or "stock" not in msg.subject
        await msg.respond(json.dumps({"ok": ok}).encode())
        sent += 1

    for subject, cb in [
        ("order.placed", on_placed),
        ("payment.authorized", on_authorized),
        ("stock.reserved", on_reserved),
        ("stock.failed", on_failed),
        ("cmd.*.*", command),
    ]:
        await nc.subscribe(f"{prefix}.{subject}", cb=cb)
    await nc.flush()

    for order, sku in (("o-1", "mug"), ("o-2", "none-left")):
        await emit("order.placed", None, f"chor-{order}", {"order_id": order, "sku": sku})
        await asyncio.sleep(0.05)

    for run, sku in (("r-1", "mug"), ("r-2", "none-left")):
        headers = {"Qixtui-Saga-Run": run, "X-Correlation-ID": f"orch-{run}"}
        steps = ["payment.authorize", "stock.reserve", "order.complete"]
        for step in steps:
            reply = await nc.request(
                f"{prefix}.cmd.{step}", json.dumps({"sku": sku}).encode(), headers=headers
            )
            sent += 1
            if not json.loads(reply.data)["ok"]:
                await nc.request(f"{prefix}.cmd.payment.refund", b"{}", headers=headers)
                sent += 1
                break
    await nc.flush()
    await nc.close()
    return sent


def write_flows(path: Path) -> None:
    """The flows of the recording by correlation id, as the correlator would mark them."""
    db = store.open_session(path, readonly=False)
    events = list(store.iter_events(db, store.EventQuery()))
    by_inbox = {e.reply: e for e in events if e.reply}
    by_msgid = {e.header("X-Message-ID"): e for e in events if e.header("X-Message-ID")}
    members: dict[str, list[int]] = defaultdict(list)
    links: list[Link] = []
    flow_of: dict[int, str] = {}
    for event in events:
        key = event.header("X-Correlation-ID")
        request = by_inbox.get(event.subject)
        if request is not None:  # nats-py's respond echoes the request's headers
            key = flow_of[request.id]
            links.append(Link(event.id, "reply", event.subject, request.id))
        assert key is not None, event.subject
        cause = by_msgid.get(event.header("X-Causation-ID"))
        if cause is not None:
            links.append(Link(event.id, "causation", cause.header("X-Message-ID") or "", cause.id))
        flow_of[event.id] = key
        members[key].append(event.id)
    ids = {key: n for n, key in enumerate(members, start=1)}
    by_id = {e.id: e for e in events}
    flows = []
    for key, eids in members.items():
        subjects = [by_id[i].subject for i in eids]
        orchestrated = any(by_id[i].header("Qixtui-Saga-Run") for i in eids)
        failed = any(s.endswith(("cancelled", "refund")) for s in subjects)
        flows.append(
            Flow(
                flow_id=ids[key],
                status="compensated" if failed else "completed",
                started_ns=min(by_id[i].ts_ns for i in eids),
                ended_ns=max(by_id[i].ts_ns for i in eids),
                events=len(eids),
                orchestrated=orchestrated,
            )
        )
    with store.transaction(db):
        for event_id, key in flow_of.items():
            db.execute("UPDATE events SET flow_id = ? WHERE id = ?", (ids[key], event_id))
        store.insert_links(db, links)
        store.upsert_flows(db, flows)
    db.close()


def test_compare_on_a_real_recording(nats_server: EmbeddedServer, tmp_path: Path) -> None:
    out = tmp_path / "both.qix"
    prefix = f"cmp{uuid.uuid4().hex[:8]}"
    # flows are written below by the test, so the recorder only records
    proc = start_recorder(
        nats_server.url, out, "--no-correlate", "-S", f"{prefix}.>", "-S", "_INBOX.>"
    )
    sent = asyncio.run(run_shop(nats_server.url, prefix))
    wait_for_events(out, sent)
    summary = stop_recorder(proc)
    assert summary["events"] == sent
    write_flows(out)

    result = run_qixtui(
        "compare", str(out), "--json", "--failure", f"{prefix}.order.cancelled",
        "--compensation", f"{prefix}.payment.refunded", "--compensation", f"{prefix}.cmd.*.refund",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    check_against_events(report, out)
    chor, orch = report["choreography"], report["orchestration"]
    assert (chor["flows"], chor["compensated"], orch["flows"], orch["compensated"]) == (2, 1, 2, 1)
    assert {(e["source"], e["target"]) for e in orch["edges"]} >= {("orchestrator", "payment")}
    assert all(e["via"] in ("request", "reply") for e in orch["edges"])
    assert all(e["via"] == "causation" for e in chor["edges"])
    assert chor["detect_failure_ns"]["count"] == orch["detect_failure_ns"]["count"] == 1
    assert orch["compensate_ns"]["count"] == 1, json.dumps(orch)
