"""`qixtui orchestrate` as a user runs it: a real nats-server, participants in this test's
event loop, the recorder as a child process, and a runner killed mid-step."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from helpers import eventually, qixtui_command, run_qixtui
from nats.aio.client import Client
from shop_participants import Shop

from qixtui.core import store
from qixtui_nats.server import EmbeddedServer

SHOP = str(Path(__file__).parent.parent / "sagas" / "shop.toml")
SHOP_TEXT = Path(SHOP).read_text()


@pytest.fixture
async def nc(nats_server: EmbeddedServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


async def qixtui(*args: str) -> tuple[int, str, str]:
    """Run the CLI without blocking this loop, so the participants keep answering."""
    proc = await asyncio.create_subprocess_exec(
        *qixtui_command(*args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_check_prints_the_plan() -> None:
    result = run_qixtui("orchestrate", "--check", SHOP)
    assert result.returncode == 0, result.stderr
    assert "saga shop: 5 steps, pivot at step 3 (ship)" in result.stdout
    assert "1. authorize  -> shop.cmd.payment.authorize  timeout 2s" in result.stdout
    assert "undo -> shop.cmd.payment.refund" in result.stdout
    assert "[after pivot: retried, never compensated]" in result.stdout


def test_check_shows_the_vars_given_and_refuses_unknown_ones() -> None:
    result = run_qixtui("orchestrate", "--check", SHOP, "--var", "amount=5")
    assert result.returncode == 0, result.stderr
    assert "  var amount = 5\n" in result.stdout
    assert '  var order_id = "order-${run_id}"\n' in result.stdout  # a default as written
    result = run_qixtui("orchestrate", "--check", SHOP, "--var", "nosuch=5")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "qixtui: --var nosuch: the saga `shop` declares no such variable"
    )


def test_check_names_the_line_of_an_unknown_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(SHOP_TEXT.replace('backoff = "100ms"', 'backof = "100ms"'))
    result = run_qixtui("orchestrate", "--check", str(bad))
    assert result.returncode == 1
    line = SHOP_TEXT.splitlines().index('backoff = "100ms"') + 1
    assert result.stderr.strip() == (
        f"qixtui: {bad}:{line}: Object contains unknown field `backof` (at steps[0])"
    )


def test_a_session_file_given_as_the_saga_is_one_line(tmp_path: Path) -> None:
    session = tmp_path / "shop.qix"
    store.create_session(session).close()
    result = run_qixtui("orchestrate", "--check", str(session))
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"qixtui: {session}: not a UTF-8 text file (byte ")


async def test_auto_runs_record_every_request_in_one_flow_per_run(
    nc: Client, nats_server: EmbeddedServer, session_path: Path
) -> None:
    shop = Shop()
    await shop.serve(nc)
    code, out, err = await qixtui(
        "orchestrate", SHOP, "--auto", "--runs", "2", "--json",
        "-s", nats_server.url, "-o", str(session_path), "--key", "/order_id",
    )  # fmt: skip
    assert code == 0, err
    reports = [json.loads(line) for line in out.splitlines()]
    assert [r["outcome"] for r in reports] == ["completed", "completed"]
    orders = {c[2]["order_id"] for c in shop.calls}
    assert orders == {f"order-{r['run_id']}" for r in reports}  # a fresh order id per run
    db = store.open_session(session_path)  # read-only: the recorder has finished the file
    runs = store.saga_runs(db)
    assert [(r.run_id, r.status) for r in runs] == [(r["run_id"], "completed") for r in reports]
    for report in reports:
        recorded = [
            e
            for e in store.iter_events(db, store.EventQuery(subject="shop.cmd.>"))
            if e.header("Qixtui-Saga-Run") == report["run_id"]
        ]
        assert len(recorded) == 5
        assert {e.header("X-Correlation-ID") for e in recorded} == {report["correlation_id"]}
    replies = list(store.iter_events(db, store.EventQuery(subject="_INBOX.>")))
    assert len(replies) == 10  # the recorder caught the last reply before it stopped
    # Only the bus's own traffic: no marker of qixtui's for a replay to send on.
    subjects = {e.subject for e in store.iter_events(db, store.EventQuery())}
    assert {s for s in subjects if s.startswith("qixtui.")} == {"qixtui.saga.shop.completed"}
    db.close()
    # Resuming a run that ended starts nothing: no recorder, no bus.
    before = await asyncio.to_thread(session_path.read_bytes)
    run_id = reports[0]["run_id"]
    done = run_qixtui(
        "orchestrate", "--resume", run_id, str(session_path), "-s", "nats://127.0.0.1:1"
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"qixtui: {session_path}: saga run {run_id} already ended, completed: every step "
        f"succeeded; nothing to resume (`qixtui orchestrate --show {session_path}` shows its "
        "steps)"
    )
    assert await asyncio.to_thread(session_path.read_bytes) == before
    # A second session into the same file adds to it.
    code, out, err = await qixtui(
        "orchestrate", SHOP, "--auto", "--json", "-s", nats_server.url, "-o", str(session_path)
    )
    assert code == 0, err
    db = store.open_session(session_path)
    assert len(store.saga_runs(db)) == 3
    assert len(list(store.iter_events(db, store.EventQuery(subject="_INBOX.>")))) == 15
    # The recorder took the rule flags; the second session, given none, kept them.
    assert json.loads(store.get_meta(db)["correlation_rules"])["correlation"]["keys"] == [
        "/order_id"
    ]
    db.close()
    bad = run_qixtui("orchestrate", SHOP, "--auto", "-s", nats_server.url, "--key", "order_id")
    assert bad.returncode == 1
    assert bad.stderr.startswith("qixtui: ")
    assert "not a JSON pointer" in bad.stderr
    # Found by review: --show read the rules too, and a broken default rules file failed it.
    shown = run_qixtui(
        "orchestrate", "--show", str(session_path), "--config", str(session_path.parent / "no")
    )
    assert shown.returncode == 0, shown.stderr


async def test_exit_code_says_whether_a_run_failed_cleanly(
    nc: Client, nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    shop = Shop(decline=True)
    await shop.serve(nc)
    code, out, err = await qixtui(
        "orchestrate", SHOP, "--auto", "--no-record", "-s", nats_server.url,
        "-o", str(tmp_path / "a.qix"),
    )  # fmt: skip
    assert code == 0, err  # a declined payment has nothing before it to undo: a clean failure
    assert ": failed: step `authorize` failed: error: declined" in out
    shop.decline = False
    shop.silent.add("shop.cmd.notify.send")
    fast = tmp_path / "fast.toml"
    fast.write_text(SHOP_TEXT.replace('timeout = "2s"', 'timeout = "100ms"'))
    code, out, err = await qixtui(
        "orchestrate", str(fast), "--auto", "--no-record", "-s", nats_server.url,
        "-o", str(tmp_path / "b.qix"),
    )  # fmt: skip
    assert code == 1
    assert "failed: step `notify` failed: timeout" in out


def patient_saga(session_path: Path) -> Path:
    """The shop saga with 60 s timeouts: on a loaded machine a held step must not time out
    (and the run end on its own) before the test's signal arrives."""
    patient = session_path.with_name("patient.toml")
    patient.write_text(SHOP_TEXT.replace('timeout = "2s"', 'timeout = "60s"'))
    return patient


async def test_resume_after_sigkill_resends_the_step_in_doubt_with_the_same_key(
    nc: Client, nats_server: EmbeddedServer, session_path: Path
) -> None:
    shop = Shop(hold={"shop.cmd.stock.reserve"})
    await shop.serve(nc)
    patient = patient_saga(session_path)
    proc = await asyncio.create_subprocess_exec(
        *qixtui_command(
            "orchestrate", str(patient), "--auto", "-s", nats_server.url, "-o", str(session_path)
        ),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    recorder_pid = 0
    try:
        # The participant holds the request: its intent is journaled, its result cannot be.
        await asyncio.wait_for(shop.held.wait(), 30)
        db = sqlite3.connect(session_path)
        (run_id,) = db.execute("SELECT run_id FROM saga_runs").fetchone()
        db.close()
        code, out, err = await qixtui(
            "orchestrate", "--resume", run_id, str(session_path), "-s", nats_server.url
        )
        assert code == 1
        assert err.strip() == (
            f"qixtui: saga run {run_id} is being run by process {proc.pid}; "
            "only one runner at a time"
        )
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        recorder_pid = int(store.get_meta(store.open_session(session_path))["recorder_pid"])
        # Its recorder sees its parent gone and stops on its own, finishing the file.
        for _ in range(300):
            if not store.pid_alive(recorder_pid):
                break
            await asyncio.sleep(0.05)
        assert not store.pid_alive(recorder_pid)
        assert store.recording_stopped(store.get_meta(store.open_session(session_path)))
        shop.release.set()

        db = sqlite3.connect(session_path)
        rows = db.execute(
            "SELECT step, kind, result FROM saga_journal WHERE run_id = ? ORDER BY seq", (run_id,)
        ).fetchall()
        db.close()
        assert rows == [("authorize", "action", "ok"), ("reserve", "action", None)]
        code, out, err = await qixtui("orchestrate", "--show", str(session_path))
        assert code == 0, err
        assert "2 reserve shop.cmd.stock.reserve -> IN DOUBT: intent journaled, no result" in out
        assert f"run by process {proc.pid}, which is no longer running" in out  # killed
        assert f"resume with: qixtui orchestrate --resume {run_id} {session_path}" in out

        code, out, err = await qixtui(
            "orchestrate", "--resume", run_id, str(session_path), "-s", nats_server.url
        )
        assert code == 0, err
        assert f"run {run_id}: step reserve (action) was IN DOUBT" in out
        assert f"run {run_id} shop: completed" in out
        key = f"{run_id}:reserve:action"
        assert (shop.seen[key], shop.applied[key]) == (2, 1)
        assert shop.applied[f"{run_id}:authorize:action"] == 1  # done steps are not resent
        keys = [h["Idempotency-Key"] for s, h, _ in shop.calls if s == "shop.cmd.stock.reserve"]
        assert keys == [key, key]

        db = store.open_session(session_path)
        journal = store.saga_journal(db, run_id)
        assert [(r.step, r.result, r.in_doubt) for r in journal[1:3]] == [
            ("reserve", "in_doubt", False),
            ("reserve", "ok", True),
        ]
        run = store.saga_run(db, run_id)
        assert run is not None
        assert (run.status, run.owner_pid) == ("completed", None)
        resent = [
            e
            for e in store.iter_events(db, store.EventQuery(subject="shop.cmd.stock.reserve"))
            if e.header("Idempotency-Key") == key
        ]
        # the first send recorded by the killed run's recorder, the second by the resume's
        assert len(resent) == 2
        db.close()
    finally:
        if proc.returncode is None:
            proc.kill()
        if recorder_pid and store.pid_alive(recorder_pid):
            os.kill(recorder_pid, signal.SIGINT)
            for _ in range(200):
                if not store.pid_alive(recorder_pid):
                    break
                await asyncio.sleep(0.05)


def test_a_missing_service_is_no_responders_or_says_why_it_is_a_timeout(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    """No shop on the bus. Recorded, the recorder's subscription to every subject keeps the
    server from answering "no responders": the timeout says so."""
    auto = ["orchestrate", SHOP, "--auto", "--json", "-s", nats_server.url]
    recorded = run_qixtui(*auto, "-o", str(tmp_path / "r.qix"))
    bare = run_qixtui(*auto, "--no-record", "-o", str(tmp_path / "b.qix"))
    assert recorded.returncode == bare.returncode == 0  # failed at once: nothing to undo
    assert "no responders looks like this while the recorder listens" in recorded.stdout
    assert "no responders on shop.cmd.payment.authorize" in bare.stdout
    # the file it made holds the journal alone, and reads as finished, not as killed
    info = run_qixtui("info", str(tmp_path / "b.qix"))
    assert "state:     finished" in info.stdout
    plain = [a for a in auto if a != "--json"]
    said = run_qixtui(*plain, "--no-record", "-o", str(tmp_path / "c.qix")).stderr
    assert f"journal (--no-record: no events recorded) in {tmp_path / 'c.qix'}" in said


def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    result = run_qixtui(
        "orchestrate", SHOP, "--auto", "-s", "nats://127.0.0.1:1", "-o", str(tmp_path / "x.qix")
    )
    assert result.returncode == 1
    assert result.stderr.startswith("qixtui: cannot connect to nats://127.0.0.1:1")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.qix").exists()


def test_resume_checks_the_file_and_the_run_before_recording_or_sending(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    session = tmp_path / "done.qix"
    store.create_session(session, {"saga": "shop"}).close()
    before = session.read_bytes()
    text = tmp_path / "notes.qix"
    text.write_text("not a session\n" * 50)
    for file, says in ((session, "no saga run 'nosuch'"), (text, "not an SQLite database")):
        result = run_qixtui("orchestrate", "--resume", "nosuch", str(file), "-s", nats_server.url)
        assert result.returncode == 1
        [line] = result.stderr.splitlines()
        assert says in line
    assert session.read_bytes() == before  # no recorder appended sync events to it


def test_the_stepper_needs_a_terminal(tmp_path: Path) -> None:
    result = run_qixtui("orchestrate", SHOP, "-o", str(tmp_path / "x.qix"))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "qixtui: the stepper draws a screen and needs a terminal; use --auto to run without "
        "stopping"
    )
    assert not (tmp_path / "x.qix").exists()


def in_flight_step(db: sqlite3.Connection) -> str | None:
    for run in store.saga_runs(db):
        for row in store.saga_journal(db, run.run_id):
            if row.result is None:
                return row.step
    return None


@pytest.mark.parametrize(
    ("stop", "code"),
    [
        (signal.SIGINT, 130),  # Ctrl-C: the terminal signals the whole group
        (signal.SIGTERM, 143),  # kill, timeout, a service manager: orchestrate alone
    ],
)
async def test_ctrl_c_or_sigterm_stops_with_one_line_and_leaves_the_run_resumable(
    nc: Client, nats_server: EmbeddedServer, session_path: Path, stop: int, code: int
) -> None:
    shop = Shop(hold={"shop.cmd.stock.reserve"})
    await shop.serve(nc)
    patient = patient_saga(session_path)
    proc = await asyncio.create_subprocess_exec(
        *qixtui_command(
            "orchestrate", str(patient), "--auto", "-s", nats_server.url, "-o", str(session_path)
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.wait_for(shop.held.wait(), 30)
        db = store.open_session(session_path)
        # Interrupt only this run's held request, journaled as sent and unanswered.
        await eventually(lambda: in_flight_step(db) == "reserve", 30, "the held step")
        recorder_pid = int(store.get_meta(db)["recorder_pid"])
        db.close()
        proc.send_signal(stop)
        if stop == signal.SIGINT:
            os.kill(recorder_pid, signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        shop.release.set()
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == code
    assert not store.pid_alive(recorder_pid)  # orchestrate stopped the recorder it started
    assert err.decode().startswith("qixtui: interrupted; the run is resumable")
    assert f"--resume RUN_ID {session_path} -s {nats_server.url}`" in err.decode()
    assert len(err.decode().strip().splitlines()) == 1
    db = store.open_session(session_path)  # read-only: the recorder finished the file
    (run,) = store.saga_runs(db)
    assert (run.status, run.reason, run.owner_pid) == ("running", "interrupted", None)
    assert [r.result for r in store.saga_journal(db, run.run_id)] == ["ok", None]


def test_a_recorder_already_writing_the_file_must_record_the_runs_subjects(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    """Found by a tester: into a file another recorder wrote with -S 'tst.>', a run went
    unrecorded and the command said "journal and events in FILE"."""
    out = tmp_path / "v.qix"
    # an earlier part recorded everything: the file's subjects then cover the run, the
    # running recorder's do not
    first = run_qixtui("record", "-s", nats_server.url, "-o", str(out), "--duration", "0.2")
    assert first.returncode == 0, first.stderr
    recorder = subprocess.Popen(
        qixtui_command("record", "-s", nats_server.url, "-o", str(out), "-S", "tst.>", "--append"),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        asyncio.run(eventually(lambda: subscribed(out, recorder.pid), 20, "it subscribed"))
        result = run_qixtui("orchestrate", SHOP, "--auto", "-s", nats_server.url, "-o", str(out))
        assert result.returncode == 1
        [line] = result.stderr.splitlines()
        assert line.startswith(f"qixtui: the recorder already writing {out} does not record ")
        assert "shop.cmd.payment.authorize" in line
        assert "qixtui.saga.shop.completed" in line
        assert "tst.>" not in line
        db = store.open_session(out)
        assert store.saga_runs(db) == []  # nothing sent, nothing journaled
        db.close()
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(30)


def subscribed(path: Path, pid: int) -> bool:
    """The recorder `pid` writes the file and has subscribed."""
    try:
        db = store.open_session(path)
    except store.SessionError:
        return False
    try:
        meta = store.get_meta(db)
    finally:
        db.close()
    return meta.get("recorder_pid") == str(pid) and int(meta.get("subscribed_ns", 0)) >= int(
        meta["started_ns"]
    )


def test_the_exit_summary_says_a_failed_step_was_skipped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Found by a tester: after skipping a declined payment in the stepper, the summary read
    `authorize_payment -> error: declined`, where --show says `(then skipped)`."""
    from qixtui.cli_saga import print_report
    from qixtui_nats.saga_runner import RunReport, StepReport

    report = RunReport("r1", "shop", "completed", "every step done", "c1")
    report.steps = [
        StepReport(1, "authorize_payment", "action", 0, "error", "declined", 3.0),
        StepReport(2, "reserve_stock", "action", 0, "ok", "", 2.0),
    ]
    print_report(report, False, Path("s.qix"), "")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "    1 authorize_payment -> error: declined (then skipped)"
    assert lines[1] == "    2 reserve_stock -> ok"


async def test_a_run_without_recording_is_resumed_without_recording(
    nc: Client, nats_server: EmbeddedServer, session_path: Path
) -> None:
    # A resume that recorded would hold the run's second half alone: a flow of its own, a
    # short "completed" one in compare's figures.
    shop = Shop(hold={"shop.cmd.stock.reserve"})
    await shop.serve(nc)
    command = qixtui_command(
        "orchestrate", str(patient_saga(session_path)), "--auto", "--no-record",
        "-s", nats_server.url, "-o", str(session_path),
    )  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        await asyncio.wait_for(shop.held.wait(), 30)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        shop.release.set()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 143
    said = err.decode()
    assert f"--resume RUN_ID {session_path} -s {nats_server.url} --no-record` continues it" in said
