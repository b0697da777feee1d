"""Commands that draw a screen, run without a terminal: one line saying so, at once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import qixtui_command, run_qixtui, terminal

from qixtui.core import store


@pytest.fixture
def session(tmp_path: Path) -> Path:
    path = tmp_path / "s.qix"
    store.create_session(path, {"stopped_ns": str(10**18)}).close()
    return path


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["replay"], "qixtui replay FILE draws a screen and needs a terminal; for scripts: "),
        (["compare", "--tui"], "qixtui compare --tui draws a screen and needs a terminal; "),
    ],
)
def test_a_screen_without_a_terminal_is_one_line(session: Path, args: list[str], says: str):
    # `qixtui replay FILE | head` used to draw into the pipe for good, at full CPU
    result = run_qixtui(*args, str(session), timeout=30)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"qixtui: {says}")
    assert result.stdout == ""


def test_the_demo_without_a_terminal_points_to_headless(tmp_path: Path):
    out = tmp_path / "d.qix"
    result = run_qixtui("demo", "-o", str(out), timeout=30)
    assert result.returncode == 1
    assert result.stderr == (
        "qixtui: qixtui demo draws a screen and needs a terminal; qixtui demo --headless runs "
        "it without one\n"
    )
    assert not out.exists()  # nothing started


@pytest.mark.parametrize("redirected", ["stdout", "stderr"])
def test_a_screen_with_a_stream_redirected_is_refused(session: Path, redirected: str):
    """Textual reads stdin, draws on stderr and takes the size from stdout: with `2> log` it
    drew into the log for good, with `> out` it laid out 80x24 on a wider terminal."""
    with terminal() as tty:
        streams = {"stdin": tty, "stdout": tty, "stderr": tty, redirected: subprocess.PIPE}
        result = subprocess.run(qixtui_command("replay", str(session)), timeout=30, **streams)
    assert result.returncode == 1
    if redirected == "stderr":
        assert b"needs a terminal" in result.stderr


def test_a_bad_file_is_still_named_first(tmp_path: Path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    result = run_qixtui("replay", str(text), timeout=30)
    assert result.returncode == 1
    assert "not a qixtui session" in result.stderr


def test_a_usage_error_lists_choices_on_its_one_line(session: Path):
    # Click lists them a line each, tab-indented: they read `\x09mermaid,; \x09otlp-json,`
    result = run_qixtui("export", str(session), "--flow", "1", timeout=30)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert " export: Missing option '--format'. Choose from: mermaid, otlp-json, jsonl (" in line
