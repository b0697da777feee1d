"""Waterfall layout and process discovery on plain data."""

from __future__ import annotations

import html
import re
import shutil
import subprocess

import pytest

from qixtui.core.discover import discover, to_dot, to_mermaid
from qixtui.core.model import Event, Link
from qixtui.core.rules import Rules
from qixtui.core.text import visible
from qixtui.core.waterfall import causal_tree, layout

MS = 1_000_000


def ev(id: int, subject: str, ts_ms: int) -> Event:
    return Event(ts_ns=ts_ms * MS, subject=subject, reply=None, headers=None, payload=b"", id=id)


def test_layout_joins_requests_to_replies_and_finds_the_critical_path() -> None:
    events = [
        ev(1, "shop.order.placed", 0),
        ev(2, "shop.cmd.payment", 5),  # request
        ev(3, "_INBOX.x.1", 40),  # its reply
        ev(4, "shop.stock.reserved", 10),  # caused by the order, finished early
        ev(5, "shop.order.completed", 50),
    ]
    links = [
        Link(3, "reply", "_INBOX.x.1", 2),
        Link(4, "causation", "m1", 1),
        Link(5, "causation", "m2", 2),
    ]
    wf = layout(events, links, Rules())
    assert wf.lanes == ["order", "payment", "stock"]  # a command goes to its service
    by_id = {b.event_id: b for b in wf.bars}
    assert set(by_id) == {1, 2, 4, 5}
    assert (by_id[2].start_ns, by_id[2].end_ns, by_id[2].reply_id) == (5 * MS, 40 * MS, 3)
    assert by_id[2].lane == 1
    assert by_id[2].label == "shop.cmd.payment"
    assert wf.critical_path == [1, 2, 5]  # 5 was caused by 2, which waited on 1
    assert [b.event_id for b in wf.bars if b.critical] == [1, 2, 5]
    assert (wf.start_ns, wf.end_ns) == (0, 50 * MS)

    tree = causal_tree(events, links)
    assert [(n.event_id, [c.event_id for c in n.children]) for n in tree] == [(1, [4]), (2, [3, 5])]


def test_causal_tree_hangs_events_under_their_parents() -> None:
    events = [ev(1, "a.x", 0), ev(2, "a.req", 1), ev(3, "_I.1", 2), ev(4, "a.y", 3)]
    links = [Link(3, "reply", "_I.1", 2), Link(4, "causation", "m", 1)]
    tree = causal_tree(events, links)
    assert [(n.event_id, [(c.event_id, c.via) for c in n.children]) for n in tree] == [
        (1, [(4, "causation")]),
        (2, [(3, "reply")]),
    ]


def test_discovery_counts_variants_and_transition_times() -> None:
    traces = [
        [("placed", 0), ("paid", 10 * MS), ("done", 30 * MS)],
        [("placed", 0), ("paid", 20 * MS), ("done", 30 * MS)],
        [("placed", 0), ("paid", 100 * MS), ("done", 110 * MS)],
        [("placed", 0), ("cancelled", 5 * MS)],
        [],
    ]
    found = discover(traces)
    assert found.flows == 4
    assert [(v.steps, v.count) for v in found.variants] == [
        (["placed", "paid", "done"], 3),
        (["placed", "cancelled"], 1),
    ]
    edges = {(e.source, e.target): e for e in found.edges}
    assert edges["placed", "paid"].count == 3
    assert edges["placed", "paid"].median_ns == 20 * MS
    assert edges["placed", "paid"].p95_ns == 100 * MS
    assert edges["paid", "done"].median_ns == 10 * MS
    assert found.starts == {"placed": 4}
    assert found.ends == {"done": 3, "cancelled": 1}
    assert found.activities == {"placed": 4, "paid": 3, "done": 3, "cancelled": 1}


def test_graphs_escape_any_subject() -> None:
    odd = 'a."quoted\\back\nslash<>&'
    found = discover([[("start.x", 0), (odd, MS)]])
    mermaid = to_mermaid(found)
    node_lines = [line for line in mermaid.splitlines() if '["' in line]
    assert len(node_lines) == 2
    for line in node_lines:
        assert line.count('"') == 2  # only the label's own quotes survive
        assert "<" not in line
    assert len(mermaid.splitlines()) == 3 + 2 + 1 + 1 + 1  # header, nodes, start, edge, end
    dot = to_dot(found)
    if shutil.which("dot") is None:
        pytest.skip("graphviz is not installed (apt-get install graphviz)")
    svg = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, check=True)
    assert "quoted" in svg.stdout


def test_dot_labels_show_what_every_other_view_shows_and_stay_apart() -> None:
    """A subject's control and bidi characters are written out as in the text, Mermaid and
    flows views (raw, a terminal obeyed them and `click.echo` dropped them, so two subjects
    could read the same); and graphviz reads `&amp;` in a label as `&`."""
    subjects = [
        "esc.\x1b[31mRED.x",
        "esc.[31mRED.x",
        "rtl.\u202eevil",
        "amp.a&amp;b",
        "amp.a&b",
        'q."back\\slash\n',
    ]
    found = discover([[(s, i * MS) for i, s in enumerate(subjects)]])
    dot = to_dot(found)
    assert re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", dot) is None
    if shutil.which("dot") is None:
        pytest.skip("graphviz is not installed (apt-get install graphviz)")
    svg = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, check=True)
    drawn = [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg.stdout)]
    for subject in subjects:
        assert f"{visible(subject)} (1)" in drawn
    assert "esc.\\x1b[31mRED.x (1)" in drawn
    assert "amp.a&amp;b (1)" in drawn
