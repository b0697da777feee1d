"""The saga runner: drives qixtui.core.saga's engine over NATS request/reply and journals it.

Every request's intent is committed to the session file before it is sent and its result
after, so a runner killed in between leaves the step in doubt; `resume` closes that entry as
`in_doubt` and sends the same request again with the same idempotency key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import nats
import nats.errors

from qixtui import child_command
from qixtui.core import store
from qixtui.core.saga import (
    Finished,
    Held,
    JournalEntry,
    Request,
    Response,
    SagaDef,
    SagaEngine,
    SagaError,
    Sleep,
    StepResult,
    format_duration,
    load_saga_text,
    resolve_vars,
    saga_outcome_subject,
    trace_headers,
)
from qixtui_nats.connect import Client, ConnectError, ConnectOptions, describe_connect_error

INJECTED = "failure injected by the stepper"
BUS_LOST = "the bus connection was lost"
LOST_IN_FLIGHT = f"{BUS_LOST} while waiting for the reply; the outcome is unknown"
ANNOUNCE_CONFIRM_S = 5  # how long the bus may take to confirm a run's end announcement


@dataclass(frozen=True)
class Choice:
    """What the gate decided about the next request (send, skip, abort, inject a failure,
    stop) or about a held failure (retry, skip, compensate, stop)."""

    verdict: Literal["send", "skip", "abort", "inject", "stop", "retry", "compensate"]
    payload: bytes | None = None  # an edited payload to send or retry with


Gate = Callable[[Request | Held, dict[str, str]], Awaitable[Choice]]


@dataclass
class StepReport:
    seq: int
    step: str
    kind: str
    attempt: int
    result: str
    detail: str
    ms: float
    in_doubt: bool = False


@dataclass
class RunReport:
    run_id: str
    saga: str
    outcome: str  # completed | compensated | failed | stopped (by the gate) | running
    reason: str
    correlation_id: str
    steps: list[StepReport] = field(default_factory=list)
    in_doubt: list[StepReport] = field(default_factory=list)  # found when resuming
    clean_end: bool = True  # the engine's word: nothing left that should have been undone
    # The bus confirmed the announcement of the end (False: the recording may lack it, and
    # the run's flow then stays running there).
    announced: bool = True

    @property
    def clean(self) -> bool:
        """Completed, failed and compensated every completed step (or had none to undo), or
        stopped on request."""
        if self.outcome == "failed":
            return self.clean_end
        return self.outcome in ("completed", "compensated", "stopped")

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "saga": self.saga,
            "outcome": self.outcome,
            "reason": self.reason,
            "correlation_id": self.correlation_id,
            "steps": [s.__dict__ for s in self.steps],
            "in_doubt": [s.__dict__ for s in self.in_doubt],
            "clean": self.clean,
            "announced": self.announced,
        }


def flow_status_of(report: RunReport) -> str:
    """The run's end as a flow status: the engine's word. Compensated only when every
    compensation it owed went through; one skipped or failed leaves the run failed (a
    compensation step in the report alone said compensated, even when it was skipped)."""
    return report.outcome if report.outcome in ("completed", "compensated") else "failed"


async def connect_bus(connect: ConnectOptions) -> Client:
    """Connect for a run; errors become one ConnectError line, never nats-py's tracebacks."""
    errors: list[BaseException] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    try:
        nc = Client()
        await nc.connect(
            **connect.kwargs(),
            connect_timeout=3,
            max_reconnect_attempts=1,  # the first connect fails fast on a wrong URL or login
            reconnect_time_wait=0.5,
            error_cb=on_error,
        )
    except Exception as exc:
        cause = errors[0] if errors else exc
        raise ConnectError(describe_connect_error(cause, connect.display_servers())) from None
    # Once connected, ride out a server restart (about 30 s): a request whose connection drops
    # is in doubt and resent once the client is back (SagaRunner._send).
    nc.options["max_reconnect_attempts"] = 60
    return nc


def new_run_id() -> str:
    return secrets.token_hex(6)


def open_journal(path: Path) -> sqlite3.Connection:
    """A connection for journal writes; WAL so the recorder's writer and readers go on."""
    db = store.open_session(path, readonly=False)
    db.execute("PRAGMA journal_mode = WAL")
    # Durable against a killed process (what the journal guards against); an OS crash may
    # lose the last commits.
    db.execute("PRAGMA synchronous = NORMAL")
    return db


class SagaRunner:
    def __init__(
        self,
        nc: Client,
        db: sqlite3.Connection,
        on_step: Callable[[str, Request, StepResult | None], None] | None = None,
        gate: Gate | None = None,
        recorded: bool = False,
    ) -> None:
        self.nc = nc
        self.db = db
        self.on_step = on_step  # ("intent" | "result", request, result) for live output
        # Asked before each request with the headers it will carry, and after a failed step
        # (which then holds instead of compensating); "stop" leaves the run resumable.
        self.gate = gate
        # Our recorder subscribes to every subject: the server then has a subscriber for each
        # request and never answers "no responders", so a missing service shows as a timeout.
        self.recorded = recorded
        self.pid = os.getpid()
        # Set by the stepper's quit: a request waiting for the bus to come back is not sent.
        self.stop_requested = False

    async def start(
        self,
        saga: SagaDef,
        definition: str,
        overrides: dict[str, str] | None = None,
        run_id: str | None = None,
    ) -> RunReport:
        run_id = run_id or new_run_id()
        variables = resolve_vars(saga, overrides or {}, run_id)
        run = store.SagaRunRecord(
            run_id=run_id,
            saga=saga.name,
            definition=definition,
            vars=variables,
            correlation_id=str(uuid.uuid4()),
            trace_id=secrets.token_hex(16),
            status="running",
            started_ns=time.time_ns(),
            owner_pid=self.pid,
        )
        store.insert_saga_run(self.db, run)
        engine = SagaEngine(saga, run_id, dict(variables), hold=self.gate is not None)
        return await self._drive(engine, run, RunReport(run_id, saga.name, "running", "", ""))

    async def resume(self, run_id: str) -> RunReport:
        run = store.claim_saga_run(self.db, run_id, self.pid)
        report = RunReport(run_id, run.saga, run.status, run.reason, run.correlation_id)
        try:
            saga = load_saga_text(run.definition, f"run {run_id}")
            rows = store.saga_journal(self.db, run_id)
            entries = [
                JournalEntry(
                    r.seq,
                    r.step,
                    r.kind,
                    r.attempt,
                    r.idempotency_key,
                    r.payload,
                    r.intent_ns,
                    r.result,
                    r.detail,
                    r.reply,
                )
                for r in rows
            ]
            engine, doubt = SagaEngine.from_journal(saga, run_id, run.vars, entries)
            engine.set_hold(self.gate is not None)
        except BaseException:
            store.finish_saga_run(self.db, run_id, run.status, run.reason, run.ended_ns)
            raise
        for r in rows:
            if r.result is not None:
                ms = ((r.result_ns or r.intent_ns) - r.intent_ns) / 1e6
                report.steps.append(
                    StepReport(r.seq, r.step, r.kind, r.attempt, r.result, r.detail, ms, r.in_doubt)
                )
        if run.status != "running":  # nothing left to do; say how it ended
            report.clean_end = engine.finished.clean if engine.finished else True
            store.finish_saga_run(self.db, run_id, run.status, run.reason, run.ended_ns)
            return report
        if doubt is not None:
            detail = "the runner stopped after sending; the outcome is unknown"
            store.journal_result(
                self.db, run_id, doubt.seq, "in_doubt", detail, None, time.time_ns()
            )
            found = StepReport(
                doubt.seq, doubt.step, doubt.kind, doubt.attempt, "in_doubt", detail, 0
            )
            report.in_doubt.append(found)
            report.steps.append(found)
        return await self._drive(engine, run, report)

    async def _drive(
        self, engine: SagaEngine, run: store.SagaRunRecord, report: RunReport
    ) -> RunReport:
        report.correlation_id = run.correlation_id
        finished: Finished | None = None
        stopped = False
        bus_lost = False
        try:
            while finished is None and not stopped and not bus_lost:
                action = engine.next(time.time_ns())
                if isinstance(action, Sleep):
                    await asyncio.sleep(max(0.0, (action.until_ns - time.time_ns()) / 1e9))
                elif isinstance(action, Finished):
                    finished = action
                elif isinstance(action, Held):
                    choice = await self.gate(action, {}) if self.gate else Choice("compensate")
                    if choice.verdict == "stop":
                        stopped = True
                    elif choice.verdict in ("retry", "skip"):
                        engine.resolve(choice.verdict, choice.payload)
                    else:
                        engine.resolve("compensate")
                elif self.nc.is_closed:  # gave up reconnecting: nothing can be sent (below)
                    bus_lost = True
                    engine.pending = None
                else:
                    headers = trace_headers(
                        run.run_id,
                        action,
                        run.correlation_id,
                        run.trace_id,
                        secrets.token_hex(8),
                        stepped=self.gate is not None,
                    )
                    choice = await self.gate(action, headers) if self.gate else Choice("send")
                    if choice.verdict == "stop":
                        stopped = True
                        engine.pending = None  # never sent nor journaled: built again on resume
                        continue
                    if choice.payload is not None and choice.payload != action.payload:
                        action = engine.edit_pending(choice.payload)
                    unsent = {
                        "skip": StepResult("skipped", "skipped by the user"),
                        "abort": StepResult("aborted", "aborted by the user"),
                        "inject": StepResult("error", INJECTED),
                    }.get(choice.verdict)
                    if unsent is None and not await self._bus_back():
                        # Nothing can be sent: a timeout now would fail the step and give up
                        # compensations no participant ever saw. The run waits for its resume.
                        stopped, bus_lost = self.stop_requested, not self.stop_requested
                        engine.pending = None
                        continue
                    report.steps.append(await self._send(engine, run, action, headers, unsent))
        finally:
            if finished is not None:
                report.outcome, report.reason = finished.outcome, finished.reason
                report.clean_end = finished.clean
                store.finish_saga_run(
                    self.db, run.run_id, finished.outcome, finished.reason, time.time_ns()
                )
            else:  # stopped or interrupted: the run stays resumable by any runner
                report.outcome = "stopped" if stopped else "running"
                report.reason = "stopped before the next step" if stopped else "interrupted"
                if bus_lost:
                    report.reason = f"{BUS_LOST} and did not come back; resume it once it is up"
                store.finish_saga_run(self.db, run.run_id, "running", report.reason, None)
        if finished is not None:
            await self._announce(run, report)
        return report

    async def _announce(self, run: store.SagaRunRecord, report: RunReport) -> None:
        """Publish how the run ended, in the run's flow, as an orchestrator announces the end
        of a process: the recording then knows the flow's status without the journal."""
        ended = flow_status_of(report)
        headers = {
            "Qixtui-Saga-Run": run.run_id,
            "X-Correlation-ID": run.correlation_id,
            "traceparent": f"00-{run.trace_id}-{secrets.token_hex(8)}-01",
        }
        body = {
            "run_id": run.run_id,
            "outcome": report.outcome,
            "reason": report.reason,
            # a person decided each step: its times hold their pauses (compare leaves them out)
            "stepped": self.gate is not None,
        }
        try:
            await self.nc.publish(
                saga_outcome_subject(run.saga, ended), json.dumps(body).encode(), headers=headers
            )
            await self.nc.flush(timeout=ANNOUNCE_CONFIRM_S)
        except (nats.errors.Error, OSError):
            report.announced = False

    async def _send(
        self,
        engine: SagaEngine,
        run: store.SagaRunRecord,
        request: Request,
        headers: dict[str, str],
        unsent: StepResult | None = None,
    ) -> StepReport:
        """Journal the intent, send (unless the stepper settled it: `unsent`), journal the
        result."""
        started = time.time_ns()
        store.journal_intent(
            self.db,
            store.JournalRow(
                run_id=run.run_id,
                seq=request.seq,
                step=request.step,
                kind=request.kind,
                attempt=request.attempt,
                idempotency_key=request.idempotency_key,
                subject=request.subject,
                payload=request.payload,
                headers=headers,
                in_doubt=request.in_doubt,
                intent_ns=started,
            ),
        )
        if self.on_step:
            self.on_step("intent", request, None)
        if unsent is None:
            reconnects = self.nc.stats["reconnects"]
            response = await self._request(request, headers)
            now = time.time_ns()
            if response.status != "reply" and (
                not self.nc.is_connected or self.nc.stats["reconnects"] != reconnects
            ):
                # The request or its reply may have been lost with the connection, or may
                # still arrive: resent with the same idempotency key once the bus is back.
                result = StepResult("in_doubt", LOST_IN_FLIGHT)
                engine.apply(result, now)
            else:
                result = engine.feed(response, now)
        else:
            response, now, result = Response("error"), time.time_ns(), unsent
            engine.apply(result, now)
        store.journal_result(
            self.db,
            run.run_id,
            request.seq,
            result.kind,
            result.detail,
            response.payload if response.status == "reply" else None,
            now,
        )
        if self.on_step:
            self.on_step("result", request, result)
        return StepReport(
            request.seq,
            request.step,
            request.kind,
            request.attempt,
            result.kind,
            result.detail,
            (now - started) / 1e6,
            request.in_doubt,
        )

    async def _bus_back(self) -> bool:
        """Connected, after waiting while the client reconnects; False once it gave up (or
        the stepper quit meanwhile)."""
        while not self.nc.is_connected:
            if self.nc.is_closed or self.stop_requested:
                return False
            await asyncio.sleep(0.1)
        return True

    async def _request(self, request: Request, headers: dict[str, str]) -> Response:
        asked = asyncio.ensure_future(
            self.nc.request(
                request.subject, request.payload, timeout=request.timeout_s, headers=headers
            )
        )
        try:
            # A client that gives up reconnecting leaves the request to its timeout: stop
            # waiting then, no reply can come.
            while not asked.done() and not self.nc.is_closed:
                await asyncio.wait([asked], timeout=0.1)
            if not asked.done():
                return Response("error", detail=BUS_LOST)
            msg = asked.result()
        except nats.errors.NoRespondersError:
            return Response("no_responders", detail=f"no responders on {request.subject}")
        except nats.errors.TimeoutError:
            detail = f"no reply within {format_duration(request.timeout_s)}"
            if self.recorded:
                detail += " (no responders looks like this while the recorder listens)"
            return Response("timeout", detail=detail)
        except nats.errors.Error as exc:
            return Response("error", detail=f"{type(exc).__name__}: {exc}".rstrip(": "))
        finally:
            asked.cancel()  # done already, or given up (or this runner cancelled)
        pairs = list(msg.headers.items()) if msg.headers else None
        return Response("reply", msg.data, pairs)


# --- the recording that holds the run's events ---------------------------------------------


class RecordingError(Exception):
    """The recorder could not be started or did not come up; the message is one line."""


class Recording:
    """The `qixtui record` process that records a run's traffic into the session file.

    The recorder is the only writer of events; the runner writes only journal rows. If a
    recorder already writes the file it is used as is and left running.
    """

    def __init__(self, path: Path, record_args: list[str], env: dict[str, str]) -> None:
        self.path = path
        self.record_args = record_args  # connection flags without secrets (those go in env)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def attached(self) -> bool:
        """Is a `qixtui record` process writing this session right now?"""
        if not self.path.exists():
            return False
        db = store.open_session(self.path, readonly=True)
        try:
            return store.being_recorded(store.get_meta(db))
        finally:
            db.close()

    def spawn(self) -> None:
        """Start a recorder unless one already writes the file; then `ready` before sending."""
        if not self.attached():
            cmd = child_command(
                "qixtui", "record", "-o", str(self.path), "--parent-pid", str(os.getpid())
            )
            if self.path.exists():
                cmd.append("--append")
            self.proc = subprocess.Popen(
                [*cmd, *self.record_args],
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )

    async def ready(self, within: float = 15.0) -> None:
        """Wait until the recorder writing the file says it has subscribed: everything
        published after that is recorded. (A marker published onto the bus until it showed up
        in the file did the same, but stayed in the recording, and a replay sent it on.)"""
        deadline = time.monotonic() + within
        db: sqlite3.Connection | None = None
        try:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RecordingError(f"the recorder stopped: {self._stderr()}")
                if db is None:
                    with contextlib.suppress(store.SessionError):
                        db = store.open_session(self.path, readonly=True)
                if db is not None:
                    with contextlib.suppress(sqlite3.OperationalError):
                        if self._subscribed(store.get_meta(db)):
                            return
                await asyncio.sleep(0.05)
            raise RecordingError(f"the recorder did not write {self.path} within {within:g}s")
        finally:
            if db is not None:
                db.close()

    def missed(self, subjects: list[str]) -> list[str]:
        """Which of `subjects` the recorder already writing the file (one we did not start)
        does not subscribe to: those messages would be in no file."""
        if self.proc is not None:
            return []  # ours records every subject
        db = store.open_session(self.path, readonly=True)
        try:
            recorded = store.recording_subjects(store.get_meta(db))
        finally:
            db.close()
        covers = store.subject_regex(recorded)
        return [s for s in subjects if covers is None or not covers.fullmatch(s)]

    def _subscribed(self, meta: dict[str, str]) -> bool:
        """The recorder now writing the file (ours, if we started one) has subscribed: an
        appended file keeps the last recorder's mark, older than this one's start."""
        if self.proc is not None and meta.get("recorder_pid") != str(self.proc.pid):
            return False
        started, subscribed = meta.get("started_ns", ""), meta.get("subscribed_ns", "")
        return (
            store.being_recorded(meta)
            and started.isdigit()
            and subscribed.isdigit()
            and int(subscribed) >= int(started)
        )

    async def stop(self) -> None:
        """Stop the recorder if we started it. On SIGINT it unsubscribes and round-trips to
        the server first, so the run's last reply, already delivered to us, is kept."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(self.proc.wait)
        if code != 0:
            raise RecordingError(f"the recorder exited with {code}: {self._stderr()}")

    def abort(self) -> None:
        """Stop a recorder we started and that is still running, keeping what it wrote."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _stderr(self) -> str:
        if self.proc is None or self.proc.stderr is None or self.proc.poll() is None:
            return ""
        lines = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit code {self.proc.returncode}"


__all__ = ["RecordingError", "RunReport", "SagaError", "SagaRunner", "open_journal"]
