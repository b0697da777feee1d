"""Replaying a recording onto a real nats-server: safe by default, faithful when asked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nats
from helpers import collect, qixtui_command, recorder_stand_in

from qixtui.core import store
from qixtui.core.model import Event
from qixtui.core.replay import Plan
from qixtui_nats.replayer import PAGE, rows
from qixtui_nats.server import EmbeddedServer, free_port


def replay_command(file: Path, *args: str) -> list[str]:
    """The one place that names the verb (to become `replay FILE --publish`)."""
    return qixtui_command("replay", str(file), "--publish", *args)


def replay(file: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        replay_command(file, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def replay_json(file: Path, *args: str) -> dict[str, Any]:
    proc = replay(file, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --- recording helpers ---------------------------------------------------------------------


def wait_until_recording(out: Path, timeout: float = 40) -> None:
    """The recorder writes the server id once it is connected and subscribed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            db = store.open_session(out)
            try:
                if "server_id" in store.get_meta(db):
                    time.sleep(0.2)  # the SUB reaches the server before the flush returns
                    return
            finally:
                db.close()
        except (store.SessionError, sqlite3.Error):
            pass
        time.sleep(0.05)
    raise AssertionError(f"recorder did not start writing {out}")


@contextmanager
def recording(url: str, out: Path, *subjects: str) -> Iterator[subprocess.Popen[str]]:
    args = [a for s in subjects for a in ("-S", s)]
    proc = subprocess.Popen(
        qixtui_command("record", "-s", url, "-o", str(out), "--json", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_recording(out)
        yield proc
    finally:
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err


def events(path: Path) -> list[Any]:
    db = store.open_session(path)
    try:
        return list(store.iter_events(db, store.EventQuery()))
    finally:
        db.close()


def seq_of(event: Any) -> int:
    return int(event.header("Qixtui-Replay-Seq"))


class RawPublisher:
    """HPUB frames on a plain socket: headers with repeated names, exactly as given."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.recv(4096)
        self.sock.sendall(b'CONNECT {"verbose":false,"headers":true}\r\n')

    def pub(self, subject: str, payload: bytes, headers: list[tuple[str, str]] | None) -> None:
        if headers is None:
            self.sock.sendall(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload))
            return
        hdr = b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers) + b"\r\n"
        self.sock.sendall(
            b"HPUB %s %d %d\r\n%s%s\r\n"
            % (subject.encode(), len(hdr), len(hdr) + len(payload), hdr, payload)
        )

    def close(self) -> None:
        self.sock.sendall(b"PING\r\n")
        buf = b""
        while b"PONG" not in buf:
            buf += self.sock.recv(4096)
        self.sock.close()


def record_source(
    url: str, port: int, out: Path, prefix: str, n: int, gap_ms: Callable[[int], float]
) -> None:
    """A recording of `n` messages under `prefix`, varied headers, spaced by `gap_ms(i)`."""
    with recording(url, out, prefix + ">"):
        pub = RawPublisher(port)
        for i in range(n):
            headers: list[tuple[str, str]] | None = None
            if i % 3 == 0:
                headers = [("X-Correlation-ID", f"o-{i}"), ("Tag", "a"), ("Tag", "b")]
            elif i % 3 == 1:
                headers = [("traceparent", f"00-{i:032x}-{i:016x}-01")]
            payload = bytes([i % 256]) * (i % 7) + b"\x00\xff" + str(i).encode()
            pub.pub(f"{prefix}orders.{i % 4}", payload, headers)
            time.sleep(gap_ms(i) / 1000)
        pub.close()


def without_replay_headers(headers: list[tuple[str, str]] | None) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers or [] if not k.startswith("Qixtui-Replay-")]


# --- tests ---------------------------------------------------------------------------------


def test_round_trip_keeps_subjects_bytes_headers_order_and_gaps(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    source, again = tmp_path / "source.qix", tmp_path / "again.qix"
    rng = random.Random(8)
    gaps = [rng.choice([2, 5, 10, 20, 40]) for _ in range(60)]
    record_source(nats_server.url, nats_server.port, source, "rt.", 60, lambda i: gaps[i])
    with recording(nats_server.url, again, "again.>"):
        result = replay_json(source, "-s", nats_server.url, "--prefix", "again", "--yes")
    assert result["status"] == "done"
    assert result["sent"] == 60

    original, replayed = events(source), events(again)
    assert len(original) == len(replayed) == 60
    assert [e.subject for e in replayed] == ["again." + e.subject for e in original]
    assert [e.payload for e in replayed] == [e.payload for e in original]
    assert [without_replay_headers(e.headers) for e in replayed] == [
        e.headers or [] for e in original
    ]
    assert [seq_of(e) for e in replayed] == list(range(1, 61))
    assert {e.header("Qixtui-Replay-Session") for e in replayed} == {result["session"]}
    errors = [
        abs((b2.ts_ns - b1.ts_ns) - (a2.ts_ns - a1.ts_ns)) / 1e6
        for a1, a2, b1, b2 in zip(original, original[1:], replayed, replayed[1:], strict=False)
    ]
    print(f"1x gap error: median {statistics.median(errors):.3f} ms, max {max(errors):.3f} ms")
    assert statistics.median(errors) < 2.0


async def test_dry_run_is_the_default_and_sends_nothing(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    source = tmp_path / "source.qix"
    await asyncio.to_thread(
        record_source, nats_server.url, nats_server.port, source, "dry.", 8, lambda i: 1
    )
    nc, seen = await collect(nats_server.url)
    proc = await asyncio.to_thread(replay, source, "-s", nats_server.url, "--speed", "max")
    # The TUI's filter language selects too: headers of every third message, one subject.
    narrowed = await asyncio.to_thread(
        replay_json,
        source,
        *("-s", nats_server.url, "--filter", "header:Tag=b subject:dry.orders.0"),
    )
    await nc.flush()
    await asyncio.sleep(0.3)
    await nc.close()
    assert proc.returncode == 0, proc.stderr
    assert "dry run: nothing sent" in proc.stdout
    assert "dry.orders.0 -> replay." in proc.stdout
    assert "would publish 8 messages" in proc.stdout
    assert "(a new id each run; --prefix chooses one)" in proc.stdout
    assert narrowed["prefix_new_each_run"] is True
    # i % 3 == 0 and i % 4 == 0 among 0..7: only message 0
    assert narrowed["messages"] == 1
    assert [s["subject"] for s in narrowed["subjects"]] == ["dry.orders.0"]
    assert seen == []
    db = store.open_session(source)
    assert store.replays(db) == []  # a dry run leaves the recording untouched
    db.close()


async def test_oversize_is_reported_and_the_real_run_refuses(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    source = tmp_path / "source.qix"

    def make() -> None:
        with recording(nats_server.url, source, "big.>"):
            pub = RawPublisher(nats_server.port)
            pub.pub("big.small", b"s" * 100, None)
            pub.pub("big.large", b"L" * 1000, [("X-Pad", "p" * 10)])  # fits only without headers
            pub.close()

    await asyncio.to_thread(make)
    with EmbeddedServer(config="max_payload: 1024") as small:
        nc, seen = await collect(small.url)
        dry = await asyncio.to_thread(replay, source, "-s", small.url, "--json")
        real = await asyncio.to_thread(replay, source, "-s", small.url, "--yes")
        await nc.flush()
        await asyncio.sleep(0.3)
        await nc.close()
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["max_payload"] == 1024
    assert [(o["seq"], o["subject"]) for o in report["oversize"]] == [(2, "big.large")]
    assert report["oversize"][0]["size"] > 1024
    assert real.returncode == 1
    assert "larger than the target's max_payload" in real.stderr
    assert real.stderr.count("\n") == 1
    assert seen == []


async def test_jetstream_kv_and_inboxes_are_never_replayed_and_the_stream_survives(
    own_server: EmbeddedServer, tmp_path: Path
) -> None:
    source = tmp_path / "source.qix"
    nc = await nats.connect(own_server.url)
    js = nc.jetstream()
    await js.add_stream(name="KEEP", subjects=["keep.>"])
    kv = await js.create_key_value(bucket="cfg")

    async def traffic() -> None:
        await js.delete_stream("KEEP")  # $JS.API.STREAM.DELETE.KEEP, answered on an _INBOX
        await kv.put("k", b"v2")  # $KV.cfg.k as a JetStream publish, acked on an _INBOX
        await nc.publish("app.ok", b"fine", headers={"X-Correlation-ID": "c-1"})
        await nc.flush()

    rec = recording(own_server.url, source)
    await asyncio.to_thread(rec.__enter__)
    try:
        await traffic()
    finally:
        await asyncio.to_thread(rec.__exit__, None, None, None)

    await js.add_stream(name="KEEP", subjects=["keep.>"])
    await js.publish("keep.1", b"precious")
    revision = (await kv.get("k")).revision
    name = store.get_meta(store.open_session(source))["server_name"]
    watcher, seen = await collect(own_server.url)

    refused = await asyncio.to_thread(
        replay, source, "-s", own_server.url, "--original-subjects", "--yes"
    )
    wrong = await asyncio.to_thread(
        replay, source, "-s", own_server.url, "--original-subjects", "--yes", "--confirm", "x"
    )
    await watcher.flush()
    assert refused.returncode == 1
    assert f"needs --confirm {name}" in refused.stderr
    assert wrong.returncode == 1
    assert seen == []

    proc = await asyncio.to_thread(
        replay,
        *(source, "-s", own_server.url, "--original-subjects", "--yes", "--json"),
        *("--confirm", name, "--speed", "max"),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    await watcher.flush()
    await asyncio.sleep(0.3)
    await watcher.close()

    recorded = [e.subject for e in events(source)]
    assert any(s == "$JS.API.STREAM.DELETE.KEEP" for s in recorded)
    assert any(s.startswith("$KV.cfg.") for s in recorded)
    assert any(s.startswith("_INBOX.") for s in recorded)
    assert result["sent"] == 1
    assert "JetStream API or advisory ($JS.>)" in result["skipped"]
    assert "key-value store ($KV.>)" in result["skipped"]
    assert "reply inbox (_INBOX.>)" in result["skipped"]
    assert [m.subject for m in seen] == ["app.ok"]
    assert seen[0].data == b"fine"
    info = await js.stream_info("KEEP")
    assert info.state.messages == 1
    assert (await kv.get("k")).revision == revision
    await nc.close()


async def test_requests_go_to_a_replayer_inbox_and_replies_are_counted(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    source = tmp_path / "source.qix"
    nc = await nats.connect(nats_server.url)

    async def answer(msg: Any) -> None:
        await msg.respond(b"pong:" + msg.data)

    async def odd_answer(msg: Any) -> None:  # a reply of its own that says 503: still a reply
        await nc.publish(msg.reply, b"", headers={"Status": "503"})

    await nc.subscribe("rq.svc.ping", cb=answer)
    await nc.subscribe("odd.svc.ping", cb=odd_answer)
    await nc.flush()
    await record_three_pings(nats_server.url, source, nc, answer)

    plain = await asyncio.to_thread(
        replay_json, source, "-s", nats_server.url, "--prefix", "rq", "--yes", "--speed", "max"
    )
    asked = await asyncio.to_thread(
        replay_json,
        *(source, "-s", nats_server.url, "--prefix", "rq", "--yes", "--speed", "max"),
        "--requests",
    )
    unanswered = await asyncio.to_thread(
        replay_json,
        *(source, "-s", nats_server.url, "--prefix", "nobody", "--yes", "--speed", "max"),
        "--requests",
    )
    odd = await asyncio.to_thread(
        replay_json,
        *(source, "-s", nats_server.url, "--prefix", "odd", "--yes", "--speed", "max"),
        "--requests",
    )
    await nc.close()
    assert plain["sent"] == 3  # the three requests; their recorded replies are never sent
    assert plain["skipped"] == {"reply inbox (_INBOX.>)": 3}
    assert (plain["requests"], plain["replies"]) == (0, 0)
    assert (asked["requests"], asked["replies"], asked["no_responders"]) == (3, 3, 0)
    # No one listens under this prefix: the server's own "no responders" are not replies.
    assert (unanswered["requests"], unanswered["replies"], unanswered["no_responders"]) == (
        3,
        0,
        3,
    )
    assert (odd["replies"], odd["no_responders"]) == (3, 0)
    assert [r["unanswered"] for r in (plain, asked, unanswered, odd)] == [0, 0, 0, 0]
    db = store.open_session(source)
    audit = store.replays(db)
    db.close()
    assert [(r["status"], r["sent"], r["replies"]) for r in audit] == [
        ("done", 3, 0),
        ("done", 3, 3),
        ("done", 3, 0),
        ("done", 3, 3),
    ]
    assert all(r["target"] == nats_server.url for r in audit)


async def test_requests_nobody_answers_are_counted_unanswered_in_json_as_in_text(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    """A subscriber that never replies: no reply, no "no responders" either. The text says how
    many went unanswered; the JSON said nothing of them."""
    source = tmp_path / "source.qix"
    nc = await nats.connect(nats_server.url)

    async def ignore(msg: Any) -> None:
        pass

    async def answer(msg: Any) -> None:
        await msg.respond(b"pong")

    await nc.subscribe("silent.svc.ping", cb=ignore)
    await nc.flush()
    await record_three_pings(nats_server.url, source, nc, answer)

    args = (source, "-s", nats_server.url, "--yes", "--speed", "max", "--requests")
    silent = await asyncio.to_thread(replay_json, *args, "--prefix", "silent")
    nobody = await asyncio.to_thread(replay_json, *args, "--prefix", "nobody")
    text = await asyncio.to_thread(replay, *args, "--prefix", "silent")
    await nc.close()
    assert (silent["requests"], silent["replies"], silent["no_responders"]) == (3, 0, 0)
    assert silent["unanswered"] == 3
    assert (nobody["no_responders"], nobody["unanswered"]) == (3, 0)
    assert text.returncode == 0, text.stderr
    assert "3 requests: 0 replies, 0 with no responders, 3 unanswered" in text.stderr


def test_an_empty_prefix_is_refused_not_replaced_by_the_default(tmp_path: Path) -> None:
    source = tmp_path / "source.qix"
    store.create_session(source).close()
    empty = replay(source, "--prefix", "")
    assert empty.returncode == 1
    assert "--prefix '': not a subject prefix" in empty.stderr
    both = replay(source, "--prefix", "", "--original-subjects")
    assert both.returncode == 1
    assert "exclude each other" in both.stderr


def test_resume_needs_a_stopped_replay_and_no_new_selection(tmp_path: Path) -> None:
    source = tmp_path / "source.qix"
    store.create_session(source, {"server_id": "N"}).close()
    nothing = replay(source, "--resume", "-s", "nats://127.0.0.1:1")
    assert nothing.returncode == 1
    assert "nothing to resume" in nothing.stderr
    mixed = replay(source, "--resume", "--subject", "a.>")
    assert mixed.returncode == 1
    assert "drop --subject" in mixed.stderr
    empty = replay(source, "--resume", "--prefix", "", "--filter", "")
    assert empty.returncode == 1
    assert "drop --filter, --prefix" in empty.stderr


def test_a_restarted_target_stops_the_replay_and_resume_sends_nothing_twice(
    nats_server: EmbeddedServer, own_server: EmbeddedServer, tmp_path: Path
) -> None:
    """The exact claim: every seq arrives at most once; after the stop the target saw
    seqs 1..k, for some k <= d (d: the position saved at the stop); the resume sends
    d+1..N and all of them arrive. Seqs k+1..d were handed to the dying server (or to a
    socket it no longer read) and are the only ones that may be missing."""
    source, seen_file = tmp_path / "source.qix", tmp_path / "target.qix"
    n = 150
    record_source(nats_server.url, nats_server.port, source, "rs.", n, lambda i: 10)
    with recording(own_server.url, seen_file, "back.>"):
        first = subprocess.Popen(
            replay_command(source, "-s", own_server.url, "--prefix", "back", "--yes", "--json"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while len(events(seen_file)) < 30:
            assert time.monotonic() < deadline, "replay did not start"
            assert first.poll() is None, first.communicate()
            time.sleep(0.05)
        own_server.kill()
        out, err = first.communicate(timeout=30)
        assert first.returncode == 3, err
        stopped = json.loads(out)
        assert stopped["status"] == "stopped"
        assert f"--publish --resume --yes -s {own_server.url}`" in err  # the same bus
        d = stopped["last_seq"]
        assert 30 <= d < n
        own_server.start()
        # Wait for the target's recorder to be back before resuming.
        deadline = time.monotonic() + 30
        while True:
            db = store.open_session(seen_file)
            open_gaps = [g for g in store.gaps(db) if g.end_ns is None]
            closed = [g for g in store.gaps(db) if g.end_ns is not None]
            db.close()
            if closed and not open_gaps:
                break
            assert time.monotonic() < deadline, "recorder did not reconnect"
            time.sleep(0.1)
        resumed = replay_json(source, "-s", own_server.url, "--resume", "--yes")
    assert resumed["status"] == "done"
    assert resumed["first_seq"] == d + 1
    assert resumed["last_seq"] == n
    assert resumed["sent"] == n - d

    seqs = [seq_of(e) for e in events(seen_file)]
    assert len(seqs) == len(set(seqs)), "a message was sent twice"
    before = sorted(s for s in seqs if s <= d)
    k = before[-1]
    assert before == list(range(1, k + 1))
    assert sorted(s for s in seqs if s > d) == list(range(d + 1, n + 1))
    print(f"stopped at seq {d}; target saw 1..{k}; in doubt {stopped['in_doubt']}")

    db = store.open_session(source)
    audit = store.replays(db)
    db.close()
    assert [(r["status"], r["last_seq"]) for r in audit] == [("stopped", d), ("done", n)]
    assert audit[1]["resumed_from"] == audit[0]["id"]
    assert audit[0]["session"] == audit[1]["session"]


def test_reading_a_replay_holds_no_lock_that_blocks_the_audit_row(tmp_path: Path) -> None:
    """A finished recording is in rollback-journal mode, where an open read blocks writers:
    the replayer reads in pages so its progress can be saved mid-replay."""
    path = tmp_path / "s.qix"
    db = store.create_session(path, {"server_id": "N"})
    with store.transaction(db):
        store.insert_events(
            db, [Event(i, "a.b", None, None, b"x", id=i) for i in range(1, 3 * PAGE)]
        )
    db.execute("PRAGMA journal_mode = DELETE")
    db.close()
    reader = store.open_session(path)
    it = rows(reader, Plan(session="s", prefix="r."), 0)
    assert next(it)[0] == 1
    writer = store.open_session(path, readonly=False)
    writer.execute("PRAGMA busy_timeout = 100")
    with store.transaction(writer):
        store.add_replay(
            writer,
            {"session": "s", "started_ns": 1, "target": "t", "plan": "{}", "status": "running"},
        )
    assert sum(1 for _ in it) == 3 * PAGE - 2
    writer.close()
    reader.close()


def test_an_unreachable_target_is_one_line_and_quick(tmp_path: Path) -> None:
    source = tmp_path / "source.qix"
    store.create_session(source, {"server_id": "N"}).close()
    proc = replay(source, "-s", "nats://127.0.0.1:1", timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.startswith("qixtui: cannot connect to nats://127.0.0.1:1")
    assert proc.stderr.count("\n") == 1


async def seq_watcher(url: str, seqs: list[int], want: int = 0) -> tuple[Any, asyncio.Event]:
    """A subscriber collecting replay seqs on back.>; the event is set once `want` arrived."""
    nc = await nats.connect(url, allow_reconnect=False)
    enough = asyncio.Event()

    async def on_msg(msg: Any) -> None:
        seqs.append(int(msg.headers["Qixtui-Replay-Seq"]))
        if want and len(seqs) >= want:
            enough.set()

    await nc.subscribe("back.>", cb=on_msg, pending_msgs_limit=1_000_000)
    await nc.flush()
    return nc, enough


async def test_full_speed_stops_when_the_target_dies_and_resume_sends_only_the_rest(
    own_server: EmbeddedServer, tmp_path: Path
) -> None:
    """At full speed a page is framed while the previous one's PONG is awaited; a target
    killed after the first page must still stop the run within a page or two, the saved
    position must cover everything handed over, and the resume must send exactly the rest."""
    from qixtui_nats.connect import ConnectOptions
    from qixtui_nats.replayer import FIRST_PAGE, Progress, Replayer, connect

    source = tmp_path / "source.qix"
    n = 6 * PAGE
    db = store.create_session(source, {"server_id": "N"})
    with store.transaction(db):
        store.insert_events(
            db, [Event(i, f"fs.{i % 7}", None, None, b"x" * 64, id=i) for i in range(1, n + 1)]
        )
    plan = Plan(session="fs", prefix="back.", speed=None)
    saved: list[tuple[str, int, int]] = []

    def save(progress: Progress) -> None:
        saved.append((progress.status, progress.last_seq, progress.last_event_id))

    nc, _ = await connect(ConnectOptions(servers=[own_server.url]).resolved())
    first_seen: list[int] = []
    watcher, _ = await seq_watcher(own_server.url, first_seen)
    replayer = Replayer(nc, db, plan, save=save)
    # The replayer is started by the first send of the first page; the server dies then.
    first_page = asyncio.Event()
    original_ping = replayer.nc.ping

    async def ping_then_die() -> Any:
        pong = await original_ping()
        if not first_page.is_set():
            first_page.set()
            own_server.kill()
        return pong

    replayer.nc.ping = ping_then_die  # type: ignore[method-assign]
    stopped = await replayer.run()
    with contextlib.suppress(Exception):
        await nc.close()
    with contextlib.suppress(Exception):
        await watcher.close()
    assert first_page.is_set()
    assert stopped.status == "stopped"
    d = stopped.last_seq
    assert 0 < d <= FIRST_PAGE + 2 * PAGE < n  # stopped within two pages of the kill
    assert stopped.confirmed_seq <= d
    assert saved[-1] == ("stopped", d, stopped.last_event_id)
    assert all(s <= d for s in first_seen)

    own_server.start()
    nc, _ = await connect(ConnectOptions(servers=[own_server.url]).resolved())
    rest: list[int] = []
    watcher, arrived = await seq_watcher(own_server.url, rest, want=n - d)
    resumed = await Replayer(
        nc, db, plan, after_id=stopped.last_event_id, last_seq=d, save=save
    ).run()
    await nc.close()
    await asyncio.wait_for(arrived.wait(), 10)
    await watcher.close()
    db.close()
    assert resumed.status == "done"
    assert (resumed.last_seq, resumed.confirmed_seq) == (n, n)
    assert sorted(rest) == list(range(d + 1, n + 1))


def test_pages_of_large_messages_stay_near_the_byte_budget(tmp_path: Path) -> None:
    from qixtui_nats.replayer import FIRST_PAGE, PAGE_BYTES, pages

    path = tmp_path / "big.qix"
    size = PAGE_BYTES // 8
    n = FIRST_PAGE + 20
    db = store.create_session(path, {"server_id": "N"})
    with store.transaction(db):
        store.insert_events(
            db, [Event(i, "a.b", None, None, bytes([i]) * size, id=i) for i in range(1, n + 1)]
        )
    db.close()
    reader = store.open_session(path)
    got = list(pages(reader, Plan(session="s", prefix="r."), 0))
    reader.close()
    assert [len(p) for p in got] == [FIRST_PAGE, 8, 8, 4]
    assert [row[0] for page in got for row in page] == list(range(1, n + 1))


def test_a_server_with_a_nonsense_max_payload_is_one_line(tmp_path: Path) -> None:
    """Something that speaks enough NATS to connect, with an INFO no size check can use."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        listener.settimeout(10)
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                info = {"server_id": "fake", "max_payload": "lots", "headers": True}
                conn.sendall(b"INFO " + json.dumps(info).encode() + b"\r\n")
                conn.settimeout(5)
                while chunk := conn.recv(4096):
                    if b"PING" in chunk:
                        conn.sendall(b"PONG\r\n")

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    source = tmp_path / "s.qix"
    db = store.create_session(source, {})
    store.insert_events(db, [Event(1, "a.b", None, None, b"x", 1)])
    db.close()
    try:
        result = replay(source, "-s", f"nats://127.0.0.1:{port}", "--yes")
    finally:
        listener.close()
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "names no usable max_payload ('lots')" in line


def test_the_dry_run_cuts_a_very_long_subject_and_json_keeps_it_whole(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    long = "orders." + "x" * 3000
    source = tmp_path / "s.qix"
    db = store.create_session(source, {})
    store.insert_events(db, [Event(1, long, None, None, b"x", 1)])
    db.close()
    plain = replay(source, "-s", nats_server.url, "--prefix", "p")
    assert plain.returncode == 0, plain.stderr
    [line] = [x for x in plain.stdout.splitlines() if "orders.xxx" in x]
    shown, target = line.split("  ")[-1].split(" -> ")
    assert (len(shown), len(target)) == (120, 120)
    assert (shown[:10], shown[-2:]) == ("orders.xxx", "x…")
    assert (target[:12], target[-2:]) == ("p.orders.xxx", "x…")
    data = replay_json(source, "-s", nats_server.url, "--prefix", "p")
    assert [s["subject"] for s in data["subjects"]] == [long]


async def record_three_pings(url: str, source: Path, nc: Any, answer: Any) -> None:
    """A recording of three `svc.ping` requests from `nc`, answered by `answer`."""
    rec = recording(url, source, "svc.>", "_INBOX.>")
    await asyncio.to_thread(rec.__enter__)
    try:
        responder = await nats.connect(url)
        await responder.subscribe("svc.ping", cb=answer)
        await responder.flush()
        for i in range(3):
            await nc.request("svc.ping", str(i).encode(), timeout=10)
        await responder.close()
    finally:
        await asyncio.to_thread(rec.__exit__, None, None, None)


def test_the_recorded_address_counts_as_the_source_after_a_restart(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    # A server without a configured name comes back with a new id and name: only the
    # address it was recorded from is left to tell it is the same bus.
    source = tmp_path / "restarted.qix"
    url = nats_server.url.replace("127.0.0.1", "localhost")
    db = store.create_session(source, {"server": url, "server_id": "NOLD", "server_name": "NOLD"})
    store.insert_events(db, [Event(1, "app.ok", None, None, b"x", 1)])
    db.close()
    refused = replay(source, "-s", nats_server.url, "--original-subjects", "--yes")
    assert refused.returncode == 1
    assert "the target looks like the server this was recorded from" in refused.stderr
    wrong = replay(source, "-s", nats_server.url, "--original-subjects", "--yes", "--confirm", "x")
    assert wrong.returncode == 1
    said = f"qixtui: --confirm x: the target is {nats_server.name}; nothing sent"
    assert wrong.stderr.strip() == said
    prefixed = replay(source, "-s", nats_server.url, "--prefix", "r.", "--yes", "--confirm", "x")
    assert (prefixed.returncode, prefixed.stderr.strip()) == (1, said)


async def test_another_node_of_the_recorded_cluster_counts_as_the_source(tmp_path: Path) -> None:
    routes = free_port()
    cluster = ["--cluster_name", "prod", "--cluster", f"nats://127.0.0.1:{routes}"]
    with (
        EmbeddedServer(jetstream=False, extra_args=cluster) as first,
        EmbeddedServer(
            jetstream=False,
            extra_args=[
                *("--cluster_name", "prod", "--cluster", f"nats://127.0.0.1:{free_port()}"),
                *("--routes", f"nats://127.0.0.1:{routes}"),
            ],
        ) as second,
    ):
        source = tmp_path / "prod1.qix"
        nc = await nats.connect(first.url)
        with recording(first.url, source):
            await nc.publish("app.ok", b"x")
            await nc.flush()
        await nc.close()
        assert store.get_meta(store.open_session(source))["server_clusters"] == "prod"
        refused = await asyncio.to_thread(
            replay, source, "-s", second.url, "--original-subjects", "--yes"
        )
    assert refused.returncode == 1
    assert f"needs --confirm {second.name}" in refused.stderr


def test_a_flow_the_file_does_not_have_is_said(tmp_path: Path) -> None:
    source = tmp_path / "few.qix"
    store.create_session(source).close()
    result = replay(source, "-s", "nats://127.0.0.1:1", "--flow", "999999")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"qixtui: {source}: no flow 999999 (see `qixtui flows {source}`)"
    )


def test_the_dry_run_of_a_file_still_being_recorded_says_so(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    source = tmp_path / "live.qix"
    with recorder_stand_in() as pid:
        db = store.create_session(source, {"recorder_pid": str(pid)})
        store.insert_events(db, [Event(1, "app.ok", None, None, b"x", 1)])
        db.close()
        live = replay(source, "-s", nats_server.url)
        as_json = replay(source, "-s", nats_server.url, "--json")
    finished = replay(source, "-s", nats_server.url)  # its recorder is gone
    assert live.returncode == 0, live.stderr
    assert "a recorder still writes this file: events it adds from now on are not part of it" in (
        live.stdout
    )
    assert json.loads(as_json.stdout)["recording_goes_on"] is True
    assert "a recorder still writes" not in finished.stdout
