"""The compare and export verbs: choreography against orchestration, one flow for people."""

from __future__ import annotations

import sqlite3
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import msgspec

from qixtui.cli import (
    FLOW_ID,
    fail,
    flow_or_fail,
    main,
    need_terminal,
    open_or_fail,
    read_text_or_fail,
    subject_pattern,
)
from qixtui.core import compare as cmp
from qixtui.core import export, flowfile, store
from qixtui.core.rules import Rules
from qixtui.core.saga import SagaDef, SagaError, load_saga_text
from qixtui.core.text import counted, json_text, visible


def _markers(db: sqlite3.Connection, failure: Sequence[str], compensation: Sequence[str]) -> Any:
    """The session's correlation rules' failure and compensation patterns, plus the flags'."""
    try:
        rules = flowfile.session_rules(db)
    except msgspec.MsgspecError:
        rules = Rules()
    return cmp.Markers.from_rules(rules, failure, compensation)


def _lens(db: sqlite3.Connection) -> cmp.Lens:
    """Services as the session's own correlation rules name them (the flows' services)."""
    try:
        return cmp.Lens.from_rules(flowfile.session_rules(db))
    except msgspec.MsgspecError:
        return cmp.Lens()


def _load_toml(path: str) -> dict[str, Any]:
    """A TOML file, or one line saying why not."""
    text = read_text_or_fail(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        fail(f"{path}: not valid TOML: {exc}")
    raise AssertionError  # fail() exits


def _saga_def(path: str) -> SagaDef:
    """A saga file through the saga engine's own loader, or one line saying why not."""
    text = read_text_or_fail(path)
    try:
        return load_saga_text(text, path)
    except SagaError as exc:
        fail(str(exc))
    raise AssertionError  # fail() exits


def _saga_steps(
    saga: SagaDef, path: str, pairs: Sequence[str], map_file: str | None
) -> cmp.SagaSteps:
    """The saga's step order, mapped to event subjects by --map-file then --map."""
    items: list[str] = []
    if map_file:
        items.extend(_map_file_items(map_file))
    items.extend(pairs)
    if not items:
        fail("--saga needs a mapping from steps to events: --map STEP=SUBJECT or --map-file")
    try:
        mapped = cmp.parse_mapping(items, [s.name for s in saga.steps])
    except ValueError as exc:
        fail(str(exc))
    undoable = {s.name: s.compensate for s in saga.steps if s.compensate is not None}
    for step in mapped.compensations:
        if step not in undoable:
            fail(f"--map {step}:compensate: step `{step}` has no compensation in {path}")
    return mapped


def _map_file_items(path: str) -> list[str]:
    data = _load_toml(path)
    table = data.get("map")
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        fail(f'{path}: expected a [map] table of step = "subject" entries')
    return [f"{k}={v}" for k, v in table.items()]


def _md_cell(text: str) -> str:
    return visible(text).replace("|", "\\|")


def render_markdown(result: cmp.Comparison, title: str) -> str:
    out = [f"## Choreography vs orchestration: {_md_cell(title)}", ""]
    out.append("| | choreography | orchestration |")
    out.append("|---|---|---|")
    out.extend(
        f"| {_md_cell(a)} | {_md_cell(b)} | {_md_cell(c)} |" for a, b, c in cmp.figure_rows(result)
    )
    out += ["", f"Styles: {result.split}. Latency runs from a flow's first event to its last."]
    out += ["", f"Coupling {result.edges_method}."]
    if result.conformance is not None:
        out += ["", "### Conformance of the choreography to the saga", ""]
        out += [visible(line) for line in cmp.conformance_lines(result.conformance, True)]
    return "\n".join(out) + "\n"


def render_text(result: cmp.Comparison) -> str:
    """The table with short cells; the edge lists, too long for a column, follow it."""
    long_rows = ("who talks to whom", "critical path (top)")
    rows = [("", "choreography", "orchestration")]
    rows += [r for r in cmp.figure_rows(result) if r[0] not in long_rows]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    out = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows]
    for stats in (result.choreography, result.orchestration):
        out.append(f"{stats.style} edges:")
        out.extend(f"  {e.source} -> {e.target}  {e.count}  ({e.via})" for e in stats.edges)
        out.append(f"{stats.style} critical path:")
        out.extend(
            f"  {x.step}  {x.share:.0%} of critical time, in {counted(x.flows, 'flow')}"
            for x in stats.critical_path
        )
    out.append(f"styles: {result.split}")
    if result.conformance is not None:
        out.append("conformance:")
        out.extend(cmp.conformance_lines(result.conformance, False))
    return "\n".join(visible(line) for line in out) + "\n"


@main.command(name="compare")
@click.argument("file", type=click.Path())
@click.argument("other", type=click.Path(), required=False)
@click.option("--saga", "saga_path", type=click.Path(), help="Saga TOML to check conformance.")
@click.option(
    "--map",
    "pairs",
    multiple=True,
    metavar="STEP=SUBJECT",
    help="Saga step -> event subject pattern that shows it done; STEP:compensate=SUBJECT for "
    "its compensation (repeatable).",
)
@click.option(
    "--map-file", type=click.Path(), help='TOML with a [map] table: step = "subject", ...'
)
@click.option(
    "--orchestrated-subject",
    metavar="PATTERN",
    callback=subject_pattern,
    help="Tell the styles apart by subject: flows with an event on PATTERN are orchestrated "
    "(default: flows the saga engine marked).",
)
@click.option("--failure", multiple=True, help="Subject pattern that signals a failure.")
@click.option("--compensation", multiple=True, help="Subject pattern of a compensation.")
@click.option("--json", "as_json", is_flag=True, help="The comparison as one JSON object.")
@click.option("--markdown", is_flag=True, help="A Markdown table for a design review.")
@click.option(
    "--tui",
    is_flag=True,
    help="Open the compare screen: figures, process graphs, two flows and their diff.",
)
def compare_verb(
    file: str,
    other: str | None,
    saga_path: str | None,
    pairs: tuple[str, ...],
    map_file: str | None,
    orchestrated_subject: str | None,
    failure: tuple[str, ...],
    compensation: tuple[str, ...],
    as_json: bool,
    markdown: bool,
    tui: bool,
) -> None:
    """Compare choreographed and orchestrated flows of a session side by side.

    With OTHER, choreography comes from FILE and orchestration from OTHER.
    """
    if as_json + markdown + tui > 1:
        fail("choose one of --json, --markdown and --tui")
    if tui and (other or orchestrated_subject or failure or compensation):
        fail("--tui compares the styles of one session, as the saga engine marked them")
    if (pairs or map_file) and not saga_path:
        fail("--map and --map-file need --saga")
    saga_def = _saga_def(saga_path) if saga_path else None
    # the screen draws a saga's plan without a mapping; conformance needs one
    mapped = saga_def is not None and (not tui or bool(pairs or map_file))
    saga = _saga_steps(saga_def, str(saga_path), pairs, map_file) if saga_def and mapped else None
    db = open_or_fail(file)
    if tui:
        db.close()
        need_terminal("qixtui compare --tui", "without --tui it prints the comparison")
        from qixtui.ui.comparescreen import CompareApp

        app = CompareApp(Path(file), saga_def, saga, str(saga_path or ""))
        app.run()
        sys.exit(app.return_code or 0)
    # Without --saga, the saga the session's runs journaled: the screen counts its
    # compensation requests too, and both must give the same figures.
    compensation = (
        *compensation,
        *cmp.compensation_requests(saga_def or cmp.session_saga(db)[0]),
    )
    markers = _markers(db, failure, compensation)
    lens = _lens(db)
    flows, events, links = cmp.load_scope(db)
    result = cmp.compare(
        flows,
        events,
        links,
        lens=lens,
        markers=markers,
        orchestrated_subject=orchestrated_subject,
        saga=saga,
    )
    if other is not None:
        db2 = open_or_fail(other)
        flows2, events2, links2 = cmp.load_scope(db2)
        _, orch = cmp.split_styles(flows2, events2, orchestrated_subject)
        markers2 = _markers(db2, failure, compensation)
        result.orchestration = cmp.style_stats(
            cmp.ORCHESTRATION, orch, events2, links2, _lens(db2), markers2
        )
        result.split += f"; choreography from {file}, orchestration from {other}"
    if as_json:
        click.echo(json_text(msgspec.to_builtins(result)))
    elif markdown:
        sys.stdout.write(render_markdown(result, Path(file).name))
    else:
        sys.stdout.write(render_text(result))


@main.command(name="export")
@click.argument("file", type=click.Path())
@click.option("--flow", "flow_id", type=FLOW_ID, required=True, help="The flow to export.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["mermaid", "otlp-json", "jsonl"]),
    required=True,
    help="mermaid: a sequence diagram; otlp-json: OpenTelemetry spans for Jaeger or Tempo; "
    "jsonl: the flow's events as `events --json` prints them.",
)
def export_verb(file: str, flow_id: int, fmt: str) -> None:
    """Export one flow for people and tools."""
    db = open_or_fail(file)
    flow = flow_or_fail(db, file, flow_id)
    events = list(store.iter_events(db, store.EventQuery(flow_id=flow_id)))
    if fmt == "jsonl":
        for event in events:
            sys.stdout.write(json_text(store.event_to_json(event)) + "\n")
        return
    links = cmp.links_within(db, events)
    lens = _lens(db)
    if fmt == "mermaid":
        sys.stdout.write(export.to_mermaid(flow, events, links, lens))
    else:
        click.echo(json_text(export.to_otlp(flow, events, links, lens)))
