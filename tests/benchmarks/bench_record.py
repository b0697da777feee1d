"""Recorder throughput against a bare nats-py subscriber, measured in the same run.

Run: pytest -m benchmark -s tests/benchmarks/bench_record.py
(QIXTUI_BENCH_SUSTAIN_S sets the sustained-rate duration, 60 s by default; QIXTUI_BENCH_RATES
the offered rates, e.g. 40000,50000; `-k flow-per-message` picks one traffic.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import qixtui_command

from qixtui.core import store
from qixtui.core.correlate import COMPILED
from qixtui_nats.server import EmbeddedServer

pytestmark = [pytest.mark.benchmark, pytest.mark.timeout(1800)]

TOTAL = 150_000
SUSTAIN_S = float(os.environ.get("QIXTUI_BENCH_SUSTAIN_S", "60"))
# Offered rates, lowest first; the run stops at the first one that loses anything.
RATES = [int(r) for r in os.environ.get("QIXTUI_BENCH_RATES", "20000,40000,50000,60000").split(",")]

# A separate process that writes pre-built HPUB frames to a raw socket, so the publisher is
# never the bottleneck. rate=0 means as fast as possible; otherwise paced in 10 ms slices.
# Every `group` consecutive messages share an order id and a trace id: one flow each.
PUBLISHER = textwrap.dedent(
    """
    import json, socket, sys, time
    port, total, group = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[4])
    rate = float(sys.argv[3])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.recv(4096)
    sock.sendall(b'CONNECT {"verbose":false,"headers":true}\\r\\n')
    def frame(i):
        k = i // group
        body = json.dumps({"order_id": f"o-{k}", "customer_id": "c-42", "amount": 123.45,
                           "items": [{"sku": "sku-1", "qty": 2}], "note": "x" * 60}).encode()
        hdr = (b"NATS/1.0\\r\\nX-Correlation-ID: o-%d\\r\\n"
               b"traceparent: 00-%032x-%016x-01\\r\\n\\r\\n" % (k, k, i))
        return b"HPUB bench.orders.%d %d %d\\r\\n%s%s\\r\\n" % (
            i % 16, len(hdr), len(hdr) + len(body), hdr, body)
    frames = [frame(i) for i in range(total)]
    wall_start = time.time()
    start = time.monotonic()
    if rate <= 0:
        for i in range(0, total, 1000):
            sock.sendall(b"".join(frames[i:i + 1000]))
    else:
        per_slice = max(1, int(rate / 100))
        sent = 0
        while sent < total:
            due = start + sent / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sock.sendall(b"".join(frames[sent:sent + per_slice]))
            sent += per_slice
    sock.sendall(b"PING\\r\\n")
    buf = b""
    while b"PONG" not in buf:
        buf += sock.recv(4096)
    print(json.dumps({"seconds": time.monotonic() - start, "wall_start": wall_start}))
    """
)

# The baseline: nats-py doing nothing but counting.
BARE = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import nats
    url, total = sys.argv[1], int(sys.argv[2])
    async def main():
        nc = await nats.connect(url, name="bare")
        done = asyncio.Event()
        n = 0
        async def cb(msg):
            nonlocal n
            n += 1
            if n >= total:
                done.set()
        await nc.subscribe("bench.>", cb=cb, pending_msgs_limit=-1, pending_bytes_limit=-1)
        await nc.flush()
        print("ready", flush=True)
        try:
            await asyncio.wait_for(done.wait(), 120)
        except asyncio.TimeoutError:
            pass
        print(json.dumps({"received": n, "done_at": time.time()}), flush=True)
        await nc.close()
    asyncio.run(main())
    """
)


def publish(port: int, total: int, rate: float = 0, group: int = 1) -> dict[str, float]:
    """Publish from a separate process, `group` messages to a flow; returns its wall-clock
    start (taken after it built its frames) and how long sending took."""
    out = subprocess.run(
        [sys.executable, "-c", PUBLISHER, str(port), str(total), str(rate), str(group)],
        capture_output=True,
        text=True,
        check=True,
        timeout=SUSTAIN_S * 3 + 120,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def tree_pids(pid: int) -> list[int]:
    """A process and its children (the recorder and its writer)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [pid, *(int(p) for p in children.read_text().split())]
    except FileNotFoundError:
        return [pid]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def is_resource_tracker(pid: int) -> bool:
    """multiprocessing's helper process, started before the recorder's two stages."""
    try:
        return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


def tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and its children, from /proc."""
    total = 0
    for p in tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


class PeakSampler(threading.Thread):
    """Samples the recorder's RSS, the server's pending bytes for its connection, and the CPU
    time the recorder, its prepare and write stages and the server have used since the first
    sample (so not their start-up), as of the last sample before they exit."""

    def __init__(self, pid: int, monitor_url: str | None, server_pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.monitor_url = monitor_url
        self.peak_rss_kb = 0
        self.peak_pending = 0
        self.cpu: dict[str, float] = {}
        self.server_pid = server_pid
        self.cpu_at_start: dict[int, float] = {}
        self.stop = threading.Event()

    def used(self, pid: int) -> float:
        now = cpu_seconds(pid)
        return now - self.cpu_at_start.setdefault(pid, now)

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak_rss_kb = max(self.peak_rss_kb, tree_rss_kb(self.pid))
            pids = tree_pids(self.pid)
            self.cpu["recorder"] = self.used(pids[0])
            stages = sorted(p for p in pids[1:] if not is_resource_tracker(p))
            for name, pid in zip(("prepare", "writer"), stages, strict=False):
                self.cpu[name] = self.used(pid)
            self.cpu["server"] = self.used(self.server_pid)
            if self.monitor_url:
                try:
                    with urllib.request.urlopen(f"{self.monitor_url}/connz", timeout=1) as r:
                        conns = json.load(r)["connections"] or []
                    pending = [
                        c.get("pending_bytes", 0) for c in conns if c.get("name") == "qixtui"
                    ]
                    self.peak_pending = max([self.peak_pending, *pending])
                except OSError:
                    pass
            time.sleep(0.1)


def count(path: Path, exact: bool = False) -> int:
    # While polling, the last id (ids count up from 1 in arrival order) is read from the end
    # of the index; count(*) scans the table and took CPU the recorder needs.
    sql = "SELECT count(*) FROM events" if exact else "SELECT coalesce(max(id), 0) FROM events"
    db = store.open_session(path)
    try:
        return int(db.execute(sql).fetchone()[0])
    finally:
        db.close()


def wait_recorder_ready(path: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            db = store.open_session(path)
            ready = "server_id" in store.get_meta(db)
            db.close()
            if ready:
                time.sleep(0.3)
                return
        except (store.SessionError, OSError):
            pass
        time.sleep(0.05)
    raise AssertionError("recorder did not start")


def run_recorder(
    server: EmbeddedServer,
    out: Path,
    total: int,
    rate: float,
    group: int = 1,
    options: tuple[str, ...] = (),
) -> dict[str, float]:
    proc = subprocess.Popen(
        qixtui_command(
            "record", "-s", server.url, "-o", str(out), "-S", "bench.>", "--json", *options
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_recorder_ready(out)
    assert server.proc is not None
    sampler = PeakSampler(proc.pid, server.monitor_url, server.proc.pid)
    sampler.start()
    pub = publish(server.port, total, rate, group)
    # Recorded means committed to the file: poll until the count stops moving.
    last, still_since = -1, time.monotonic()
    while True:
        n = count(out)
        if n >= total:
            break
        if n != last:
            last, still_since = n, time.monotonic()
        elif time.monotonic() - still_since > 3:
            break
        time.sleep(0.02)
    done = time.time()
    sampler.stop.set()
    sampler.join()
    proc.send_signal(signal.SIGINT)
    # Closing builds the read indexes, ~10 s a million events on a quiet machine.
    stdout, _ = proc.communicate(timeout=600)
    summary = json.loads(stdout)
    recorded = count(out, exact=True)
    return {
        "recorded": recorded,
        "dropped": summary["dropped"],
        "gaps": summary["gaps"],
        "lost": total - recorded,
        "seconds": done - pub["wall_start"],
        "publish_seconds": pub["seconds"],
        "rate": recorded / (done - pub["wall_start"]),
        "peak_rss_mb": sampler.peak_rss_kb / 1024,
        "peak_pending_bytes": sampler.peak_pending,
        "cpu_us_per_event": {k: v / max(recorded, 1) * 1e6 for k, v in sampler.cpu.items()},
    }


def run_bare(server: EmbeddedServer, total: int) -> dict[str, float]:
    proc = subprocess.Popen(
        [sys.executable, "-c", BARE, server.url, str(total)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    pub = publish(server.port, total)
    result = json.loads(proc.stdout.readline())
    proc.wait(timeout=30)
    seconds = result["done_at"] - pub["wall_start"]
    return {
        "received": result["received"],
        "seconds": seconds,
        "rate": result["received"] / seconds,
    }


def cpu_line(rec: dict[str, Any]) -> str:
    return ", ".join(f"{name} {us:.1f} µs" for name, us in rec["cpu_us_per_event"].items())


def rates(runs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['rate']:,.0f}" for r in runs)


def test_drain_rate_against_a_bare_subscriber(tmp_path: Path):
    # Each side runs three times, alternating, and the best run of each counts: a run lasts a
    # few seconds, and the shared machine's other load can halve any one of them.
    bares, recs = [], []
    with EmbeddedServer(jetstream=False) as server:
        for attempt in range(3):
            bares.append(run_bare(server, TOTAL))
            recs.append(run_recorder(server, tmp_path / f"drain-{attempt}.qix", TOTAL, rate=0))
    bare = max(bares, key=lambda r: r["rate"])
    rec = max(recs, key=lambda r: r["rate"])
    ratio = rec["rate"] / bare["rate"]
    print(
        f"\n[drain] {TOTAL:,} msgs (~200 B JSON, 2 headers) from a separate raw publisher, "
        "each side run three times, the best run shown; correlator "
        f"{'compiled' if COMPILED else 'pure Python'}\n"
        f"  bare nats-py subscriber : {bare['rate']:>9,.0f} msg/s ({bare['received']:,} received; "
        f"runs {rates(bares)})\n"
        f"  qixtui record           : {rec['rate']:>9,.0f} ev/s committed "
        f"({rec['recorded']:,} recorded, {rec['dropped']:,} dropped, {rec['gaps']} gaps, "
        f"{rec['lost']:,} lost; runs {rates(recs)})\n"
        f"  ratio recorder/bare     : {ratio:.2f}\n"
        f"  peak RSS (recorder and its stages): {max(r['peak_rss_mb'] for r in recs):.0f} MB; "
        f"peak server pending: {max(r['peak_pending_bytes'] for r in recs):,} B\n"
        f"  CPU per event: {cpu_line(rec)}"
    )
    for r in recs:
        assert r["recorded"] + r["dropped"] <= TOTAL


# What the recorder does with the traffic: store it only; correlate it where an order's six
# messages make one flow; correlate it where every message starts a flow of its own (the
# correlator's worst case: a new flow state, two keys and a flows row for every event, and
# 50,000 flows remembered).
SUSTAINED = {
    "events-only": (1, ("--no-correlate",)),
    "flows-of-6": (6, ()),
    "flow-per-message": (1, ()),
}


@pytest.mark.parametrize("traffic", list(SUSTAINED))
def test_sustained_rate_with_zero_loss(tmp_path: Path, traffic: str):
    group, options = SUSTAINED[traffic]
    rows = []
    held = 0
    for rate in RATES:
        total = int(rate * SUSTAIN_S)
        with EmbeddedServer(jetstream=False) as server:
            rec = run_recorder(
                server, tmp_path / f"sustain-{rate}.qix", total, rate, group, options
            )
        offered = total / rec["publish_seconds"]
        lossless = rec["lost"] == 0 and rec["dropped"] == 0 and rec["gaps"] == 0
        rows.append((rate, offered, rec, lossless))
        print(
            f"\n[sustained {SUSTAIN_S:.0f}s, {traffic}] target {rate:,}/s "
            f"offered {offered:,.0f}/s: recorded {rec['recorded']:,}/{total:,} "
            f"lost {rec['lost']:,} dropped {rec['dropped']:,} gaps {rec['gaps']} "
            f"peak server pending {rec['peak_pending_bytes']:,} B "
            f"peak RSS {rec['peak_rss_mb']:.0f} MB; CPU per event: {cpu_line(rec)}"
        )
        if not lossless:
            break
        held = rate
    print(f"\n[sustained, {traffic}] highest rate held with zero loss: {held:,}/s")
    assert rows
