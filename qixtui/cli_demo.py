"""`qixtui demo`: the demo shop on an embedded bus, recorded into a session file.

Everything runs as separate processes stopped by their own pid: the embedded nats-server, the
shop's participants (`python -m qixtui_demo`) and `qixtui record`, started as a user would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import click

from qixtui.cli import fail, main

READY_TIMEOUT_S = 20.0
DRAIN_S = 3.0  # how long the shop lets in-flight orders settle once told to stop


class DemoError(Exception):
    pass


def monitor(server: Any, endpoint: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.monitor_url}/{endpoint}", timeout=2) as reply:
        data: dict[str, Any] = json.loads(reply.read())
    return data


def recorder_connection(server: Any) -> dict[str, Any] | None:
    """The recorder's connection as the server sees it: the one subscribed to `>`."""
    for conn in monitor(server, "connz?subs=1").get("connections", []):
        if ">" in (conn.get("subscriptions_list") or []):
            return conn
    return None


def wait_until(check: Any, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not check():
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise DemoError(f"{what} exited with {proc.returncode}: {tail[0]}")
        if time.monotonic() > deadline:
            raise DemoError(f"{what} did not get ready within {READY_TIMEOUT_S:.0f}s")
        time.sleep(0.02)


def stop_by_pid(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_or_interrupt(seconds: float) -> None:
    """Sleep, ending early on Ctrl-C or SIGTERM, so an interrupted demo still stops its
    processes in order and leaves a complete file."""
    stops = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        signal.sigtimedwait(stops, seconds)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)


def record_command(url: str, output: Path) -> list[str]:
    # rules: `--config <qixtui_demo.RULES_PATH>` once `qixtui record --config` exists
    return [sys.executable, "-m", "qixtui", "record", "-s", url, "-o", str(output), "--json"]


def run_headless(
    output: Path, duration: float, seed: int | None, rate: float, work: Path
) -> dict[str, Any]:
    """Server, recorder, participants; wait; stop them in reverse order; the counts."""
    from qixtui_demo.process import ParticipantsError, start_participants, stop_participants
    from qixtui_nats.server import EmbeddedServer, ServerError

    shop_args = ["--rate", str(rate), "--drain", str(DRAIN_S)]
    if seed is not None:
        shop_args += ["--seed", str(seed)]
    server = EmbeddedServer(jetstream=False)
    recorder: subprocess.Popen[bytes] | None = None
    participants = None
    record_out, record_log = work / "record.json", work / "record.log"
    try:
        server.start()
        with record_out.open("wb") as out, record_log.open("wb") as err:
            recorder = subprocess.Popen(
                record_command(server.url, output),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # Ctrl-C reaches only us; we stop it after the shop
            )
        wait_until(
            lambda: recorder_connection(server) is not None, recorder, "qixtui record", record_log
        )
        participants = start_participants(server.url, shop_args)
        wait_or_interrupt(duration)
        shop = stop_participants(participants, timeout=DRAIN_S + 10)
        participants = None
        # the shop has closed its connections, so the server holds all it sent; the recorder
        # stops by unsubscribing and a round-trip, which reads all of that first
        stop_by_pid(recorder, timeout=30)
        if recorder.returncode != 0:
            tail = record_log.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
            raise DemoError(f"qixtui record exited with {recorder.returncode}: {tail[0]}")
        recorded = json.loads(record_out.read_text())
    except (ServerError, ParticipantsError, OSError, ValueError) as exc:
        raise DemoError(str(exc)) from None
    finally:
        if participants is not None:
            stop_participants(participants, timeout=DRAIN_S + 10)
        if recorder is not None:
            stop_by_pid(recorder, timeout=30)
        server.close()
    return {"file": recorded["file"], "recorded": recorded, "shop": shop}


@main.command()
@click.option("--headless", is_flag=True, help="No screen: run, record, print the file's path.")
@click.option(
    "--duration",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds of orders (--headless); Ctrl-C ends sooner.",
)
@click.option("-o", "--output", type=click.Path(), help="Session file to create (--headless).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of the path.")
@click.option("--seed", type=int, help="Same seed, same orders and outcomes (default random).")
@click.option(
    "--rate", type=click.FloatRange(min=0.01), default=5.0, show_default=True, help="Orders/s."
)
def demo(
    headless: bool,
    duration: float,
    output: str | None,
    as_json: bool,
    seed: int | None,
    rate: float,
) -> None:
    """The demo shop on an embedded NATS server, recorded into a session file."""
    if not headless:
        fail("the demo screen is not built yet: run `qixtui demo --headless -o FILE`")
    if output is None:
        fail("--headless needs -o FILE, the session file to create")
    path = Path(output)
    if path.exists() and path.stat().st_size > 0:
        fail(f"{path}: already exists; choose another output file")
    with tempfile.TemporaryDirectory(prefix="qixtui-demo-") as work:
        try:
            result = run_headless(path, duration, seed, rate, Path(work))
        except DemoError as exc:
            fail(str(exc))
    if as_json:
        click.echo(json.dumps(result))
        return
    from qixtui_demo.shop import describe

    click.echo(describe(result["shop"]), err=True)
    click.echo(f"recorded {result['recorded']['events']:,} events", err=True)
    click.echo(result["file"])
