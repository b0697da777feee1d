"""The core stays light: importing it pulls in no UI and no bus client."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import qixtui.core


def test_core_imports_no_ui_and_no_bus_client():
    # In a built wheel, `correlate__mypyc` is the compiled library behind `correlate`, loaded
    # through it and not importable by itself.
    modules = [
        f"qixtui.core.{m.name}"
        for m in pkgutil.iter_modules(qixtui.core.__path__)
        if not m.name.endswith("__mypyc")
    ]
    assert "qixtui.core.store" in modules
    code = (
        "import json, sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(json.dumps(sorted(sys.modules)))"
    )
    loaded = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))
    forbidden = {"textual", "rich", "nats", "click", "qixtui.ui", "qixtui_nats"}
    assert not forbidden & {name.split(".")[0] for name in loaded} - {"qixtui"}
    assert not [name for name in loaded if name.startswith("qixtui.ui")]


def test_headless_verbs_do_not_import_textual():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from qixtui.cli import main\n"
        "CliRunner().invoke(main, ['--help'])\n"
        "print('textual' in sys.modules)"
    )
    out = subprocess.check_output([sys.executable, "-c", code], text=True)
    assert out.strip() == "False"
