"""Recompute what `compare --json` reports from `events --json` and `flows --json`."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from helpers import run_qixtui


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
    out = run_qixtui("flows", str(path), "--json")
    assert out.returncode == 0, out.stderr
    flows = [json.loads(line) for line in out.stdout.splitlines()]
    return sorted((f["flow_id"], f["status"], f["orchestrated"]) for f in flows)


def check_against_events(report: dict[str, Any], path: Path) -> None:
    """Counts from `flows --json` and latencies recomputed from the events' timestamps."""
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
