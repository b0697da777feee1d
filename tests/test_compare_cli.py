"""The compare and export verbs as a user runs them, checked against `events --json`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from compare_checks import check_against_events
from helpers import run_qixtui
from shopflows import MAP, SAGA_TOML, write_session


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
        (["--json", "--markdown"], "choose one of --json, --markdown and --tui"),
        (["--tui", "--orchestrated-subject", "x.>"], "--tui compares the styles of one session"),
        # matched nothing, silently: every flow counted as choreography
        (["--orchestrated-subject", ""], "subject '' has an empty token"),
        (["--tui", "--saga", "SAGA", "--map", "nope=x"], "the saga has no step `nope`"),
        # the session file itself given where a TOML file goes
        (["--saga", "SAGA", "--map-file", "SESSION"], "is not UTF-8)"),
        (["--saga", "SESSION", "--map", "a=b"], "is not UTF-8)"),
    ],
)
def test_compare_bad_input_is_one_line(shop_session: Path, args: list[str], message: str) -> None:
    named = {"SAGA": str(shop_session.parent / "saga.toml"), "SESSION": str(shop_session)}
    out = run_qixtui("compare", str(shop_session), *[named.get(a, a) for a in args])
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
