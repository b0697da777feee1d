"""`qixtui replay FILE --publish`: publish a recording onto a bus, a dry run unless --yes.

The audit row and the resume position go into the session file's `replays` table through a
separate short write transaction; the events are read through a read-only connection. Kept
in the file, the audit travels with the recording it is about, and a resume position can
never belong to another copy of it. Replies to --requests are counted in the audit row, not
stored as events: the recording stays what was recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import secrets
import shlex
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import click

from qixtui.cli import (
    FLOW_ID,
    build_connect_options,
    connection_options,
    fail,
    flow_or_fail,
    main,
    open_or_fail,
    parse_time,
    subject_pattern,
)
from qixtui.core import store
from qixtui.core.model import FLOW_STATUSES
from qixtui.core.replay import (
    DryRun,
    Plan,
    ReplayError,
    Selection,
    check_prefix,
    confirmation_name,
    default_prefix,
    looks_like_source,
    parse_duration,
    parse_filter,
    parse_speed,
    unanswered,
)
from qixtui.core.text import clipped, counted, json_text, visible

STOPPED_EXIT = 3
# A subject longer than this is cut in the dry run's lines (--json keeps it whole)
SUBJECT_SHOWN = 120


def _plan_from_options(kw: dict[str, Any]) -> Plan:
    try:
        session = secrets.token_hex(4)
        given = kw["prefix"]  # `--prefix ''` is a prefix given, and refused: not the default
        if kw["original_subjects"] and given is not None:
            fail("--prefix and --original-subjects exclude each other")
        prefix = None
        if not kw["original_subjects"]:
            prefix = check_prefix(given) if given is not None else default_prefix(session)
        if kw["filter"]:
            parse_filter(kw["filter"])
        return Plan(
            session=session,
            prefix=prefix,
            selection=Selection(
                subject=kw["subject"],
                flow_id=kw["flow_id"],
                since_ns=parse_time(kw["since"]),
                until_ns=parse_time(kw["until"]),
                status=kw["status"],
                limit=kw["limit"],
                filter=kw["filter"],
            ),
            speed=parse_speed(kw["speed"]),
            max_gap_ns=parse_duration(kw["max_gap"]) if kw["max_gap"] else None,
            requests=kw["requests"],
            keep_msg_id=kw["keep_msg_id"],
        )
    except ReplayError as exc:
        fail(str(exc))
    raise AssertionError("unreachable")


PLAN_OPTIONS = (
    "subject", "flow_id", "since", "until", "status", "filter", "limit", "max_gap", "prefix",
    "original_subjects", "requests", "keep_msg_id",
)  # fmt: skip


def _resume_point(path: Path, kw: dict[str, Any]) -> tuple[Plan, dict[str, Any]]:
    # An empty value (`--prefix ''`) was given too: only None, False and () are not.
    given = [f"--{n.replace('_', '-')}" for n in PLAN_OPTIONS if kw[n] not in (None, False, ())]
    if kw["speed"] != "1":
        given.append("--speed")
    if given:
        fail(f"--resume repeats the stored replay; drop {', '.join(given)}")
    db = open_or_fail(str(path))
    rows = store.replays(db)
    db.close()
    if not rows:
        fail(f"{path}: nothing to resume (no replay was started from it)")
    last = rows[-1]
    if last["status"] == "done":
        fail(f"{path}: nothing to resume (replay {last['id']} finished)")
    if last["status"] == "running":
        click.echo(
            f"qixtui: replay {last['id']} never finished (killed, or still running); messages "
            f"after seq {last['last_seq']} may be sent a second time",
            err=True,
        )
    return Plan.from_json(last["plan"]), last


def _when(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9).isoformat(sep=" ", timespec="milliseconds")


def _dry_run_json(report: Any, plan: Plan, target: Any, skipped: dict[str, int]) -> dict[str, Any]:
    return {
        "dry_run": True,
        "session": plan.session,
        "prefix": plan.prefix,
        "target": target.url,
        "target_server_name": target.server_name,
        "max_payload": target.max_payload,
        "messages": report.messages,
        "bytes": report.bytes,
        "requests": report.requests,
        "subjects": [
            {
                "subject": subject,
                "target": t.target,
                "count": t.count,
                "bytes": t.bytes,
                "first_ns": t.first_ns,
                "last_ns": t.last_ns,
            }
            for subject, t in report.subjects.items()
        ],
        "skipped": skipped,
        "oversize": [
            {"seq": seq, "event_id": eid, "subject": subject, "size": size}
            for seq, eid, subject, size in report.oversize
        ],
    }


def _print_dry_run(data: dict[str, Any], same_server: bool) -> None:
    lines = [
        "dry run: nothing sent (add --yes to publish)",
        f"target:  {data['target']} {data['target_server_name']} "
        f"(max_payload {data['max_payload']:,} bytes)",
    ]
    if same_server:
        lines.append("target looks like the server this recording came from")
    where = f"under {data['prefix']}" if data["prefix"] else "on the original subjects"
    if data["prefix_new_each_run"]:
        where += " (a new id each run; --prefix chooses one)"
    lines.append(
        f"would publish {counted(data['messages'], 'message')} ({data['bytes']:,} bytes) {where}"
        + (f", {data['requests']:,} of them requests" if data["requests"] else "")
    )
    for s in data["subjects"]:
        lines.append(
            f"  {s['count']:>8,} {s['bytes']:>12,}B  {_when(s['first_ns'])} .. "
            f"{_when(s['last_ns'])}  {clipped(s['subject'], SUBJECT_SHOWN)} -> "
            f"{clipped(s['target'], SUBJECT_SHOWN)}"
        )
    for reason, n in data["skipped"].items():
        lines.append(f"never published: {n:,} ({reason})")
    if data["recording_goes_on"]:
        lines.append(
            "a recorder still writes this file: events it adds from now on are not part of it"
        )
    if data["oversize"]:
        lines.append(
            f"{counted(len(data['oversize']), 'message')} larger than the target's max_payload "
            f"({data['max_payload']:,} bytes, headers included):"
        )
        for o in data["oversize"]:
            lines.append(
                f"  seq {o['seq']} event {o['event_id']} "
                f"{clipped(o['subject'], SUBJECT_SHOWN)} {o['size']:,}B"
            )
    click.echo("\n".join(visible(line) for line in lines))


def _confirm_original(meta: dict[str, str], target: Any, name: str, confirm: str | None) -> None:
    """Publishing on the original subjects of the source server needs its name typed."""
    if not looks_like_source(meta, *target.marks()):
        return
    if confirm is None:
        if not sys.stdin.isatty():
            fail(
                f"the target looks like the server this was recorded from ({visible(name)}); "
                f"publishing on the original subjects needs --confirm {visible(name)}"
            )
        confirm = click.prompt(
            f"The target looks like the server this was recorded from. Type its name "
            f"({visible(name)}) to publish on the original subjects",
            default="",
            show_default=False,
        )
    if confirm != name:
        fail("confirmation does not match the server's name; nothing sent")


def _open_audit(path: Path) -> sqlite3.Connection:
    from qixtui_nats.replayer import open_audit

    try:
        return open_audit(path)
    except (store.SessionError, sqlite3.Error) as exc:
        fail(f"cannot write the replay audit into {path}: {exc}; nothing sent")
    raise AssertionError("unreachable")


@main.command("replay")
@click.argument("file", type=click.Path())
@click.option("--publish", is_flag=True, help="Publish onto a bus (without it the TUI opens).")
@connection_options
@click.option("--subject", callback=subject_pattern, help="Only events on this subject pattern.")
@click.option("--flow", "flow_id", type=FLOW_ID, help="Only events of this flow.")
@click.option("--since", help="Only events at or after this time (ISO 8601 or ns).")
@click.option("--until", help="Only events before this time (ISO 8601 or ns).")
@click.option(
    "--status", type=click.Choice(FLOW_STATUSES), help="Only events of flows with this status."
)
@click.option(
    "--filter", help="Only events matching a TUI filter (e.g. 'header:Tenant=blue text:x')."
)
@click.option("--limit", type=click.IntRange(min=1), help="Publish at most N messages.")
@click.option(
    "--speed", default="1", show_default=True, help="1 keeps the recorded gaps, 10 is ten "
    "times faster, max does not wait.",
)  # fmt: skip
@click.option("--max-gap", help="Squash idle stretches longer than this (2s, 500ms).")
@click.option("--prefix", help="Publish under this subject prefix (default replay.<session>.).")
@click.option("--original-subjects", is_flag=True, help="Publish on the recorded subjects.")
@click.option("--confirm", "confirm_name", help="The source server's name, when asked for it.")
@click.option("--requests", is_flag=True, help="Send requests to a replayer inbox, count replies.")
@click.option("--keep-msg-id", is_flag=True, help="Keep Nats-Msg-Id (JetStream dedupes them).")
@click.option("--yes", is_flag=True, help="Publish for real (without it: a dry run).")
@click.option("--resume", is_flag=True, help="Continue the last replay that stopped.")
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
def replay(
    file: str,
    publish: bool,
    yes: bool,
    resume: bool,
    confirm_name: str | None,
    as_json: bool,
    **kw: Any,
) -> None:
    """Reopen a recording in the TUI, read-only, with a time cursor.

    With --publish, publish it onto a bus with its original timing: a dry run unless --yes.
    """
    if not publish:
        given = [k for k, v in kw.items() if v not in (None, False, (), "1")]
        if yes or resume or confirm_name or as_json or given:
            fail("publishing options need --publish (qixtui replay FILE --publish -s URL)")
        from qixtui.cli_tui import open_replay

        open_replay(file)
        return
    from qixtui_nats.connect import ConnectError

    path = Path(file)
    conn_kw = {k: kw.pop(k) for k in list(kw) if k in _CONNECTION_KEYS}
    previous: dict[str, Any] | None = None
    if resume:
        plan, previous = _resume_point(path, kw)
    else:
        plan = _plan_from_options(kw)
    db = open_or_fail(file)
    if plan.selection.flow_id is not None:
        flow_or_fail(db, file, plan.selection.flow_id)  # not "would publish 0 messages"
    if previous is None:
        plan = dataclasses.replace(plan, last_id=store.next_event_id(db) - 1)
    meta = store.get_meta(db)
    connect = build_connect_options(conn_kw)
    try:
        code = asyncio.run(
            _run(path, db, meta, plan, previous, connect, yes, confirm_name, as_json)
        )
    except ConnectError as exc:
        fail(str(exc))
    if code:
        sys.exit(code)


_CONNECTION_KEYS = (
    "servers", "context", "creds", "nkey", "user", "token", "tlsca", "tlscert", "tlskey",
)  # fmt: skip


async def _run(
    path: Path,
    db: sqlite3.Connection,
    meta: dict[str, str],
    plan: Plan,
    previous: dict[str, Any] | None,
    connect: Any,
    yes: bool,
    confirm_name: str | None,
    as_json: bool,
) -> int:
    from qixtui_nats.replayer import connect as connect_target
    from qixtui_nats.replayer import dry_run, may_exceed, run_audited

    after_id = previous["last_event_id"] if previous else 0
    last_seq = previous["last_seq"] if previous else 0
    nc, target = await connect_target(connect)
    try:
        if not yes:
            report, replay = dry_run(db, plan, after_id, last_seq, target.max_payload)
            data = _dry_run_json(report, plan, target, dict(replay.skipped))
            if previous is not None:
                data["resumes"] = previous["id"]
            # The default prefix is drawn for each run: the dry run's is an example.
            data["prefix_new_each_run"] = previous is None and plan.prefix == default_prefix(
                plan.session
            )
            # A recorder still adds events: the replay takes those up to now (plan.last_id).
            data["recording_goes_on"] = store.being_recorded(meta)
            if as_json:
                click.echo(json_text(data))
            else:
                same = looks_like_source(meta, *target.marks())
                _print_dry_run(data, same)
            return 0
        if not target.headers:
            fail(f"{target.url} does not support headers; replayed messages need them")
        report = DryRun(target.max_payload)
        # The exact pass over the selection only when a cheap bound says it may be needed.
        if may_exceed(db, plan, after_id, target.max_payload):
            report, _ = dry_run(db, plan, after_id, last_seq, target.max_payload)
        if report.oversize:
            first = report.oversize[0]
            fail(
                f"{counted(len(report.oversize), 'message')} larger than the target's max_payload "
                f"({target.max_payload:,} bytes), e.g. event {first[1]} on "
                f"{visible(clipped(first[2], SUBJECT_SHOWN))} ({first[3]:,} bytes); "
                "nothing sent (see the dry run)"
            )
        name = confirmation_name(target.server_id, target.server_name)
        if confirm_name is not None and confirm_name != name:  # it names another server
            fail(f"--confirm {visible(confirm_name)}: the target is {visible(name)}; nothing sent")
        if plan.prefix is None:
            _confirm_original(meta, target, name, confirm_name)
        audit = _open_audit(path)
        watching: list[asyncio.Task[None]] = []
        try:
            replay_id, progress, replayer = await run_audited(
                nc,
                target,
                db,
                audit,
                plan,
                after_id=after_id,
                last_seq=last_seq,
                resumed_from=previous["id"] if previous else None,
                started=None
                if as_json or not sys.stderr.isatty()
                else lambda r: watching.append(asyncio.create_task(_show_progress(r))),
            )
        finally:
            for task in watching:
                task.cancel()
                click.echo("", err=True)  # past the progress line
            audit.close()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 2)
    return _report(path, plan, target, replay_id, last_seq, progress, replayer, as_json, connect)


async def _show_progress(replayer: Any) -> None:
    """On a terminal, a line that counts what was sent: at 1x a replay takes as long as
    the recording did."""
    started = time.monotonic()
    while True:
        await asyncio.sleep(1)
        progress = replayer.progress
        click.echo(
            f"\rqixtui replay: {progress.sent:,} sent, up to event {progress.last_event_id} "
            f"({time.monotonic() - started:.0f}s)",
            err=True,
            nl=False,
        )


def _report(
    path: Path,
    plan: Plan,
    target: Any,
    replay_id: int,
    first_seq: int,
    progress: Any,
    replayer: Any,
    as_json: bool,
    connect: Any,
) -> int:
    lateness = sorted(progress.lateness_ns)
    result: dict[str, Any] = {
        "dry_run": False,
        "replay_id": replay_id,
        "session": plan.session,
        "prefix": plan.prefix,
        "target": target.url,
        "status": progress.status,
        "sent": progress.sent,
        "first_seq": first_seq + 1 if progress.sent else None,
        "last_seq": progress.last_seq,
        "confirmed_seq": progress.confirmed_seq,
        "last_event_id": progress.last_event_id,
        "in_doubt": [progress.confirmed_seq + 1, progress.last_seq]
        if progress.last_seq > progress.confirmed_seq
        else None,
        "requests": progress.requests,
        "replies": progress.replies,
        "no_responders": progress.no_responders,
        "unanswered": unanswered(progress.requests, progress.replies, progress.no_responders),
        "skipped": dict(replayer.replay.skipped),
        "error": progress.error,
        "lateness_ms": {
            "median": round(lateness[len(lateness) // 2] / 1e6, 3),
            "p99": round(lateness[int(len(lateness) * 0.99)] / 1e6, 3),
        }
        if lateness
        else None,
    }
    if as_json:
        click.echo(json_text(result))
    else:
        click.echo(
            visible(
                f"replay {replay_id} ({plan.session}) {progress.status}: sent "
                f"{counted(progress.sent, 'message')} to {target.url}, "
                f"seq {result['first_seq']}..{progress.last_seq}"
                + (f"; {progress.answers()}" if progress.requests else "")
            ),
            err=True,
        )
    if progress.status == "done":
        return 0
    doubt = result["in_doubt"]
    click.echo(
        visible(
            f"qixtui: replay stopped ({progress.error}) after seq {progress.last_seq} "
            f"(event {progress.last_event_id}); "
            + (
                f"seqs {doubt[0]}..{doubt[1]} may or may not have arrived; "
                if doubt
                else "everything sent was confirmed; "
            )
            + f"`qixtui replay {shlex.quote(str(path))} --publish --resume --yes "
            f"{connect.flags()}` continues without resending"
        ),
        err=True,
    )
    return STOPPED_EXIT
