"""The compare and export verbs as a user runs them, checked against `events --json`."""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from helpers import run_qixtui
from shopflows import MAP, SAGA_TOML, write_session


def nearest_rank(values: list[int], q: float) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    k = max(1, -(-len(ordered) * q // 1))
    return ordered[min(int(k), len(ordered)) - 1]


def events_by_flow(path: Path) -> dict[int, list[dict[str, Any]]]:
    out = run_qixtui("events", str(path), "--json")
    assert out.returncode == 0, out.stderr
    grouped: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for line in out.stdout.splitlines():
        event = json.loads(line)
        if event["flow_id"] is not None:
            grouped[event["flow_id"]].append(event)
    return grouped


def flow_rows(path: Path) -> list[tuple[int, str, bool]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT flow_id, status, orchestrated FROM flows ORDER BY flow_id")
        return [(r[0], r[1], bool(r[2])) for r in rows]
    finally:
        db.close()


def check_against_events(report: dict[str, Any], path: Path) -> None:
    """Counts from the flows table and latencies recomputed from the events' timestamps."""
    grouped = events_by_flow(path)
    rows = flow_rows(path)
    for style, orchestrated in (("choreography", False), ("orchestration", True)):
        side = report[style]
        mine = [(fid, status) for fid, status, orch in rows if orch is orchestrated]
        assert side["flow_ids"] == [fid for fid, _ in mine]
        assert side["flows"] == len(mine) > 0
        for status in ("completed", "failed", "compensated", "stalled", "running"):
            assert side[status] == sum(1 for _, s in mine if s == status)
        spans = {
            fid: max(e["ts_ns"] for e in grouped[fid]) - min(e["ts_ns"] for e in grouped[fid])
            for fid, _ in mine
        }
        done = [spans[fid] for fid, s in mine if s == "completed"]
        for q, key in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            assert side["latency_ns"][key] == nearest_rank(done, q)
            assert side["latency_all_ns"][key] == nearest_rank(list(spans.values()), q)
        sizes = [len(grouped[fid]) for fid, _ in mine]
        assert side["messages_per_flow"]["max"] == max(sizes)
        assert side["messages_per_flow"]["mean"] == pytest.approx(sum(sizes) / len(sizes))


@pytest.fixture
def shop_session(tmp_path: Path) -> Path:
    path = tmp_path / "shop.qix"
    write_session(path)
    (tmp_path / "saga.toml").write_text(SAGA_TOML)
    return path


def map_args() -> list[str]:
    return [arg for item in MAP for arg in ("--map", item)]


def test_compare_json_matches_events_and_flows(shop_session: Path) -> None:
    saga = shop_session.parent / "saga.toml"
    out = run_qixtui("compare", str(shop_session), "--json", "--saga", str(saga), *map_args())
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    check_against_events(report, shop_session)
    conf = report["conformance"]
    deviating = [v for v in conf["variants"] if not v["conforms"]]
    assert [d["step"] for v in deviating for d in v["deviations"]] == ["reserve"]


def test_compare_markdown_for_a_design_review(shop_session: Path) -> None:
    saga = shop_session.parent / "saga.toml"
    out = run_qixtui("compare", str(shop_session), "--markdown", "--saga", str(saga), *map_args())
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| | choreography | orchestration |"
    assert all(line.count("|") - line.count("\\|") == 4 for line in table)
    assert "| flows | 5 | 3 |" in table
    assert any("deviates" in line and "reserve → authorize" in line for line in lines)


def test_compare_two_sessions(shop_session: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.qix"
    write_session(other)
    out = run_qixtui("compare", str(shop_session), str(other), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["orchestration"]["flow_ids"] == [11, 12, 13]
    assert str(other) in report["split"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--map", "authorize=x"], "--map and --map-file need --saga"),
        (["--saga", "SAGA", "--map", "nope=x"], "the saga has no step `nope`"),
        (["--saga", "SAGA"], "needs a mapping"),
        (["--saga", "SAGA", "--map", "ship:compensate=x"], "has no compensation"),
        (["--saga", "missing.toml", "--map", "a=b"], "missing.toml"),
        (["--json", "--markdown"], "choose one of --json and --markdown"),
    ],
)
def test_compare_bad_input_is_one_line(shop_session: Path, args: list[str], message: str) -> None:
    saga = str(shop_session.parent / "saga.toml")
    out = run_qixtui("compare", str(shop_session), *[saga if a == "SAGA" else a for a in args])
    assert out.returncode == 1
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_export_formats(shop_session: Path) -> None:
    jsonl = run_qixtui("export", str(shop_session), "--flow", "13", "--format", "jsonl")
    events = run_qixtui("events", str(shop_session), "--flow", "13", "--json")
    assert jsonl.returncode == 0
    assert jsonl.stdout == events.stdout
    assert jsonl.stdout
    mermaid = run_qixtui("export", str(shop_session), "--flow", "13", "--format", "mermaid")
    assert mermaid.stdout.startswith("sequenceDiagram\n")
    otlp = run_qixtui("export", str(shop_session), "--flow", "13", "--format", "otlp-json")
    spans = [
        s
        for r in json.loads(otlp.stdout)["resourceSpans"]
        for ss in r["scopeSpans"]
        for s in ss["spans"]
    ]
    assert len(spans) == len(jsonl.stdout.splitlines())
    missing = run_qixtui("export", str(shop_session), "--flow", "99", "--format", "mermaid")
    assert missing.returncode == 1
    assert "no flow 99" in missing.stderr
