"""`qixtui demo`: the demo shop on an embedded bus, recorded into a session file.

Everything runs as separate processes stopped by their own pid: the embedded nats-server, the
shop's participants (`python -m qixtui_demo`) and `qixtui record`, started as a user would.
While it runs, a supervisor thread watches those pids: a child that ends unasked is reported
(which, how, when) and restarted, the bus on its own port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import click

from qixtui import child_command
from qixtui.cli import fail, main, need_terminal, terminate_exits
from qixtui.core import store
from qixtui.core.text import counted

READY_TIMEOUT_S = 20.0
DRAIN_S = 3.0  # how long the shop lets in-flight orders settle once told to stop
SUPERVISE_S = 0.2  # how often the supervisor looks at its children


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
    """Sleep, ending early on Ctrl-C, SIGTERM or a closed terminal, so an interrupted demo
    still stops its processes in order and leaves a complete file."""
    stops = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
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
        *child_command("qixtui", "record", "-s", url, "-o", str(output), "--json"),
        *["--parent-pid", str(os.getpid())],
        *["--config", str(RULES_PATH)],
    ]


def ended_how(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if returncode == 0:  # what a SIGTERM (`kill PID`) ends it with: not a crash, but unasked
        return "stopped (exit code 0), unasked"
    return f"exited with {returncode}"


@dataclass(frozen=True)
class Incident:
    """A child of the demo that ended without being asked to, and what the demo did about it."""

    number: int
    what: str
    pid: int
    how: str
    at_ns: int
    outcome: str = "restarting"
    resolved: bool = False  # its outcome is known: back, or not restarted
    lost: bool = False  # not restarted: what it did is not done any more

    @property
    def state(self) -> str:
        """ongoing, recovered or lost: how the screen marks it."""
        if not self.resolved:
            return "ongoing"
        return "lost" if self.lost else "recovered"

    def line(self) -> str:
        at = time.strftime("%H:%M:%S", time.localtime(self.at_ns / 1e9))
        return f"{at} {self.what} (pid {self.pid}) {self.how}; {self.outcome}"


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
        self.incidents: list[Incident] = []
        self.restarts = {"participants": 0, "orchestrator": 0}
        self._recorder_reported = False
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._on_incident: Callable[[Incident], None] = lambda incident: None

    @property
    def url(self) -> str:
        return self.server.url

    def processes(self) -> str:
        """What runs now, with pids, in one line: the README invites killing one."""
        running = [
            ("nats-server", self.server.proc),
            ("qixtui record", self.recorder),
            ("shop participants", getattr(self.participants, "proc", None)),
            ("saga driver", self.orchestrator),
        ]
        named = [f"{what} {proc.pid}" for what, proc in running if proc and proc.poll() is None]
        return "pids: " + ", ".join(named) + " (kill one: the demo says what happened)"

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
                self.orchestrator = self._start_orchestrator()
        except DemoError:
            self.close()
            raise
        except (ServerError, ParticipantsError, OSError, ValueError) as exc:
            self.close()
            raise DemoError(str(exc)) from None

    def _start_orchestrator(self) -> subprocess.Popen[bytes]:
        """The orchestrated half: saga runs journaled into the same session file."""
        assert self.saga_args is not None
        incarnation = ["--incarnation", str(self.restarts["orchestrator"])]
        with self.record_log.with_name("saga.log").open("ab") as saga_log:
            return subprocess.Popen(
                [
                    *child_command("qixtui_demo.orchestrated"),
                    *["--server", self.server.url, "--file", str(self.output)],
                    *self.saga_args,
                    *incarnation,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=saga_log,
                start_new_session=True,
            )

    # -- supervision ---------------------------------------------------------------------

    def supervise(self, on_incident: Callable[[Incident], None]) -> None:
        """Watch the children from a thread until `stop`; `on_incident` hears of each incident
        twice, when it is found and once the child is back (or cannot be)."""
        self._on_incident = on_incident
        self._supervisor = threading.Thread(
            target=self._supervise, name="demo supervisor", daemon=True
        )
        self._supervisor.start()

    def _supervise(self) -> None:
        while not self._stopping.wait(SUPERVISE_S):
            self.check()

    def _stop_supervising(self) -> None:
        self._stopping.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join()

    def check(self) -> None:
        """One look at every child, the bus first: the others need it to come back."""
        from qixtui_demo.process import discard_participants

        server = self.server.proc
        if server is not None and server.poll() is not None:
            self._recover("nats-server", server, self._restart_server)
        participants = self.participants
        if participants is not None and participants.proc.poll() is not None:
            self.participants = None
            last_words = discard_participants(participants)
            why = last_words if participants.proc.returncode > 0 else ""  # a kill says nothing
            self._recover("shop participants", participants.proc, self._restart_shop, why)
        orchestrator = self.orchestrator
        if orchestrator is not None and orchestrator.poll() is not None:
            self.orchestrator = None
            self._recover("saga driver", orchestrator, self._restart_saga_driver)
        recorder = self.recorder
        if recorder is not None and recorder.poll() is not None and not self._recorder_reported:
            # it created the session file and is its only writer: a new one cannot take over
            self._recorder_reported = True
            incident = Incident(
                len(self.incidents) + 1,
                "qixtui record",
                recorder.pid,
                ended_how(recorder.returncode),
                time.time_ns(),
                "not restarted: the shop runs on, nothing more is recorded",
                resolved=True,
                lost=True,
            )
            self._report(incident)

    def _restart_server(self) -> int:
        self.server.start()
        pid = self.server.pid
        assert pid is not None
        return pid

    def _restart_shop(self) -> int:
        """A new incarnation of the shop: its order ids differ from the crashed one's, so the
        orders it left half done stay their own (stalled) flows."""
        from qixtui_demo.process import start_participants

        self.restarts["participants"] += 1
        incarnation = ["--incarnation", str(self.restarts["participants"])]
        self.participants = start_participants(self.server.url, [*self.shop_args, *incarnation])
        return self.participants.pid

    def _restart_saga_driver(self) -> int:
        self.restarts["orchestrator"] += 1
        self.orchestrator = self._start_orchestrator()
        return self.orchestrator.pid

    def _recover(
        self,
        what: str,
        proc: subprocess.Popen[bytes],
        restart: Callable[[], int],
        detail: str = "",
    ) -> None:
        from qixtui_demo.process import ParticipantsError
        from qixtui_nats.server import ServerError

        how = ended_how(proc.returncode) + (f" ({detail})" if detail else "")
        incident = Incident(len(self.incidents) + 1, what, proc.pid, how, time.time_ns())
        self._report(incident)
        began = time.monotonic()
        try:
            new_pid = restart()
        except (DemoError, ServerError, ParticipantsError, OSError) as exc:
            outcome = f"not restarted: {exc}"
            incident = replace(incident, outcome=outcome, resolved=True, lost=True)
        else:
            took = time.monotonic() - began
            after = f"{took * 1000:.0f} ms" if took < 1 else f"{took:.1f} s"
            back = f"back as pid {new_pid} after {after}"
            incident = replace(incident, outcome=back, resolved=True)
        self._report(incident)

    def _report(self, incident: Incident) -> None:
        if incident.number > len(self.incidents):
            self.incidents.append(incident)
        else:
            self.incidents[incident.number - 1] = incident
        self._on_incident(incident)

    def stop(self) -> dict[str, Any]:
        """Stop the shop (it lets orders in flight settle), then the recorder, then the server;
        the counts of both, and any incidents on the way."""
        from qixtui_demo.process import ParticipantsError, stop_participants

        try:
            self._stop_supervising()  # in the try: a signal while it joins still stops all
            if self.orchestrator is not None:
                stop_by_pid(self.orchestrator, timeout=10)
            shop = None
            if self.participants is not None:  # None only when a restart failed
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
        incidents = [asdict(incident) for incident in self.incidents]
        return {
            "file": recorded["file"],
            "recorded": recorded,
            "shop": shop,
            # a shop that crashed wrote no summary: `shop` counts the last incarnation only
            "shop_restarts": self.restarts["participants"],
            "incidents": incidents,
        }

    def close(self) -> None:
        """Whatever still runs, stopped by pid; safe to call at any point."""
        from qixtui_demo.process import ParticipantsError, stop_participants

        try:
            self._stop_supervising()
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


def shop_arguments(seed: int | None, rate: float, heartbeat: float = 0.0) -> list[str]:
    args = ["--rate", str(rate)] + (["--seed", str(seed)] if seed is not None else [])
    return args + (["--heartbeat", str(heartbeat)] if heartbeat else [])


def saga_arguments(seed: int | None, rate: float) -> list[str]:
    """The orchestrated half runs at a fifth of the order rate, seeded like the shop."""
    seed = seed if seed is not None else random.randrange(1, 1_000_000)
    return ["--rate", str(max(rate / 5, 0.2)), "--seed", str(seed)]


def hang_up_stops(cleanup: Callable[[], object]) -> None:
    """A closed terminal (SIGHUP) stops what this command started, by pid, and exits; the
    screen is gone, so the UI is not shut down politely."""

    def finish(signum: int) -> None:
        cleanup()
        os._exit(128 + signum)

    def hang_up(signum: int, _frame: object) -> None:
        # The handler runs between two bytecodes, maybe in the middle of reading rows: a
        # connection closed there stays open for its unfinished statement, and the recorder
        # then cannot make the file self-contained. The screen's loop runs it next instead.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            finish(signum)
        else:
            loop.call_soon_threadsafe(finish, signum)

    signal.signal(signal.SIGHUP, hang_up)


def run_on_screen(stack: DemoStack) -> dict[str, Any]:
    """The live session in the TUI until the user quits; then everything stops by pid."""
    stack.start()
    hang_up_stops(stack.close)
    try:
        from qixtui.ui.supervised import Report, SupervisedApp

        def supervise(report: Report) -> None:
            stack.supervise(lambda i: report(i.number, i.line(), i.state))

        assert stack.recorder is not None
        app = SupervisedApp(
            stack.output,
            supervise=supervise,
            recorder_pid=stack.recorder.pid,
            processes=stack.processes,
        )

        def hang_up() -> None:
            app.session.close()
            stack.close()

        # The screen's reader goes first: while it is open, the recorder cannot make the
        # file self-contained (its -wal and -shm files stayed beside it).
        hang_up_stops(hang_up)
        try:
            app.run()
        finally:
            app.session.close()
    except BaseException:
        stack.close()
        raise
    return {**stack.stop(), "exit_code": app.return_code or 0}


def say_incident(incident: Incident) -> None:
    if incident.resolved:  # one line per incident, once its outcome is known
        click.echo(f"qixtui demo: {incident.line()}", err=True)


def run_headless(stack: DemoStack, duration: float) -> dict[str, Any]:
    stack.start()
    try:
        stack.supervise(say_incident)
        wait_or_interrupt(duration)
    except BaseException:
        stack.close()
        raise
    return stack.stop()


def run_services(server_url: str | None, seed: int | None, duration: float | None) -> None:
    """Only the shop's services, answering events and commands, on the given bus or an embedded
    one; its URL goes to stdout once they are subscribed. No orders, no recorder, no screen."""
    from qixtui_demo import RULES_PATH, SHOP_SAGA
    from qixtui_demo.process import ParticipantsError, start_participants, stop_participants
    from qixtui_demo.shop import describe
    from qixtui_nats.server import EmbeddedServer, ServerError

    server = None if server_url else EmbeddedServer(jetstream=False)
    args = ["--services-only", *(["--seed", str(seed)] if seed is not None else [])]
    try:
        if server is not None:
            server_url = server.start().url
        assert server_url is not None
        participants = start_participants(server_url, args)
        try:
            click.echo(server_url)
            click.echo(
                f"qixtui demo: the shop's services answer on {server_url} until Ctrl-C; step "
                f"its saga with: qixtui orchestrate {SHOP_SAGA} -s {server_url} "
                f"--config {RULES_PATH}",
                err=True,
            )
            wait_or_interrupt(duration if duration is not None else 365 * 86400.0)
        finally:
            summary = stop_participants(participants, timeout=DRAIN_S + 10)
        click.echo(describe(summary), err=True)
    except (ServerError, ParticipantsError) as exc:
        fail(str(exc))
    finally:
        if server is not None:
            server.close()


@main.command()
@click.option("--headless", is_flag=True, help="No screen: run, record, print the file's path.")
@click.option(
    "--duration",
    type=click.FloatRange(min=0.1),
    help="Seconds to run with --headless (default 10) or --services-only (default: until Ctrl-C).",
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
@click.option(
    "--heartbeat",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="S",
    help="Add liveness noise that belongs to no flow, every S seconds per service.",
)
@click.option(
    "--services-only",
    is_flag=True,
    help="Only the shop's services (no orders, recorder or screen), for `qixtui orchestrate`.",
)
@click.option(
    "-s",
    "--server",
    metavar="URL",
    help="With --services-only: the bus to serve on (default: an embedded one).",
)
def demo(
    headless: bool,
    duration: float | None,
    output: str | None,
    as_json: bool,
    seed: int | None,
    rate: float,
    heartbeat: float,
    services_only: bool,
    server: str | None,
) -> None:
    """The demo shop on an embedded NATS server, recorded into a session file."""
    from qixtui.cli_tui import default_session_path

    terminate_exits()  # what the demo starts, it stops, on SIGTERM too
    if services_only:
        if output or as_json:
            fail("--services-only records nothing: drop -o and --json")
        run_services(server, seed, duration)
        return
    if server:
        fail("-s/--server needs --services-only: the demo runs its own bus")
    path = Path(output) if output else default_session_path("demo")
    try:
        store.ensure_new(path)
    except store.SessionError as exc:
        fail(str(exc))
    if not headless:
        need_terminal("qixtui demo", "qixtui demo --headless runs it without one")
    with tempfile.TemporaryDirectory(prefix="qixtui-demo-") as work:
        shop_args = shop_arguments(seed, rate, heartbeat)
        stack = DemoStack(path, Path(work), shop_args, saga_arguments(seed, rate))
        try:
            if headless:
                result = run_headless(stack, duration if duration is not None else 10.0)
            else:
                result = run_on_screen(stack)
        except DemoError as exc:
            fail(str(exc))
    exit_code = result.pop("exit_code", 0)  # the TUI's: a crash (1) or SIGTERM (143)
    if as_json:
        click.echo(json.dumps(result))
        sys.exit(exit_code)
    from qixtui_demo.shop import describe

    if result["shop"] is not None:
        restarts = result.get("shop_restarts", 0)
        if restarts:
            click.echo(
                f"the shop since its last restart ({restarts} in this demo; the recording "
                "holds every incarnation's orders):",
                err=True,
            )
        click.echo(describe(result["shop"]), err=True)
    if not headless:  # headless told of each as it came
        for incident in result["incidents"]:
            say_incident(Incident(**incident))
    click.echo(f"recorded {counted(result['recorded']['events'], 'event')}", err=True)
    click.echo(result["file"])
    sys.exit(exit_code)
