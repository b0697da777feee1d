"""Recording with correlation on a real nats-server reconstructs every flow exactly."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections import defaultdict
from pathlib import Path

import nats
from flowgen import (
    RULE_FLAGS,
    TAG_HEADER,
    Message,
    reply_tag,
    subscribers,
    traffic,
    wait_for_subscriber,
)
from helpers import qixtui_command, run_qixtui

from qixtui_nats.server import EmbeddedServer


async def publish(server: EmbeddedServer, messages: list[Message]) -> None:
    responder = await nats.connect(server.url)
    publisher = await nats.connect(server.url)
    replies = {m.reply: m.reply_payload for m in messages if m.reply}

    answered = asyncio.Event()

    async def answer(msg: nats.aio.msg.Msg) -> None:
        await responder.publish(msg.reply, replies.pop(msg.reply))  # no headers at all
        if not replies:
            answered.set()

    await responder.subscribe("shop.pricing.quote", cb=answer)
    await responder.flush()
    for msg in messages:
        await publisher.publish(
            msg.subject, msg.payload, reply=msg.reply or "", headers=dict(msg.headers)
        )
    await publisher.flush()
    if replies:
        await asyncio.wait_for(answered.wait(), 60)
    await responder.flush()
    await publisher.close()
    await responder.close()


def record(server: EmbeddedServer, output: Path, count: int, *flags: str) -> subprocess.Popen[str]:
    subjects = ["-S", "shop.>", "-S", "_INBOX.test.>"]
    before = subscribers(server, "_INBOX.test.>")
    args = ["record", "-s", server.url, "-o", str(output), "--count", str(count), *subjects]
    proc = subprocess.Popen(
        qixtui_command(*args, *flags),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_subscriber(server, "_INBOX.test.>", before + 1)
    return proc


def finish(proc: subprocess.Popen[str]) -> None:
    """The recorder stops by itself at --count; if it does not, stop it and say why."""
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            _, stderr = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        raise AssertionError(f"recorder did not reach --count: {stderr}") from None
    assert proc.returncode == 0, stderr


def recorded_groups(path: Path) -> tuple[dict[int, set[str]], dict[str, set[int]], list[dict]]:
    out = run_qixtui("events", str(path), "--json")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    by_flow: dict[int, set[str]] = defaultdict(set)
    by_tag: dict[str, set[int]] = defaultdict(set)
    for event in events:
        tag = event["headers"].get(TAG_HEADER) or reply_tag(event["payload"].encode())
        by_tag[tag].add(event["flow_id"])
        if event["flow_id"] is not None:
            by_flow[event["flow_id"]].add(tag)
    return by_flow, by_tag, events


async def test_record_reconstructs_every_flow(nats_server: EmbeddedServer, tmp_path: Path) -> None:
    messages = traffic(flows=300, noise_every=6, seed=7)
    total = len(messages) + sum(1 for m in messages if m.reply)
    output = tmp_path / "flows.qix"
    proc = record(nats_server, output, total, *RULE_FLAGS)
    await publish(nats_server, messages)
    finish(proc)

    by_flow, by_tag, events = recorded_groups(output)
    assert len(events) == total
    assert by_tag["noise"] == {None}, "heartbeats must stay flowless"
    flow_tags = {t for t in by_tag if t != "noise"}
    assert len(flow_tags) == 300
    for tag in flow_tags:
        assert len(by_tag[tag]) == 1, f"{tag} split: {by_tag[tag]}"
        assert None not in by_tag[tag], f"{tag} left flowless"
    for flow_id, tags in by_flow.items():
        assert len(tags) == 1, f"flow {flow_id} merged {sorted(tags)}"

    listed = run_qixtui("flows", str(output), "--json")
    assert listed.returncode == 0, listed.stderr
    flows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {f["flow_id"] for f in flows} == set(by_flow)
    sizes = defaultdict(int)
    for event in events:
        if event["flow_id"] is not None:
            sizes[event["flow_id"]] += 1
    assert {f["flow_id"]: f["events"] for f in flows} == sizes
    statuses = {f["status"] for f in flows}
    assert statuses == {"completed", "failed"}


async def test_correlate_after_recording_matches_recording_with_those_rules(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    messages = traffic(flows=60, noise_every=5, seed=11)
    total = len(messages) + sum(1 for m in messages if m.reply)
    plain = tmp_path / "plain.qix"
    keyed = tmp_path / "keyed.qix"
    proc_plain = record(nats_server, plain, total)  # default rules: no payload keys
    proc_keyed = record(nats_server, keyed, total, *RULE_FLAGS)
    await publish(nats_server, messages)
    finish(proc_plain)
    finish(proc_keyed)

    def membership(path: Path) -> set[frozenset[int]]:
        _, _, events = recorded_groups(path)
        groups: dict[int, set[int]] = defaultdict(set)
        for event in events:
            if event["flow_id"] is not None:
                groups[event["flow_id"]].add(event["id"])
        return {frozenset(g) for g in groups.values()}

    def flow_rows(path: Path) -> list[tuple]:
        out = run_qixtui("flows", str(path), "--json")
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        return sorted(
            (r["status"], r["events"], tuple(r["variant"]), r["started_ns"]) for r in rows
        )

    before = membership(plain)
    assert before != membership(keyed), "the default rules should miss the payload-keyed flows"
    done = run_qixtui("correlate", str(plain), *RULE_FLAGS)
    assert done.returncode == 0, done.stderr
    # Both recorders saw the same messages in the same order, so event ids line up.
    assert membership(plain) == membership(keyed)
    assert flow_rows(plain) != []
    assert len(flow_rows(plain)) == len(flow_rows(keyed))
    assert [r[:3] for r in flow_rows(plain)] == [r[:3] for r in flow_rows(keyed)]


async def test_a_flow_recorded_in_two_appends_is_one_flow(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    """A saga run resumed later is recorded with --append (without rule flags, as
    orchestrate does): its second half has the same order id, and is the same flow."""
    output = tmp_path / "resumed.qix"

    def half(subjects: list[str], key: str) -> list[Message]:
        return [Message(subject, json.dumps({"order_id": key}).encode()) for subject in subjects]

    for flags, subjects in [
        (("--key", "/order_id"), ["shop.order.placed", "shop.payment.authorized"]),
        (("--append",), ["shop.stock.reserved", "shop.order.completed"]),  # the file's rules
    ]:
        messages = [*half(subjects, "order-1"), *half(subjects, "order-2")]
        proc = record(nats_server, output, len(messages), *flags)
        await publish(nats_server, messages)
        finish(proc)
    listed = run_qixtui("flows", str(output), "--json")
    assert listed.returncode == 0, listed.stderr
    flows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted((f["events"], f["keys"]) for f in flows) == [
        (4, ["order_id=order-1"]),
        (4, ["order_id=order-2"]),
    ]


def test_correlate_refuses_a_file_that_is_not_a_session(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello\n" * 50)
    out = run_qixtui("correlate", str(bogus))
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1
    assert "not a qixtui session" in out.stderr
    assert bogus.read_text() == "hello\n" * 50
