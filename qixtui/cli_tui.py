"""The verbs that open the TUI: `tap` (record a live bus and watch it) and `replay` (reopen a file).

Textual is imported inside the commands, so headless verbs stay light.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from qixtui.cli import connection_options, fail, main
from qixtui.core import store

RECORDER_START_S = 10.0
RECORDER_STOP_S = 15.0


def default_session_path(kind: str = "tap") -> Path:
    """A new file under the user data dir, named by what made it and the local time."""
    import platformdirs

    base = Path(platformdirs.user_data_dir("qixtui")) / "sessions"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = base / f"{kind}-{stamp}.qix"
    n = 1
    while path.exists():
        n += 1
        path = base / f"{kind}-{stamp}-{n}.qix"
    return path


def recorder_command(output: Path, conn: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """argv and environment for `qixtui record`; secrets travel in the environment, never argv."""
    argv = [sys.executable, "-m", "qixtui", "record", "-o", str(output)]
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
            fail(message[-1].removeprefix("qixtui: ") if message else f"recorder exited ({code})")
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


def stop_recorder(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGINT, so the recorder flushes and closes the file; SIGKILL only if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(RECORDER_STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@main.command()
@connection_options
@click.option(
    "-o", "--output", type=click.Path(), help="Session file to create (default: user data dir)."
)
@click.option(
    "-S", "--subject", "subjects", multiple=True, help="Subject to record (repeatable; default >)."
)
def tap(output: str | None, subjects: tuple[str, ...], **conn: Any) -> None:
    """Record a live bus into a new session file and watch it in the TUI."""
    path = Path(output) if output else default_session_path()
    try:
        store.ensure_new(path)  # before starting anything: a clear line, nothing to clean up
    except store.SessionError as exc:
        fail(str(exc))
    argv, env = recorder_command(path, conn)
    for subject in subjects:
        argv += ["--subject", subject]
    if conn.get("user") and "NATS_PASSWORD" not in env:
        if not sys.stdin.isatty():
            fail("--user needs a password: set NATS_PASSWORD")
        import getpass

        env["NATS_PASSWORD"] = getpass.getpass(f"password for {conn['user']}: ")
    log = path.with_name(path.name + ".log")
    with log.open("wb") as err:
        # Its own session: the terminal's Ctrl-C reaches the UI, which stops the recorder itself.
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env, start_new_session=True
        )
    try:
        wait_for_session(proc, path, log)
        from qixtui.cli_demo import hang_up_stops
        from qixtui.ui.app import QixtuiApp

        hang_up_stops(lambda: stop_recorder(proc))
        QixtuiApp(path, recorder_pid=proc.pid).run()
    finally:
        code = stop_recorder(proc)
    summary = log.read_text(errors="replace").strip().splitlines()
    click.echo(summary[-1] if summary else f"recorder exited ({code}); session: {path}", err=True)


def open_replay(file: str) -> None:
    """Reopen a recording in the TUI, read-only, with a time cursor (`qixtui replay FILE`)."""
    path = Path(file)
    try:
        store.open_session(path, readonly=True).close()
    except store.SessionError as exc:
        fail(str(exc))
    from qixtui.ui.app import QixtuiApp

    QixtuiApp(path, replay=True).run()
