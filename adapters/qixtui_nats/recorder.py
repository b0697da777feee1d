"""The recorder: subscribe to a NATS bus and hand every message to the session writer processes.

The subscription callback only appends to a list. A flush task encodes the list and a sender
thread pushes it down a pipe to the writer processes (see qixtui.core.writer), so neither SQLite
nor correlation ever runs on the read loop's core. Loss is written down, never silent:
disconnects become gap rows, client-side slow-consumer drops are counted per subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import os
import queue
import signal
import sqlite3
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.subscription import Subscription
from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

import qixtui
from qixtui.core import store
from qixtui.core.text import counted
from qixtui.core.writer import (
    PART_EVENTS,
    CycleCollector,
    encode_record,
    run_prepare,
    run_writer,
)
from qixtui_nats.connect import (
    Client,
    ConnectError,
    ConnectOptions,
    describe_connect_error,
    is_auth_error,
)
from qixtui_nats.frames import take_messages

FLUSH_INTERVAL_S = 0.02
# How often a PING round-trip confirms that nothing sent before it was missed. A gap starts at
# the last confirmation, not at the last message seen: a message published just before the
# last one arrived may still be on its way when the connection breaks.
HEARTBEAT_S = 0.1
# Stopping waits for what the server sent before the UNSUBs. A recorder far behind a burst
# (or on a loaded machine) reads for seconds before the PONG: it waits while messages keep
# coming, and gives up after this long without one, or after DRAIN_MAX_S in all.
DRAIN_QUIET_S = 2.0
DRAIN_MAX_S = 120.0
# The PONG is not the end: on a loaded machine (JetStream on) the server was seen handing a
# burst's tail to the subscription after it, and after an UNSUB it drops such messages (7,602
# of 30,000 lost). So the subscriptions stay until nothing has come for DRAIN_SETTLE_S, or
# for DRAIN_SETTLE_MAX_S in all on a bus that never goes quiet.
DRAIN_SETTLE_S = 0.5
DRAIN_SETTLE_MAX_S = 3.0
# The gap an appended part leaves between the earlier parts' end and its own start
UNRECORDED_BETWEEN_PARTS = "no recorder was running (before an --append)"
PARENT_CHECK_S = 0.5  # how often a recorder started by another command looks for it


class WriterFailed(Exception):
    """A writer stage died; the message is one line meant for the user."""


@dataclass
class RecordStats:
    events: int = 0
    dropped: int = 0
    gaps: int = 0
    started: float = field(default_factory=time.monotonic)
    # When the last message was read; the writer's finishing (indexes) comes after.
    ended: float | None = None
    connected: bool = False

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.events / elapsed if elapsed > 0 else 0.0


@dataclass
class RecordOptions:
    output: Path
    subjects: list[str] = field(default_factory=lambda: [">"])
    count: int | None = None
    duration: float | None = None
    # Events received but not yet handed to the writer; past this the recorder is a slow
    # consumer and drops (counted per subject) rather than grow without bound. About 100 MB
    # of backlog, so recorder and writer stay near 300 MB together behind a bus they cannot
    # keep up with (a million held 520 MB).
    pending_limit: int = 300_000
    correlator_factory: Callable[[], Any] | None = None
    extra_meta: dict[str, str] = field(default_factory=dict)
    append: bool = False  # add to an existing session (e.g. while a saga run resumes)
    # The process that started this recorder for itself (tap, demo, orchestrate): if it dies
    # without stopping us, even by SIGKILL, we stop too instead of recording on for good.
    parent_pid: int | None = None


class _Sender:
    """Owns the pipe to the writer; a blocking send happens off the event loop.

    `queued` is counted by the loop thread and `sent` by the sender thread only, so their
    difference (events not yet handed to the writer) needs no lock.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.queue: queue.SimpleQueue[tuple[bytes, int] | None] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.queued = 0
        self.sent = 0
        self.thread = threading.Thread(target=self._run, name="qixtui-sender", daemon=True)
        self.thread.start()

    def send(self, record: list[Any], events: int = 0) -> None:
        self.queued += events
        self.queue.put((encode_record(record), events))

    @property
    def in_flight(self) -> int:
        return self.queued - self.sent

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            data, events = item
            try:
                self.conn.send_bytes(data)
            except OSError as exc:
                self.error = exc
                return
            self.sent += events

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self.conn.close()


async def bounded(awaitable: Awaitable[Any], seconds: float) -> Any:
    """Await for at most `seconds`. Unlike wait_for, never wait on a task that ignores its
    cancellation: nats-py's close can, while it is reconnecting to a bus that is gone, and a
    stop request must not hang on it."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        return None
    return task.result()


def run_to_end(main: Awaitable[Any]) -> Any:
    """asyncio.run, without waiting forever at exit for tasks nats-py left behind."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main)
    finally:
        leftovers = asyncio.all_tasks(loop)
        for task in leftovers:
            task.cancel()
        if leftovers:
            loop.run_until_complete(asyncio.wait(leftovers, timeout=2))
        loop.run_until_complete(loop.shutdown_asyncgens())


class RecordingParser(Parser):
    """nats-py's protocol parser with a fast path for recorded messages.

    nats-py matches a regular expression and awaits a coroutine for every message. Here a run of
    MSG/HMSG frames for recorded subscriptions is split by hand and handed over synchronously,
    a read's worth at a time; anything else (PING, INFO, -ERR, other subscriptions, a line that
    does not parse) goes to nats-py's parser from that point on, which also raises its errors.
    """

    def __init__(self, nc: RecordingClient) -> None:
        super().__init__(nc)
        self.client = nc

    def reset(self) -> None:
        super().reset()
        # The buffer length at which the recorded frame at its front will be complete: a
        # large payload arrives over many reads, and each would otherwise scan it again.
        self.frame_end = 0

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        buf.extend(data)
        if self.state != AWAITING_CONTROL_LINE:
            await super().parse()
            return
        if len(buf) < self.frame_end:
            return
        client = self.client
        # One receive time for a read's worth: the kernel had all of it before the read.
        frames: list[list[Any]] = []
        pos, frame_end, payload_bytes = take_messages(
            bytes(buf), client.recorded_sids, time.time_ns(), frames
        )
        if frames:
            client.stats["in_msgs"] += len(frames)
            client.stats["in_bytes"] += payload_bytes
            client.on_messages(frames)
        if pos:
            del buf[:pos]
        self.frame_end = frame_end - pos if frame_end else 0
        if buf and not frame_end:
            await super().parse()


class RecordingClient(Client):
    """A nats-py client that hands recorded messages over as recorder frames (see
    qixtui_nats.frames.take_messages), a read's worth at a time.

    Skipping nats-py's Msg objects and per-subscription queues keeps the receive order across
    several subscriptions, keeps every header (repeats included) and costs less per message; a
    subject that is not UTF-8 is recorded (its bad bytes escaped) instead of killing the reader.
    """

    def __init__(self, on_messages: Callable[[list[list[Any]]], None]) -> None:
        super().__init__()
        self.on_messages = on_messages
        self.recorded_sids: set[int] = set()
        self._ps = RecordingParser(self)

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        if sid not in self.recorded_sids:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        frame = [
            time.time_ns(),
            subject.decode("utf-8", "backslashreplace"),
            reply.decode("utf-8", "backslashreplace") if reply else None,
            headers or None,
            data,
        ]
        self.on_messages([frame])

    async def _process_pong(self) -> None:
        # nats-py sets a result on the future of a flush that timed out (cancelled), which
        # raises inside its read loop and silently kills the reader; a late PONG is harmless.
        if self._pongs:
            future = self._pongs.pop(0)
            if not future.done():
                future.set_result(True)
            self._pongs_received += 1
            self._pings_outstanding = 0


class Recorder:
    def __init__(self, connect: ConnectOptions, options: RecordOptions) -> None:
        self.connect = connect.resolved()
        self.options = options
        self.stats = RecordStats()
        self.drops: Counter[str] = Counter()
        self._pending: list[list[Any]] = []
        self._arrived = 0  # messages received, kept or dropped: the drain watches it grow
        self._servers: list[tuple[str, str]] = []  # (id, name) of each server connected to
        self._clusters: list[str] = []  # the clusters those were nodes of
        # Appending: when the file's earlier parts stopped recording (0: nothing before)
        self._unrecorded_since = 0
        self._stop = asyncio.Event()
        self._confirmed_ns = time.time_ns()
        self._gap_open = False
        self._closing = False
        self._dead_reader = False
        self._connect_error: BaseException | None = None
        self._hopeless = asyncio.Event()  # a first-connect error that retrying cannot fix
        self.nc: RecordingClient | None = None
        self._subscriptions: list[Subscription] = []
        self._sender: _Sender | None = None
        self._collector: CycleCollector | None = None
        self._stages: list[multiprocessing.process.BaseProcess] = []

    # -- lifecycle ------------------------------------------------------------------------

    def start_writer(self) -> None:
        meta = {
            "server": self.connect.display_servers(),
            "subjects": ",".join(self.options.subjects),  # every part's, once appended to
            "recording_subjects": ",".join(self.options.subjects),  # this recorder's own
            "started_ns": str(time.time_ns()),
            "qixtui_version": qixtui.__version__,
            "recorder_pid": str(os.getpid()),
            **self.options.extra_meta,
        }
        if self.options.append and self.options.output.exists():
            db = store.open_session(self.options.output, readonly=False)
            db.execute("PRAGMA journal_mode = WAL")  # a finished session was left in DELETE mode
            before = store.get_meta(db)
            with store.transaction(db):
                self._unrecorded_since = self._recorded_until(db, before)
                store.set_meta(db, self._appended_meta(before, meta))
        else:
            db = store.create_session(self.options.output, meta)
        next_id = store.next_event_id(db)
        db.close()
        # Added to a file that holds events: correlation here starts without the keys seen
        # before (a resumed saga run would be split in two flows, the first left running),
        # so the writer recomputes the whole file's flows at the end, with the rules the
        # file now names.
        recompute = (
            self.options.extra_meta.get("correlation_rules")
            if next_id > 1 and self.options.correlator_factory is not None
            else None
        )
        ctx = multiprocessing.get_context("spawn")
        prepare_in, to_prepare = ctx.Pipe(duplex=False)
        writer_in, to_writer = ctx.Pipe(duplex=False)
        self._stages = [
            ctx.Process(
                target=run_prepare,
                args=(prepare_in, to_writer, next_id, self.options.correlator_factory),
                name="qixtui-prepare",
                daemon=True,
            ),
            ctx.Process(
                target=run_writer,
                args=(str(self.options.output), writer_in, recompute),
                name="qixtui-writer",
                daemon=True,
            ),
        ]
        for stage in self._stages:
            stage.start()
        # Only the stages hold these ends now, so each sees the end of its pipe when the
        # stage before it exits, however it exits.
        for end in (prepare_in, writer_in, to_writer):
            end.close()
        self._sender = _Sender(to_prepare)

    async def run(self, on_progress: Callable[[RecordStats], None] | None = None) -> RecordStats:
        loop = asyncio.get_running_loop()
        # A closed terminal (SIGHUP) flushes and ends the file like Ctrl-C.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        if not self.options.append:
            store.ensure_new(self.options.output)
        elif self.options.output.exists():
            store.ensure_appendable(self.options.output)
        self._collector = collector = CycleCollector()
        try:
            await self._connect()
            tasks = [
                asyncio.create_task(self._flush_loop(), name="qixtui-flush"),
                asyncio.create_task(self._watch_loop(), name="qixtui-watch"),
            ]
            if on_progress is not None:
                tasks.append(asyncio.create_task(self._progress_loop(on_progress)))
            if self.options.parent_pid is not None:
                tasks.append(asyncio.create_task(self._parent_loop(self.options.parent_pid)))
            if self.options.duration is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.options.duration)
            else:
                await self._stop.wait()
            self._stop.set()  # a --duration ran out: the loops watch this flag too
            for task in tasks:
                task.cancel()
            # What has arrived goes to the writer now, not after the connection is closed.
            self._flush_pending()
            # asyncio.wait, not gather: a task still running at the deadline is cancelled
            # again at exit, with no "exception was never retrieved" on stderr.
            await asyncio.wait(tasks, timeout=2)
        finally:
            await self._shutdown()
            collector.close()
        return self.stats

    async def _connect(self) -> None:
        kwargs = self.connect.kwargs()
        self.nc = RecordingClient(self._on_messages)
        # nats-py can stall after a failed TLS handshake, so the first connect has a deadline.
        deadline = 5 + 8 * len(self.connect.servers)
        try:
            connecting = self.nc.connect(
                **kwargs,
                # Fail fast on the first connect (a wrong URL or password is a user error);
                # once connected, never give up: a recorder must outlive outages.
                max_reconnect_attempts=1,
                reconnect_time_wait=0.5,
                connect_timeout=3,
                allow_reconnect=True,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                closed_cb=self._on_closed,
            )
            await self._first_connect(connecting, deadline)
        except Exception as exc:
            cause = self._connect_error or exc
            raise ConnectError(
                describe_connect_error(cause, self.connect.display_servers())
            ) from None
        self.nc.options["max_reconnect_attempts"] = -1
        self._connect_error = None
        self.stats.connected = True
        self.start_writer()
        info = getattr(self.nc, "_server_info", {}) or {}
        self._send(
            [
                "M",
                {
                    "server_id": str(info.get("server_id", "")),
                    "server_name": str(info.get("server_name", "")),
                    "server_version": str(info.get("version", "")),
                    "max_payload": str(info.get("max_payload", "")),
                },
            ]
        )
        self._note_server()
        for subject in self.options.subjects:
            sub = await self.nc.subscribe(subject)
            self.nc.recorded_sids.add(sub._id)
            self._subscriptions.append(sub)
        await self.nc.flush()
        # The server has the subscriptions now: whatever anyone publishes from here on is
        # recorded. A saga run waits for this before its first request.
        subscribed = time.time_ns()
        if self._unrecorded_since:  # since the earlier part stopped, nothing was recorded
            self.stats.gaps += 1
            self._send(["G+", self._unrecorded_since, UNRECORDED_BETWEEN_PARTS])
            self._send(["G-", subscribed])
        self._send(["M", {"subscribed_ns": str(subscribed)}])

    async def _parent_loop(self, parent_pid: int) -> None:
        # A dead parent's children are handed to init (or a subreaper): the parent pid changes.
        while not self._stop.is_set():
            if os.getppid() != parent_pid:
                self._stop.set()
                return
            await asyncio.sleep(PARENT_CHECK_S)

    async def _first_connect(self, connecting: Awaitable[None], deadline: float) -> None:
        """Connect, but give up at once on an error that retrying cannot fix."""
        connect_task = asyncio.ensure_future(connecting)
        hopeless = asyncio.ensure_future(self._hopeless.wait())
        done, _ = await asyncio.wait(
            {connect_task, hopeless}, timeout=deadline, return_when=asyncio.FIRST_COMPLETED
        )
        hopeless.cancel()
        if connect_task in done:
            connect_task.result()
            return
        connect_task.cancel()
        raise ConnectError("gave up") if done else TimeoutError("no answer")

    async def _drain(self) -> None:
        """A round-trip, then reading on until nothing has come for DRAIN_SETTLE_S (what the
        server still had for us arrives after the PONG too), then the UNSUBs. Gives up
        waiting for the PONG once nothing arrived for DRAIN_QUIET_S."""
        assert self.nc is not None
        pong = asyncio.ensure_future(self.nc.flush(timeout=DRAIN_MAX_S))
        arrived, quiet_since = self._arrived, time.monotonic()
        while not (await asyncio.wait({pong}, timeout=FLUSH_INTERVAL_S * 10))[0]:
            self._flush_pending()  # on to the writer as it comes, as while recording
            if self._arrived != arrived:
                arrived, quiet_since = self._arrived, time.monotonic()
            elif time.monotonic() - quiet_since > DRAIN_QUIET_S:
                pong.cancel()
                break
        else:
            pong.result()
            quiet_since = time.monotonic()
            settled_by = quiet_since + DRAIN_SETTLE_MAX_S
            while time.monotonic() - quiet_since < DRAIN_SETTLE_S and time.monotonic() < settled_by:
                await asyncio.sleep(FLUSH_INTERVAL_S * 5)
                self._flush_pending()
                if self._arrived != arrived:
                    arrived, quiet_since = self._arrived, time.monotonic()
        for sub in self._subscriptions:
            await sub.unsubscribe()

    async def _shutdown(self) -> None:
        self._closing = True
        if self.nc is not None and self.nc.is_connected:
            # With the bus gone there is nothing left to read; the deadline keeps a stop
            # request from waiting on a server that will not answer.
            with contextlib.suppress(Exception):
                await bounded(self._drain(), DRAIN_MAX_S)
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await bounded(self.nc.close(), 2)
        self.stats.ended = time.monotonic()
        try:
            self._flush_pending()
            if self._gap_open:
                self._send(["G-", time.time_ns()])
            self._send(["M", {"stopped_ns": str(time.time_ns())}])
            if self._sender is not None:
                self._sender.send(["X"])
        finally:
            if self._sender is not None:
                self._sender.close()
            # Every stage finishes before any failure is told: one left running would be
            # terminated at exit with its batch, and the first to fail names the culprit.
            for stage in self._stages:
                await asyncio.to_thread(stage.join)
        failed = [s for s in self._stages if s.exitcode not in (0, None)]
        if failed:
            culprit = failed[-1]  # a dead writer breaks the prepare stage's pipe too
            raise WriterFailed(
                f"{self.options.output}: the recorder's {culprit.name} process exited with "
                f"{culprit.exitcode}; the file holds what was committed before"
            )

    # -- hot path -------------------------------------------------------------------------

    def _on_messages(self, frames: list[list[Any]]) -> None:
        self._arrived += len(frames)
        pending = self._pending
        sender = self._sender
        if sender is not None:
            room = max(self.options.pending_limit - len(pending) - sender.in_flight, 0)
            if room < len(frames):
                for frame in frames[room:]:
                    self.drops[frame[1]] += 1
                self.stats.dropped += len(frames) - room
                frames = frames[:room]
        pending.extend(frames)
        count = self.options.count
        if count is not None and self.stats.events + len(pending) >= count:
            self._stop.set()

    def _flush_pending(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        count = self.options.count
        if count is not None and self.stats.events + len(batch) > count:
            batch = batch[: count - self.stats.events]
        self.stats.events += len(batch)
        # In records the prepare stage turns into rows as it decodes each, while the
        # record's objects are still in the CPU's cache
        for start in range(0, len(batch), PART_EVENTS):
            part = batch[start : start + PART_EVENTS]
            self._send(["E", part], len(part))

    def _send(self, record: list[Any], events: int = 0) -> None:
        if self._sender is None:
            return
        if self._sender.error is not None:
            raise WriterFailed(f"session writer is gone: {self._sender.error}")
        self._sender.send(record, events)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self._flush_pending()
            if self._collector is not None:
                self._collector.now_and_then()
            if self.drops:
                now = time.time_ns()
                for subject, n in self.drops.items():
                    self._send(["D", now, subject, n])
                self.drops.clear()

    # -- loss -----------------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        """Heartbeat round-trips mark the last moment we know nothing was missed, and catch a
        read loop that died while the connection still looks up (nats-py drops it silently
        when a message has a non-UTF-8 subject). Checks the stop flag too: asyncio.wait_for
        in Python 3.11 swallows a cancellation that arrives as the PONG does, so a flush
        during a busy stop would keep this loop going."""
        while not self._stop.is_set():
            await asyncio.sleep(HEARTBEAT_S)
            nc = self.nc
            if nc is None or not nc.is_connected:
                continue
            reader = getattr(nc, "_reading_task", None)
            if reader is not None and reader.done():
                self._dead_reader = True
                # No public way to restart the reader: force nats-py's own reconnect path.
                await nc._process_op_err(nats.errors.UnexpectedEOF())
                continue
            sent = time.time_ns()
            with contextlib.suppress(Exception):
                await nc.flush(timeout=2)
                # Everything the server sent before our PONG has been read.
                self._confirmed_ns = max(self._confirmed_ns, sent)

    async def _on_disconnected(self) -> None:
        self.stats.connected = False
        if self._gap_open or self._closing:
            return
        reason = (
            "read loop died (message with an unreadable subject?)"
            if self._dead_reader
            else ("disconnected")
        )
        self._dead_reader = False
        self._flush_pending()
        self._gap_open = True
        self.stats.gaps += 1
        self._send(["G+", self._confirmed_ns, reason])

    @staticmethod
    def _recorded_until(db: sqlite3.Connection, meta: dict[str, str]) -> int:
        """When the file's recording stopped: the last moment its recorders are known to
        have been recording (their stop, subscription, last event or the end of a gap; a
        killed one says nothing more), 0 for a file nothing recorded into. A gap a killed
        recorder left open ends now: the new part's gap goes on from there."""
        now = time.time_ns()
        if db.execute("UPDATE gaps SET end_ns = ? WHERE end_ns IS NULL", (now,)).rowcount:
            return now
        last = db.execute("SELECT ts_ns FROM events ORDER BY id DESC LIMIT 1").fetchone()
        gap_end = db.execute("SELECT max(end_ns) FROM gaps").fetchone()[0]
        marks = [meta.get(key, "") for key in ("stopped_ns", "subscribed_ns")]
        return max(
            last[0] if last else 0,
            gap_end or 0,
            *(int(mark) for mark in marks if mark.isdigit()),
        )

    def _appended_meta(self, before: dict[str, str], meta: dict[str, str]) -> dict[str, str]:
        """The metadata of a file added to: its servers and subjects are the earlier parts'
        and this one's. Replay asks before publishing to any server the file came from, so
        an append from elsewhere must not make it forget the first one."""
        ids = before.get("server_ids", before.get("server_id", "")).split(",")
        names = before.get("server_names", before.get("server_name", "")).split(",")
        # _note_server adds this part's servers once connected, after these
        self._servers = [(i, n) for i, n in itertools.zip_longest(ids, names, fillvalue="") if i]
        if self._servers:
            meta["server_ids"] = ",".join(i for i, _ in self._servers)
            meta["server_names"] = ",".join(n for _, n in self._servers)
        self._clusters = [c for c in before.get("server_clusters", "").split(",") if c]
        for key in ("server", "subjects"):
            parts = [p for p in before.get(key, "").split(",") if p]
            parts += [p for p in meta[key].split(",") if p not in parts]
            meta[key] = ",".join(parts)
        return meta

    def _note_server(self) -> None:
        """Every server the recording came from, by id and name (a restarted server has a
        new id, a cluster several): replay asks before publishing on the original subjects
        to any of them."""
        info = getattr(self.nc, "_server_info", {}) or {}
        server = (str(info.get("server_id", "")), str(info.get("server_name", "")))
        if server[0] and server not in self._servers:
            self._servers.append(server)
            ids, names = zip(*self._servers, strict=True)
            self._send(["M", {"server_ids": ",".join(ids), "server_names": ",".join(names)}])
        cluster = str(info.get("cluster", "") or "")
        if cluster and cluster not in self._clusters:
            self._clusters.append(cluster)
            self._send(["M", {"server_clusters": ",".join(self._clusters)}])

    async def _on_reconnected(self) -> None:
        self.stats.connected = True
        self._note_server()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=2)
        if self._gap_open:
            self._gap_open = False
            self._send(["G-", time.time_ns()])

    async def _on_error(self, exc: Exception) -> None:
        # The real reason behind NoServersError; an auth refusal outranks the reset after it.
        if not self.stats.connected and not is_auth_error(self._connect_error):
            self._connect_error = exc
            if is_auth_error(exc) or isinstance(exc, ssl.SSLError):
                self._hopeless.set()

    async def _on_closed(self) -> None:
        self.stats.connected = False

    async def _progress_loop(self, on_progress: Callable[[RecordStats], None]) -> None:
        while True:
            await asyncio.sleep(0.5)
            on_progress(self.stats)


def progress_line(stats: RecordStats) -> str:
    state = "recording" if stats.connected else "NOT RECORDING (disconnected)"
    return (
        f"{state}: {counted(stats.events, 'event')}, {stats.rate():,.0f}/s, "
        f"{stats.dropped:,} dropped, {counted(stats.gaps, 'gap')}"
    )


def print_progress(stats: RecordStats) -> None:
    sys.stderr.write("\r\x1b[2K" + progress_line(stats))
    sys.stderr.flush()
