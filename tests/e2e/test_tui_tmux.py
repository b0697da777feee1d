"""The real terminal: `qixtui replay` and `qixtui tap` run inside tmux, read back from the pane."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import pytest
from ui.sessions import shop_session

from qixtui import child_command
from qixtui.core import store
from qixtui_demo import SHOP_SAGA
from qixtui_demo.plan import DEFAULT_LATENCY, Knobs, Latency
from qixtui_demo.shop import Shop
from qixtui_nats.server import EmbeddedServer

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


class Tmux:
    """One tmux server on a private socket, so nothing else's sessions are touched."""

    def __init__(self) -> None:
        self.socket = f"qixtui-test-{uuid.uuid4().hex[:8]}"

    def run(self, *args: str) -> str:
        out = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout

    def start(self, command: list[str], cwd: Path) -> None:
        env = " ".join(f"{k}={v}" for k, v in (("TZ", "UTC"), ("TERM", "xterm-256color")))
        line = f"cd {cwd} && env -u COLUMNS -u LINES {env} " + " ".join(command)
        self.run("new-session", "-d", "-s", "qx", "-x", "140", "-y", "40", line)
        self.run("resize-window", "-t", "qx", "-x", "140", "-y", "40")

    def pane(self) -> str:
        return self.run("capture-pane", "-p", "-t", "qx")

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "qx", *keys)

    def wait_for(self, check: Callable[[str], bool], timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        pane = ""
        while time.monotonic() < deadline:
            pane = self.pane()
            if check(pane):
                return pane
            time.sleep(0.1)
        raise AssertionError(f"pane never matched; last capture:\n{pane}")

    def shell_pid(self) -> int:
        """The pid of the shell the pane runs: what the command under test runs below."""
        return int(self.run("display", "-p", "-t", "qx", "#{pane_pid}").strip())

    def alive(self) -> bool:
        return "qx" in self.run("list-sessions", "-F", "#{session_name}")

    def close(self) -> None:
        self.run("kill-server")


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    t = Tmux()
    yield t
    t.close()


def qixtui(*args: str) -> list[str]:
    return child_command("qixtui", *args)


def test_replay_in_a_real_terminal(tmux: Tmux, tmp_path: Path) -> None:
    path = shop_session(tmp_path / "shop.qix")
    tmux.start(qixtui("replay", str(path)), tmp_path)
    pane = tmux.wait_for(lambda p: "shop.heartbeat.stock" in p and "finished" in p)
    assert "✔ completed" in pane
    assert "⏸ paused" in pane
    assert "12 events" in pane
    tmux.keys("-l", "/json:/order_id=2")  # typed at once: all of it reaches the filter
    tmux.wait_for(lambda p: "json:/order_id=2" in p and "✔ json · enter applies" in p)
    tmux.keys("Enter")
    pane = tmux.wait_for(lambda p: "(3 shown)" in p)
    assert "shop.payment.declined" in pane
    assert "shop.pricing.quote" not in pane
    tmux.keys("w")
    pane = tmux.wait_for(lambda p: "flow #2" in p and "causes" in p)
    assert "✘ failed" in pane
    tmux.keys("Escape")
    tmux.wait_for(lambda p: "causes" not in p)  # ESC then q at once would read as alt+q
    tmux.keys("q")
    deadline = time.monotonic() + 10
    while tmux.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not tmux.alive()


def publish_until(url: str, stop: threading.Event, sent: list[int]) -> None:
    async def main() -> None:
        nc = await nats.connect(url)
        n = 0
        while not stop.is_set():
            n += 1
            await nc.publish(
                f"shop.order.e2e{n}",
                f'{{"order_id": {n}}}'.encode(),
                headers={"X-Correlation-ID": f"ord-{n}"},
            )
            await nc.flush()
            sent[0] = n
            await asyncio.sleep(0.1)
        await nc.close()

    asyncio.run(main())


def test_publishing_a_replay_at_1x_shows_its_progress(tmux: Tmux, tmp_path: Path) -> None:
    """At 1x a replay takes as long as the recording did (4.6 s here): the terminal counts."""
    path = shop_session(tmp_path / "shop.qix")
    with EmbeddedServer(jetstream=False) as server:
        command = qixtui("replay", str(path), "--publish", "--yes", "-s", server.url)
        tmux.start([*command, "; echo", "EXIT=$?; sleep 30"], tmp_path)
        pane = tmux.wait_for(lambda p: "qixtui replay: " in p and " sent, up to event " in p)
        assert "EXIT=" not in pane  # counting while it runs, not after
        pane = tmux.wait_for(lambda p: "EXIT=" in p, timeout=30)
    assert "EXIT=0" in pane
    assert ") done: sent 11 messages to " in pane  # the 12th, a reply inbox, is skipped


def test_tap_records_and_shows_a_live_bus(tmux: Tmux, tmp_path: Path) -> None:
    out = tmp_path / "tap.qix"
    with EmbeddedServer() as server:
        tmux.start(qixtui("tap", "-s", server.url, "-o", str(out)), tmp_path)
        tmux.wait_for(lambda p: "recording" in p, timeout=30)
        stop = threading.Event()
        sent = [0]
        publisher = threading.Thread(target=publish_until, args=(server.url, stop, sent))
        publisher.start()
        try:
            pane = tmux.wait_for(lambda p: "shop.order.e2e5" in p, timeout=30)
            assert "● recording" in pane
            assert "tap.qix" in pane
            # The list follows the tail: newer events keep appearing at the bottom.
            first = sent[0]
            pane = tmux.wait_for(lambda p: f"shop.order.e2e{first + 5}" in p, timeout=30)
        finally:
            stop.set()
            publisher.join()
        tmux.keys("q")
        deadline = time.monotonic() + 20
        while tmux.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not tmux.alive()
    # Quitting stopped the recorder with SIGINT: it flushed and closed the session.
    db = store.open_session(out)
    meta = store.get_meta(db)
    assert "stopped_ns" in meta
    recorded = db.execute("SELECT count(*) FROM events WHERE subject GLOB 'shop.order.e2e*'")
    assert recorded.fetchone()[0] == sent[0]
    pid = int(meta["recorder_pid"])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    # It waited for the recorder to finish the file: indexed, one self-contained file.
    assert store.read_indexes_ready(db)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def running_in_group(pgid: int) -> list[int]:
    """Processes of a process group that still run (a reaped-late zombie does not count)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def publish_many(url: str, count: int) -> None:
    async def main() -> None:
        nc = await nats.connect(url)
        for n in range(count):
            body = b'{"order_id": %d, "note": "%s"}' % (n, b"y" * 80)
            await nc.publish(f"bulk.{n % 8}", body, headers={"X-Correlation-ID": f"o-{n}"})
            if n % 1000 == 0:
                await nc.flush()
        await nc.flush()
        await nc.close()

    asyncio.run(main())


def start_tap(tmux: Tmux, server: EmbeddedServer, out: Path) -> None:
    """tap in the pane, then its exit status ("tap-exited N"), once it shows it records."""
    tap = qixtui("tap", "-s", server.url, "-o", str(out))
    tmux.start([*tap, ";", "echo", "tap-exited", "$?", ";", "sleep", "60"], out.parent)
    tmux.wait_for(lambda p: "recording" in p, timeout=30)


def test_quitting_tap_says_it_is_finishing_and_ctrl_c_stops_at_once(
    tmux: Tmux, tmp_path: Path
) -> None:
    out = tmp_path / "big.qix"
    with EmbeddedServer(jetstream=False) as server:
        start_tap(tmux, server, out)
        # Enough that closing the recording (the last batches, flows, indexes) takes seconds.
        publish_many(server.url, 200_000)
        tmux.keys("q")
        pane = tmux.wait_for(lambda p: "qixtui: finishing" in p, timeout=60)
        assert "Ctrl-C stops at once" in pane
        tmux.keys("C-c")
        pane = tmux.wait_for(lambda p: "tap-exited" in p, timeout=30)
    assert "stopped before" in pane
    assert f"qixtuiindex{out}" in "".join(pane.split())  # the pane may wrap anywhere
    db = store.open_session(out)
    meta = store.get_meta(db)
    # The recorder and its writer were killed together, mid-finish: nothing of theirs runs.
    assert running_in_group(int(meta["recorder_pid"])) == []
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    recorded = db.execute("SELECT count(*) FROM events").fetchone()[0]
    assert recorded > 0
    assert not store.read_indexes_ready(db)
    db.close()
    # The indexes can be built later; filters then read them.
    done = subprocess.run(qixtui("index", str(out)), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "indexed" in done.stderr
    db = store.open_session(out)
    assert store.read_indexes_ready(db)
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == recorded


def test_sigterm_to_tap_stops_its_recorder_and_finishes_the_file(
    tmux: Tmux, tmp_path: Path
) -> None:
    """kill, timeout or a service manager: tap quits as with `q`, nothing is left running."""
    out = tmp_path / "term.qix"
    with EmbeddedServer(jetstream=False) as server:
        start_tap(tmux, server, out)
        publish_many(server.url, 500)
        [tap_pid] = running_below(tmux.shell_pid(), " tap ")
        os.kill(tap_pid, signal.SIGTERM)
        pane = tmux.wait_for(lambda p: "tap-exited" in p, timeout=60)
    assert "tap-exited 143" in pane
    db = store.open_session(out)
    meta = store.get_meta(db)
    assert "stopped_ns" in meta  # the recorder was asked to stop and closed the file
    assert running_in_group(int(meta["recorder_pid"])) == []
    bulk = db.execute("SELECT count(*) FROM events WHERE subject GLOB 'bulk.*'")
    assert bulk.fetchone()[0] == 500
    db.close()


def test_a_recorder_killed_under_tap_is_said_and_tap_exits_1(tmux: Tmux, tmp_path: Path) -> None:
    out = tmp_path / "killed.qix"
    with EmbeddedServer(jetstream=False) as server:
        start_tap(tmux, server, out)
        publish_many(server.url, 500)
        [recorder_pid] = running_below(tmux.shell_pid(), " record ")
        os.kill(recorder_pid, signal.SIGKILL)
        pane = tmux.wait_for(lambda p: "NOT RECORDING: the recorder" in p, timeout=30)
        assert f"(pid {recorder_pid}) exited" in pane
        tmux.keys("q")
        pane = tmux.wait_for(lambda p: "tap-exited" in p, timeout=60)
    assert "tap-exited 1" in pane
    assert "recorder exited (-9)" in pane


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def running_below(pid: int, marker: str) -> list[int]:
    """The processes below `pid` whose command line holds `marker`."""
    return [p for p in descendants(pid) if marker in command_line(p)]


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_demo_shows_flows_and_leaves_nothing_running(tmux: Tmux, tmp_path: Path) -> None:
    out = tmp_path / "demo.qix"
    tmux.start(qixtui("demo", "-o", str(out), "--seed", "7"), tmp_path)
    pane = tmux.wait_for(lambda p: "✔ completed" in p and "● recording" in p, timeout=60)
    pane_pid = tmux.shell_pid()
    started = {p: command_line(p) for p in descendants(pane_pid)}
    assert any("nats-server" in c for c in started.values()), started
    assert any("qixtui_demo" in c for c in started.values()), started
    assert any(" record " in c for c in started.values()), started
    # A participant killed by its pid: the screen names it, and the demo restarts it.
    (shop_pid,) = [p for p, c in started.items() if "-m qixtui_demo --server" in c]
    killed_at = time.strftime("%H:%M", time.gmtime())  # the pane runs with TZ=UTC
    os.kill(shop_pid, signal.SIGKILL)
    gone = f"(pid {shop_pid}) killed by SIGKILL; back as pid"
    pane = tmux.wait_for(lambda p: gone in p and "✔ 1 incident · " in p)
    line = next(row for row in pane.splitlines() if "✔ 1 incident · " in row)
    minutes = {killed_at, time.strftime("%H:%M", time.gmtime())}  # the kill, and now
    assert any(f"✔ 1 incident · {minute}:" in line for minute in minutes), line
    assert gone in line
    started |= {p: command_line(p) for p in descendants(pane_pid)}
    assert len([c for c in started.values() if "-m qixtui_demo --server" in c]) == 2
    tmux.keys("w")  # the waterfall of the selected event's flow
    pane = tmux.wait_for(lambda p: "causes" in p)
    assert "flow #" in pane
    tmux.keys("Escape")
    tmux.wait_for(lambda p: "causes" not in p)
    tmux.keys("q")
    deadline = time.monotonic() + 40
    while tmux.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not tmux.alive()
    still = [c for p, c in started.items() if Path(f"/proc/{p}").exists() and command_line(p)]
    assert still == []
    db = store.open_session(out)
    statuses = {r[0] for r in db.execute("SELECT status FROM flows")}
    assert "completed" in statuses
    # One self-contained file: the screen closed its reader before the recorder finished.
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert not out.with_name(out.name + "-wal").exists()


@contextlib.contextmanager
def shop_serving(url: str) -> Iterator[None]:
    """The demo shop's participants in their own thread and loop, while the block runs."""
    ready, stop = threading.Event(), threading.Event()

    async def main() -> None:
        fast = {name: Latency(1.0, 0.3) for name in DEFAULT_LATENCY}
        shop = Shop(url, Knobs(seed=9), latency=fast, heartbeat_s=0)
        await shop.start()
        ready.set()
        await asyncio.to_thread(stop.wait)
        await shop.close()

    participants = threading.Thread(target=asyncio.run, args=(main(),))
    participants.start()
    try:
        assert ready.wait(30)
        yield
    finally:
        stop.set()
        participants.join()


def start_stepper(tmux: Tmux, url: str, out: Path) -> str:
    """`qixtui orchestrate` on the shop saga in the pane, then "EXIT=N"; the first gate."""
    command = qixtui("orchestrate", str(SHOP_SAGA), "-s", url, "-o", str(out))
    tmux.start([*command, "; echo", "EXIT=$?; sleep 30"], out.parent)
    return tmux.wait_for(lambda p: "waiting for you" in p and "▶ next" in p, timeout=30)


def test_orchestrate_steps_the_shop_saga(
    tmux: Tmux, tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    out = tmp_path / "orch.qix"
    with shop_serving(nats_server.url):
        pane = start_stepper(tmux, nats_server.url, out)
        assert "next request: authorize_payment" in pane
        assert "subject  shop.cmd.payment.authorize" in pane
        tmux.keys("n")
        pane = tmux.wait_for(lambda p: "next request: reserve_stock" in p)
        assert "✔ ok" in pane
        assert "payment_id" in pane  # the last reply
        tmux.keys("n")
        pane = tmux.wait_for(lambda p: "next request: create_shipment" in p and "_INBOX." in p)
        assert "reservation_id" in pane
        tmux.keys("q")
        pane = tmux.wait_for(lambda p: "EXIT=0" in p)
        assert "shop: stopped: stopped before the next step" in pane
        assert "continue with: qixtui orchestrate --resume" in pane
        assert f"-s{nats_server.url}" in "".join(pane.split())  # on the same bus
    db = store.open_session(out)
    (run,) = store.saga_runs(db)
    assert [r.step for r in store.saga_journal(db, run.run_id)] == [
        "authorize_payment",
        "reserve_stock",
    ]


def test_sigterm_to_the_stepper_quits_and_stops_its_recorder(
    tmux: Tmux, tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    out = tmp_path / "orch.qix"
    with shop_serving(nats_server.url):
        start_stepper(tmux, nats_server.url, out)
        [orchestrate] = running_below(tmux.shell_pid(), " orchestrate ")
        os.kill(orchestrate, signal.SIGTERM)
        pane = tmux.wait_for(lambda p: "EXIT=" in p)
    assert "EXIT=143" in pane
    assert "continue with: qixtui orchestrate --resume" in pane
    db = store.open_session(out)
    meta = store.get_meta(db)
    assert "stopped_ns" in meta  # the recorder was stopped and closed the file
    assert not store.pid_alive(int(meta["recorder_pid"]))
    db.close()


def test_closing_the_terminal_stops_everything_the_demo_started(tmux: Tmux, tmp_path: Path) -> None:
    """The window closes (SIGHUP, no `q`): the demo still stops what it started, by pid."""
    out = tmp_path / "hangup.qix"
    tmux.start(qixtui("demo", "-o", str(out), "--seed", "7"), tmp_path)
    tmux.wait_for(lambda p: "✔ completed" in p and "● recording" in p, timeout=60)
    pane_pid = tmux.shell_pid()
    started = {p: command_line(p) for p in descendants(pane_pid)}
    assert any("nats-server" in c for c in started.values()), started
    assert any(" record " in c for c in started.values()), started
    tmux.close()
    deadline = time.monotonic() + 40
    running = started
    while running and time.monotonic() < deadline:
        time.sleep(0.2)
        running = {p: c for p, c in started.items() if command_line(p)}
    assert running == {}
    assert not out.with_name(out.name + "-wal").exists()  # the file closed, self-contained
    db = store.open_session(out)
    assert db.execute("SELECT count(*) FROM flows WHERE status = 'completed'").fetchone()[0] > 0
