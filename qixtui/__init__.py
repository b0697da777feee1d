"""qixtui: record, correlate, replay and orchestrate NATS traffic."""

import sys

__version__ = "0.1.0"


def child_command(module: str, *args: str) -> list[str]:
    """argv for `python -m module` run by this process. `-P` keeps the working directory off
    the child's path, so a `qixtui/` folder there (a source checkout) is not imported in place
    of the installed package this process runs."""
    return [sys.executable, "-P", "-m", module, *args]
