"""Textual loads only when a TUI verb runs: the CLI and the core import without it."""

from __future__ import annotations

import subprocess
import sys


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_cli_and_core_do_not_import_textual() -> None:
    modules = loaded_after("import qixtui.cli, qixtui.cli_tui, qixtui.core.filters")
    assert "qixtui.cli_tui" in modules
    assert not {m for m in modules if m == "textual" or m.startswith(("textual.", "qixtui.ui"))}


def test_the_ui_does_import_textual() -> None:
    assert "textual" in loaded_after("import qixtui.ui.app")
