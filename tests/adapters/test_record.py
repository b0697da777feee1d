"""The recorder against a real nats-server: byte-exact capture, and loss that is never silent."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from helpers import eventually, qixtui_command, run_qixtui, run_qixtui_in_terminal, terminal

from qixtui.core import filters, store
from qixtui.core.model import Event
from qixtui.core.replay import looks_like_source
from qixtui_nats.recorder import Recorder
from qixtui_nats.server import EmbeddedServer

_started: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_recorder_outlives_its_test() -> Iterator[None]:
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start_recorder(
    url: str, out: Path, *extra: str, own_group: bool = False
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        qixtui_command("record", "-s", url, "-o", str(out), "--json", *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=own_group,
    )
    _started.append(proc)
    # not server_id: the recorder writes it on connecting, before it subscribes, so a burst
    # sent in between could lose its first messages without the recorder being at fault
    wait_for_meta(out, "subscribed_ns")
    return proc


def wait_for_meta(out: Path, key: str, timeout: float = 40) -> None:
    """Until the recorder has written `key` to the file's metadata."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists():
            try:
                db = store.open_session(out)
                if key in store.get_meta(db):
                    db.close()
                    time.sleep(0.2)  # the SUB reaches the server before the flush returns
                    return
                db.close()
            except (store.SessionError, sqlite3.Error):
                pass
        time.sleep(0.05)
    raise AssertionError(f"recorder did not start writing {out}")


def stop_recorder(proc: subprocess.Popen[str]) -> dict[str, object]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return json.loads(out)


def count_events(path: Path) -> int:
    db = store.open_session(path)
    try:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        db.close()


def wait_for_events(path: Path, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_events(path) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"only {count_events(path)} of {n} events recorded")


def varied_messages() -> list[tuple[str, bytes, dict[str, str] | None]]:
    msgs: list[tuple[str, bytes, dict[str, str] | None]] = []
    for i in range(10_000):
        kind = i % 5
        if kind == 0:
            msgs.append((f"shop.order.{i}", b'{"order_id": "o-%d"}' % i, {"X-Seq": str(i)}))
        elif kind == 1:
            msgs.append((f"bin.{i}", bytes(range(256)) + i.to_bytes(4, "big"), None))
        elif kind == 2:
            msgs.append((f"bad.{i}", b"\xff\xfe\xfd not utf-8 \xc3(" + str(i).encode(), None))
        elif kind == 3:
            msgs.append((f"empty.{i}", b"", {"X-Empty": "yes", "X-Seq": str(i)}))
        else:
            msgs.append((f"text.{i}", f"héllo {i}".encode(), None))
    # 1 MB, just under the default max_payload once its header is counted
    msgs.insert(5000, ("big.one", os.urandom(1_000_000), {"X-Big": "1"}))
    return msgs


async def publish_all(url: str, msgs: list[tuple[str, bytes, dict[str, str] | None]]) -> None:
    nc = await nats.connect(url)
    for i, (subject, payload, headers) in enumerate(msgs):
        await nc.publish(subject, payload, headers=headers)
        if i % 500 == 0:
            await nc.flush()
    await nc.flush()
    await nc.close()


def test_records_every_message_byte_exact_in_order(nats_server: EmbeddedServer, tmp_path: Path):
    out = tmp_path / "exact.qix"
    msgs = varied_messages()
    proc = start_recorder(
        nats_server.url,
        out,
        "-S",
        "shop.>",
        "-S",
        "bin.>",
        "-S",
        "bad.>",
        "-S",
        "empty.>",
        "-S",
        "text.>",
        "-S",
        "big.>",
    )
    asyncio.run(publish_all(nats_server.url, msgs))
    wait_for_events(out, len(msgs))
    summary = stop_recorder(proc)
    assert summary["events"] == len(msgs)
    assert summary["dropped"] == 0
    assert summary["gaps"] == 0

    result = run_qixtui("events", str(out), "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == len(msgs)
    for got, (subject, payload, headers) in zip(lines, msgs, strict=True):
        assert got["subject"] == subject
        raw = (
            base64.b64decode(got["payload"])
            if got.get("payload_encoding") == "base64"
            else got["payload"].encode()
        )
        assert raw == payload
        assert got["size"] == len(payload)
        assert got["headers"] == (headers or {})
        assert got["flow_id"] is None
    assert [g["id"] for g in lines] == sorted(g["id"] for g in lines)

    db = store.open_session(out)
    filters.install_functions(db)
    assert store.read_indexes_ready(db)  # the writer indexed the file when it closed it
    where = filters.plan(db, filters.parse("shop.>"))
    found = db.execute(f"SELECT count(*) FROM events WHERE {where.sql}", where.params)
    assert where.rows == found.fetchone()[0] == sum(1 for m in msgs if m[0].startswith("shop."))
    db.close()


def test_server_killed_and_restarted_resumes_with_a_gap(own_server: EmbeddedServer, tmp_path):
    out = tmp_path / "restart.qix"
    proc = start_recorder(own_server.url, out)
    published: list[tuple[int, int]] = []  # (seq, publish time ns)

    async def publisher(stop_after: float) -> None:
        nc = await nats.connect(own_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        seq = 0
        end = time.monotonic() + stop_after
        while time.monotonic() < end:
            if nc.is_connected:
                published.append((seq, time.time_ns()))
                await nc.publish("tick", str(seq).encode())
                seq += 1
            await asyncio.sleep(0.002)
        await nc.flush()
        await nc.close()

    async def scenario() -> None:
        pub = asyncio.create_task(publisher(5.0))
        await asyncio.sleep(1.5)
        own_server.kill()
        await asyncio.sleep(1.0)
        own_server.start()
        await pub

    asyncio.run(scenario())
    time.sleep(1.0)
    summary = stop_recorder(proc)
    assert summary["gaps"] >= 1

    db = store.open_session(out)
    # The restarted server has a new id: both are the recording's source, for replay's check.
    meta = store.get_meta(db)
    first, restarted = meta["server_ids"].split(",")
    assert first == meta["server_id"] != restarted
    assert looks_like_source(meta, restarted, "")
    got = {int(bytes(r[0])) for r in db.execute("SELECT payload FROM events WHERE subject='tick'")}
    gaps = store.gaps(db)
    assert gaps
    assert all(g.end_ns is not None for g in gaps)
    assert max(got) > published[len(published) // 2][0], "recording did not resume"
    for seq, ts in published:
        if seq not in got:
            assert any(g.start_ns <= ts <= (g.end_ns or 0) for g in gaps), (
                f"message {seq} published at {ts} is neither recorded nor inside a gap"
            )


async def burst(url: str, subject: str, head: bytes, count: int) -> None:
    """`count` messages as fast as one client sends them, each `head` and its number."""
    nc = await nats.connect(url)
    for i in range(count):
        await nc.publish(subject, head + str(i).encode())
    await nc.flush()
    await nc.close()


def test_stopping_waits_for_a_backlog_read_slowly(nats_server: EmbeddedServer, tmp_path: Path):
    """A recorder behind a burst, on a loaded machine, reads its backlog for longer than a
    round-trip normally takes: asked to stop, it keeps every message sent before."""
    out = tmp_path / "behind.qix"
    proc = start_recorder(nats_server.url, out, "-S", "behind.>")
    published = 60_000
    proc.send_signal(signal.SIGSTOP)  # the server holds the burst for it meanwhile
    try:
        asyncio.run(burst(nats_server.url, "behind.x", b"z" * 100, published))
        proc.send_signal(signal.SIGINT)
        # Let it run a twentieth of the time: the backlog takes seconds to read, but some
        # arrives in every slice.
        while proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.005)
            if proc.poll() is None:
                proc.send_signal(signal.SIGSTOP)
                time.sleep(0.095)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
    out_text, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out_text)["events"] == published


def test_stopping_gives_up_on_a_server_that_does_not_answer(
    nats_server: EmbeddedServer, tmp_path: Path
):
    out = tmp_path / "hung.qix"
    proc = start_recorder(nats_server.url, out, "-S", "hung.>")
    assert nats_server.proc is not None
    nats_server.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out_text, err = proc.communicate(timeout=60)
        took = time.monotonic() - started
    finally:
        nats_server.proc.send_signal(signal.SIGCONT)
    assert proc.returncode == 0, err
    assert json.loads(out_text)["events"] == 0
    assert took < 30, took  # nothing arrives: it does not wait out DRAIN_MAX_S


def test_recorder_killed_leaves_a_sound_file(nats_server: EmbeddedServer, tmp_path: Path):
    out = tmp_path / "killed.qix"
    proc = start_recorder(nats_server.url, out, "-S", "kill.>")

    asyncio.run(burst(nats_server.url, "kill.me", b"x" * 100, 20_000))
    wait_for_events(out, 1)
    proc.kill()
    proc.wait()
    time.sleep(0.5)  # the writer sees the pipe close and commits what it received

    db = sqlite3.connect(out)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = [bytes(r[0]) for r in db.execute("SELECT payload FROM events ORDER BY id")]
    db.close()
    assert rows, "nothing committed"
    # Whatever was committed is a prefix of what was sent, with nothing torn or reordered.
    assert rows == [b"x" * 100 + str(i).encode() for i in range(len(rows))]
    info = run_qixtui("info", str(out), "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["events"] == len(rows)
    assert json.loads(info.stdout)["state"] == "incomplete"  # killed before closing it
    text = run_qixtui("info", str(out)).stdout
    assert "state:     incomplete: the recorder ended without closing it (killed?)" in text


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda sig: sig.name
)
def test_a_signal_to_the_whole_process_group_keeps_every_event(
    nats_server: EmbeddedServer, tmp_path: Path, sig: signal.Signals
):
    """timeout, systemd, `kill -- -PGID`, a closed terminal: the signal reaches the recorder
    and its two stages at once. The stages leave stopping to the recorder, which flushes."""
    out = tmp_path / "group.qix"
    proc = start_recorder(nats_server.url, out, "-S", "group.>", own_group=True)

    asyncio.run(burst(nats_server.url, "group.x", b"y" * 100, 30_000))
    os.killpg(proc.pid, sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert json.loads(stdout)["events"] == 30_000, (stdout, stderr)
    assert count_events(out) == 30_000


def test_append_to_a_file_another_recorder_is_writing_is_refused(
    nats_server: EmbeddedServer, tmp_path: Path
):
    out = tmp_path / "live.qix"
    live = start_recorder(nats_server.url, out, "-S", "live.>")
    second = run_qixtui("record", "-s", nats_server.url, "-o", str(out), "--append")
    assert second.returncode == 1
    [line] = second.stderr.splitlines()
    assert f"still being recorded (process {live.pid})" in line
    stop_recorder(live)
    # Once it has stopped, appending is what --append is for.
    again = run_qixtui(
        "record", "-s", nats_server.url, "-o", str(out), "--append", "--duration", "0.2"
    )
    assert again.returncode == 0, again.stderr


def test_appending_from_another_server_keeps_the_first_servers(
    nats_server: EmbeddedServer, tmp_path: Path
):
    out = tmp_path / "two.qix"
    first = run_qixtui(
        "record", "-s", nats_server.url, "-o", str(out), "-S", "a.>", "--duration", "0.2"
    )
    assert first.returncode == 0, first.stderr
    with EmbeddedServer(jetstream=False) as other:
        again = run_qixtui(
            "record", "-s", other.url, "-o", str(out), "-S", "b.>", "--append", "--duration", "0.2"
        )
        assert again.returncode == 0, again.stderr
        db = store.open_session(out)
        meta = store.get_meta(db)
        db.close()
        assert meta["server_names"].split(",") == [nats_server.name, other.name]
        assert meta["subjects"] == "a.>,b.>"
        assert meta["server"] == f"{nats_server.url},{other.url}"
        # replay still asks before publishing the original subjects to either of them
        assert looks_like_source(meta, "", nats_server.name)
        assert looks_like_source(meta, "", other.name)
        # the tester's case: publishing the original subjects to the first server is asked
        # for, with that server's own name
        for server in (nats_server, other):
            replay = run_qixtui(
                "replay", str(out), "--publish", "-s", server.url, "--original-subjects", "--yes"
            )
            assert replay.returncode == 1
            assert f"needs --confirm {server.name}" in replay.stderr
        info = run_qixtui("info", str(out))
        [line] = [x for x in info.stdout.splitlines() if x.startswith("server:")]
        assert line.split() == [
            "server:", f"{nats_server.url},{other.url}", f"{nats_server.name},", other.name
        ]  # fmt: skip


def test_the_time_between_appended_parts_is_a_gap(nats_server: EmbeddedServer, tmp_path: Path):
    # Nothing recorded it: quiet traffic and a stopped recorder must not look alike.
    out = tmp_path / "parts.qix"
    record = ("record", "-s", nats_server.url, "-o", str(out), "--duration", "0.2")
    assert run_qixtui(*record).returncode == 0
    meta = store.get_meta(store.open_session(out))
    time.sleep(0.5)
    again = run_qixtui(*record, "--append", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["gaps"] == 1  # as the file says
    db = store.open_session(out)
    [gap] = store.gaps(db)
    resumed = store.get_meta(db)
    db.close()
    assert gap.reason == "no recorder was running (before an --append)"
    assert gap.start_ns == int(meta["stopped_ns"])
    assert gap.end_ns == int(resumed["subscribed_ns"])
    assert gap.end_ns - gap.start_ns >= 500_000_000
    info = run_qixtui("info", str(out))
    assert "no recorder was running (before an --append)" in info.stdout, info.stdout


def test_a_gap_a_killed_recorder_left_open_ends_where_the_appended_part_starts(tmp_path: Path):
    # Killed while its bus was down: its gap stayed open, and the screen said NOT RECORDING
    # all through the next part.
    db = store.create_session(tmp_path / "killed.qix", {"stopped_ns": "5", "subscribed_ns": "7"})
    store.insert_events(db, [Event(1_000, "a", None, None, b"", 1)])
    gap = store.open_gap(db, 2_000, "disconnected")
    before = time.time_ns()
    until = Recorder._recorded_until(db, store.get_meta(db))
    [closed] = store.gaps(db)
    assert (closed.id, closed.start_ns, closed.end_ns) == (gap, 2_000, until)
    assert until >= before
    store.close_gap(db, gap, 3_000)  # a recorder that was recording when killed
    assert Recorder._recorded_until(db, {"stopped_ns": "5", "subscribed_ns": "7"}) == 3_000
    db.close()


@pytest.mark.parametrize("subject", ["a..b", "a b", ">.a", ""])
def test_a_bad_subject_is_one_line_and_leaves_no_file(tmp_path: Path, subject: str):
    out = tmp_path / "bad.qix"
    result = run_qixtui("record", "-s", "nats://127.0.0.1:1", "-o", str(out), "-S", subject)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"qixtui: subject {subject!r}")
    assert not out.exists()  # a second try with the same -o is not refused


def test_tap_that_cannot_connect_leaves_nothing_behind(tmp_path: Path):
    out = tmp_path / "t.qix"
    result = run_qixtui_in_terminal("tap", "-s", "nats://127.0.0.1:1", "-o", str(out))
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("qixtui: cannot connect to nats://127.0.0.1:1")
    assert list(tmp_path.iterdir()) == []  # no session, and no log of a recorder that never ran


@pytest.fixture
def nameless_server() -> Iterator[str]:
    """A bus that answers PINGs but gives no server id: tap waits for one before its screen
    comes up, so it stays in its start-up for as long as a test needs."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    info = {"server_id": "", "version": "2.10.0", "proto": 1, "headers": True}
    info |= {"max_payload": 1048576, "host": "127.0.0.1", "port": port}

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=answer, args=(conn,), daemon=True).start()

    def answer(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.sendall(b"INFO " + json.dumps(info).encode() + b"\r\n")
            while data := conn.recv(65536):
                conn.sendall(b"PONG\r\n" * data.count(b"PING\r\n"))

    threading.Thread(target=serve, daemon=True).start()
    yield f"nats://127.0.0.1:{port}"
    listener.close()


@contextlib.contextmanager
def tap_and_its_recorder(
    server: str, out: Path, *flags: str
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`tap` before its screen comes up (the server gives no id, which tap waits for), and
    the pid of the recorder it started; tap is killed afterwards if the test left it
    running."""
    with terminal() as tty:
        tap = subprocess.Popen(
            qixtui_command("tap", "-s", server, "-o", str(out), *flags),
            stdin=tty,
            stdout=tty,
            stderr=tty,
        )
        children = Path(f"/proc/{tap.pid}/task/{tap.pid}/children")
        try:
            asyncio.run(eventually(lambda: children.read_text().strip() != "", 20, "recorder"))
            yield tap, int(children.read_text().split()[0])
        finally:
            if tap.poll() is None:
                tap.kill()
                tap.wait()


def test_sigterm_while_tap_starts_stops_its_recorder(nameless_server: str, tmp_path: Path):
    """Before its screen is up, SIGTERM ended tap on the spot and left the recorder (in a
    session of its own) recording."""
    out = tmp_path / "t.qix"
    rules = ["--key", "/order_id", "--subject-key", "audit.*:2=order_id", "--stall", "5s"]
    with tap_and_its_recorder(nameless_server, out, *rules) as (tap, recorder_pid):
        # tap's rule flags reach the recorder it starts (until its exec, the child shows
        # tap's own command line, which ends with the same flags)
        cmdline = Path(f"/proc/{recorder_pid}/cmdline")
        asyncio.run(eventually(lambda: b"\0record\0" in cmdline.read_bytes(), 20, "exec"))
        argv = cmdline.read_bytes().split(b"\0")
        assert [a.decode() for a in argv[-len(rules) - 1 : -1]] == rules
        asyncio.run(eventually(out.exists, 20, "the session file"))
        tap.send_signal(signal.SIGTERM)
        tap.wait(timeout=30)
    assert tap.returncode == 143
    assert not store.pid_alive(recorder_pid)
    db = store.open_session(out)
    assert "stopped_ns" in store.get_meta(db)  # asked to stop, the recorder closed the file
    db.close()


def test_tap_killed_outright_takes_its_recorder_with_it(nameless_server: str, tmp_path: Path):
    """SIGKILL leaves no chance to stop the recorder: it notices its parent is gone, and
    stops and closes the file itself instead of recording on for good."""
    out = tmp_path / "k.qix"
    with tap_and_its_recorder(nameless_server, out) as (tap, pid):
        asyncio.run(eventually(out.exists, 20, "the session file"))
        tap.kill()
        tap.wait()
        asyncio.run(eventually(lambda: not store.pid_alive(pid), 20, "recorder gone"))
    db = store.open_session(out)
    assert "stopped_ns" in store.get_meta(db)
    db.close()


def test_tap_checks_its_rules_before_it_starts_anything(tmp_path: Path):
    out = tmp_path / "t.qix"
    result = run_qixtui("tap", "-s", "nats://127.0.0.1:1", "-o", str(out), "--key", "order_id")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "order_id" in line
    assert list(tmp_path.iterdir()) == []


def test_tap_without_a_terminal_says_so_and_starts_nothing(tmp_path: Path):
    out = tmp_path / "t.qix"
    # output to a pipe (`| head`) used to draw into it for good, at full CPU
    result = run_qixtui("tap", "-s", "nats://127.0.0.1:1", "-o", str(out))
    assert result.returncode == 1
    assert result.stderr == (
        "qixtui: qixtui tap draws a screen and needs a terminal; qixtui record records "
        "without one\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_slow_consumer_drops_are_counted(nats_server: EmbeddedServer, tmp_path: Path):
    out = tmp_path / "slow.qix"
    proc = start_recorder(nats_server.url, out, "-S", "slow.>", "--pending-limit", "50")
    published = 20_000

    async def burst() -> None:
        nc = await nats.connect(nats_server.url)
        for i in range(published):
            await nc.publish(f"slow.{i % 4}", b"y" * 64)
        await nc.flush()
        await nc.close()

    asyncio.run(burst())
    time.sleep(1.5)
    summary = stop_recorder(proc)
    assert summary["dropped"] > 0, "the burst should overflow a 50-message pending limit"
    assert summary["events"] + summary["dropped"] == published
    db = store.open_session(out)
    by_subject = store.summary(db, out)["dropped_by_subject"]
    assert sum(by_subject.values()) == summary["dropped"]
    assert set(by_subject) <= {f"slow.{i}" for i in range(4)}


def raw_publish(port: int, subject: bytes, payload: bytes) -> None:
    """Publish with a raw socket: nats-py will not send a subject that is not UTF-8."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.recv(4096)
        sock.sendall(b'CONNECT {"verbose":false}\r\n')
        sock.sendall(b"PUB " + subject + b" %d\r\n" % len(payload) + payload + b"\r\nPING\r\n")
        sock.recv(4096)


def test_non_utf8_subject_is_recorded_and_recording_goes_on(nats_server: EmbeddedServer, tmp_path):
    """nats-py's own reader dies on such a subject; the recorder reads subjects as bytes."""
    out = tmp_path / "badsubject.qix"
    proc = start_recorder(nats_server.url, out, "-S", "poison.>")

    async def publish(subject: str, n: int) -> None:
        nc = await nats.connect(nats_server.url)
        for i in range(n):
            await nc.publish(subject, str(i).encode())
        await nc.flush()
        await nc.close()

    asyncio.run(publish("poison.before", 10))
    wait_for_events(out, 10)
    raw_publish(nats_server.port, b"poison.\xff\xfe", b"boom")
    asyncio.run(publish("poison.after", 5))
    wait_for_events(out, 16, timeout=5)
    summary = stop_recorder(proc)
    assert summary["gaps"] == 0
    db = store.open_session(out)
    subjects = [r[0] for r in db.execute("SELECT subject FROM events ORDER BY id")]
    assert subjects == ["poison.before"] * 10 + ["poison.\\xff\\xfe"] + ["poison.after"] * 5


def received(recorder) -> int:
    return recorder.stats.events + len(recorder._pending)


async def test_a_dead_read_loop_is_noticed_and_left_as_a_gap(nats_server, tmp_path: Path):
    """Should the client's reader die anyway, the watchdog reconnects and writes a gap."""
    from qixtui_nats.connect import ConnectOptions
    from qixtui_nats.recorder import Recorder, RecordOptions

    out = tmp_path / "deadreader.qix"
    recorder = Recorder(
        ConnectOptions(servers=[nats_server.url]),
        RecordOptions(output=out, subjects=["reader.>"]),
    )
    run = asyncio.create_task(recorder.run())
    await eventually(lambda: recorder.nc is not None and recorder.nc.is_connected)
    pub = await nats.connect(nats_server.url)
    await pub.publish("reader.before", b"1")
    await pub.flush()
    # Kill the reader only once it has read the first message: what was still unread in the
    # socket would be lost with it (legitimately, inside the gap), and the count below is exact.
    await eventually(lambda: received(recorder) == 1, 15, "the first message read")
    recorder.nc._reading_task.cancel()  # the reader dies while the connection looks up
    await eventually(lambda: recorder.stats.gaps == 1, 15, "a gap for the dead reader")
    await eventually(lambda: recorder.stats.connected, 15, "the reconnect")
    await pub.publish("reader.after", b"2")
    await pub.flush()
    await eventually(lambda: received(recorder) == 2, 15, "the message after the reconnect")
    await pub.close()
    recorder._stop.set()
    stats = await run
    assert stats.events == 2
    db = store.open_session(out)
    gaps = store.gaps(db)
    assert len(gaps) == 1
    assert "read loop" in gaps[0].reason
    assert gaps[0].end_ns is not None


async def test_the_heartbeat_loop_ends_on_stop_even_if_its_cancel_is_lost(nats_server, tmp_path):
    """asyncio.wait_for in Python 3.11 swallows a cancellation that arrives with the PONG, so
    cancelling is not enough: a busy stop waited 2 s for the heartbeat loop (the last events
    with it) and printed "exception was never retrieved". The loop also watches the stop flag."""
    from qixtui_nats.connect import ConnectOptions
    from qixtui_nats.recorder import Recorder, RecordOptions

    recorder = Recorder(
        ConnectOptions(servers=[nats_server.url]),
        RecordOptions(output=tmp_path / "watch.qix", subjects=["watch.>"]),
    )
    run = asyncio.create_task(recorder.run())
    await eventually(lambda: recorder.nc is not None and recorder.nc.is_connected)
    uncancelled = asyncio.create_task(recorder._watch_loop())  # as if its cancel were lost
    await asyncio.sleep(0.3)
    assert not uncancelled.done()  # heartbeats go on while recording
    recorder._stop.set()
    await asyncio.wait_for(uncancelled, 2)
    await run


def test_count_and_duration_stop_the_recording(nats_server: EmbeddedServer, tmp_path: Path):
    out = tmp_path / "count.qix"
    proc = subprocess.Popen(
        qixtui_command(
            "record",
            "-s",
            nats_server.url,
            "-o",
            str(out),
            "--json",
            "-S",
            "count.>",
            "--count",
            "25",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_meta(out, "subscribed_ns")

    async def publish() -> None:
        nc = await nats.connect(nats_server.url)
        for i in range(100):
            await nc.publish("count.x", str(i).encode())
        await nc.flush()
        await nc.close()

    asyncio.run(publish())
    stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert json.loads(stdout)["events"] == 25
    assert count_events(out) == 25

    timed = run_qixtui(
        "record",
        "-s",
        nats_server.url,
        "-o",
        str(tmp_path / "d.qix"),
        "--duration",
        "0.5",
        "--json",
    )
    assert timed.returncode == 0, timed.stderr
    summary = json.loads(timed.stdout)
    assert set(summary) == {"events", "dropped", "gaps", "duration_s", "rate", "file"}
    assert 0.5 <= summary["duration_s"] < 10
    info = json.loads(run_qixtui("info", str(tmp_path / "d.qix"), "--json").stdout)
    assert info["state"] == "finished"
    assert "_INBOX" not in timed.stderr  # everything (>) is recorded: replies too

    narrow = run_qixtui(
        "record", "-s", nats_server.url, "-o", str(tmp_path / "n.qix"), "-S", "pay.>",
        "--duration", "0.2",
    )  # fmt: skip
    assert narrow.returncode == 0, narrow.stderr
    assert narrow.stderr.startswith(
        "qixtui: note: replies to requests arrive on _INBOX.>, which is not recorded; "
        "add -S '_INBOX.>'\n"
    )


def test_stop_request_with_the_server_gone_still_ends_cleanly(own_server, tmp_path: Path):
    out = tmp_path / "orphan.qix"
    proc = start_recorder(own_server.url, out, "-S", "orphan.>")
    own_server.kill()
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert json.loads(stdout)["gaps"] == 1
    db = store.open_session(out)
    assert [g.end_ns is not None for g in store.gaps(db)] == [True]


async def test_a_late_pong_after_a_flush_timeout_leaves_the_reader_alive(nats_server):
    """nats-py's own client kills its reader when a timed-out flush's PONG arrives late."""
    from qixtui_nats.recorder import RecordingClient

    got: list[bytes] = []
    nc = RecordingClient(lambda frames: got.extend(frame[4] for frame in frames))
    await nc.connect(nats_server.url)
    sub = await nc.subscribe("late.pong")
    nc.recorded_sids.add(sub._id)
    abandoned: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    await nc._send_ping(abandoned)
    abandoned.cancel()  # what flush(timeout=...) does when the PONG is slow
    await asyncio.sleep(0.3)
    assert not nc._reading_task.done()
    other = await nats.connect(nats_server.url)
    await other.publish("late.pong", b"still reading")
    await other.flush()
    await other.close()
    await eventually(lambda: got == [b"still reading"], 10, "the message after the late PONG")
    await nc.close()


def recorder_stages(pid: int) -> list[int]:
    """The recorder's prepare and writer processes, in that order (started in that order;
    multiprocessing's resource tracker is not one of them)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return sorted(
        int(c)
        for c in children
        if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()
    )


def test_a_dead_writer_stage_is_named_and_nothing_is_left_running(
    nats_server: EmbeddedServer, tmp_path: Path
):
    out = tmp_path / "stage.qix"
    proc = start_recorder(nats_server.url, out, "-S", "stage.>")

    async def publish(n: int) -> None:
        nc = await nats.connect(nats_server.url)
        for i in range(n):
            await nc.publish("stage.x", str(i).encode())
        await nc.flush()
        await nc.close()

    asyncio.run(publish(100))
    wait_for_events(out, 100)
    prepare, writer = recorder_stages(proc.pid)
    os.kill(writer, signal.SIGKILL)
    asyncio.run(publish(100))  # the prepare stage finds its pipe broken
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode != 0
    note, *lines = stderr.strip().splitlines()  # -S stage.> leaves replies out: said first
    assert note.startswith("qixtui: note: replies to requests")
    assert len(lines) == 1, stderr  # one line, no traceback
    assert "qixtui-writer process exited with -9" in lines[0]
    assert not store.pid_alive(prepare)  # waited for, not left behind
    db = sqlite3.connect(out)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] >= 100
    db.close()
