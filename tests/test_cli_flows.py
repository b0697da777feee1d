"""The flow verbs on real session files written by the session writer with correlation on."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from flowgen import Message, expand_replies, flow_messages, noise
from helpers import recorder_stand_in, run_qixtui

from qixtui.core import store
from qixtui.core.correlate import Correlator
from qixtui.core.rules import RuleFlags, Rules
from qixtui.core.writer import write_records


def header_block(headers: list[tuple[str, str]]) -> bytes | None:
    """Headers as the recorder hands them to the writer: the raw NATS header block."""
    if not headers:
        return None
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"NATS/1.0\r\n{lines}\r\n".encode()


def write_session(path: Path, messages: list[Message], rules: Rules | None) -> None:
    """What the recorder's writer process does, minus the bus: records in, rows out."""
    db = store.create_session(path, {"stopped_ns": str(10**18)})
    if rules is not None:
        store.set_meta(db, {"correlation_rules": rules.to_json()})
    rows = [
        [1_000_000 * (i + 1), m.subject, reply, header_block(m.headers), m.payload]
        for i, (m, reply) in enumerate(expand_replies(messages))
    ]
    write_records(db, [["E", rows]], Correlator(rules) if rules else None)
    db.close()


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    rng = random.Random(5)
    messages = flow_messages(0, "request", rng) + flow_messages(1, "causation", rng)
    messages += [*flow_messages(2, "field", rng), noise(0, rng)]
    path = tmp_path / "shop.qix"
    rules = Rules().merged_with(
        RuleFlags(
            keys=["/order_id"], terminal=["shop.order.completed"], failure=["shop.order.cancelled"]
        )
    )
    write_session(path, messages, rules)
    return path


def flows_of(path: Path, *args: str) -> list[dict]:
    out = run_qixtui("flows", str(path), "--json", *args)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_flows_lists_one_object_per_flow(shop: Path) -> None:
    flows = flows_of(shop)
    assert len(flows) == 3
    assert set(flows[0]) == {
        "flow_id",
        "status",
        "started_ns",
        "ended_ns",
        "events",
        "services",
        "variant",
        "keys",
        "orchestrated",
    }
    assert sorted(f["events"] for f in flows) == [4, 4, 4]
    assert sorted(f["status"] for f in flows) == ["completed", "completed", "failed"]
    failed = flows_of(shop, "--status", "failed")
    assert [f["status"] for f in failed] == ["failed"]
    text = run_qixtui("flows", str(shop))
    assert text.returncode == 0
    assert len(text.stdout.splitlines()) == 3


def test_flow_draws_a_waterfall_and_a_causal_tree(shop: Path) -> None:
    request_flow = next(f for f in flows_of(shop) if "shop.pricing.quote" in f["variant"])
    out = run_qixtui("flow", str(shop), str(request_flow["flow_id"]))
    assert out.returncode == 0, out.stderr
    assert "├" in out.stdout  # the request bar joined to its reply
    assert "shop.pricing.quote" in out.stdout
    assert "causal tree:" in out.stdout
    assert "(reply)" in out.stdout
    data = json.loads(run_qixtui("flow", str(shop), str(request_flow["flow_id"]), "--json").stdout)
    bars = data["waterfall"]["bars"]
    assert len(bars) == 3  # four events, request and reply on one bar
    joined = [b for b in bars if b["reply_id"] is not None]
    assert len(joined) == 1
    assert joined[0]["end_ns"] > joined[0]["start_ns"]
    assert {lk["kind"] for lk in data["links"]} == {"header", "reply"}

    chain = next(f for f in flows_of(shop) if f["keys"] == [])
    tree = json.loads(run_qixtui("flow", str(shop), str(chain["flow_id"]), "--json").stdout)["tree"]
    depth, node = 0, tree[0]
    while node["children"]:
        node, depth = node["children"][0], depth + 1
    assert len(tree) == 1
    assert depth == 3  # placed -> authorized -> reserved -> final, by causation headers


def test_flow_lanes_line_up_when_a_service_name_has_control_characters(tmp_path: Path) -> None:
    """The lane column was padded by the raw name's length, then the line was escaped: a
    service `\x1b[31mRED` (8 characters raw, 11 shown) pushed its bar 3 columns right."""
    path = tmp_path / "odd.qix"
    hdr = [("X-Correlation-ID", "c-1")]
    subjects = ["shop.order.placed", "shop.\x1b[31mRED.x", "shop.\u202eevil.y", "shop.order.done"]
    write_session(path, [Message(s, b"{}", hdr) for s in subjects], Rules())
    out = run_qixtui("flow", str(path), "1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    bars = lines[2 : lines.index("* critical path; ├──┤ a request and its reply")]
    lanes = ["order", "\\x1b[31mRED", "\\u202eevil", "order"]  # as `flows` shows them
    width = len("\\x1b[31mRED")  # the widest, as shown
    assert [line[: width + 1] for line in bars] == [lane.ljust(width) + " " for lane in lanes]
    assert lines[1].index("0") == width + 1  # the time axis starts where the bars do
    assert len({line.index("+") for line in bars}) == 1, "\n".join(bars)


def test_flow_errors_are_one_line(shop: Path, tmp_path: Path) -> None:
    export = ["export", str(shop), "--flow", "999999", "--format", "jsonl"]
    for verb in (["flow", str(shop), "999999"], export):
        missing = run_qixtui(*verb)
        assert missing.returncode == 1
        assert missing.stderr.count("\n") == 1
        assert "no flow 999999" in missing.stderr
    # `events --flow` printed nothing and exited 0, as for a flow with no events
    missing = run_qixtui("events", str(shop), "--flow", "999999")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert "no flow 999999" in missing.stderr
    junk = tmp_path / "junk.qix"
    junk.write_bytes(b"\x00" * 4096)
    for verb in (["flows", str(junk)], ["flow", str(junk), "1"], ["discover", str(junk)]):
        out = run_qixtui(*verb)
        assert out.returncode == 1
        assert out.stderr.count("\n") == 1


def test_usage_errors_are_one_line_and_escaped(shop: Path) -> None:
    """Click's own shape is four lines; and the value it quotes comes from the user."""
    for args, says in [
        (["flow", str(shop), "0"], "qixtui flow: Invalid value for 'FLOW_ID'"),
        (["flows", str(shop), "--status", "\x1b[2J"], "'\\x1b[2J' is not one of"),
        (["nosuch"], "qixtui: No such command 'nosuch'"),
        (["--bogus"], "qixtui: No such option '--bogus'"),
        (["flows"], "qixtui flows: Missing argument 'FILE'"),
        (["flows", str(shop), "--status"], "qixtui flows: Option '--status' requires"),
    ]:
        out = run_qixtui(*args)
        assert out.returncode == 2, args
        assert out.stderr.count("\n") == 1, out.stderr
        assert says in out.stderr, out.stderr
        assert "\x1b" not in out.stderr
    bare = run_qixtui()  # no command: the help, as before
    assert bare.stderr.startswith("Usage: ")
    assert "Commands:" in bare.stderr


def test_correlate_uses_the_rules_file_and_names_unknown_keys(
    shop: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[status]\nterminal = ['x']\nstal = '1s'\n")
    before = shop.read_bytes()
    out = run_qixtui("correlate", str(shop), "--config", str(bad))
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1
    assert "unknown field `stal`" in out.stderr
    assert shop.read_bytes() == before

    config_home = tmp_path / "config"
    (config_home / "qixtui").mkdir(parents=True)
    (config_home / "qixtui" / "rules.toml").write_text(
        "[status]\nfailure = ['shop.order.completed']\n"
    )
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    recorded = flows_of(shop)
    assert sorted(f["status"] for f in recorded) == ["completed", "completed", "failed"]
    # Without rule flags, the rules the file was recorded with: the same flows again. (The
    # default rules dropped its /order_id key and its terminal and failure subjects.)
    out = run_qixtui("correlate", str(shop))
    assert out.returncode == 0, out.stderr
    assert flows_of(shop) == recorded
    # The default file, named: no /order_id key any more, so the field flow is gone; the
    # cancelled order is no failure under these rules, and quiet since: stalled
    out = run_qixtui("correlate", str(shop), "--config", str(config_home / "qixtui/rules.toml"))
    assert out.returncode == 0, out.stderr
    flows = flows_of(shop)
    assert sorted(f["status"] for f in flows) == ["failed", "stalled"]
    # A file that names no rules (recorded with --no-correlate) takes the default file's.
    bare = tmp_path / "bare.qix"
    write_session(bare, flow_messages(4, "header", random.Random(1)), None)  # completed
    out = run_qixtui("correlate", str(bare))
    assert out.returncode == 0, out.stderr
    assert [f["status"] for f in flows_of(bare)] == ["failed"]


def test_correlate_flags_add_to_the_rules_the_file_was_recorded_with(shop: Path) -> None:
    recorded = flows_of(shop)
    out = run_qixtui("correlate", str(shop), "--key", "/invoice_id", "--json")
    assert out.returncode == 0, out.stderr
    # its /order_id key and its terminal and failure subjects are still there
    assert flows_of(shop) == recorded
    db = store.open_session(shop)
    saved = json.loads(store.get_meta(db)["correlation_rules"])
    db.close()
    assert "/invoice_id" in saved["correlation"]["keys"]
    assert "/order_id" in saved["correlation"]["keys"]


def test_saved_rules_that_do_not_work_are_named_with_their_file(shop: Path) -> None:
    db = store.open_session(shop, readonly=False)
    saved = json.loads(store.get_meta(db)["correlation_rules"])
    saved["correlation"]["keys"].append("order_id")  # not a JSON pointer
    store.set_meta(db, {"correlation_rules": json.dumps(saved)})
    db.close()
    before = flows_of(shop)
    out = run_qixtui("correlate", str(shop), "--key", "/invoice_id")
    assert out.returncode == 1
    [line] = out.stderr.splitlines()
    assert line.startswith(f"qixtui: {shop}: the correlation rules saved in it do not work here")
    assert "'order_id'" in line
    assert line.endswith("--config FILE replaces them")
    assert flows_of(shop) == before  # nothing recomputed
    replaced = run_qixtui("correlate", str(shop), "--config", "/dev/null", "--key", "/order_id")
    assert replaced.returncode == 0, replaced.stderr
    # rules another qixtui wrote, that this one cannot read: not dropped for the defaults
    db = store.open_session(shop, readonly=False)
    store.set_meta(db, {"correlation_rules": '{"correlation": {"from_the_future": 1}}'})
    db.close()
    newer = run_qixtui("correlate", str(shop))
    assert newer.returncode == 1
    assert "the correlation rules saved in it do not work here" in newer.stderr


def test_discover_outputs_render(shop: Path, tmp_path: Path) -> None:
    data = json.loads(run_qixtui("discover", str(shop), "--json").stdout)
    assert data["flows"] == 3
    assert sum(v["count"] for v in data["variants"]) == 3
    assert all(e["p95_ns"] >= e["median_ns"] >= 0 for e in data["edges"])
    mermaid = run_qixtui("discover", str(shop), "--mermaid").stdout
    assert mermaid.startswith("flowchart LR\n")
    assert mermaid.count("-->") == len(data["edges"]) + sum(
        len(d) for d in (data["starts"], data["ends"])
    )
    dot = run_qixtui("discover", str(shop), "--dot").stdout
    if shutil.which("dot") is None:
        pytest.skip("graphviz is not installed (apt-get install graphviz)")
    svg = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, check=True)
    assert "<svg" in svg.stdout
    assert "shop.pricing.quote (reply)" in svg.stdout


def test_discover_dot_shows_control_characters_like_mermaid(tmp_path: Path) -> None:
    """Raw in DOT, click dropped the sequence through a pipe: `esc.RED.x` for
    `esc.\x1b[31mRED.x`."""
    path = tmp_path / "odd.qix"
    hdr = [("X-Correlation-ID", "c-1")]
    subjects = ["esc.order.placed", "esc.\x1b[31mRED.x", "esc.order.done"]
    write_session(path, [Message(s, b"{}", hdr) for s in subjects], Rules())
    mermaid = run_qixtui("discover", str(path), "--mermaid")
    dot = run_qixtui("discover", str(path), "--dot")
    assert dot.returncode == mermaid.returncode == 0, dot.stderr + mermaid.stderr
    assert '["esc.\\x1b[31mRED.x (1)"]' in mermaid.stdout
    assert '[label="esc.\\\\x1b[31mRED.x (1)"]' in dot.stdout  # DOT's own \\ for one \
    if shutil.which("dot") is None:
        pytest.skip("graphviz is not installed (apt-get install graphviz)")
    svg = subprocess.run(["dot", "-Tsvg"], input=dot.stdout, capture_output=True, text=True)
    assert svg.returncode == 0, svg.stderr
    assert ">esc.\\x1b[31mRED.x (1)</text>" in svg.stdout


def test_correlate_refuses_a_recording_still_being_written(tmp_path: Path) -> None:
    path = tmp_path / "live.qix"
    with recorder_stand_in() as pid:
        db = store.create_session(path, {"recorder_pid": str(pid)})  # alive, no stop time
        db.execute("PRAGMA journal_mode = DELETE")
        db.close()
        out = run_qixtui("correlate", str(path))
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1
    assert "still being recorded" in out.stderr


def test_a_word_for_a_flow_id_is_named_as_such(shop: Path) -> None:
    out = run_qixtui("flow", str(shop), "abc")
    assert out.returncode == 2
    assert "'abc' is not a flow id (a number, as `qixtui flows` lists)" in out.stderr


def test_json_output_escapes_what_a_terminal_would_obey(tmp_path: Path) -> None:
    """Found by a tester: `events --json` printed a payload's right-to-left override raw."""
    path = tmp_path / "bidi.qix"
    payload = '{"note": "abc\u202edcba\u2066x\u009b31m"}'.encode()
    headers = [("X-Note", "a\u202eb")]
    write_records_raw(path, [[1_000_000, "shop.x", None, header_block(headers), payload]])
    out = run_qixtui("events", str(path), "--json")
    assert out.returncode == 0, out.stderr
    for raw in ("\u202e", "\u2066", "\u009b"):
        assert raw not in out.stdout
    [event] = [json.loads(line) for line in out.stdout.splitlines()]
    assert event["payload"] == payload.decode()  # the same text, written as escapes
    assert event["headers"] == {"X-Note": "a\u202eb"}
    # a flow's keys come off the bus too
    keyed = tmp_path / "keyed.qix"
    write_session(
        keyed, [Message("shop.x", payload, [])], Rules().merged_with(RuleFlags(keys=["/note"]))
    )
    flows = run_qixtui("flows", str(keyed), "--json")
    assert flows.returncode == 0, flows.stderr
    assert "\u202e" not in flows.stdout
    [flow] = [json.loads(line) for line in flows.stdout.splitlines()]
    assert flow["keys"] == ["note=abc\u202edcba\u2066x\u009b31m"]


def write_records_raw(path: Path, rows: list[list[object]]) -> None:
    db = store.create_session(path, {"stopped_ns": str(10**18)})
    write_records(db, [["E", rows]])
    db.close()
