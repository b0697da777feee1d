"""The command line: parses, calls the core, the NATS adapter or the app, and prints.

Headless verbs never import Textual; bus verbs import the adapter only when they run.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from click.exceptions import NoArgsIsHelpError

import qixtui
from qixtui.cli_rules import RulesError, pop_rules, rule_options
from qixtui.core import filters, flowfile, store
from qixtui.core.filters import FilterError, check_subject
from qixtui.core.store import SQL_INT_MAX
from qixtui.core.text import counted, json_text, not_utf8, visible

F = TypeVar("F", bound=Callable[..., Any])
SERVER_CHECK_S = 0.5  # how often `qixtui server` checks that its nats-server still runs


def fail(message: str, code: int = 1) -> None:
    """One line on stderr and a non-zero exit: the shape of every user-facing error."""
    click.echo(f"qixtui: {message}", err=True)
    sys.exit(code)


def has_terminal() -> bool:
    """Where a screen runs: Textual reads keys from stdin, draws on stderr and takes the
    screen's size from stdout (redirected, it laid out 80x24 on a wider terminal)."""
    streams = (sys.stdin, sys.stdout, sys.__stderr__)
    return all(stream is not None and stream.isatty() for stream in streams)


def need_terminal(command: str, instead: str) -> None:
    """Without a terminal, a screen waits for keys that never come and keeps drawing into a
    file or a pipe that may be closed."""
    if not has_terminal():
        fail(f"{command} draws a screen and needs a terminal; {instead}")


def read_text_or_fail(path: str) -> str:
    """A text file named on the command line (a saga, a step map), or one line saying why not:
    a session file given by mistake is not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        fail(not_utf8(path, exc))
    except OSError as exc:
        fail(f"{path}: cannot read ({exc.strerror or exc})")
    raise AssertionError  # fail() exits


class Terminated(SystemExit):
    """SIGTERM, raised where the command is, so its `finally` blocks stop what it started."""


def terminate_exits() -> None:
    """SIGTERM (kill, timeout, a service manager) ends this command with exit code 143 as an
    exception would. By default it ends the process on the spot, leaving a recorder (in its
    own session), an embedded server or the demo's services running. A screen, while up,
    quits on SIGTERM as on `q` (qixtui.ui.signals)."""

    def terminated(signum: int, _frame: object) -> None:
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, terminated)


def flow_or_fail(db: Any, file: str, flow_id: int) -> Any:
    """The flow `flow_id` of a session, or one line saying there is none."""
    flow = flowfile.get_flow(db, flow_id)
    if flow is None:
        fail(f"{file}: no flow {flow_id} (see `qixtui flows {file}`)")
    return flow


def open_or_fail(path: str) -> Any:
    try:
        return store.open_session(Path(path), readonly=True)
    except store.SessionError as exc:
        fail(str(exc))


def connection_options(func: F) -> F:
    """The connection flags natscli users know, shared by every verb that talks to a bus."""
    options = [
        click.option(
            "-s",
            "--server",
            "servers",
            help="Server URL(s), comma-separated (default: NATS_URL, then nats://127.0.0.1:4222).",
        ),
        click.option("--context", help="A natscli context by name."),
        click.option("--creds", type=click.Path(), help="User credentials file (JWT + seed)."),
        click.option("--nkey", type=click.Path(), help="NKey seed file."),
        click.option(
            "--user", help="User name; the password comes from NATS_PASSWORD or a prompt."
        ),
        click.option("--token", envvar="NATS_TOKEN", help="Auth token (or NATS_TOKEN)."),
        click.option("--tlsca", type=click.Path(), help="CA certificate to verify the server."),
        click.option("--tlscert", type=click.Path(), help="Client certificate."),
        click.option("--tlskey", type=click.Path(), help="Client certificate key."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_connect_options(kw: dict[str, Any]) -> Any:
    from qixtui_nats.connect import ConnectError, ConnectOptions, split_servers

    try:
        opts = ConnectOptions(
            servers=split_servers(kw.pop("servers") or ""),
            context=kw.pop("context"),
            creds=kw.pop("creds"),
            nkey=kw.pop("nkey"),
            user=kw.pop("user"),
            token=kw.pop("token"),
            tlsca=kw.pop("tlsca"),
            tlscert=kw.pop("tlscert"),
            tlskey=kw.pop("tlskey"),
        ).resolved()
    except ConnectError as exc:
        fail(str(exc))
    if opts.user and opts.password is None:
        if not sys.stdin.isatty():
            fail("--user needs a password: set NATS_PASSWORD")
        opts.password = getpass.getpass(f"password for {opts.user}: ")
    return opts


def subject_pattern(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    """A click callback: a subject pattern to select recorded events by. A bad one would
    match nothing, silently (a `*` inside a token is literal text, as NATS reads it)."""
    problem = store.subject_problem(value) if value is not None else None
    if problem:
        fail(problem)
    return value


def subscription_subjects(
    _ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]
) -> Any:
    """A click callback: subjects to subscribe to, checked before anything starts (nats-py
    refuses a wildcard inside a token, after the session file exists)."""
    for pattern in value:
        try:
            check_subject(pattern)
        except FilterError as exc:
            fail(str(exc))
    return value


# Flow ids as options and arguments: a larger number than SQLite's cannot be looked up.
class FlowId(click.IntRange):
    """A flow id: click's own message for a word ('not a valid integer range') puzzled."""

    name = "flow id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip().lstrip("+-").isdigit():
            self.fail(f"{value!r} is not a flow id (a number, as `qixtui flows` lists)", param, ctx)
        return super().convert(value, param, ctx)


FLOW_ID = FlowId(min=1, max=SQL_INT_MAX)


subjects_option = click.option(
    "-S",
    "--subject",
    "subjects",
    multiple=True,
    callback=subscription_subjects,
    help="Subject to record (repeatable; default >).",
)


def parse_time(value: str | None) -> int | None:
    """A time bound as ns since the epoch: ISO 8601, or a plain number of ns."""
    if value is None:
        return None
    try:
        return filters.parse_instant(value)
    except ValueError:
        fail(f"not a time: {value!r} (use ISO 8601 like 2026-11-26T10:00:00, or ns)")
    raise AssertionError  # fail() exits


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from qixtui.core import correlate, rows
    from qixtui_nats import frames

    compiled = correlate.COMPILED and rows.COMPILED and frames.COMPILED
    click.echo(
        f"qixtui {qixtui.__version__} (per-event code: {'compiled' if compiled else 'pure Python'})"
    )
    ctx.exit()


class _OneLineUsageError(click.ClickException):
    """A usage error as every other error reads: one line, the value written out safely
    (Click's own shape is four lines: usage, a hint, a blank line and the error)."""

    exit_code = 2

    def __init__(self, error: click.UsageError, command: str) -> None:
        command = error.ctx.command_path if error.ctx else command
        # Click lists choices a line each, indented with a tab: `Choose from: a, b, c`
        lines = [line.strip() for line in error.format_message().splitlines()]
        message = " ".join(filter(None, lines))
        super().__init__(f"{command}: {message} (see {command} --help)")

    def show(self, file: Any = None) -> None:
        click.echo(visible(self.message), err=True)


class _Group(click.Group):
    """Usage errors in one line: of the group's own options, and of each command's (Click
    parses those inside the group's invoke). `qixtui` alone still shows the help."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _OneLineUsageError(exc, "qixtui") from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            # Some parser errors carry no context: name the command they came from.
            command = " ".join(filter(None, [ctx.command_path, ctx.invoked_subcommand]))
            raise _OneLineUsageError(exc, command) from None
        except sqlite3.DatabaseError as exc:
            # Opening checks the file's header and schema; pages damaged further in show up
            # only when a read reaches them, in whatever command reads there. Other errors
            # (a constraint, a misuse) are bugs, and keep their traceback.
            problem = store.session_file_problem(exc)
            if problem is None:
                raise
            command = " ".join(filter(None, ["qixtui", ctx.invoked_subcommand]))
            click.echo(f"{command}: {problem}", err=True)
            sys.exit(1)


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Start with `qixtui demo`. Your own bus: `tap` (record and watch) or `record`; "
    "then `replay`, `flows`, `flow`, `discover` and `compare` read the session file.",
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version, and whether the per-event code (hatch_build.py) runs compiled.",
)
def main() -> None:
    """qixtui: see choreography and orchestration on a real NATS bus."""


@main.command()
@connection_options
@click.option("-o", "--output", required=True, type=click.Path(), help="Session file to create.")
@subjects_option
@click.option("--count", type=click.IntRange(min=1), help="Stop after N events.")
@click.option("--duration", type=click.FloatRange(min=0), help="Stop after S seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at the end.")
@click.option(
    "--append",
    is_flag=True,
    help="Add to OUTPUT if it is already a session, with its correlation rules unless rule "
    "flags are given; its flows are recomputed when recording stops.",
)
@click.option(
    "--pending-limit",
    type=click.IntRange(min=1),
    default=300_000,
    show_default=True,
    help="Events held for the writer before the recorder drops (and counts) new ones "
    "(about 330 bytes each).",
)
@rule_options
@click.option("--no-correlate", is_flag=True, help="Record events only; no flows.")
# tap, demo and orchestrate start the recorder with their own pid: it stops when they die.
@click.option("--parent-pid", type=int, hidden=True)
def record(
    output: str,
    subjects: tuple[str, ...],
    count: int | None,
    duration: float | None,
    as_json: bool,
    append: bool,
    pending_limit: int,
    no_correlate: bool,
    parent_pid: int | None,
    **conn: Any,
) -> None:
    """Record every message on the bus into a session file, correlated into flows."""
    from qixtui.core.correlate import factory
    from qixtui_nats.connect import ConnectError
    from qixtui_nats.recorder import (
        Recorder,
        RecordOptions,
        WriterFailed,
        print_progress,
        run_to_end,
    )

    try:
        # Appending goes on with the file's own rules; flags add to them.
        rules = pop_rules(conn, Path(output) if append else None)
    except RulesError as exc:
        fail(str(exc))
    connect = build_connect_options(conn)
    options = RecordOptions(
        output=Path(output),
        subjects=list(subjects) or [">"],
        count=count,
        duration=duration,
        pending_limit=pending_limit,
        correlator_factory=None if no_correlate else factory(rules),
        extra_meta={} if no_correlate else {"correlation_rules": rules.to_json()},
        append=append,
        parent_pid=parent_pid,
    )
    recorder = Recorder(connect, options)
    if store.misses_replies(options.subjects) and parent_pid is None:
        click.echo(f"qixtui: note: {store.REPLIES_HINT}", err=True)
    progress = print_progress if sys.stderr.isatty() and not as_json else None
    try:
        stats = run_to_end(recorder.run(progress))
    except (store.SessionError, ConnectError, WriterFailed) as exc:
        fail(str(exc))
    if progress:
        click.echo("", err=True)
    elapsed = max(1e-9, (stats.ended or time.monotonic()) - stats.started)
    result = {
        "events": stats.events,
        "dropped": stats.dropped,
        "gaps": stats.gaps,
        "duration_s": round(elapsed, 3),
        "rate": round(stats.events / elapsed, 1),
        "file": str(Path(output).resolve()),
    }
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(
            f"recorded {counted(result['events'], 'event')} in {result['duration_s']}s "
            f"({result['rate']:,.0f}/s), {result['dropped']:,} dropped, "
            f"{counted(result['gaps'], 'gap')} "
            f"-> {result['file']}",
            err=True,
        )


@main.command()
@click.argument("file", type=click.Path())
@click.option(
    "--subject",
    callback=subject_pattern,
    help="NATS subject pattern (`*` one token, `>` the rest; inside a token, literal text).",
)
@click.option("--since", help="Only events at or after this time (ISO 8601 or ns).")
@click.option("--until", help="Only events before this time (ISO 8601 or ns).")
@click.option("--flow", "flow_id", type=FLOW_ID, help="Only events of this flow.")
@click.option("--limit", type=click.IntRange(min=1), help="At most N events.")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines, one object per event.")
def events(
    file: str,
    subject: str | None,
    since: str | None,
    until: str | None,
    flow_id: int | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Print the events of a recording, oldest first."""
    db = open_or_fail(file)
    if flow_id is not None:
        flow_or_fail(db, file, flow_id)
    query = store.EventQuery(
        subject=subject,
        since_ns=parse_time(since),
        until_ns=parse_time(until),
        flow_id=flow_id,
        limit=limit,
    )
    out = sys.stdout
    for event in store.iter_events(db, query):
        if as_json:
            out.write(json_text(store.event_to_json(event)) + "\n")
        else:
            when = dt.datetime.fromtimestamp(event.ts_ns / 1e9).isoformat(timespec="microseconds")
            shown = store.event_to_json(event)
            # Not UTF-8: base64, and said so (it read as text that was never sent).
            tag = "(base64) " if shown.get("payload_encoding") == "base64" else ""
            preview = tag + shown["payload"][:80]
            out.write(visible(f"{when} {event.subject} {len(event.payload)}B {preview}") + "\n")


@main.command()
@click.argument("file", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="The summary as one JSON object.")
def info(file: str, as_json: bool) -> None:
    """Summarise a session: server, time span, counts and every kind of loss."""
    db = open_or_fail(file)
    data = store.summary(db, Path(file))
    if as_json:
        click.echo(json_text(data))
        return

    def when(ns: int | None) -> str:
        return "-" if ns is None else dt.datetime.fromtimestamp(ns / 1e9).isoformat(sep=" ")

    meta = data["meta"]
    state = {
        "finished": "finished",
        "recording": f"being recorded (recorder pid {meta.get('recorder_pid', '?')})",
        "incomplete": "incomplete: the recorder ended without closing it (killed?); every "
        "committed event is here",
    }[data["state"]]
    # a restarted server has a new id and the same name: each name once
    names = ", ".join(
        dict.fromkeys((meta.get("server_names") or meta.get("server_name", "")).split(","))
    )
    lines = [
        f"file:      {data['file']} ({data['file_bytes']:,} bytes)",
        f"state:     {state}",
        f"server:    {meta.get('server', '?')} {names}",
        f"subjects:  {meta.get('subjects', '?')}",
        f"recorded:  {when(data['first_ns'])} .. {when(data['last_ns'])}",
        f"events:    {data['events']:,} ({data['payload_bytes']:,} payload bytes)",
        f"flows:     {data['flows']:,}",
        f"dropped:   {data['dropped']:,}",
        f"gaps:      {len(data['gaps'])}",
    ]
    for gap in data["gaps"]:
        end = when(gap["end_ns"]) if gap["end_ns"] else "(still open)"
        lines.append(f"  {when(gap['start_ns'])} .. {end}  {gap['reason']}")
    for subject, n in data["dropped_by_subject"].items():
        lines.append(f"  dropped {n:,} on {subject}")
    click.echo("\n".join(visible(line) for line in lines))


@main.command()
@click.option("-p", "--port", type=int, default=4222, show_default=True)
@click.option("--no-jetstream", is_flag=True)
def server(port: int, no_jetstream: bool) -> None:
    """Run the embedded nats-server on 127.0.0.1 in the foreground (Ctrl-C stops it)."""
    import signal

    from qixtui_nats.server import EmbeddedServer, ServerError

    # A closed terminal (SIGHUP) stops it too: the server runs in its own session and would
    # otherwise go on holding the port. While it starts, a stop signal ends this command
    # through the `finally` below; once it is up they are blocked and waited for (not before
    # the start: the child would inherit the mask).
    def stop_now(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    stop_signals = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop_now)
    srv = EmbeddedServer(port, jetstream=not no_jetstream)
    try:
        try:
            srv.start()
        except ServerError as exc:
            fail(str(exc))
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # sigtimedwait needs them blocked
        click.echo(
            f"nats-server (pid {srv.pid}) listening on {srv.url} (monitor {srv.monitor_url}); "
            "Ctrl-C stops it",
            err=True,
        )
        assert srv.proc is not None
        while signal.sigtimedwait(stop_signals, SERVER_CHECK_S) is None:
            if srv.proc.poll() is not None:  # killed, or crashed: say so, do not sit silent
                fail(srv.exit_reason())
    finally:
        srv.close()


# The verbs that live in their own modules register themselves on `main` when imported.
from qixtui import (  # noqa: E402
    cli_compare,  # noqa: F401  (compare, export)
    cli_demo,  # noqa: F401  (demo)
    cli_flows,  # noqa: F401  (correlate, flows, flow, discover)
    cli_replay,  # noqa: F401  (replay)
    cli_saga,  # noqa: F401  (orchestrate)
    cli_tui,  # noqa: F401  (tap)
)

if __name__ == "__main__":
    main()
