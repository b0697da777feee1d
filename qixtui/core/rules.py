"""Correlation rules: which headers, payload fields and subject tokens tie events into flows."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import msgspec

from qixtui.core.store import scaled_ns, subject_problem
from qixtui.core.text import not_utf8

DEFAULT_HEADERS = ["X-Correlation-ID", "Correlation-Id", "correlation_id", "ce-correlationid"]
DEFAULT_MESSAGE_ID_HEADERS = ["X-Message-ID", "Nats-Msg-Id", "ce-id"]
SAGA_RUN_HEADER = "Qixtui-Saga-Run"
DEFAULT_COMMAND_TOKENS = ["cmd", "command", "commands"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_NS = {"ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}


class RulesError(Exception):
    """Rules that cannot be used; the message is one line meant for the user."""


def parse_duration(text: str) -> int:
    """`30s`, `500ms`, `5m`, `1h` or a plain number of seconds, as nanoseconds."""
    match = _DURATION.match(text)
    if not match:
        raise RulesError(f"not a duration: {text!r} (use e.g. 30s, 500ms, 5m, 1h)")
    try:
        return scaled_ns(match.group(1), _UNIT_NS[match.group(2) or "s"])
    except ValueError:
        raise RulesError(f"duration {text!r} is longer than any recording") from None


def parse_pointer(pointer: str) -> list[str]:
    """RFC 6901 JSON pointer as its unescaped reference tokens."""
    if not pointer.startswith("/") or pointer == "/":
        raise RulesError(f"not a JSON pointer: {pointer!r} (write it like /order_id)")
    return [tok.replace("~1", "/").replace("~0", "~") for tok in pointer[1:].split("/")]


_KEY_NAME = re.compile(r"[A-Za-z0-9_-]+")


def parse_key(spec: str) -> tuple[list[str], str]:
    """A payload key, `/order_id` or `/payment/id=payment_id`, as (pointer tokens, key
    name): named after the pointer's last token unless `=name` names it, so pointers to one
    id in different places can meet. (A field whose name holds `=` is keyed with a name.)"""
    pointer, named, name = spec.rpartition("=")
    if not named:
        pointer, name = spec, ""
    elif not _KEY_NAME.fullmatch(name):
        raise RulesError(
            f"key {spec!r}: after '=' comes the key's name, in letters, digits, _ or - "
            "(a field whose name holds '=' is keyed as /that=field=NAME)"
        )
    tokens = parse_pointer(pointer)
    return tokens, name or tokens[-1]


def parse_subject_key(spec: str) -> tuple[str, int, str]:
    """`orders.*.>:2` as (pattern, 1-based token index, key name): the key is `subject`
    unless named, `orders.*.>:2=order_id`, which then joins the payload key /order_id."""
    pattern, sep, index_and_name = spec.rpartition(":")
    index, named, name = index_and_name.partition("=")
    if not sep or not pattern or not index.isdigit() or int(index) < 1:
        raise RulesError(f"not a subject key: {spec!r} (write pattern:token, e.g. orders.*.>:2)")
    if named and not _KEY_NAME.fullmatch(name):
        raise RulesError(f"subject key {spec!r}: name the key with letters, digits, _ or -")
    problem = subject_problem(pattern)
    if problem:
        raise RulesError(f"subject key {spec!r}: {problem}")
    tokens = pattern.split(".")
    if tokens[-1] != ">" and int(index) > len(tokens):
        raise RulesError(f"subject key {spec!r}: {pattern!r} has no token {index}")
    return pattern, int(index), name or "subject"


class CorrelationRules(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    headers: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_HEADERS))
    """Headers whose value is a correlation id; all of them share one key space."""
    trace: bool = True
    """The trace-id of a W3C `traceparent` header is a key."""
    causation_header: str = "X-Causation-ID"
    """Header naming the message id of the cause: a parent link and a key."""
    message_id_headers: list[str] = msgspec.field(
        default_factory=lambda: list(DEFAULT_MESSAGE_ID_HEADERS)
    )
    """Headers holding an event's own message id, which causation headers point at."""
    keys: list[str] = []
    """JSON pointers into JSON payloads; the last token names the key (/data/order_id and
    /order_id are both `order_id`)."""
    subject_keys: list[str] = []
    """`pattern:N`: token N of subjects matching the pattern is a key (`subject`);
    `pattern:N=name` names it, joining the payload key of that name."""
    replies: bool = True
    """A reply joins its request's flow through the reply subject."""


class StatusRules(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    terminal: list[str] = []
    """Subject patterns that complete a flow."""
    failure: list[str] = []
    """Subject patterns that fail a flow."""
    compensation: list[str] = []
    """Subject patterns that undo a step; with a failure the flow is compensated."""
    stall: str = "30s"
    """A flow that is not finished and quiet this long is stalled."""


class ServiceRules(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    from_: str = msgspec.field(default="auto", name="from")
    """`subject:N` (token N), `header:NAME`, or `auto`: token 2 of subjects with three or
    more tokens, else token 1."""
    command_tokens: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_COMMAND_TOKENS))
    """When the service token is one of these, the subject is a command
    (`shop.cmd.payment.authorize`) and the token after it names the service (`payment`)."""
    names: dict[str, str] = {}
    """Another name for a service, by the token or header value found: events often name
    what a service made (`shop.shipment.created`) where its commands name the service
    (`shop.cmd.shipping.create`); `shipment = "shipping"` makes them one service."""


class RuleFlags(msgspec.Struct, kw_only=True):
    """Rules given on the command line; lists add to the file's, `stall` replaces it."""

    keys: list[str] = []
    headers: list[str] = []
    subject_keys: list[str] = []
    terminal: list[str] = []
    failure: list[str] = []
    compensation: list[str] = []
    stall: str | None = None


def _union(base: list[str], extra: list[str]) -> list[str]:
    return base + [x for x in extra if x not in base]


class Rules(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    correlation: CorrelationRules = msgspec.field(default_factory=CorrelationRules)
    status: StatusRules = msgspec.field(default_factory=StatusRules)
    services: ServiceRules = msgspec.field(default_factory=ServiceRules)

    def merged_with(self, flags: RuleFlags) -> Rules:
        corr = self.correlation
        status = self.status
        merged = Rules(
            correlation=msgspec.structs.replace(
                corr,
                headers=_union(corr.headers, flags.headers),
                keys=_union(corr.keys, flags.keys),
                subject_keys=_union(corr.subject_keys, flags.subject_keys),
            ),
            status=msgspec.structs.replace(
                status,
                terminal=_union(status.terminal, flags.terminal),
                failure=_union(status.failure, flags.failure),
                compensation=_union(status.compensation, flags.compensation),
                stall=flags.stall if flags.stall is not None else status.stall,
            ),
            services=self.services,
        )
        merged.validate()
        return merged

    def validate(self) -> None:
        """Raise RulesError for the first value that cannot work."""
        for spec in self.correlation.keys:
            parse_key(spec)
        for spec in self.correlation.subject_keys:
            parse_subject_key(spec)
        corr = self.correlation
        for name in [*corr.headers, *corr.message_id_headers]:
            if not name.strip() or ":" in name:
                raise RulesError(f"not a header name: {name!r}")
        status = self.status
        for pattern in [*status.terminal, *status.failure, *status.compensation]:
            problem = subject_problem(pattern)
            if problem:
                raise RulesError(problem)
        parse_duration(self.status.stall)
        service_rule(self)

    @property
    def stall_ns(self) -> int:
        return parse_duration(self.status.stall)

    def to_json(self) -> str:
        return msgspec.json.encode(self).decode()


def service_rule(rules: Rules) -> tuple[str, str | int]:
    """The services rule as ("auto", 0), ("subject", N) or ("header", NAME)."""
    spec = rules.services.from_
    if spec == "auto":
        return ("auto", 0)
    kind, _, arg = spec.partition(":")
    if kind == "subject" and arg.isdigit() and int(arg) >= 1:
        return ("subject", int(arg))
    if kind == "header" and arg:
        return ("header", arg)
    raise RulesError(f"services.from must be auto, subject:N or header:NAME, not {spec!r}")


def rules_from_json(text: str) -> Rules:
    """Rules as saved in a session's metadata."""
    return msgspec.json.decode(text, type=Rules)


def load_rules(path: Path | str) -> Rules:
    """Read a rules file; every problem is a RulesError naming the file and the key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RulesError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise RulesError(not_utf8(path, exc)) from None
    except OSError as exc:
        raise RulesError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{path}: not valid TOML ({exc})") from None
    try:
        rules = msgspec.convert(data, Rules)
    except msgspec.ValidationError as exc:
        raise RulesError(f"{path}: {exc}") from None
    try:
        rules.validate()
    except RulesError as exc:
        raise RulesError(f"{path}: {exc}") from None
    return rules
