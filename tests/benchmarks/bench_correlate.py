"""Correlation speed: alone, inside a real recording, and process discovery on 100k flows.

Run: pytest -m benchmark -s tests/benchmarks/bench_correlate.py
Numbers, not pass/fail: each prints its figure, the target and a baseline from the same run.
"""

from __future__ import annotations

import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from bench_record import PeakSampler
from flowgen import (
    FIELD_KEYS,
    RULE_FLAGS,
    expand_replies,
    subscribers,
    traffic,
    wait_for_subscriber,
)
from helpers import qixtui_command

from qixtui.core import store
from qixtui.core.correlate import COMPILED, MAX_FLOWS, Correlator
from qixtui.core.discover import discover, to_dot, to_mermaid
from qixtui.core.model import Event
from qixtui.core.rules import RuleFlags, Rules
from qixtui.core.writer import CycleCollector
from qixtui_nats.server import EmbeddedServer

pytestmark = pytest.mark.benchmark

RULES = Rules().merged_with(
    RuleFlags(
        keys=FIELD_KEYS,
        terminal=["shop.order.completed"],
        failure=["shop.order.cancelled"],
    )
)
PUBLISHER = Path(__file__).with_name("publish_traffic.py")
BATCH = 1000  # about what the writer gets per transaction at full speed
SEED = 3
ROUNDS = 4


def realistic_events(flows: int) -> list[Event]:
    """Shop traffic with every convention, 200 orders in flight, one heartbeat in nine."""
    rows = [
        (m.subject, reply, m.headers or None, m.payload)
        for m, reply in expand_replies(traffic(flows, noise_every=8, seed=2, window=200))
    ]
    return [
        Event(ts_ns=i * 20_000, subject=s, reply=r, headers=h, payload=p, id=i)
        for i, (s, r, h, p) in enumerate(rows, 1)
    ]


def correlate_rate(events: list[Event]) -> tuple[float, int]:
    """Events per second, and the flows found."""
    for event in events:
        event.flow_id = None
    correlator = Correlator(RULES)
    start = time.perf_counter()
    for k in range(0, len(events), BATCH):
        chunk = events[k : k + BATCH]
        correlator.add_batch(chunk, chunk[-1].ts_ns)
    correlator.finish(events[-1].ts_ns)
    return len(events) / (time.perf_counter() - start), correlator.remembered_flows


def one_message_flows(count: int) -> list[Event]:
    """bench_record's traffic: every message a flow of its own (a unique X-Correlation-ID,
    traceparent and order_id), so past MAX_FLOWS correlation forgets a flow per message."""
    events = []
    for i in range(1, count + 1):
        payload = msgspec.json.encode(
            {"order_id": f"o-{i}", "customer_id": "c-42", "amount": 123.45, "note": "x" * 60}
        )
        headers = [("X-Correlation-ID", f"o-{i}"), ("traceparent", f"00-{i:032x}-{i:016x}-01")]
        events.append(
            Event(
                ts_ns=i * 20_000,
                subject=f"bench.orders.{i % 16}",
                reply=None,
                headers=headers,
                payload=payload,
                id=i,
            )
        )
    return events


@pytest.fixture
def writer_gc() -> Iterator[None]:
    """Garbage collection as the writer stages run it, restored afterwards."""
    gc.collect()
    collector = CycleCollector()
    yield
    collector.close()


def test_correlation_alone(writer_gc: None) -> None:
    events = realistic_events(20_000)
    many = one_message_flows(3 * MAX_FLOWS)
    start = time.perf_counter()
    for event in events:  # baseline: touching each event once
        event.flow_id = event.id
    touch = len(events) / (time.perf_counter() - start)
    runs = [correlate_rate(events) for _ in range(3)]
    rates = [rate for rate, _ in runs]
    flows = runs[0][1]
    many_runs = [correlate_rate(many) for _ in range(3)]
    many_rates = [rate for rate, _ in many_runs]
    print(
        f"\ncorrelation alone ({'compiled' if COMPILED else 'pure Python'}): "
        f"{len(events):,} events, {flows:,} flows; "
        f"best {max(rates):,.0f} ev/s, median {statistics.median(rates):,.0f} ev/s "
        f"(target 300,000: {'met' if max(rates) >= 300_000 else 'NOT met'}); "
        f"baseline loop touching each event: {touch:,.0f} ev/s\n"
        f"correlation alone, one flow per message: {len(many):,} events, more than the "
        f"{MAX_FLOWS:,} flows remembered; best {max(many_rates):,.0f} ev/s, "
        f"median {statistics.median(many_rates):,.0f} ev/s"
    )
    assert flows == 20_000
    assert many_runs[0][1] == MAX_FLOWS


def committed(path: Path) -> int:
    """Events in the file so far: the last id (ids count up from 1), read from the end of
    the index; count(*) would scan the table and take CPU the recorder needs."""
    try:
        db = store.open_session(path)
    except (store.SessionError, OSError):
        return 0
    try:
        return int(db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])
    finally:
        db.close()


def record_once(
    server: EmbeddedServer, output: Path, flows: int, count: int, *flags: str
) -> tuple[float, dict[str, float]]:
    """Seconds from the publisher's first frame to `count` events committed to the file
    (polled, so the recorder's shutdown is not counted), and the CPU time each process used
    meanwhile, in µs an event."""
    before = subscribers(server, "_INBOX.test.>")
    recorder = subprocess.Popen(
        qixtui_command(
            "record",
            "-s",
            server.url,
            "-o",
            str(output),
            "--count",
            str(count),
            "-S",
            "shop.>",
            "-S",
            "_INBOX.test.>",
            *flags,
        ),
        stderr=subprocess.PIPE,
        text=True,
    )
    publisher = None
    assert server.proc is not None
    sampler = PeakSampler(recorder.pid, None, server.proc.pid)
    try:
        wait_for_subscriber(server, "_INBOX.test.>", before + 1)
        sampler.start()
        publisher = subprocess.Popen(
            [sys.executable, str(PUBLISHER), str(server.port), str(flows), str(SEED)],
            env={**os.environ, "PYTHONPATH": str(PUBLISHER.parent.parent)},
            stdout=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 240
        while committed(output) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        done = time.time()
        sampler.stop.set()
        sampler.join()
        try:
            _, stderr = recorder.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            recorder.terminate()  # it stops cleanly and says what it got
            _, stderr = recorder.communicate(timeout=60)
            raise AssertionError(f"recorder never reached {count:,} events: {stderr}") from None
        out, _ = publisher.communicate(timeout=60)
    finally:
        for proc in (recorder, publisher):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert recorder.returncode == 0, stderr
    assert "0 dropped" in stderr, stderr
    cpu = {name: seconds / count * 1e6 for name, seconds in sampler.cpu.items()}
    return done - float(json.loads(out)["wall_start"]), cpu


@pytest.mark.timeout(1200)
def test_recording_with_and_without_correlation(own_server: EmbeddedServer, tmp_path: Path) -> None:
    # About 190,000 events of the realistic traffic: several seconds a run, on and off
    # alternating (on off off on ...) so a neighbour's load hits both sides alike.
    flows = 40_000
    count = len(expand_replies(traffic(flows, noise_every=8, seed=SEED, window=200)))
    times: dict[str, list[float]] = {"off": [], "on": []}
    cpus: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for round_ in range(ROUNDS):
        for mode in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
            flags = ["--no-correlate"] if mode == "off" else RULE_FLAGS
            path = tmp_path / f"{mode}-{round_}.qix"
            seconds, cpu = record_once(own_server, path, flows, count, *flags)
            times[mode].append(seconds)
            cpus[mode].append(cpu)
            path.unlink()
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    ratio = on / off

    def cpu_medians(mode: str) -> str:
        names = cpus[mode][0]
        return ", ".join(
            f"{name} {statistics.median(run.get(name, 0) for run in cpus[mode]):.1f}"
            for name in names
        )

    print(
        f"\nrecording {count:,} events, {ROUNDS} runs a side: correlation off {count / off:,.0f} "
        f"ev/s committed, on {count / on:,.0f} ev/s (medians); time ratio on/off {ratio:.2f} "
        f"(target <= 1.20: {'met' if ratio <= 1.2 else 'NOT met'}); seconds a run: "
        f"off {[round(t, 2) for t in times['off']]}, on {[round(t, 2) for t in times['on']]}\n"
        f"CPU µs an event (medians): off: {cpu_medians('off')}; on: {cpu_medians('on')}"
    )


def test_discovery_on_100k_flows() -> None:
    rng = random.Random(4)
    happy = ["shop.order.placed", "shop.payment.authorized", "shop.stock.reserved"]
    tails = [
        ["shop.shipment.created", "shop.order.completed"],
        ["shop.stock.failed", "shop.payment.refunded", "shop.order.cancelled"],
        ["shop.order.completed"],
    ]
    traces = []
    for _ in range(100_000):
        steps = happy + rng.choice(tails)
        if rng.random() < 0.1:
            steps = [steps[0], steps[2], steps[1], *steps[3:]]
        ts = 0
        trace = []
        for step in steps:
            ts += rng.randrange(1_000_000, 50_000_000)
            trace.append((step, ts))
        traces.append(trace)
    events = sum(map(len, traces))
    start = time.perf_counter()
    found = discover(traces)
    mined = time.perf_counter() - start
    to_dot(found)
    to_mermaid(found)
    total = time.perf_counter() - start
    start = time.perf_counter()
    for trace in traces:  # baseline: one pass over every step
        for _step in trace:
            pass
    touch = time.perf_counter() - start
    print(
        f"\ndiscovery: {found.flows:,} flows, {events:,} steps, {len(found.variants)} variants, "
        f"{len(found.edges)} edges in {mined:.2f}s (+ DOT and Mermaid: {total:.2f}s; "
        f"target < 2 s: {'met' if total < 2 else 'NOT met'}); baseline pass {touch:.2f}s"
    )
    assert found.flows == 100_000
