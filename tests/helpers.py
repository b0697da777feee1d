"""Helpers the tests share: run the qixtui command as a user does."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from qixtui import child_command


def qixtui_command(*args: str) -> list[str]:
    """The installed qixtui entry point, run the way a user runs it."""
    return child_command("qixtui", *args)


def run_qixtui(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        qixtui_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**(env if env is not None else os.environ), "NO_COLOR": "1"},
        stdin=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def terminal() -> Iterator[int]:
    """A pseudo-terminal for a command that draws a screen: Textual reads keys from stdin,
    draws on stderr and reads the size from stdout, so give it the returned fd as all three.
    What it writes is left unread: only for a command that stops before drawing much (a
    terminal's buffer holds a few kB)."""
    primary, secondary = os.openpty()
    try:
        yield secondary
    finally:
        os.close(secondary)
        os.close(primary)


def run_qixtui_in_terminal(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A screen command that fails before its screen: a terminal on all three streams, what
    it wrote read back from the terminal (as stderr; stdout is "")."""
    primary, secondary = os.openpty()
    try:
        proc = subprocess.Popen(
            qixtui_command(*args),
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
            env={**os.environ, "NO_COLOR": "1"},
        )
    finally:
        os.close(secondary)  # the command holds the only other end: read ends when it does
    try:
        proc.wait(timeout=timeout)
        said = b""
        with contextlib.suppress(OSError):  # EIO: the command has gone, all it wrote read
            while chunk := os.read(primary, 65536):
                said += chunk
    finally:
        os.close(primary)
    err = said.decode(errors="replace").replace("\r\n", "\n")
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


async def eventually(condition: Callable[[], bool], within: float = 10, what: str = "") -> None:
    """Poll `condition` until it holds; for state that has no event to await."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.05)


async def collect(url: str, subject: str = ">") -> tuple[Any, list[Any]]:
    """A connection subscribed to `subject`, and the list its messages land in."""
    import nats

    nc = await nats.connect(url)
    seen: list[Any] = []

    async def on_msg(msg: Any) -> None:
        seen.append(msg)

    await nc.subscribe(subject, cb=on_msg)
    await nc.flush()
    return nc, seen


@contextlib.contextmanager
def recorder_stand_in() -> Iterator[int]:
    """The pid of a live process that passes for a recorder (its command line names qixtui),
    for files that must look as if they were being recorded; stopped by its pid after."""
    marker = "qixtui-recorder-stand-in"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", marker])
    # Popen returns once exec began, but the kernel sets the new command line a moment
    # later: until then /proc shows it empty, and the stand-in would not pass.
    deadline = time.monotonic() + 10
    try:
        while marker.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
            if time.monotonic() > deadline:
                raise AssertionError("the recorder stand-in never showed its command line")
            time.sleep(0.001)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()
