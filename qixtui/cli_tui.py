"""The verbs that open the TUI: `tap` (record a live bus and watch it) and `replay` (reopen a file).

Textual is imported inside the commands, so headless verbs stay light.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from qixtui import child_command
from qixtui.cli import (
    connection_options,
    fail,
    main,
    need_terminal,
    subjects_option,
    terminate_exits,
)
from qixtui.cli_rules import RulesError, pop_rules, rule_argv, rule_options
from qixtui.core import store

RECORDER_START_S = 10.0
QUIET_STOP_S = 1.0  # a recorder that closes its file faster than this stops without a word


def default_session_path(kind: str = "tap") -> Path:
    """A new file under the user data dir (made if need be), named by what made it and the
    local time."""
    import platformdirs

    base = Path(platformdirs.user_data_dir("qixtui")) / "sessions"
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{base}: cannot create the sessions folder ({exc.strerror or exc}); use -o FILE")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = base / f"{kind}-{stamp}.qix"
    n = 1
    while path.exists():
        n += 1
        path = base / f"{kind}-{stamp}-{n}.qix"
    return path


def recorder_command(output: Path, conn: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """argv and environment for `qixtui record`; secrets travel in the environment, never argv."""
    argv = child_command("qixtui", "record", "-o", str(output), "--parent-pid", str(os.getpid()))
    for flag, key in (
        ("--server", "servers"),
        ("--context", "context"),
        ("--creds", "creds"),
        ("--nkey", "nkey"),
        ("--user", "user"),
        ("--tlsca", "tlsca"),
        ("--tlscert", "tlscert"),
        ("--tlskey", "tlskey"),
    ):
        if conn.get(key):
            argv += [flag, str(conn[key])]
    env = dict(os.environ)
    if conn.get("token"):
        env["NATS_TOKEN"] = str(conn["token"])
    return argv, env


def wait_for_session(proc: subprocess.Popen[bytes], path: Path, log: Path) -> None:
    """Return once the recorder is connected and writing, or fail with its own message."""
    deadline = time.monotonic() + RECORDER_START_S
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            message = log.read_text(errors="replace").strip().splitlines()
            said = message[-1].removeprefix("qixtui: ") if message else f"recorder exited ({code})"
            if any(line.startswith("Traceback") for line in message):  # keep it, say where
                fail(f"{said} (the recorder's log: {log})")
            if not path.exists():  # nothing recorded: the log would be all that is left
                log.unlink(missing_ok=True)
            fail(said)
        try:
            db = store.open_session(path, readonly=True)
        except store.SessionError:
            time.sleep(0.05)
            continue
        try:
            # The recorder writes the server's id once its connection is up.
            if store.get_meta(db).get("server_id"):
                return
        finally:
            db.close()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    fail(f"the recorder did not create {path} within {RECORDER_START_S:.0f}s")


def stop_recorder(proc: subprocess.Popen[bytes], path: Path) -> int | None:
    """SIGINT, so the recorder flushes and closes the file, then wait as long as closing takes:
    the last flows and the read indexes filters use take a while on millions of events, and
    the terminal says so. Ctrl-C while waiting kills the recorder and its writers at once:
    every committed event stays, the indexes are left for `qixtui index`."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGINT)
    try:
        try:
            proc.wait(QUIET_STOP_S)
        except subprocess.TimeoutExpired:
            click.echo(
                f"qixtui: finishing {path}: closing the last flows and building the indexes "
                "filters use (about 15 s a million events); Ctrl-C stops at once, keeping "
                "every event already committed",
                err=True,
            )
            proc.wait()
    except KeyboardInterrupt:
        # The recorder leads its own process group, its writer process included.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        click.echo(
            f"qixtui: stopped before {path} was finished: it holds every event committed by "
            "then (any still on their way to the file are not in it); filters will scan until "
            f"`qixtui index {path}` builds its indexes",
            err=True,
        )
    return proc.returncode


def detach_recorder(proc: subprocess.Popen[bytes]) -> None:
    """The terminal is gone: ask the recorder to stop and let it finish the file on its own
    (it runs in its own session and writes to its log, so the hang-up does not reach it)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)


@main.command()
@connection_options
@click.option(
    "-o", "--output", type=click.Path(), help="Session file to create (default: user data dir)."
)
@subjects_option
@rule_options
def tap(output: str | None, subjects: tuple[str, ...], **conn: Any) -> None:
    """Record a live bus into a new session file and watch it in the TUI."""
    path = Path(output) if output else default_session_path()
    rules = rule_argv(conn)
    try:
        pop_rules(conn)  # checked here; the recorder reads them again from its flags
        store.ensure_new(path)  # before starting anything: a clear line, nothing to clean up
    except (RulesError, store.SessionError) as exc:
        fail(str(exc))
    need_terminal("qixtui tap", "qixtui record records without one")
    argv, env = recorder_command(path, conn)
    for subject in subjects:
        argv += ["--subject", subject]
    argv += rules
    if conn.get("user") and "NATS_PASSWORD" not in env:
        if not sys.stdin.isatty():
            fail("--user needs a password: set NATS_PASSWORD")
        import getpass

        env["NATS_PASSWORD"] = getpass.getpass(f"password for {conn['user']}: ")
    log = path.with_name(path.name + ".log")
    terminate_exits()  # from here on SIGTERM goes through the `finally` that stops the recorder
    with log.open("wb") as err:
        # Its own session: the terminal's Ctrl-C reaches the UI, which stops the recorder itself.
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env, start_new_session=True
        )
    try:
        wait_for_session(proc, path, log)
        from qixtui.cli_demo import hang_up_stops
        from qixtui.ui.app import QixtuiApp

        hang_up_stops(lambda: detach_recorder(proc))
        app = QixtuiApp(path, recorder_pid=proc.pid)
        try:
            app.run()
        finally:
            # An open reader would keep the recorder from making the file self-contained.
            app.session.close()
    finally:
        died = proc.poll() is not None  # before it was asked to stop: killed, or it failed
        code = stop_recorder(proc, path)
    summary = log.read_text(errors="replace").strip().splitlines()
    click.echo(summary[-1] if summary else f"recorder exited ({code}); session: {path}", err=True)
    # A crash (1) or SIGTERM (143) is not a success, nor a recording that ended on its own.
    sys.exit(app.return_code or (1 if died else 0))


def open_replay(file: str) -> None:
    """Reopen a recording in the TUI, read-only, with a time cursor (`qixtui replay FILE`)."""
    path = Path(file)
    try:
        store.open_session(path, readonly=True).close()
    except store.SessionError as exc:
        fail(str(exc))
    need_terminal(
        "qixtui replay FILE", "for scripts: qixtui events, flows or info FILE, or replay --publish"
    )
    from qixtui.ui.app import QixtuiApp

    app = QixtuiApp(path, replay=True)
    app.run()
    sys.exit(app.return_code or 0)


@main.command("index")
@click.argument("file", type=click.Path())
def index_command(file: str) -> None:
    """Build the indexes filters use in a finished recording that has none.

    The recorder builds them when it stops; a recording stopped before that (a second Ctrl-C,
    a kill) still holds every event, and its filters scan until this has run.
    """
    path = Path(file)
    try:
        db = store.open_session(path, readonly=False)
    except store.SessionError as exc:
        fail(str(exc))
    try:
        if store.being_recorded(store.get_meta(db)):
            fail(f"{path}: still being recorded; its recorder builds the indexes when it stops")
        if store.read_indexes_ready(db):
            click.echo(f"{path}: already indexed", err=True)
            return
        click.echo(f"qixtui: indexing {path} (about 15 s a million events)...", err=True)
        build_indexes(db)
        click.echo(f"qixtui: indexed {path}; filters on it read the indexes now", err=True)
    finally:
        db.close()


def build_indexes(db: sqlite3.Connection) -> None:
    """Build the read indexes in a thread, so Ctrl-C can interrupt SQLite: the build is one
    transaction, rolled back whole, and the file is as it was."""
    failed: list[BaseException] = []

    def build() -> None:
        try:
            store.build_read_indexes(db)
        except sqlite3.Error as exc:
            failed.append(exc)
            return
        # One self-contained file, as the recorder leaves it; a viewer that has it open
        # holds a lock this needs, and then WAL mode stays (the indexes are in either way).
        with contextlib.suppress(sqlite3.OperationalError):
            db.execute("PRAGMA busy_timeout = 1000")
            db.execute("PRAGMA journal_mode = DELETE")

    worker = threading.Thread(target=build, name="build read indexes")
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        db.interrupt()
        worker.join()
        fail("interrupted: no indexes built, the recording is unchanged")
    if failed:
        fail(f"cannot index: {failed[0]}")
