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


def test_a_screen_with_stderr_redirected_is_refused(session: Path):
    """Textual reads stdin and draws on stderr: `2> log` would draw into the log for good,
    keys or not."""
    with terminal() as tty:
        redirected = subprocess.run(
            qixtui_command("replay", str(session)), stdin=tty, capture_output=True, timeout=30
        )
    assert redirected.returncode == 1
    assert b"needs a terminal" in redirected.stderr


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
