"""The replayer: publish a recording's selected events onto a bus, paced, confirmed, resumable.

The rules (selection, schedule, deny list, subject and header rewrite) are in
qixtui.core.replay; this module does the I/O. The connection never reconnects, so nats-py
buffers nothing while disconnected: a dropped connection stops the replay, and the position
saved is the last message handed to the client, so a resume never sends a message twice.
Messages handed over after the last PING/PONG confirmation are reported as in doubt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors

from qixtui.core import filters, store
from qixtui.core.replay import (
    REPLIES_REFRESH_SQL,
    REPLIES_TABLE_SQL,
    DryRun,
    OutRow,
    Plan,
    Replay,
    Schedule,
    oversize_bound_sql,
    selection_sql,
    unanswered,
)
from qixtui.core.text import counted
from qixtui_nats.connect import Client, ConnectError, ConnectOptions, describe_connect_error

# At a paced speed the replayer confirms (PING/PONG) whenever it is about to idle for
# longer than IDLE_CONFIRM_NS; at full speed, after every page.
IDLE_CONFIRM_NS = 2_000_000
SAVE_EVERY_S = 0.2
FLUSH_TIMEOUT_S = 5
PAGE = 4096
FIRST_PAGE = 16
PAGE_BYTES = 4 * 1024 * 1024
CRLF = b"\r\n"
NO_RESPONDERS_LINE = b"NATS/1.0 503"  # the status line the server sends when no one listens


class ReplayClient(Client):
    """A nats-py client that publishes pre-built frames.

    nats-py's publish takes headers as a dict, which loses repeated names and their order;
    recorded headers go out as the recorded pairs instead.
    """

    on_lost: Callable[[], None] | None = None
    # Answers on this subscription that are the server's own "no responders" (a header block
    # opening `NATS/1.0 503`) go to `on_no_responders` instead: nats-py reads that status line
    # and a reply's ordinary `Status: 503` header alike.
    answers_sid: int | None = None
    on_no_responders: Callable[[], None] | None = None

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        if (
            sid == self.answers_sid
            and self.on_no_responders is not None
            and not data
            and headers
            and headers.startswith(NO_RESPONDERS_LINE)
        ):
            self.on_no_responders()
            return
        await super()._process_msg(sid, subject, reply, data, headers)

    async def _lost(self) -> None:
        if self.on_lost is not None:
            self.on_lost()

    def queue(self, frame: bytes) -> None:
        self._pending.append(frame)
        self._pending_data_size += len(frame)

    async def push(self) -> None:
        """Hand everything queued to the socket now: return once nats-py's flusher wrote it
        and the transport drained (TCP flow control), or once the flusher is gone.

        nats-py's own forced flush waits for a future that a flusher cancelled by a lost
        connection never resolves; this waits for the flusher task as well.
        """
        flusher = self._flusher_task
        if flusher is None or flusher.done() or not self.is_connected or self._flush_queue is None:
            return
        written: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._flush_queue.put(written)
        await asyncio.wait((written, flusher), return_when=asyncio.FIRST_COMPLETED)

    async def confirm(self) -> None:
        """Return once the server has processed everything queued so far.

        nats-py writes its PING straight to the socket, ahead of queued frames, so they are
        pushed first.
        """
        await self.push()
        await self.flush(timeout=FLUSH_TIMEOUT_S)

    async def ping(self) -> asyncio.Future[Any]:
        """Push everything queued, then a PING without waiting: the future completes when
        the server's PONG says it processed all of it."""
        await self.push()
        pong: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._send_ping(pong)
        return pong


def frame(subject: str, reply: str | None, headers: bytes, payload: bytes) -> bytes:
    total = len(headers) + len(payload)
    if reply:
        head = f"HPUB {subject} {reply} {len(headers)} {total}\r\n"
    else:
        head = f"HPUB {subject} {len(headers)} {total}\r\n"
    return b"".join((head.encode(), headers, payload, b"\r\n"))


def frames(out: list[OutRow]) -> bytes:
    """The HPUB frames of a page of messages without reply-to, as one buffer."""
    parts: list[bytes] = []
    add = parts.extend
    for _, _, _, _, subject, _, headers, payload in out:
        size = len(headers)
        add((f"HPUB {subject} {size} {size + len(payload)}\r\n".encode(), headers, payload, CRLF))
    return b"".join(parts)


@dataclass
class Target:
    url: str
    server_id: str
    server_name: str
    max_payload: int
    headers: bool
    cluster: str = ""  # its cluster's name, if it is a node of one
    address: str = ""  # the URL connected to, of those given

    def marks(self) -> tuple[str, str, str, str]:
        """What tells whether it is a server a recording came from (looks_like_source)."""
        return self.server_id, self.server_name, self.cluster, self.address


@dataclass
class Progress:
    """Where a run is: what was handed to the client, what the server confirmed."""

    first_seq: int  # the seq before this run's first message
    last_seq: int
    last_event_id: int
    confirmed_seq: int
    requests: int = 0
    replies: int = 0
    no_responders: int = 0  # requests the server answered itself: nobody subscribed
    status: str = "running"
    error: str | None = None
    lateness_ns: list[int] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return self.last_seq - self.first_seq

    def answers(self) -> str:
        """What the requests got back, for a person; "" when none were sent."""
        if not self.requests:
            return ""
        left = unanswered(self.requests, self.replies, self.no_responders)
        return (
            f"{counted(self.requests, 'request')}: {counted(self.replies, 'reply')}, "
            f"{self.no_responders:,} with no responders, {left:,} unanswered"
        )


async def connect(options: ConnectOptions) -> tuple[ReplayClient, Target]:
    """Connect without reconnecting, and read what the target's INFO says about itself."""
    nc = ReplayClient()
    errors: list[BaseException] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    try:
        await nc.connect(
            **options.kwargs(),
            # nats-py never returns from a failed first connect without reconnects allowed;
            # one attempt fails fast, and reconnecting is switched off once connected.
            allow_reconnect=True,
            max_reconnect_attempts=1,
            connect_timeout=3,
            error_cb=on_error,
            disconnected_cb=nc._lost,
            closed_cb=nc._lost,
        )
    except Exception as exc:
        cause = errors[0] if errors else exc
        raise ConnectError(describe_connect_error(cause, options.display_servers())) from None
    nc.options["allow_reconnect"] = False
    info = nc._server_info or {}
    try:
        max_payload = int(info.get("max_payload", nc.max_payload))
    except (TypeError, ValueError):
        max_payload = 0
    if max_payload <= 0:  # every size check depends on it: no guessing
        await nc.close()
        raise ConnectError(
            f"{options.display_servers()} names no usable max_payload "
            f"({info.get('max_payload')!r}): is it a NATS server?"
        )
    return nc, Target(
        url=options.display_servers(),
        server_id=str(info.get("server_id", "")),
        server_name=str(info.get("server_name", "")),
        max_payload=max_payload,
        headers=bool(info.get("headers", False)),
        cluster=str(info.get("cluster", "") or ""),
        address=nc.connected_url.geturl() if nc.connected_url else "",
    )


def pages(db: sqlite3.Connection, plan: Plan, after_id: int) -> Iterator[list[Any]]:
    """The selected rows in pages; reply-tos recorded meanwhile (a live file) join the deny
    set before the rows that could use them are read.

    A page holds up to PAGE rows and, judged by the payloads of the page before (the first
    is small), about PAGE_BYTES: a page and its frames are in memory at once, and 4096
    one-megabyte messages would be 4 GB.
    """
    db.execute(REPLIES_TABLE_SQL)
    filters.install_functions(db)
    scanned = 0
    limit = FIRST_PAGE
    while True:
        top = db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
        if top > scanned:
            db.execute(REPLIES_REFRESH_SQL, (scanned,))
            scanned = top
        sql, params = selection_sql(plan.selection, after_id, limit, plan.last_id)
        page = db.execute(sql, params).fetchall()
        if not page:
            return
        yield page
        after_id = page[-1][0]
        payload = sum(len(row[5]) for row in page)
        limit = max(1, min(PAGE, PAGE_BYTES * len(page) // max(payload, 1)))


def rows(db: sqlite3.Connection, plan: Plan, after_id: int) -> Iterator[tuple[Any, ...]]:
    for page in pages(db, plan, after_id):
        yield from page


def may_exceed(db: sqlite3.Connection, plan: Plan, after_id: int, max_payload: int) -> bool:
    """False when no selected message can be larger than max_payload (a cheap SQL bound)."""
    filters.install_functions(db)
    sql, params = oversize_bound_sql(
        plan.selection, after_id, plan.session, max_payload, plan.last_id
    )
    return bool(db.execute(sql, params).fetchone()[0])


def dry_run(
    db: sqlite3.Connection, plan: Plan, after_id: int, last_seq: int, max_payload: int
) -> tuple[DryRun, Replay]:
    """Every message the plan would publish, counted; nothing is sent."""
    replay = Replay(plan, last_seq)
    report = DryRun(max_payload)
    for row in rows(db, plan, after_id):
        if replay.done:
            break
        out = replay.next(row)
        if out is not None:
            report.add(out)
    return report, replay


class Replayer:
    """Publishes a plan's messages on a connected client, paced by the recorded timestamps."""

    def __init__(
        self,
        nc: ReplayClient,
        db: sqlite3.Connection,
        plan: Plan,
        *,
        after_id: int = 0,
        last_seq: int = 0,
        save: Callable[[Progress], None] | None = None,
    ) -> None:
        self.nc = nc
        self.db = db
        self.plan = plan
        self.after_id = after_id
        self.replay = Replay(plan, last_seq)
        self.progress = Progress(last_seq, last_seq, after_id, last_seq)
        self.save = save or (lambda progress: None)
        self._stop = asyncio.Event()
        self._stop_reason: str | None = None
        self._inbox = ""
        self._replied = asyncio.Event()

    def stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop.set()

    async def run(self) -> Progress:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop, "interrupted")
        self.nc.on_lost = lambda: self.stop("disconnected")
        progress = self.progress
        try:
            if self.plan.requests:
                self._inbox = self.nc.new_inbox()
                answers = await self.nc.subscribe(self._inbox + ".*", cb=self._on_reply)
                self.nc.answers_sid = answers._id
                self.nc.on_no_responders = self._on_no_responders
            await self._publish()
            await self.nc.confirm()
            progress.confirmed_seq = progress.last_seq
            if self.plan.requests:
                await self._await_replies()
        except (nats.errors.Error, OSError, asyncio.CancelledError) as exc:
            self.stop(f"connection lost ({type(exc).__name__})")
        if self._stop_reason is not None:
            progress.status = "stopped"
            progress.error = self._stop_reason
        else:
            progress.status = "done"
        self.save(progress)
        return progress

    def _running(self) -> bool:
        if self._stop.is_set() or not self.nc.is_connected:
            self.stop(self._stop_reason or "disconnected")
            return False
        return True

    def _reply_to(self, seq: int, request: bool) -> str | None:
        if not (self._inbox and request):
            return None
        self.progress.requests += 1
        return f"{self._inbox}.{seq}"

    def _request_frame(self, out: OutRow) -> bytes:
        seq, _, _, _, subject, request, headers, payload = out
        return frame(subject, self._reply_to(seq, request), headers, payload)

    async def _confirm(self, last_save: float) -> float:
        """Confirm what was handed over and, now and then, save the position."""
        await self.nc.confirm()
        self.progress.confirmed_seq = self.progress.last_seq
        if time.monotonic() - last_save > SAVE_EVERY_S:
            self.save(self.progress)
            return time.monotonic()
        return last_save

    async def _publish(self) -> None:
        if self.plan.speed is None:
            await self._publish_max()
        else:
            await self._publish_paced()

    async def _publish_paced(self) -> None:
        nc, replay, progress = self.nc, self.replay, self.progress
        schedule = Schedule(self.plan.speed, self.plan.max_gap_ns)
        start_ns = 0
        unconfirmed = False
        last_save = time.monotonic()
        for row in rows(self.db, self.plan, self.after_id):
            if not self._running() or replay.done:
                return
            out = replay.next(row)
            if out is None:
                continue
            due = schedule.due(out.ts_ns)
            if start_ns == 0:
                start_ns = time.monotonic_ns()
            wait = start_ns + due - time.monotonic_ns()
            if wait > IDLE_CONFIRM_NS and unconfirmed:
                last_save = await self._confirm(last_save)
                unconfirmed = False
                wait = start_ns + due - time.monotonic_ns()
            if (wait > 0 and await self._idle(wait / 1e9)) or not self._running():
                # Stopped while waiting: this message was numbered but never sent.
                replay.seq -= 1
                return
            nc.queue(
                frame(out.subject, self._reply_to(out.seq, out.request), out.headers, out.payload)
            )
            progress.last_seq = out.seq
            progress.last_event_id = out.event_id
            unconfirmed = True
            await nc.push()
            progress.lateness_ns.append(time.monotonic_ns() - start_ns - due)

    async def _publish_max(self) -> None:
        """The hot loop, a page at a time: the core turns a page of rows into messages, they
        are framed into one buffer and handed to nats-py's flusher, which writes and drains
        it (TCP flow control holds). A PING goes out after a page and its PONG confirms that
        page while the next ones are framed: one confirmation in flight, never waited for
        here. Connection state only changes while awaiting, so it is checked after each push.
        """
        nc, replay, progress = self.nc, self.replay, self.progress
        inbox = self._inbox
        pong: asyncio.Future[Any] | None = None
        pong_seq = progress.confirmed_seq

        def answered() -> bool:
            if pong is None or not pong.done():
                return False
            if not pong.cancelled() and pong.exception() is None:
                progress.confirmed_seq = pong_seq
            return True

        last_save = time.monotonic()
        if not self._running():
            return
        try:
            for page in pages(self.db, self.plan, self.after_id):
                out = replay.page(page)
                if out:
                    if inbox:
                        nc.queue(b"".join([self._request_frame(o) for o in out]))
                    else:
                        nc.queue(frames(out))
                    last = out[-1]
                    progress.last_seq, progress.last_event_id = last[0], last[1]
                    if pong is None or answered():
                        pong, pong_seq = await nc.ping(), progress.last_seq
                    else:
                        await nc.push()
                    if time.monotonic() - last_save > SAVE_EVERY_S:
                        self.save(progress)
                        last_save = time.monotonic()
                    if not self._running():
                        return
                if replay.done:
                    return
        finally:
            answered()

    async def _idle(self, seconds: float) -> bool:
        """Wait until a message is due; True when the replay was stopped meanwhile."""
        if seconds < 0.05:
            await asyncio.sleep(seconds)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    async def _await_replies(self, within: float = 1.0) -> None:
        deadline = time.monotonic() + within
        while self.progress.replies + self.progress.no_responders < self.progress.requests:
            self._replied.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._replied.wait(), left)

    async def _on_reply(self, msg: Any) -> None:
        self.progress.replies += 1
        self._replied.set()

    def _on_no_responders(self) -> None:
        self.progress.no_responders += 1
        self._replied.set()


def open_audit(path: Path) -> sqlite3.Connection:
    """A writable connection for the audit row, next to the read-only one the events come
    from; raises store.SessionError or sqlite3.Error."""
    return store.open_session(path, readonly=False)


async def run_audited(
    nc: ReplayClient,
    target: Target,
    db: sqlite3.Connection,
    audit: sqlite3.Connection,
    plan: Plan,
    *,
    after_id: int = 0,
    last_seq: int = 0,
    resumed_from: int | None = None,
    started: Callable[[Replayer], None] | None = None,
) -> tuple[int, Progress, Replayer]:
    """Publish a plan with its audit row: written before the first message, updated with the
    position while it runs and with the outcome at the end. `started` gets the replayer
    (to stop it, or to watch its progress) before the first message goes out."""
    with store.transaction(audit):
        replay_id = store.add_replay(
            audit,
            {
                "session": plan.session,
                "started_ns": time.time_ns(),
                "target": target.url,
                "target_server_id": target.server_id,
                "target_server_name": target.server_name,
                "plan": plan.to_json(),
                "status": "running",
                "last_event_id": after_id,
                "last_seq": last_seq,
                "confirmed_seq": last_seq,
                "resumed_from": resumed_from,
            },
        )

    def save(progress: Progress) -> None:
        with store.transaction(audit):
            store.update_replay(
                audit,
                replay_id,
                {
                    "status": progress.status,
                    "last_event_id": progress.last_event_id,
                    "last_seq": progress.last_seq,
                    "confirmed_seq": progress.confirmed_seq,
                    "sent": progress.sent,
                    "replies": progress.replies,
                    "skipped": json.dumps(dict(replayer.replay.skipped)),
                    "error": progress.error,
                    "ended_ns": None if progress.status == "running" else time.time_ns(),
                },
            )

    replayer = Replayer(nc, db, plan, after_id=after_id, last_seq=last_seq, save=save)
    if started is not None:
        started(replayer)
    return replay_id, await replayer.run(), replayer
