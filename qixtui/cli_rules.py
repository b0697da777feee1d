"""Command-line correlation rules: the flags `record` and `correlate` share, and where the
rules file lives when none is named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import msgspec
import platformdirs

from qixtui.core import store
from qixtui.core.rules import RuleFlags, Rules, RulesError, load_rules, rules_from_json

F = TypeVar("F", bound=Callable[..., Any])


def default_rules_path() -> Path:
    return platformdirs.user_config_path("qixtui") / "rules.toml"


def rule_options(func: F) -> F:
    """Flags that add to the rules file (or to the defaults when there is none)."""
    options = [
        click.option(
            "--config",
            type=click.Path(dir_okay=False),
            help=f"Correlation rules (TOML). Default: {default_rules_path()} if it exists.",
        ),
        click.option(
            "--key",
            "rule_keys",
            multiple=True,
            metavar="/JSON/POINTER[=NAME]",
            help="Payload field that ties events together, e.g. /order_id (repeatable); the key "
            "is named after the last token: /payment/id=payment_id joins /payment_id.",
        ),
        click.option(
            "--header",
            "rule_headers",
            multiple=True,
            metavar="NAME",
            help="Another correlation header (repeatable; the defaults stay).",
        ),
        click.option(
            "--subject-key",
            "rule_subject_keys",
            multiple=True,
            metavar="PATTERN:N[=NAME]",
            help="Token N of subjects matching PATTERN is a key, e.g. 'orders.*.>:2'; "
            "=NAME joins it to the payload key NAME ('tenant.*.audit:2=order_id').",
        ),
        click.option(
            "--terminal",
            "rule_terminal",
            multiple=True,
            metavar="PATTERN",
            help="Subject that completes a flow (repeatable).",
        ),
        click.option(
            "--failure",
            "rule_failure",
            multiple=True,
            metavar="PATTERN",
            help="Subject that fails a flow (repeatable).",
        ),
        click.option(
            "--compensation",
            "rule_compensation",
            multiple=True,
            metavar="PATTERN",
            help="Subject that compensates a failed flow (repeatable).",
        ),
        click.option(
            "--stall",
            "rule_stall",
            metavar="DURATION",
            help="A flow quiet this long and not finished is stalled (default 30s).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


_FLAGS = {
    "config": "--config",
    "rule_keys": "--key",
    "rule_headers": "--header",
    "rule_subject_keys": "--subject-key",
    "rule_terminal": "--terminal",
    "rule_failure": "--failure",
    "rule_compensation": "--compensation",
    "rule_stall": "--stall",
}


def rule_argv(kw: dict[str, Any]) -> list[str]:
    """The rule flags a command was given, as arguments for a child `qixtui record`."""
    argv: list[str] = []
    for name, flag in _FLAGS.items():
        value = kw.get(name)
        for item in value if isinstance(value, tuple) else [value] if value else []:
            argv += [flag, str(item)]
    return argv


def saved_rules(path: Path) -> Rules | None:
    """The rules a session was recorded or last correlated with, if it names any: what
    `record --append` goes on with unless told otherwise (its flows are recomputed with
    them when it stops). None for a file that is not there or not a session yet; the
    recorder's own checks say what is wrong with it. RulesError, naming the file, for saved
    rules this qixtui cannot use."""
    try:
        db = store.open_session(path, readonly=True)
    except (store.SessionError, OSError):
        return None
    try:
        saved = store.get_meta(db).get("correlation_rules")
    finally:
        db.close()
    if not saved:
        return None
    try:
        rules = rules_from_json(saved)
        rules.validate()
    except (msgspec.MsgspecError, RulesError) as exc:  # another qixtui's rules, say
        # going on with the defaults would recompute every flow with them, unasked
        raise RulesError(
            f"{path}: the correlation rules saved in it do not work here ({exc}); "
            "--config FILE replaces them"
        ) from None
    return rules


def pop_rules(kw: dict[str, Any], session: Path | None = None) -> Rules:
    """Take the rule flags out of a command's keyword arguments; RulesError if unusable.
    The flags add to `--config`'s rules, else to the rules saved in `session` (for a command
    that goes on with a session), else to the default rules file's or the built-in ones."""
    values = {name: kw.pop(name) for name in _FLAGS}
    config = values["config"]
    if config:
        base = load_rules(config)
    elif session is not None and (saved := saved_rules(session)) is not None:
        base = saved
    else:
        default = default_rules_path()
        try:
            present = default.is_file()
        except OSError as exc:  # cannot even look: not a reason to drop the user's rules
            raise RulesError(f"{default}: cannot read ({exc.strerror})") from None
        base = load_rules(default) if present else Rules()
    flags = RuleFlags(
        keys=list(values["rule_keys"]),
        headers=list(values["rule_headers"]),
        subject_keys=list(values["rule_subject_keys"]),
        terminal=list(values["rule_terminal"]),
        failure=list(values["rule_failure"]),
        compensation=list(values["rule_compensation"]),
        stall=values["rule_stall"],
    )
    return base.merged_with(flags)


__all__ = ["RulesError", "pop_rules", "rule_argv", "rule_options"]
