"""Run the shop's participants as a child process and stop it by its pid.

`qixtui demo` (and the tests) use this: the participants never share a process with a UI, so a
busy screen cannot slow the shop down and the shop cannot slow the screen.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qixtui import child_command

SAYS = "qixtui-demo: "  # how the participants (qixtui_demo.cli) begin a line for the user
LOG_READ_BYTES = 64 * 1024  # enough for any last line; the log of a long run is not read whole


class ParticipantsError(Exception):
    """The participants did not start or did not stop cleanly; the message is for the user."""


@dataclass
class Participants:
    proc: subprocess.Popen[bytes]
    workdir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def ready_file(self) -> Path:
        return self.workdir / "ready"

    @property
    def summary_file(self) -> Path:
        return self.workdir / "summary.json"

    @property
    def log_file(self) -> Path:
        return self.workdir / "participants.log"

    def last_line(self) -> str:
        """The last line they wrote, whole: their own one-line error, or a traceback's last
        line (the exception), not a slice starting mid-path (unless over LOG_READ_BYTES)."""
        try:
            with self.log_file.open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - LOG_READ_BYTES))
                lines = log.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""


def participants_command(server_url: str, args: Sequence[str] = ()) -> list[str]:
    return child_command("qixtui_demo", "--server", server_url, *args)


def start_participants(
    server_url: str, args: Sequence[str] = (), *, ready_timeout: float = 20.0
) -> Participants:
    """Start `python -m qixtui_demo` and return once every service is subscribed."""
    workdir = Path(tempfile.mkdtemp(prefix="qixtui-demo-"))
    log = (workdir / "participants.log").open("wb")
    command = participants_command(server_url, args)
    command += [
        "--ready-file",
        str(workdir / "ready"),
        "--summary-file",
        str(workdir / "summary.json"),
    ]
    # its own session: a Ctrl-C in the terminal goes to the parent, which stops it in order
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
    )
    log.close()
    participants = Participants(proc, workdir)
    deadline = time.monotonic() + ready_timeout
    try:
        while not participants.ready_file.exists():
            if proc.poll() is not None:
                last = participants.last_line()
                shutil.rmtree(workdir, ignore_errors=True)
                if last.startswith(SAYS):  # their own line for the user: it says it all
                    raise ParticipantsError(last.removeprefix(SAYS))
                why = last or "no output"
                raise ParticipantsError(f"demo participants exited with {proc.returncode}: {why}")
            if time.monotonic() > deadline:
                raise ParticipantsError("demo participants did not get ready in time")
            time.sleep(0.02)
    except BaseException:
        # Not handed to the caller yet (a timeout, SIGTERM, Ctrl-C): nobody else can stop
        # it, and in a session of its own it would outlive us.
        if proc.poll() is None:
            with contextlib.suppress(ParticipantsError):  # a summary is not the point here
                stop_participants(participants, timeout=5)
        raise
    return participants


def wait_participants(participants: Participants, timeout: float) -> dict[str, Any]:
    """Wait for a run with --orders to finish by itself; its summary of counts."""
    try:
        participants.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return stop_participants(participants)
    return _finish(participants)


def stop_participants(participants: Participants, timeout: float = 15.0) -> dict[str, Any]:
    """SIGTERM by pid: the shop stops placing orders, lets in-flight ones settle and writes
    its summary. SIGKILL only when it does not exit in time."""
    if participants.proc.poll() is None:
        os.kill(participants.pid, signal.SIGTERM)
        try:
            participants.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(participants.pid, signal.SIGKILL)
            participants.proc.wait()
    return _finish(participants)


def discard_participants(participants: Participants) -> str:
    """Clean up after participants that ended unasked; the last line they logged, if any."""
    last = participants.last_line()
    shutil.rmtree(participants.workdir, ignore_errors=True)
    return last


def _finish(participants: Participants) -> dict[str, Any]:
    try:
        summary: dict[str, Any] = json.loads(participants.summary_file.read_text())
    except (OSError, ValueError):
        last = participants.last_line() or "no output"
        code = participants.proc.returncode
        raise ParticipantsError(
            f"demo participants left no summary (exit {code}): {last}"
        ) from None
    finally:
        shutil.rmtree(participants.workdir, ignore_errors=True)
    return summary
