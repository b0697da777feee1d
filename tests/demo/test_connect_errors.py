"""The shop's services on a bus they cannot use: one line saying why, every time."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from qixtui_demo.process import participants_command
from qixtui_nats.server import EmbeddedServer

# A failed connect was reported cleanly most of the time and with a traceback some of the
# time (a race): one run proves nothing, so each check below runs this many times.
RUNS = 12


@pytest.fixture(scope="module")
def locked_server() -> Iterator[EmbeddedServer]:
    """A real nats-server that wants a password nobody here gives: every connection is refused
    after its INFO, each at its own moment."""
    with EmbeddedServer(jetstream=False, config="authorization { user: a, password: b }\n") as s:
        yield s


def test_a_refused_login_is_one_line_every_time(locked_server):
    """The services connect side by side; the first failure ended the run while the others
    were still connecting, and asyncio.run() printed their failures, tracebacks and all."""
    command = participants_command(locked_server.url, ["--services-only"])
    for run in range(RUNS):
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
        assert done.returncode == 1, (run, done.stderr)
        assert done.stderr == (
            f"qixtui-demo: authorization failed at {locked_server.url}: "
            "check user, password, token or credentials\n"
        ), run


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:1", "not a server URL: http://127.0.0.1:1 (the scheme is nats, tls"),
        (
            "nats://no-such-host.invalid:4222",
            "cannot connect to nats://no-such-host.invalid:4222: ",
        ),
        ("nats://u:hunter2@127.0.0.1:1", "cannot connect to nats://127.0.0.1:1: "),
    ],
)
def test_the_cause_in_record_s_words(url: str, says: str):
    """What `qixtui record -s URL` says of the same URL, never a password."""
    done = subprocess.run(
        participants_command(url, ["--services-only"]),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"qixtui-demo: {says}"), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "hunter2" not in done.stderr
