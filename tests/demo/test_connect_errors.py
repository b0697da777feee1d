"""The shop's services on a bus they cannot use: one line saying why, every time."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
from helpers import run_qixtui

from qixtui.core import store
from qixtui_demo.process import Participants, discard_participants, participants_command
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


def test_the_demo_says_it_in_one_line_every_time(locked_server):
    """`qixtui demo --services-only -s URL` quoted the last 400 characters of the services'
    output: a traceback's tail starting mid-path when the race above struck."""
    for run in range(RUNS):
        done = run_qixtui("demo", "--services-only", "--duration", "2", "-s", locked_server.url)
        assert done.returncode == 1, (run, done.stderr)
        assert done.stderr == (
            f"qixtui: authorization failed at {locked_server.url}: "
            "check user, password, token or credentials\n"
        ), run


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1",
        "nats://127.0.0.1:1",
        "nats://no-such-host.invalid:4222",
        "nats://u:hunter2@127.0.0.1:99999",
        "locked",
    ],
)
def test_the_demo_words_it_as_record_does(url: str, locked_server, tmp_path):
    url = locked_server.url if url == "locked" else url
    done = run_qixtui("demo", "--services-only", "--duration", "2", "-s", url)
    recorded = run_qixtui("record", "-s", url, "-o", str(tmp_path / "x.qix"), "--duration", "1")
    assert recorded.returncode == 1
    assert recorded.stderr.count("\n") == 1
    assert done.returncode == 1
    assert done.stderr == recorded.stderr
    assert "hunter2" not in done.stderr


def test_a_crash_is_quoted_by_its_last_line(tmp_path):
    """Not the last 400 characters, which began inside a file path of the traceback."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    work = tmp_path / "work"
    work.mkdir()
    participants = Participants(ended, work)
    frames = "".join(
        f'  File "/venv/lib/python3.11/site-packages/nats/aio/client.py", line {n}, in connect\n'
        "    await self._select_next_server()\n"
        for n in range(40)
    )
    participants.log_file.write_text(
        "qixtui-demo: shop running on nats://127.0.0.1:4222 (seed 1)\n"
        f"Traceback (most recent call last):\n{frames}"
        "nats.errors.NoServersError: nats: no servers available for connection\n\n"
    )
    exception = "nats.errors.NoServersError: nats: no servers available for connection"
    assert participants.last_line() == exception
    assert discard_participants(participants) == exception  # what an incident quotes


def test_tls_asked_for_and_not_offered_is_refused(tmp_path):
    """A tls:// URL to a server without TLS: the services connected in plain text and said
    they answer on tls://...; record, orchestrate and replay refuse it, and so does the demo."""
    with EmbeddedServer(jetstream=False) as plain:
        url = f"tls://127.0.0.1:{plain.port}"
        done = run_qixtui("demo", "--services-only", "--duration", "1", "-s", url)
        assert plain.monitor_url is not None
        with urllib.request.urlopen(f"{plain.monitor_url}/connz?state=closed", timeout=5) as r:
            closed = json.loads(r.read()).get("connections") or []
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert done.stderr == (
        f"qixtui: TLS was asked for, but {url} does not offer TLS; nothing was sent\n"
    )
    # no CONNECT reached the server: a connection that sent one carries the service's name
    assert not [c for c in closed if c.get("name", "").startswith("shop-")], closed


def test_the_saga_driver_ends_when_the_bus_is_gone(own_server: EmbeddedServer, tmp_path) -> None:
    # Once its client gave up reconnecting, each run it started stopped at once, resumable:
    # a pile of unfinished runs at --rate until stopped, instead of saying the bus is gone.
    session = tmp_path / "journal.qix"
    store.create_session(session).close()
    command = [sys.executable, "-m", "qixtui_demo.orchestrated", "--server", own_server.url]
    command += ["--file", str(session), "--rate", "20"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        own_server.kill()
        _, err = driver.communicate(timeout=90)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 1
    assert err.strip().startswith(
        f"qixtui_demo.orchestrated: {own_server.url}: the bus connection was lost ("
    )
    db = store.open_session(session)
    unfinished = [run for run in store.saga_runs(db) if run.status == "running"]
    db.close()
    assert len(unfinished) <= 1  # the run the loss caught, no more
