"""Flow verbs: `correlate` (recompute), `flows`, `flow` (waterfall and causal tree), `discover`."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import click
import msgspec

from qixtui.cli import FLOW_ID, fail, flow_or_fail, main, open_or_fail
from qixtui.cli_rules import RulesError, pop_rules, rule_options
from qixtui.core import discover as discovery
from qixtui.core import flowfile, store, waterfall
from qixtui.core.model import FLOW_STATUSES, Flow
from qixtui.core.text import counted, json_text, time_span, visible

BAR_WIDTH = 48


def _flow_json(flow: Flow) -> str:
    return json_text(msgspec.to_builtins(flow))


@main.command()
@click.argument("file", type=click.Path())
@rule_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def correlate(file: str, as_json: bool, **kw: Any) -> None:
    """Recompute the flows of a recording, in place, in one transaction: with the rules it
    was recorded (or last correlated) with, plus the rule flags; --config replaces them."""
    try:
        # Flags add to the file's own rules, not to the defaults: those would drop its keys,
        # its terminal and failure subjects and its service names, and leave flows running.
        rules = pop_rules(kw, Path(file))
    except RulesError as exc:
        fail(str(exc))
    try:
        db = store.open_session(Path(file), readonly=False)
    except store.SessionError as exc:
        fail(str(exc))
    if store.being_recorded(store.get_meta(db)):
        fail(f"{file}: still being recorded; correlate it after the recorder stops")
    count = flowfile.recorrelate(db, rules)
    db.close()
    if as_json:
        click.echo(json.dumps({"file": file, "flows": count}))
    else:
        click.echo(visible(f"{counted(count, 'flow')} in {file}"), err=True)


def _when(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9).isoformat(sep=" ", timespec="milliseconds")


@main.command()
@click.argument("file", type=click.Path())
@click.option("--status", type=click.Choice(FLOW_STATUSES), help="Only flows with this status.")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines, one object per flow.")
def flows(file: str, status: str | None, as_json: bool) -> None:
    """List the flows of a recording, oldest first."""
    db = open_or_fail(file)
    out = sys.stdout
    for flow in store.flows(db, status):
        if as_json:
            out.write(_flow_json(flow) + "\n")
            continue
        variant = " > ".join(flow.variant[:6]) + (" > …" if len(flow.variant) > 6 else "")
        mark = " [orchestrated]" if flow.orchestrated else ""
        line = (
            f"{flow.flow_id:>8} {flow.status:<11} {_when(flow.started_ns)} "
            f"{time_span(flow.ended_ns - flow.started_ns):>9} {flow.events:>5} ev  "
            f"{','.join(flow.services)}{mark}  {variant}"
        )
        out.write(visible(line) + "\n")


def _bar(bar: waterfall.Bar, start: int, span: int) -> str:
    left = int((bar.start_ns - start) * (BAR_WIDTH - 1) / span) if span else 0
    right = int((bar.end_ns - start) * (BAR_WIDTH - 1) / span) if span else 0
    if bar.reply_id is None:
        cells = " " * left + "◆"
    else:
        cells = " " * left + "├" + "─" * max(0, right - left - 1) + ("┤" if right > left else "")
    return cells.ljust(BAR_WIDTH)


def _tree_lines(nodes: list[waterfall.TreeNode], start: int, prefix: str = "") -> list[str]:
    lines = []
    for i, node in enumerate(nodes):
        last = i == len(nodes) - 1
        branch = "└─ " if last else "├─ "
        via = "" if node.via == "root" else f" ({node.via})"
        offset = time_span(node.ts_ns - start)
        lines.append(f"{prefix}{branch}+{offset} {node.label} #{node.event_id}{via}")
        lines += _tree_lines(node.children, start, prefix + ("   " if last else "│  "))
    return lines


@main.command()
@click.argument("file", type=click.Path())
@click.argument("flow_id", type=FLOW_ID)
@click.option("--json", "as_json", is_flag=True, help="The flow, its layout and tree as JSON.")
def flow(file: str, flow_id: int, as_json: bool) -> None:
    """Show one flow: a waterfall (one lane per service) and its causal tree."""
    db = open_or_fail(file)
    summary = flow_or_fail(db, file, flow_id)
    events = flowfile.flow_events(db, flow_id)
    links = flowfile.why_linked(db, events)
    layout = waterfall.layout(events, links, flowfile.session_rules(db))
    tree = waterfall.causal_tree(events, links)
    if as_json:
        data = {
            "flow": msgspec.to_builtins(summary),
            "waterfall": msgspec.to_builtins(layout),
            "tree": msgspec.to_builtins(tree),
            "links": [
                {"event_id": lk.event_id, "kind": lk.kind, "key": lk.key, "parent_id": lk.parent_id}
                for lk in links
            ],
        }
        click.echo(json_text(data))
        return
    span = layout.end_ns - layout.start_ns
    # Lanes padded by the width they are shown with: the line is escaped after it is built,
    # and a name with control characters is longer shown than raw (`\x1b` is 4 for 1).
    width = max([len(visible(lane)) for lane in layout.lanes] + [7])
    lines = [
        f"flow {summary.flow_id}: {summary.status}, {counted(summary.events, 'event')}, "
        f"{time_span(span)}, keys: {', '.join(summary.keys) or '-'}"
        + (" [orchestrated]" if summary.orchestrated else ""),
        f"{'':<{width}} 0{'':<{BAR_WIDTH - 2}}{time_span(span)}",
    ]
    for bar in layout.bars:
        mark = "*" if bar.critical else " "
        took = f" {time_span(bar.end_ns - bar.start_ns)}" if bar.reply_id is not None else ""
        lines.append(
            f"{visible(bar.service):<{width}} {_bar(bar, layout.start_ns, span)}{mark}"
            f"+{time_span(bar.start_ns - layout.start_ns)} {bar.label}{took}"
        )
    lines.append("* critical path; ├──┤ a request and its reply")
    lines.append("")
    lines.append("causal tree:")
    lines += _tree_lines(tree, layout.start_ns)
    click.echo("\n".join(visible(line) for line in lines))


@main.command()
@click.argument("file", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Variants and edges as one JSON object.")
@click.option("--dot", "as_dot", is_flag=True, help="The directly-follows graph as Graphviz DOT.")
@click.option("--mermaid", "as_mermaid", is_flag=True, help="The graph as a Mermaid flowchart.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True)
def discover(file: str, as_json: bool, as_dot: bool, as_mermaid: bool, top: int) -> None:
    """Discover the process: variants with counts and the directly-follows graph."""
    if as_json + as_dot + as_mermaid > 1:
        fail("choose one of --json, --dot, --mermaid")
    db = open_or_fail(file)
    found = discovery.discover(flowfile.traces(db))
    if as_json:
        click.echo(json_text(msgspec.to_builtins(found)))
        return
    if as_dot:
        click.echo(discovery.to_dot(found), nl=False)
        return
    if as_mermaid:
        click.echo(discovery.to_mermaid(found), nl=False)
        return
    lines = [f"{counted(found.flows, 'flow')}, {counted(len(found.variants), 'variant')}"]
    for variant in found.variants[:top]:
        share = variant.count / found.flows * 100
        lines.append(f"{variant.count:>8} {share:5.1f}%  {' > '.join(variant.steps)}")
    lines.append("")
    lines.append("directly follows (count, median, p95):")
    for edge in found.edges:
        lines.append(
            f"{edge.count:>8}  {edge.source} -> {edge.target}  "
            f"{time_span(edge.median_ns)} {time_span(edge.p95_ns)}"
        )
    click.echo("\n".join(visible(line) for line in lines))
