"""The participants as a child process, and `qixtui demo --headless` end to end."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import pytest
from helpers import qixtui_command, run_qixtui

from qixtui_demo import RULES_PATH
from qixtui_demo.plan import Knobs, plan_order
from qixtui_demo.process import (
    ParticipantsError,
    participants_command,
    start_participants,
    stop_participants,
    wait_participants,
)

FAST = ["--latency", "1:0.3", "--heartbeat", "0.2"]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_participants_stop_by_pid_with_a_summary(nats_server):
    participants = start_participants(nats_server.url, ["--rate", "50", "--seed", "3", *FAST])
    assert pid_alive(participants.pid)
    time.sleep(0.5)  # an unbounded run: let it place some orders before it is stopped
    summary = stop_participants(participants)
    assert participants.proc.returncode == 0
    assert not pid_alive(participants.pid)
    assert summary["seed"] == 3
    orders = summary["orders"]
    assert orders["placed"] > 0
    assert orders["completed"] + orders["failed"] + orders["compensated"] == orders["placed"]
    assert "outcomes" not in summary  # unbounded runs keep only counts


def test_participants_finish_a_fixed_number_of_orders(nats_server):
    args = ["--orders", "5", "--rate", "100", "--seed", "4", *FAST]
    summary = wait_participants(start_participants(nats_server.url, args), timeout=30)
    assert summary["orders"]["placed"] == 5
    assert len(summary["outcomes"]) == 5


def test_bad_flags_fail_in_one_line(nats_server):
    with pytest.raises(ParticipantsError, match="no service 'billing'"):
        start_participants(nats_server.url, ["--silent", "billing"])


def test_unreachable_server_is_one_line():
    done = subprocess.run(
        participants_command("nats://127.0.0.1:1", ["--orders", "1", "--connect-timeout", "1"]),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("qixtui-demo: cannot connect to nats://127.0.0.1:1: ")
    assert done.stderr.count("\n") == 1
    # A refused connection fails at once: it waited out the connect timeout (10 s by default;
    # here ten minutes, past this run's own limit).
    refused = subprocess.run(
        participants_command("nats://127.0.0.1:1", ["--services-only", "--connect-timeout", "600"]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1
    # the cause, as `qixtui record` says it, not nats-py's "no servers available"
    assert "Connect call failed" in refused.stderr


@pytest.fixture(scope="module")
def headless_run(tmp_path_factory) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """One `qixtui demo --headless` recording, as a user makes it, shared by the tests below."""
    path = tmp_path_factory.mktemp("headless") / "demo.qix"
    done = run_qixtui(
        *["demo", "--headless", "--duration", "10", "-o", str(path), "--json", "--seed", "7"],
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    listed = run_qixtui("events", str(path), "--json")
    assert listed.returncode == 0, listed.stderr
    events = [json.loads(line) for line in listed.stdout.splitlines()]
    return path, json.loads(done.stdout), events


def test_headless_demo_records_every_outcome(headless_run):
    path, result, events = headless_run
    assert result["file"] == str(path.resolve())
    shop = result["shop"]["orders"]
    assert shop["completed"] > 0
    assert shop["failed"] > 0
    assert shop["compensated"] > 0
    assert len(events) == result["recorded"]["events"]
    subjects = [e["subject"] for e in events]
    assert subjects.count("shop.order.completed") == shop["completed"]
    assert subjects.count("shop.payment.refunded") == shop["compensated"]
    cancelled = [json.loads(e["payload"]) for e in events if e["subject"] == "shop.order.cancelled"]
    reasons = [body["reason"] for body in cancelled]
    assert reasons.count("payment_declined") == shop["failed"]
    assert reasons.count("out_of_stock") == shop["compensated"]
    assert result["incidents"] == []


def test_headless_demo_follows_its_seed(headless_run):
    """`--seed 7` places the orders the plan derives from seed 7 alone, each with the planned
    outcome: another run with the seed places the same ones (as many as time allows)."""
    _, result, events = headless_run
    placed = [json.loads(e["payload"]) for e in events if e["subject"] == "shop.order.placed"]
    assert len(placed) == result["shop"]["orders"]["placed"]
    plans = [plan_order(Knobs(seed=7), n) for n in range(1, len(placed) + 1)]
    assert sorted(body["order_id"] for body in placed) == [plan.order_id for plan in plans]
    by_id = {plan.order_id: plan for plan in plans}
    for body in placed:
        assert body["items"] == by_id[body["order_id"]].items
    outcomes = {}
    for event in events:
        body = json.loads(event["payload"])
        if event["subject"] == "shop.order.completed":
            outcomes[body["order_id"]] = "completed"
        elif event["subject"] == "shop.order.cancelled":
            declined = body["reason"] == "payment_declined"
            outcomes[body["order_id"]] = "failed" if declined else "compensated"
    assert outcomes == {plan.order_id: plan.expected for plan in plans}


def test_headless_demo_records_one_flow_per_order(headless_run):
    """Recorded under the demo's rules.toml, with no flags: flows and their statuses match the
    shop's counts, and every event belongs to a flow."""
    path, result, events = headless_run
    listed = run_qixtui("flows", str(path), "--json")
    assert listed.returncode == 0, listed.stderr
    flows = [json.loads(line) for line in listed.stdout.splitlines()]
    shop = result["shop"]["orders"]
    choreographed = [flow for flow in flows if not flow["orchestrated"]]
    statuses = Counter(flow["status"] for flow in choreographed)
    assert statuses == {k: shop[k] for k in ("completed", "failed", "compensated") if shop[k]}
    for flow in flows:
        assert len([k for k in flow["keys"] if k.startswith("order_id=")]) == 1
    # The orchestrated half: one flow per saga run, its status the run's announced outcome.
    shown = run_qixtui("orchestrate", "--show", str(path), "--json")
    runs = [json.loads(line) for line in shown.stdout.splitlines()]
    orchestrated = [flow for flow in flows if flow["orchestrated"]]
    assert orchestrated
    assert len(orchestrated) == len(runs)
    announced = Counter(
        e["subject"].rsplit(".", 1)[1] for e in events if e["subject"].startswith("qixtui.saga.")
    )
    assert Counter(flow["status"] for flow in orchestrated) == announced
    assert [e["subject"] for e in events if e["flow_id"] is None] == []


def test_demo_compare_measures_both_styles_with_the_same_services(headless_run):
    """Compensation time in both styles (the rules list the failures themselves), and one
    name a service in both: the shipment's events and the shipping commands are `shipping`."""
    path, result, _ = headless_run
    shown = run_qixtui("compare", str(path), "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    chor, orch = report["choreography"], report["orchestration"]
    assert result["shop"]["orders"]["compensated"] > 0
    assert chor["compensate_ns"]["p50"] is not None  # orchestration's: test_compare_screen

    def services(style: dict[str, Any]) -> set[str]:
        return {name for e in style["edges"] for name in (e["source"], e["target"])}

    assert {"shipping", "notification"} <= services(chor)
    assert orch["completed"] > 0
    assert {"shipping", "notification"} <= services(orch)
    assert not {"shipment", "notify"} & (services(chor) | services(orch))


@pytest.mark.parametrize(
    "overrides",
    [{}, {"headers": [], "trace": False, "message_id_headers": [], "causation_header": "-"}],
    ids=["rules.toml", "payload-keys-only"],
)
def test_demo_rules_make_one_flow_per_order(headless_run, overrides):
    """The keys rules.toml names (read as contracts.md defines them) join each order's events,
    pricing reply and notification included, and nothing else: no customer id.
    Payload keys alone still do it: order ids bridge to shipment ids."""
    _, result, events = headless_run
    rules = tomllib.loads(RULES_PATH.read_text())["correlation"] | overrides
    parent = list(range(len(events)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[tuple[str, str], int] = {}
    for i, event in enumerate(events):
        headers = {k.lower(): v for k, v in event["headers"].items()}
        keys = [("h", headers[h.lower()]) for h in rules["headers"] if h.lower() in headers]
        if rules["trace"] and "traceparent" in headers:
            keys.append(("trace", headers["traceparent"].split("-")[1]))
        names = [*rules["message_id_headers"], rules["causation_header"]]
        keys += [("msg", headers[h.lower()]) for h in names if h.lower() in headers]
        if rules["replies"]:
            keys += [("reply", r) for r in (event["reply"], event["subject"]) if r]
        body = json.loads(event["payload"])
        for pointer in rules["keys"]:
            value = body.get(pointer.strip("/")) if isinstance(body, dict) else None
            if value is not None:
                keys.append(("field", str(value)))
        for key in keys:
            if key[0] == "reply" and key[1] == event["subject"] and key not in owner:
                continue  # a subject is a reply key only when a request named it
            j = owner.setdefault(key, i)
            parent[find(i)] = find(j)

    flows: dict[int, list[dict[str, Any]]] = {}
    for i, event in enumerate(events):
        if event["subject"].startswith("qixtui.saga."):
            continue  # a run's announced end joins by its headers only; checked above
        flows.setdefault(find(i), []).append(event)
    order_ids = [
        {json.loads(e["payload"]).get("order_id") for e in flow} - {None} for flow in flows.values()
    ]
    assert all(len(ids) == 1 for ids in order_ids)
    # saga runs carry order ids of their own (orch-<seed>-<n>), one flow each
    choreographed = [ids for ids in order_ids if not next(iter(ids)).startswith("orch-")]
    assert len(choreographed) == result["shop"]["orders"]["placed"]


def test_headless_demo_refuses_an_existing_file(tmp_path):
    path = tmp_path / "demo.qix"
    path.write_bytes(b"keep me")
    done = run_qixtui("demo", "--headless", "-o", str(path))
    assert done.returncode == 1
    assert "already exists" in done.stderr
    assert path.read_bytes() == b"keep me"


def test_headless_demo_refuses_an_impossible_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = run_qixtui("demo", "--headless", "-o", str(blocker / "demo.qix"))
    assert done.returncode == 1
    assert done.stderr.startswith("qixtui: ")
    assert done.stderr.count("\n") == 1


async def ask(url: str, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    nc = await nats.connect(url)
    try:
        reply = await nc.request(subject, json.dumps(body).encode(), timeout=5)
    finally:
        await nc.close()
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


@pytest.mark.parametrize("given_bus", [True, False], ids=["-s URL", "embedded"])
def test_services_only_answer_commands_and_place_no_orders(nats_server, given_bus):
    """`qixtui demo --services-only`: the shop's services on a bus, for `qixtui orchestrate`;
    its URL on stdout once they answer, no recorder, stopped by SIGTERM to its pid."""
    args = ["demo", "--services-only", *(["-s", nats_server.url] if given_bus else [])]
    proc = subprocess.Popen(
        qixtui_command(*args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url == nats_server.url if given_bus else url.startswith("nats://127.0.0.1:")
        body = {"order_id": "o-1", "message": "hi"}
        answer = asyncio.run(ask(url, "shop.cmd.notify.send", body))
        assert answer == {"ok": True}
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "orders placed" not in err  # services alone place none
    assert "commands: notification 1" in err
    if not given_bus:  # the embedded bus went with it
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_sigterm_while_the_services_start_stops_them(nats_server):
    """The services run in a session of their own: a SIGTERM to the demo while it waited for
    them to be ready left them running."""
    proc = subprocess.Popen(
        qixtui_command("demo", "--services-only", "-s", nats_server.url),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + 30
    started: list[int] = []
    while not started and time.monotonic() < deadline:
        started = [int(pid) for pid in children.read_text().split()]
        time.sleep(0.005)
    assert started, "the services never started"
    os.kill(proc.pid, signal.SIGTERM)  # while they get ready (that takes about a second)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    deadline = time.monotonic() + 10
    while any(pid_alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(pid) for pid in started)


def test_services_only_refuses_a_session_file(tmp_path):
    done = run_qixtui("demo", "--services-only", "-o", str(tmp_path / "x.qix"))
    assert done.returncode == 1
    assert done.stderr == "qixtui: --services-only records nothing: drop -o and --json\n"
    done = run_qixtui("demo", "--headless", "-s", "nats://127.0.0.1:4222")
    assert done.returncode == 1
    assert "needs --services-only" in done.stderr
