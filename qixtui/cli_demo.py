"""`qixtui demo`: the demo shop on an embedded bus, recorded into a session file.

Everything runs as separate processes stopped by their own pid: the embedded nats-server, the
shop's participants (`python -m qixtui_demo`) and `qixtui record`, started as a user would.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
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
from qixtui.core import store

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
    """`qixtui record` under the shop's own rules, so each order is one flow whatever rules
    file the user keeps for other buses."""
    from qixtui_demo import RULES_PATH

    return [
        *[sys.executable, "-m", "qixtui", "record", "-s", url, "-o", str(output), "--json"],
        *["--config", str(RULES_PATH)],
    ]


class DemoStack:
    """The embedded server, `qixtui record` and the shop's participants: started in that order,
    stopped in reverse, each by its own pid. `qixtui demo` drives one, with or without a screen.
    """

    def __init__(
        self, output: Path, work: Path, shop_args: list[str], saga_args: list[str] | None = None
    ) -> None:
        from qixtui_nats.server import EmbeddedServer

        self.output = output
        self.shop_args = [*shop_args, "--drain", str(DRAIN_S)]
        self.server = EmbeddedServer(jetstream=False)
        self.recorder: subprocess.Popen[bytes] | None = None
        self.participants: Any = None
        self.saga_args = saga_args
        self.orchestrator: subprocess.Popen[bytes] | None = None
        self.record_out, self.record_log = work / "record.json", work / "record.log"

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        """Returns once the recorder is subscribed and every shop service is, so nothing the
        shop sends is missed."""
        from qixtui_demo.process import ParticipantsError, start_participants
        from qixtui_nats.server import ServerError

        try:
            self.server.start()
            with self.record_out.open("wb") as out, self.record_log.open("wb") as err:
                self.recorder = recorder = subprocess.Popen(
                    record_command(self.server.url, self.output),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,  # Ctrl-C reaches only us; we stop it after the shop
                )
            wait_until(
                lambda: recorder_connection(self.server) is not None,
                recorder,
                "qixtui record",
                self.record_log,
            )
            self.participants = start_participants(self.server.url, self.shop_args)
            if self.saga_args is not None:
                # the orchestrated half: saga runs journaled into the same session file
                with self.record_log.with_name("saga.log").open("wb") as saga_log:
                    self.orchestrator = subprocess.Popen(
                        [
                            *[sys.executable, "-m", "qixtui_demo.orchestrated"],
                            *["--server", self.server.url, "--file", str(self.output)],
                            *self.saga_args,
                        ],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=saga_log,
                        start_new_session=True,
                    )
        except DemoError:
            self.close()
            raise
        except (ServerError, ParticipantsError, OSError, ValueError) as exc:
            self.close()
            raise DemoError(str(exc)) from None

    def stop(self) -> dict[str, Any]:
        """Stop the shop (it lets orders in flight settle), then the recorder, then the server;
        the counts of both."""
        from qixtui_demo.process import ParticipantsError, stop_participants

        try:
            if self.orchestrator is not None:
                stop_by_pid(self.orchestrator, timeout=10)
            shop = stop_participants(self.participants, timeout=DRAIN_S + 10)
            self.participants = None
            recorder = self.recorder
            assert recorder is not None
            # the shop has closed its connections, so the server holds all it sent; the
            # recorder stops by unsubscribing and a round-trip, which reads all of that first
            stop_by_pid(recorder, timeout=30)
            if recorder.returncode != 0:
                last = self.record_log.read_text(errors="replace").strip().splitlines()[-1:]
                why = last[0] if last else "no output"
                raise DemoError(f"qixtui record exited with {recorder.returncode}: {why}")
            recorded = json.loads(self.record_out.read_text())
        except (ParticipantsError, OSError, ValueError) as exc:
            raise DemoError(str(exc)) from None
        finally:
            self.close()
        return {"file": recorded["file"], "recorded": recorded, "shop": shop}

    def close(self) -> None:
        """Whatever still runs, stopped by pid; safe to call at any point."""
        from qixtui_demo.process import ParticipantsError, stop_participants

        try:
            if self.orchestrator is not None:
                stop_by_pid(self.orchestrator, timeout=10)
            if self.participants is not None:
                with contextlib.suppress(ParticipantsError):
                    stop_participants(self.participants, timeout=DRAIN_S + 10)
                self.participants = None
            if self.recorder is not None:
                stop_by_pid(self.recorder, timeout=30)
        finally:
            self.server.close()


def shop_arguments(seed: int | None, rate: float) -> list[str]:
    return ["--rate", str(rate)] + (["--seed", str(seed)] if seed is not None else [])


def saga_arguments(seed: int | None, rate: float) -> list[str]:
    """The orchestrated half runs at a fifth of the order rate, seeded like the shop."""
    seed = seed if seed is not None else random.randrange(1, 1_000_000)
    return ["--rate", str(max(rate / 5, 0.2)), "--seed", str(seed)]


def run_on_screen(output: Path, seed: int | None, rate: float, work: Path) -> dict[str, Any]:
    """The live session in the TUI until the user quits; then everything stops by pid."""
    stack = DemoStack(output, work, shop_arguments(seed, rate), saga_arguments(seed, rate))
    stack.start()
    try:
        from qixtui.ui.app import QixtuiApp

        assert stack.recorder is not None
        QixtuiApp(output, recorder_pid=stack.recorder.pid).run()
    except BaseException:
        stack.close()
        raise
    return stack.stop()


def run_headless(
    output: Path, duration: float, seed: int | None, rate: float, work: Path
) -> dict[str, Any]:
    stack = DemoStack(output, work, shop_arguments(seed, rate), saga_arguments(seed, rate))
    stack.start()
    try:
        wait_or_interrupt(duration)
    except BaseException:
        stack.close()
        raise
    return stack.stop()


@main.command()
@click.option("--headless", is_flag=True, help="No screen: run, record, print the file's path.")
@click.option(
    "--duration",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds of orders (--headless); Ctrl-C ends sooner.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(),
    help="Session file to create (default: a new file under the user data dir).",
)
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
    from qixtui.cli_tui import default_session_path

    path = Path(output) if output else default_session_path("demo")
    try:
        store.ensure_new(path)
    except store.SessionError as exc:
        fail(str(exc))
    with tempfile.TemporaryDirectory(prefix="qixtui-demo-") as work:
        try:
            if headless:
                result = run_headless(path, duration, seed, rate, Path(work))
            else:
                result = run_on_screen(path, seed, rate, Path(work))
        except DemoError as exc:
            fail(str(exc))
    if as_json:
        click.echo(json.dumps(result))
        return
    from qixtui_demo.shop import describe

    click.echo(describe(result["shop"]), err=True)
    click.echo(f"recorded {result['recorded']['events']:,} events", err=True)
    click.echo(result["file"])
