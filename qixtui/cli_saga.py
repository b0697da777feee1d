"""The `orchestrate` verb: check a saga definition, run it headless, resume a crashed run."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import shlex
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import click

from qixtui.cli import (
    Terminated,
    build_connect_options,
    connection_options,
    fail,
    has_terminal,
    main,
    need_terminal,
    open_or_fail,
    read_text_or_fail,
    terminate_exits,
)
from qixtui.cli_rules import RulesError, pop_rules, rule_argv, rule_options
from qixtui.core import store
from qixtui.core.saga import (
    SagaDef,
    SagaError,
    describe_step,
    load_saga_text,
    saga_outcome_subject,
)
from qixtui.core.text import counted, json_text, visible


def load_or_fail(path: str) -> tuple[SagaDef, str]:
    text = read_text_or_fail(path)
    try:
        return load_saga_text(text, path), text
    except SagaError as exc:
        fail(str(exc))
    raise AssertionError  # fail() exits


def plan_lines(saga: SagaDef, given: dict[str, Any] | None = None) -> list[str]:
    """The plan `--check` prints: variables as `--var` gives them, else their defaults."""
    pivot = next((i for i, s in enumerate(saga.steps) if s.pivot), None)
    where = (
        f"pivot at step {pivot + 1} ({saga.steps[pivot].name})"
        if pivot is not None
        else ("no pivot: any failure compensates every completed step")
    )
    lines = [f"saga {saga.name}: {counted(len(saga.steps), 'step')}, {where}"]
    if saga.description:
        lines.append(f"  {saga.description}")
    for name, value in {**saga.vars, **(given or {})}.items():
        lines.append(f"  var {name} = {json.dumps(value)}")
    lines.extend("  " + describe_step(step, i, pivot) for i, step in enumerate(saga.steps))
    return [visible(line) for line in lines]


def parse_vars(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            fail(f"--var {item!r}: use NAME=VALUE")
        out[name] = value
    return out


def recorder_environment(connect: Any) -> tuple[list[str], dict[str, str]]:
    """Flags and environment for the `qixtui record` child: secrets only in the environment."""
    args: list[str] = connect.identity_flags()
    env = {"NATS_URL": ",".join(connect.servers)}
    if connect.token:
        env["NATS_TOKEN"] = connect.token
    if connect.password is not None:
        env["NATS_PASSWORD"] = connect.password
    return args, env


def step_line(report: Any) -> str:
    status = "IN DOUBT" if report.result == "in_doubt" else report.result
    resend = " (resent after doubt)" if report.in_doubt else ""
    attempt = f" attempt {report.attempt + 1}" if report.attempt else ""
    detail = f": {report.detail}" if report.detail else ""
    what = "undo " if report.kind == "compensate" else ""
    return f"  {report.seq:>3} {what}{report.step}{attempt}{resend} -> {status}{detail}"


def resume_command(run_id: str, file: Path | str, flags: str) -> str:
    """What continues a run: on the same bus (a bare command would try the default server)."""
    return f"qixtui orchestrate --resume {run_id} {shlex.quote(str(file))} {flags}"


def resume_flags(connect: Any, no_record: bool) -> str:
    """The flags a resume command repeats: the connection's, and --no-record (a resume that
    records would hold the run's second half alone, a flow of its own)."""
    return connect.flags() + (" --no-record" if no_record else "")


def print_report(report: Any, as_json: bool, file: Path, flags: str) -> None:
    if as_json:
        click.echo(json_text({**report.to_json(), "file": str(file)}))
        return
    for doubt in report.in_doubt:
        click.echo(
            visible(
                f"run {report.run_id}: step {doubt.step} ({doubt.kind}) was IN DOUBT: "
                "resent with the same idempotency key"
            )
        )
    skipped = store.skipped_after_failure(report.steps, report.outcome)
    for step in report.steps:
        click.echo(visible(step_line(step) + (" (then skipped)" if step.seq in skipped else "")))
    click.echo(visible(f"run {report.run_id} {report.saga}: {report.outcome}: {report.reason}"))
    if not report.announced:
        click.echo(
            visible(
                f"run {report.run_id}: the bus did not confirm the announcement of its end; "
                "the recording may lack it, and show the run's flow as running"
            )
        )
    if report.outcome in ("stopped", "running"):
        click.echo(visible(f"continue with: {resume_command(report.run_id, file, flags)}"))


def show_runs(file: str, as_json: bool) -> None:
    db = open_or_fail(file)
    try:
        runs = store.saga_runs(db)
    except sqlite3.OperationalError:
        runs = []  # a session from before saga tables existed has no runs
    for run in runs:
        rows = store.saga_journal(db, run.run_id)
        if as_json:
            click.echo(json.dumps({**run_json(run), "journal": [journal_json(r) for r in rows]}))
            continue
        when = dt.datetime.fromtimestamp(run.started_ns / 1e9).isoformat(
            sep=" ", timespec="seconds"
        )
        owner = ""
        if run.owner_pid:
            gone = "" if store.pid_alive(run.owner_pid) else ", which is no longer running"
            owner = f", run by process {run.owner_pid}{gone}"
        lines = [f"run {run.run_id} {run.saga}: {run.status}{owner} (started {when}) {run.reason}"]
        skipped = store.skipped_after_failure(rows, run.status)
        for r in rows:
            result = r.result or "IN DOUBT: intent journaled, no result"
            detail = f": {r.detail}" if r.detail else ""
            if r.result == "in_doubt":
                # resent in the next row, or (the run stopped there) on resume
                result, detail = "IN DOUBT", " (resent below)" if r is not rows[-1] else detail
            what = "undo " if r.kind == "compensate" else ""
            attempt = f" attempt {r.attempt + 1}" if r.attempt else ""
            if r.seq in skipped:
                detail += " (then skipped)"
            lines.append(f"  {r.seq:>3} {what}{r.step}{attempt} {r.subject} -> {result}{detail}")
        runner_alive = bool(run.owner_pid) and store.pid_alive(run.owner_pid)
        if run.status == "running" and not runner_alive:
            lines.append(f"  resume with: qixtui orchestrate --resume {run.run_id} {file}")
        click.echo("\n".join(visible(line) for line in lines))
    if not runs and not as_json:
        click.echo(f"no saga runs in {file}", err=True)


def run_json(run: store.SagaRunRecord) -> dict[str, Any]:
    out = dict(run.__dict__)
    del out["definition"]
    return out


def journal_json(row: store.JournalRow) -> dict[str, Any]:
    out = dict(row.__dict__)
    for name in ("payload", "reply"):
        value = out[name]
        out[name] = None if value is None else value.decode("utf-8", errors="replace")
    return out


def default_output(saga: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(f"{saga}-{stamp}.qix")


@main.command()
@connection_options
@click.argument("saga_file", required=False, type=click.Path())
@click.option("--check", is_flag=True, help="Validate SAGA_FILE and print its plan; send nothing.")
@click.option(
    "--auto",
    is_flag=True,
    help="Run every step without stopping; without it the stepper screen opens.",
)
@click.option("--runs", type=click.IntRange(min=1), default=1, help="Run N times in a row.")
@click.option("--var", "var_items", multiple=True, help="Set a variable: NAME=VALUE (repeatable).")
@click.option("-o", "--output", type=click.Path(), help="Session file (default: a new file).")
@click.option(
    "--resume", nargs=2, metavar="RUN_ID FILE", help="Continue a run that stopped part way."
)
@click.option(
    "--show",
    "show_file",
    type=click.Path(),
    metavar="FILE",
    help="List the saga runs in FILE with their journals, steps in doubt marked.",
)
@click.option(
    "--no-record",
    is_flag=True,
    help="Write only the journal; start no recorder (one may already be recording FILE).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run.")
@rule_options
def orchestrate(
    saga_file: str | None,
    check: bool,
    auto: bool,
    runs: int,
    var_items: tuple[str, ...],
    output: str | None,
    resume: tuple[str, str] | None,
    show_file: str | None,
    no_record: bool,
    as_json: bool,
    **conn: Any,
) -> None:
    """Drive a saga over NATS request/reply, journaled in a session file.

    \b
    qixtui orchestrate --check SAGA.toml          validate and print the plan
    qixtui orchestrate SAGA.toml [--var k=v]      step through a run in the stepper screen
    qixtui orchestrate SAGA.toml --auto [--runs N] [--var k=v] [-o FILE] [--json]
    qixtui orchestrate --resume RUN_ID FILE       go on with a run (the stepper in a terminal)
    qixtui orchestrate --show FILE                the runs in FILE and their journals

    Exits non-zero when a run fails without compensating cleanly.
    """
    # The recorder's correlation rules (the demo's service names come from its rules file);
    # a file that exists keeps its own, the flags adding to them (`record --append` merges
    # them). Read only where a recorder may start.
    rule_flags = rule_argv(conn)
    if show_file:
        show_runs(show_file, as_json)
        return
    if resume:
        run_id, file = resume
        # Before anything is recorded into the file or sent on the bus.
        db = open_or_fail(file)
        run = store.saga_run(db, run_id)
        db.close()
        if run is None:
            fail(f"{file}: no saga run {run_id!r} (`qixtui orchestrate --show {file}` lists them)")
        assert run is not None
        if run.status != "running":
            fail(
                f"{file}: saga run {run_id} already ended, {run.status}: {run.reason}; nothing "
                f"to resume (`qixtui orchestrate --show {file}` shows its steps)"
            )
        check_rules(conn, rule_flags, no_record)
        connect = build_connect_options(conn)
        # In a terminal the stepper takes the run up again where it stopped (a failed step
        # waits for r/s/a again), showing the saga the run journaled; --auto, or no
        # terminal, goes on unattended.
        step = not auto and has_terminal()
        try:  # the stepper shows it; either way, the recorder must take its subjects
            saga = load_saga_text(run.definition, f"run {run_id}")
        except SagaError as exc:
            fail(str(exc))
        session = _session(
            connect,
            Path(file),
            no_record,
            resume=run_id,
            saga=saga,
            text=run.definition,
            step=step,
            rule_flags=rule_flags,
        )
        flags = resume_flags(connect, no_record)
        reports = run_or_interrupt(session, file, flags)
        _finish(reports, as_json, Path(file), flags, no_record)
        return
    if not saga_file:
        fail("give a saga file (SAGA.toml), or --resume RUN_ID FILE")
    assert saga_file is not None
    saga, text = load_or_fail(saga_file)
    overrides = parse_vars(var_items)
    from qixtui.core.saga import resolve_vars

    try:
        values = resolve_vars(saga, overrides, "check")
    except SagaError as exc:
        fail(str(exc))
    if check:
        click.echo("\n".join(plan_lines(saga, {name: values[name] for name in overrides})))
        return
    if not auto and runs > 1:
        fail("--runs needs --auto: the stepper drives one run")
    if not auto:
        need_terminal("the stepper", "use --auto to run without stopping")
    check_rules(conn, rule_flags, no_record)
    connect = build_connect_options(conn)
    path = Path(output) if output else default_output(saga.name)
    if no_record and not path.exists():
        try:
            # no recorder will write it: a finished session, not one whose recorder died
            meta = {"saga": saga.name, "stopped_ns": str(time.time_ns())}
            store.create_session(path, meta).close()
        except store.SessionError as exc:
            fail(str(exc))
    flags = resume_flags(connect, no_record)
    reports = run_or_interrupt(
        _session(
            connect,
            path,
            no_record,
            saga=saga,
            text=text,
            overrides=overrides,
            runs=runs,
            step=not auto,
            rule_flags=rule_flags,
        ),
        str(path),
        flags,
    )
    _finish(reports, as_json, path, flags, no_record)


def check_rules(conn: dict[str, Any], rule_flags: list[str], no_record: bool) -> None:
    """The rules the recorder will get, checked before anything starts."""
    try:
        pop_rules(conn)
    except RulesError as exc:
        fail(str(exc))
    if rule_flags and no_record:
        click.echo("qixtui: note: rule flags go to the recorder; --no-record starts none", err=True)


def run_or_interrupt(session: Any, file: str, flags: str) -> list[Any]:
    """Ctrl-C or SIGTERM stops the run where it is (journaled, resumable) with one line, no
    traceback; the recorder is stopped on the way out."""
    terminate_exits()
    try:
        return asyncio.run(session)
    except (KeyboardInterrupt, Terminated) as exc:
        fail(
            f"interrupted; the run is resumable: `qixtui orchestrate --show {file}` lists it, "
            f"`{resume_command('RUN_ID', file, flags)}` continues it",
            exc.code if isinstance(exc, Terminated) else 130,
        )
    raise AssertionError  # fail() exits


def _finish(
    reports: list[Any], as_json: bool, path: Path, flags: str, no_record: bool = False
) -> None:
    for report in reports:
        print_report(report, as_json, path.resolve(), flags)
    if not as_json:
        what = "journal (--no-record: no events recorded)" if no_record else "journal and events"
        click.echo(f"{what} in {path.resolve()}", err=True)
    if any(not r.clean for r in reports):
        sys.exit(1)


async def _session(
    connect: Any,
    path: Path,
    no_record: bool,
    *,
    resume: str | None = None,
    saga: SagaDef | None = None,
    text: str = "",
    overrides: dict[str, str] | None = None,
    runs: int = 1,
    step: bool = False,
    rule_flags: list[str] | None = None,
) -> list[Any]:
    from qixtui_nats.connect import ConnectError
    from qixtui_nats.saga_runner import (
        Recording,
        RecordingError,
        SagaRunner,
        connect_bus,
        open_journal,
    )

    try:
        nc = await connect_bus(connect)
    except ConnectError as exc:
        fail(str(exc))
    reports: list[Any] = []
    recording = None
    screen_exit = 0  # the stepper's exit code: SIGTERM (143) or a crash (1) is not a success
    try:
        if not no_record:
            args, env = recorder_environment(connect)
            recording = Recording(path, [*args, *(rule_flags or [])], env)
            try:
                recording.spawn()
                await recording.ready()
                missed = recording.missed(saga_subjects(saga)) if saga is not None else []
            except (RecordingError, store.SessionError) as exc:
                fail(str(exc))
            if missed:
                fail(
                    f"the recorder already writing {path} does not record "
                    f"{', '.join(map(visible, missed))}: the run's messages would be in no "
                    "file; record into another file (-o)"
                )
        try:
            db = open_journal(path)
        except store.SessionError as exc:
            fail(str(exc))
        try:
            # The stepper screen is the runner's gate and live view; headless runs print.
            live = None if step or not sys.stderr.isatty() else _live_printer()
            runner = SagaRunner(nc, db, on_step=live, recorded=recording is not None)
            if step:
                from qixtui.ui.stepper import StepperApp

                assert saga is not None
                app = StepperApp(path, runner, saga, text, overrides, resume, bool(resume))
                await app.run_async()
                screen_exit = app.return_code or 0
                if app.error:
                    fail(app.error)
                if app.report is not None:
                    reports.append(app.report)
                else:  # closed mid-request (ctrl+q): the journal keeps the run resumable
                    run_id = app.stepper.run_id
                    click.echo(
                        visible(
                            f"run {run_id} interrupted; continue with: "
                            + resume_command(run_id, path, resume_flags(connect, no_record))
                        ),
                        err=True,
                    )
            elif resume:
                try:
                    reports.append(await runner.resume(resume))
                except (SagaError, store.SessionError) as exc:
                    fail(str(exc))
            else:
                assert saga is not None
                for _ in range(runs):
                    reports.append(await runner.start(saga, text, overrides))
                    if reports[-1].outcome in ("stopped", "running"):
                        break
        finally:
            db.close()
        if recording is not None:
            try:
                await recording.stop()
            except RecordingError as exc:
                fail(str(exc))
    finally:
        if recording is not None:
            await asyncio.to_thread(recording.abort)  # only does something after an error
        with contextlib.suppress(Exception):  # a bus that went away fails its close
            await asyncio.wait_for(nc.close(), 2)
    if screen_exit:
        sys.exit(screen_exit)
    return reports


FLOW_ENDS = ("completed", "failed", "compensated")


def saga_subjects(saga: SagaDef) -> list[str]:
    """The subjects a run of `saga` sends on: its requests, compensations and the ends it
    may announce."""
    subjects = [step.request for step in saga.steps]
    subjects += [step.compensate.request for step in saga.steps if step.compensate]
    subjects += [saga_outcome_subject(saga.name, end) for end in FLOW_ENDS]
    return list(dict.fromkeys(subjects))


def _live_printer() -> Any:
    def show(stage: str, request: Any, result: Any) -> None:
        what = f"{'undo ' if request.kind == 'compensate' else ''}{request.step}"
        if stage == "intent":
            line = f"-> {what} {request.subject}"
        else:
            line = f"<- {what} {result.kind} {result.detail}".rstrip()
        click.echo(visible(line), err=True)

    return show
