"""Orchestrated sagas without a bus: definitions, payload templates and the step engine.

The engine is a pure state machine. `next(now_ns)` says what to do (send a request, sleep
until a backoff ends, wait for a decision after a failed step, or stop) and `apply(result,
now_ns)` feeds back what happened. The runner in the NATS adapter does the I/O and writes the
journal; replaying a journal through `SagaEngine.from_journal` rebuilds the exact state after
a crash, including what a user decided while stepping.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import msgspec

BUILTIN_VARS = ("run_id", "saga")
RESULTS = ("ok", "error", "timeout", "no_responders", "in_doubt", "skipped", "aborted")
Kind = Literal["action", "compensate"]


class SagaError(Exception):
    """A saga definition or journal that cannot be used; the message is one line."""


# --- definitions ---------------------------------------------------------------------------


class Success(msgspec.Struct, forbid_unknown_fields=True):
    """When a reply counts as success: `pointer` equals a value, exists, or `not_error`."""

    pointer: str | None = None
    equals: Any = msgspec.UNSET
    exists: bool | None = None
    not_error: bool | None = None


class Compensation(msgspec.Struct, forbid_unknown_fields=True):
    """The request that undoes a completed step; retried until it succeeds or gives up."""

    request: str
    payload: str = ""
    timeout: str | None = None  # default: the step's timeout
    retries: int = 3
    backoff: str | None = None  # default: the step's backoff
    success: Success | None = None


class StepDef(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    request: str
    timeout: str
    payload: str = ""
    retries: int = 0
    backoff: str = "100ms"
    success: Success | None = None
    compensate: Compensation | None = None
    pivot: bool = False


class SagaDef(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    steps: list[StepDef]
    vars: dict[str, str | int | float | bool] = {}
    description: str = ""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m)\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0}


def parse_duration(text: str) -> float:
    """'250ms', '2s', '1.5m' -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 250ms, 2s, 1m)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def format_duration(seconds: float) -> str:
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


_AT_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_UNKNOWN = re.compile(r"unknown field `(?P<field>[^`]*)`")
_PATH_PART = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]")


def _toml_lines(text: str) -> dict[tuple[Any, ...], int]:
    """Where each table and key of a TOML file starts: (path parts...) -> 1-based line.

    Covers the shapes a saga file uses (`[vars]`, `[[steps]]`, `[steps.compensate]`, inline
    tables); anything else falls back to the nearest enclosing table's line.
    """
    where: dict[tuple[Any, ...], int] = {}
    counts: dict[str, int] = {}
    current: tuple[Any, ...] = ()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("[["):
            name = line.strip("[] ")
            counts[name] = counts.get(name, -1) + 1
            current = (name, counts[name])
            where.setdefault(current, lineno)
            continue
        if line.startswith("["):
            parts = line.strip("[] ").split(".")
            head = parts[0]
            base: tuple[Any, ...] = (head, counts[head]) if head in counts else (head,)
            current = base + tuple(parts[1:])
            where.setdefault(current, lineno)
            continue
        match = re.match(r"([A-Za-z0-9_-]+)\s*=\s*(.*)", line)
        if not match:
            continue
        key, rest = match.groups()
        where.setdefault((*current, key), lineno)
        if rest.startswith("{"):
            for inner in re.findall(r"([A-Za-z0-9_-]+)\s*=", rest):
                where.setdefault((*current, key, inner), lineno)
    return where


def _locate(text: str, path: str, field_name: str | None) -> int | None:
    parts: tuple[Any, ...] = tuple(
        name if name else int(index) for name, index in _PATH_PART.findall(path)
    )
    if field_name:
        parts = (*parts, field_name)
    where = _toml_lines(text)
    while parts:
        if parts in where:
            return where[parts]
        parts = parts[:-1]
    return None


def load_saga_text(text: str, origin: str = "<saga>") -> SagaDef:
    """Decode and check a saga definition; errors name the file and line."""
    try:
        saga = msgspec.toml.decode(text, type=SagaDef)
    except msgspec.ValidationError as exc:
        message = str(exc)
        at = _AT_PATH.search(message)
        path = at.group("path") if at else ""
        unknown = _UNKNOWN.search(message)
        line = _locate(text, path, unknown.group("field") if unknown else None)
        reason = _AT_PATH.sub("", message)
        where = f"{origin}:{line}" if line else origin
        raise SagaError(f"{where}: {reason} (at {path.lstrip('.') or 'top level'})") from None
    except msgspec.DecodeError as exc:
        raise SagaError(f"{origin}: not valid TOML: {exc}") from None
    problems = check_saga(saga)
    if problems:
        step, problem = problems[0]
        line = _locate(text, f".steps[{step}]", None) if step is not None else None
        raise SagaError(f"{origin}:{line}: {problem}" if line else f"{origin}: {problem}")
    return saga


def check_saga(saga: SagaDef) -> list[tuple[int | None, str]]:
    """Problems msgspec's types cannot catch, each with the index of the step at fault."""
    problems: list[tuple[int | None, str]] = []
    if not saga.steps:
        problems.append((None, "a saga needs at least one [[steps]]"))
    seen: set[str] = set()
    pivots = [i for i, s in enumerate(saga.steps) if s.pivot]
    if len(pivots) > 1:
        problems.append((pivots[1], "only one step can be the pivot"))
    pivot = pivots[0] if pivots else None
    for name, default in saga.vars.items():
        if name in BUILTIN_VARS:
            problems.append((None, f"variable `{name}` is built in; choose another name"))
        if isinstance(default, float) and not math.isfinite(default):
            problems.append((None, f"variable `{name}`: {default} is no number JSON can carry"))
        for ref in _PLACEHOLDER.findall(default) if isinstance(default, str) else ():
            if ref and ref not in BUILTIN_VARS:
                problems.append(
                    (
                        None,
                        f"variable `{name}`: a default can use only ${{run_id}} and "
                        f"${{saga}}, not ${{{ref}}}",
                    )
                )
    for i, step in enumerate(saga.steps):
        label = f"step `{step.name}`"
        if step.name in seen:
            problems.append((i, f"two steps are named `{step.name}`"))
        if not re.fullmatch(r"[A-Za-z0-9_-]+", step.name):
            problems.append((i, f"{label}: names use letters, digits, _ and - only"))
        if not _valid_subject(step.request):
            problems.append((i, f"{label}: `{step.request}` is not a subject to request"))
        elif "${" in step.request:
            problems.append((i, f"{label}: `{step.request}`: {_SUBJECT_AS_WRITTEN}"))
        for what, value in (("timeout", step.timeout), ("backoff", step.backoff)):
            try:
                seconds = parse_duration(value)
            except ValueError as exc:
                problems.append((i, f"{label}: {what}: {exc}"))
                continue
            if what == "timeout" and seconds <= 0:
                problems.append((i, f"{label}: timeout must be more than 0"))
        if step.retries < 0:
            problems.append((i, f"{label}: retries cannot be negative"))
        problems.extend((i, f"{label}: {p}") for p in _check_success(step.success))
        problems.extend(
            (i, f"{label}: payload: {p}") for p in check_template(step.payload, saga, seen)
        )
        comp = step.compensate
        if comp is not None:
            if pivot is not None and i >= pivot:
                which = (
                    "the pivot is never compensated (once done, the saga only goes forward)"
                    if i == pivot
                    else "a step after the pivot is retried, never compensated"
                )
                problems.append((i, f"{label}: {which}; remove `compensate`"))
            if not _valid_subject(comp.request):
                problems.append((i, f"{label}: compensate: `{comp.request}` is not a subject"))
            elif "${" in comp.request:
                problems.append(
                    (i, f"{label}: compensate: `{comp.request}`: {_SUBJECT_AS_WRITTEN}")
                )
            for what, maybe in (("timeout", comp.timeout), ("backoff", comp.backoff)):
                if maybe is not None:
                    try:
                        parse_duration(maybe)
                    except ValueError as exc:
                        problems.append((i, f"{label}: compensate {what}: {exc}"))
            if comp.retries < 0:
                problems.append((i, f"{label}: compensate retries cannot be negative"))
            problems.extend((i, f"{label}: compensate: {p}") for p in _check_success(comp.success))
            problems.extend(
                (i, f"{label}: compensate payload: {p}")
                for p in check_template(comp.payload, saga, seen | {step.name})
            )
        seen.add(step.name)
    return problems


_SUBJECT_AS_WRITTEN = "a subject is sent as written; ${...} is filled in payloads only"


def _valid_subject(subject: str) -> bool:
    tokens = subject.split(".")
    return bool(subject) and all(t and t not in ("*", ">") and " " not in t for t in tokens)


def _check_success(rule: Success | None) -> list[str]:
    if rule is None:
        return []
    given = [
        k
        for k, v in (
            ("equals", rule.equals is not msgspec.UNSET),
            ("exists", rule.exists is not None),
            ("not_error", bool(rule.not_error)),
        )
        if v
    ]
    if len(given) != 1:
        return ["success needs exactly one of equals, exists, not_error"]
    if given[0] != "not_error" and (rule.pointer is None or not _valid_pointer(rule.pointer)):
        return ['success needs a JSON pointer like pointer = "/ok"']
    return []


# --- templates and JSON pointers -----------------------------------------------------------

_PLACEHOLDER = re.compile(r"\$\$|\$\{([^}]*)\}")
_STEP_REF = re.compile(r"^steps\.([A-Za-z0-9_-]+)\.reply(?:\.(.*))?$")


def _valid_pointer(pointer: str) -> bool:
    return pointer == "" or pointer.startswith("/")


class _AnyReply(dict[str, Any]):
    """Stands in for a reply not yet received: every pointer finds a string."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> Any:
        return self


def check_template(template: str, saga: SagaDef, steps_before: set[str]) -> list[str]:
    problems = _check_references(template, saga, steps_before)
    if problems or not template.lstrip().startswith(("{", "[")):
        return problems
    # A JSON-looking template must still be JSON once filled in.
    scope = {**saga.vars, "run_id": "run", "saga": saga.name}
    stub = _AnyReply()
    try:
        msgspec.json.decode(render(template, scope, {name: stub for name in steps_before}))
    except msgspec.DecodeError as exc:
        return [f"not valid JSON once filled in ({exc})"]
    except KeyError as exc:
        return [str(exc.args[0])]
    return []


def _check_references(template: str, saga: SagaDef, steps_before: set[str]) -> list[str]:
    problems = []
    for match in _PLACEHOLDER.finditer(template):
        ref = match.group(1)
        if ref is None:
            continue
        step_ref = _STEP_REF.match(ref)
        if step_ref:
            name, pointer = step_ref.group(1), step_ref.group(2) or ""
            if name not in steps_before:
                problems.append(f"${{{ref}}} refers to `{name}`, which is not an earlier step")
            elif not _valid_pointer(pointer):
                problems.append(f"${{{ref}}}: the JSON pointer must start with /")
        elif ref not in saga.vars and ref not in BUILTIN_VARS:
            problems.append(f"${{{ref}}} is not a variable (declare it under [vars])")
    return problems


def resolve_pointer(doc: Any, pointer: str) -> Any:
    """RFC 6901; raises KeyError naming the pointer when it does not resolve."""
    if pointer == "":
        return doc
    node = doc
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise KeyError(pointer)
    return node


_encode_json = msgspec.json.encode


def render(template: str, scope: dict[str, Any], replies: dict[str, Any]) -> bytes:
    """Fill `${var}` and `${steps.NAME.reply./pointer}` in a payload template.

    Outside a JSON string a value goes in as JSON (so numbers stay numbers and objects
    objects); inside a string it goes in as text, escaped for the string. `$$` is a `$`.
    Raises KeyError naming what could not be filled.
    """
    out: list[str] = []
    in_string = False
    pos = 0
    for match in _PLACEHOLDER.finditer(template):
        chunk = template[pos : match.start()]
        in_string = _track_string(chunk, in_string)
        out.append(chunk)
        pos = match.end()
        ref = match.group(1)
        if ref is None:
            out.append("$")
            continue
        value = _lookup(ref, scope, replies)
        if in_string:
            text = value if isinstance(value, str) else _encode_json(value).decode()
            out.append(_encode_json(text).decode()[1:-1])
        else:
            out.append(_encode_json(value).decode())
    out.append(template[pos:])
    return "".join(out).encode()


def _track_string(chunk: str, in_string: bool) -> bool:
    escaped = False
    for ch in chunk:
        if escaped:
            escaped = False
        elif ch == "\\" and in_string:
            escaped = True
        elif ch == '"':
            in_string = not in_string
    return in_string


def _lookup(ref: str, scope: dict[str, Any], replies: dict[str, Any]) -> Any:
    step_ref = _STEP_REF.match(ref)
    if step_ref:
        name, pointer = step_ref.group(1), step_ref.group(2) or ""
        if name not in replies:
            raise KeyError(f"${{{ref}}}: step `{name}` has no reply")
        try:
            return resolve_pointer(replies[name], pointer)
        except KeyError:
            raise KeyError(f"${{{ref}}}: the reply of `{name}` has nothing at {pointer}") from None
    if ref not in scope:
        raise KeyError(f"${{{ref}}} is not a variable")
    return scope[ref]


def resolve_vars(
    saga: SagaDef, overrides: dict[str, str], run_id: str
) -> dict[str, str | int | float | bool]:
    """The run's variables: defaults (which may use ${run_id}), then `--var` overrides,
    converted to the type of the default."""
    unknown = sorted(set(overrides) - set(saga.vars))
    if unknown:
        raise SagaError(f"--var {unknown[0]}: the saga `{saga.name}` declares no such variable")
    builtins: dict[str, Any] = {"run_id": run_id, "saga": saga.name}
    out: dict[str, str | int | float | bool] = {}
    for name, default in saga.vars.items():
        if name in overrides:
            out[name] = _coerce(name, overrides[name], default)
        elif isinstance(default, str):
            out[name] = _fill_text(default, builtins)
        else:
            out[name] = default
    return out


def _fill_text(text: str, builtins: dict[str, Any]) -> str:
    def one(match: re.Match[str]) -> str:
        ref = match.group(1)
        if ref is None:
            return "$"
        if ref not in builtins:
            raise SagaError(f"a variable's default can use only ${{run_id}} and ${{saga}}: {ref}")
        return str(builtins[ref])

    return _PLACEHOLDER.sub(one, text)


def _coerce(name: str, text: str, default: Any) -> str | int | float | bool:
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            number = float(text)
            if not math.isfinite(number):  # JSON has no such number: it would go out as null
                raise ValueError
            return number
    except ValueError:
        raise SagaError(
            f"--var {name}={text}: expected {type(default).__name__} like the default"
        ) from None
    return text


# --- results -------------------------------------------------------------------------------


class Response(msgspec.Struct):
    """What the bus said to one request, before the success rule is applied."""

    status: Literal["reply", "timeout", "no_responders", "error"]
    payload: bytes = b""
    headers: list[tuple[str, str]] | None = None
    detail: str = ""


class StepResult(msgspec.Struct):
    kind: str  # one of RESULTS
    detail: str = ""
    reply: Any = None  # decoded JSON reply on success, kept for later templates


_decode_any = msgspec.json.decode


def classify(rule: Success | None, response: Response) -> StepResult:
    """Apply a step's success rule to a response. With no rule, success means a reply that
    is not a NATS error status and not a JSON object with `"ok": false` or an `error`."""
    if response.status != "reply":
        return StepResult(response.status, response.detail or response.status.replace("_", " "))
    for name, value in response.headers or []:
        if name.lower() in ("nats-service-error", "status") and value.strip()[:1] in "45":
            return StepResult("error", f"{name}: {value}")
    try:
        reply: Any = _decode_any(response.payload) if response.payload else None
    except (msgspec.DecodeError, RecursionError):  # nested too deep is not JSON to us either
        reply = None
        if rule is not None and not rule.not_error:
            return StepResult("error", "reply is not JSON")
    if rule is None or rule.not_error:
        if isinstance(reply, dict) and (reply.get("ok") is False or "error" in reply):
            return StepResult("error", _brief(reply.get("error", "ok is false")))
        return StepResult("ok", "", reply)
    assert rule.pointer is not None
    try:
        found = resolve_pointer(reply, rule.pointer)
    except KeyError:
        if rule.exists is False:
            return StepResult("ok", "", reply)
        return StepResult("error", _reply_error(reply, f"no {rule.pointer} in the reply"))
    if rule.exists is not None:
        if rule.exists:
            return StepResult("ok", "", reply)
        return StepResult("error", _reply_error(reply, f"{rule.pointer} is present"))
    if found == rule.equals and type(found) is type(rule.equals):
        return StepResult("ok", "", reply)
    return StepResult(
        "error",
        _reply_error(reply, f"{rule.pointer} is {_brief(found)}, not {_brief(rule.equals)}"),
    )


def _reply_error(reply: Any, fallback: str) -> str:
    if isinstance(reply, dict) and "error" in reply:
        return _brief(reply["error"])  # shown after its kind (_said): "error: declined"
    return fallback


def _said(result: StepResult) -> str:
    """A result for a person: its kind, then its detail when there is one."""
    return f"{result.kind}: {result.detail}".rstrip(": ")


def _brief(value: Any) -> str:
    text = value if isinstance(value, str) else _encode_json(value).decode()
    return text if len(text) <= 80 else text[:77] + "..."


# --- the engine ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A command: send this request, then feed the result back with `apply`."""

    seq: int
    step: str
    kind: Kind
    attempt: int
    subject: str
    payload: bytes
    timeout_s: float
    idempotency_key: str
    in_doubt: bool = False  # a resend of a request whose result was never journaled


@dataclass(frozen=True)
class Sleep:
    until_ns: int


@dataclass(frozen=True)
class Held:
    """A step failed and the engine holds (`hold` is on): `resolve` says what comes next."""

    step: str
    reason: str


@dataclass(frozen=True)
class Finished:
    outcome: str  # completed | compensated | failed
    reason: str
    # False when the run left something it should have undone (a compensation failed or was
    # skipped) or failed past the pivot; a failure with nothing before it to undo is clean.
    clean: bool = True


Action = Request | Sleep | Held | Finished
Decision = Literal["retry", "skip", "compensate"]


@dataclass(frozen=True)
class JournalEntry:
    """One journal row as the engine needs it to rebuild its state."""

    seq: int
    step: str
    kind: str
    attempt: int
    idempotency_key: str
    payload: bytes
    intent_ns: int
    result: str | None = None
    detail: str = ""
    reply: bytes | None = None


def idempotency_key(run_id: str, step: str, kind: str, retried: int = 0) -> str:
    """One key per step and kind; a retry the user asked for after a definite answer is a
    new attempt, so it gets a new key (the participant would replay the old answer)."""
    key = f"{run_id}:{step}:{kind}"
    return f"{key}:retry{retried}" if retried else key


@dataclass
class SagaEngine:
    saga: SagaDef
    run_id: str
    vars: dict[str, Any]
    phase: Literal["forward", "held", "compensating", "done"] = "forward"
    index: int = 0
    attempt: int = 0
    replies: dict[str, Any] = field(default_factory=dict)
    completed: list[int] = field(default_factory=list)
    to_compensate: list[int] = field(default_factory=list)
    retry_at_ns: int = 0
    seq: int = 0
    pending: Request | None = None
    resend: Request | None = None  # the in-doubt request to send again, unchanged
    failure: str = ""
    finished: Finished | None = None
    hold: bool = False  # stop after a failed step for a decision (the stepper), not compensate
    failed: Request | None = None  # the last forward request that failed
    retried: dict[str, int] = field(default_factory=dict)  # user retries per step
    retry_payload: bytes | None = None  # the payload a user retry sends
    skipped: list[str] = field(default_factory=list)

    @property
    def pivot(self) -> int | None:
        return next((i for i, s in enumerate(self.saga.steps) if s.pivot), None)

    def after_pivot(self, index: int) -> bool:
        pivot = self.pivot
        return pivot is not None and index > pivot

    def next(self, now_ns: int) -> Action:
        while True:
            if self.finished is not None:
                return self.finished
            if self.phase == "held":
                return Held(self.saga.steps[self.index].name, self.failure)
            if self.pending is not None:
                raise RuntimeError("apply() the result of the pending request first")
            if now_ns < self.retry_at_ns:
                return Sleep(self.retry_at_ns)
            if self.resend is not None:
                old, self.resend = self.resend, None
                self.seq += 1
                self.pending = Request(
                    self.seq,
                    old.step,
                    old.kind,
                    old.attempt,
                    old.subject,
                    old.payload,
                    old.timeout_s,
                    old.idempotency_key,
                    in_doubt=True,
                )
                return self.pending
            request = self._build()
            if request is not None:
                self.pending = request
                return request

    def _build(self) -> Request | None:
        scope = {**self.vars, "run_id": self.run_id, "saga": self.saga.name}
        if self.phase == "forward":
            step = self.saga.steps[self.index]
            subject, template, timeout = step.request, step.payload, step.timeout
            kind: Kind = "action"
        else:
            step = self.saga.steps[self.to_compensate[0]]
            assert step.compensate is not None
            comp = step.compensate
            subject, template, timeout = comp.request, comp.payload, comp.timeout or step.timeout
            kind = "compensate"
        if kind == "action" and self.retry_payload is not None:
            payload, self.retry_payload = self.retry_payload, None
        else:
            try:
                payload = render(template, scope, self.replies)
            except KeyError as exc:
                self._fail_current(StepResult("error", f"payload: {exc.args[0]}"), 0)
                return None
        self.seq += 1
        retried = self.retried.get(step.name, 0) if kind == "action" else 0
        return Request(
            self.seq,
            step.name,
            kind,
            self.attempt,
            subject,
            payload,
            parse_duration(timeout),
            idempotency_key(self.run_id, step.name, kind, retried),
        )

    def edit_pending(self, payload: bytes) -> Request:
        """Send the pending request with another payload (edited in the stepper)."""
        if self.pending is None:
            raise RuntimeError("no request is pending")
        self.pending = replace(self.pending, payload=payload)
        return self.pending

    def set_hold(self, hold: bool) -> None:
        """Hold after failures from now on, or not; a run held without it compensates."""
        self.hold = hold
        if not hold and self.phase == "held":
            self.resolve("compensate")

    def resolve(self, decision: Decision, payload: bytes | None = None) -> None:
        """Go on from a held failure: retry the step (with the failed request's payload, or
        `payload`), skip it, or compensate as an unheld engine would have."""
        if self.phase != "held":
            raise RuntimeError("no failed step is held")
        step = self.saga.steps[self.index]
        if decision == "compensate":
            self._give_up()
            return
        self.phase = "forward"
        self.retry_at_ns = 0
        if decision == "skip":
            self._skip_step(step.name)
            return
        self.attempt += 1
        self.retried[step.name] = self.retried.get(step.name, 0) + 1
        if payload is None and self.failed is not None and self.failed.step == step.name:
            payload = self.failed.payload
        self.retry_payload = payload

    def _skip_step(self, name: str) -> None:
        self.skipped.append(name)
        self.index += 1
        self.attempt = 0
        if self.index == len(self.saga.steps):
            self._finish("completed", self._completed_reason())

    def _completed_reason(self) -> str:
        if not self.skipped:
            return "every step succeeded"
        return f"every step succeeded or was skipped (skipped: {', '.join(self.skipped)})"

    def rule_for(self, request: Request) -> Success | None:
        step = self._step(request.step)
        if request.kind == "compensate":
            assert step.compensate is not None
            return step.compensate.success
        return step.success

    def feed(self, response: Response, now_ns: int) -> StepResult:
        """Classify a response to the pending request and apply it."""
        assert self.pending is not None
        result = classify(self.rule_for(self.pending), response)
        self.apply(result, now_ns)
        return result

    def apply(self, result: StepResult, now_ns: int) -> None:
        request = self.pending
        if request is None:
            raise RuntimeError("no request is pending")
        self.pending = None
        if result.kind == "in_doubt":
            self.resend = request
            return
        if result.kind == "skipped":
            if request.kind == "action":
                self._skip_step(request.step)
            else:
                self.skipped.append(f"undo {request.step}")
                self._compensated_one()
            return
        if request.kind == "action":
            if result.kind == "aborted":
                self._fail_current(result, now_ns)
                return
            if result.kind == "ok":
                self.replies[request.step] = result.reply
                self.completed.append(self.index)
                self.index += 1
                self.attempt = 0
                if self.index == len(self.saga.steps):
                    self._finish("completed", self._completed_reason())
                return
            step = self.saga.steps[self.index]
            transient = result.kind in ("timeout", "no_responders")
            if (transient or self.after_pivot(self.index)) and self.attempt < step.retries:
                self._retry(step.backoff, now_ns)
                return
            self.failed = request
            self._fail_current(result, now_ns)
            return
        step = self.saga.steps[self.to_compensate[0]]
        assert step.compensate is not None
        if result.kind == "ok":
            self.replies[f"{request.step}.compensate"] = result.reply
            self._compensated_one()
            return
        if result.kind != "aborted" and self.attempt < step.compensate.retries:
            self._retry(step.compensate.backoff or step.backoff, now_ns)
            return
        self._finish(
            "failed",
            f"{self.failure}; compensating `{step.name}` failed ({_said(result)}), "
            "later compensations not attempted",
            clean=False,
        )

    def _compensated_one(self) -> None:
        self.to_compensate.pop(0)
        self.attempt = 0
        if self.to_compensate:
            return
        undo_skipped = [s for s in self.skipped if s.startswith("undo ")]
        if undo_skipped:
            reason = f"{self.failure}; skipped by the user: {', '.join(undo_skipped)}"
            self._finish("failed", reason, clean=False)
        else:
            self._finish("compensated", self.failure)

    def _retry(self, backoff: str, now_ns: int) -> None:
        self.attempt += 1
        delay = parse_duration(backoff) * 2 ** (self.attempt - 1)
        self.retry_at_ns = now_ns + int(delay * 1e9)

    def _fail_current(self, result: StepResult, now_ns: int) -> None:
        del now_ns
        if self.phase == "compensating":
            step = self.saga.steps[self.to_compensate[0]]
            reason = f"{self.failure}; compensating `{step.name}`: {_said(result)}"
            self._finish("failed", reason, clean=False)
            return
        step = self.saga.steps[self.index]
        if result.kind == "aborted":
            self.failure = f"aborted by the user at step `{step.name}`"
            self._give_up()
            return
        self.failure = f"step `{step.name}` failed: {_said(result)}"
        if self.hold:
            self.phase = "held"
            return
        self._give_up()

    def _give_up(self) -> None:
        """Compensate what was completed before the failed step, newest first."""
        if self.after_pivot(self.index):
            reason = f"{self.failure} (after the pivot, so nothing is compensated)"
            self._finish("failed", reason, clean=False)
            return
        self.phase = "compensating"
        self.attempt = 0
        self.to_compensate = [i for i in reversed(self.completed) if self.saga.steps[i].compensate]
        if not self.to_compensate:  # nothing before it to undo: a clean failure
            self._finish("failed", self.failure)

    def _finish(self, outcome: str, reason: str, clean: bool = True) -> None:
        self.phase = "done"
        self.finished = Finished(outcome, reason, clean)

    def _step(self, name: str) -> StepDef:
        return next(s for s in self.saga.steps if s.name == name)

    @classmethod
    def from_journal(
        cls, saga: SagaDef, run_id: str, variables: dict[str, Any], entries: list[JournalEntry]
    ) -> tuple[SagaEngine, JournalEntry | None]:
        """Rebuild a run by replaying its journal; also returns the entry left in doubt
        (intent journaled, result never), which must be closed as `in_doubt` before the
        engine resends it. The engine comes back holding; `set_hold` says whether to go on so.

        A user's decision after a held failure is read from the entry that follows it: the
        same step again is a retry, a compensation is giving up, a later step is a skip.
        """
        engine = cls(saga, run_id, variables, hold=True)
        in_doubt = None
        for entry in entries:
            action = engine.next(entry.intent_ns)
            if isinstance(action, Held):
                decision: Decision = "skip"
                if entry.kind == "compensate":
                    decision = "compensate"
                elif entry.step == action.step:
                    decision = "retry"
                engine.resolve(decision)
                action = engine.next(entry.intent_ns)
            if not isinstance(action, Request) or (
                action.seq,
                action.step,
                action.kind,
                action.attempt,
                action.idempotency_key,
            ) != (entry.seq, entry.step, entry.kind, entry.attempt, entry.idempotency_key):
                raise SagaError(
                    f"journal entry {entry.seq} ({entry.step} {entry.kind}) does not follow from "
                    f"the saga definition; the run cannot be resumed"
                )
            if entry.payload != action.payload:
                engine.edit_pending(entry.payload)
            if entry.result is None:
                in_doubt = entry
                engine.apply(StepResult("in_doubt", "no result journaled"), entry.intent_ns)
                continue
            reply = None
            if entry.result == "ok" and entry.reply:
                try:
                    reply = _decode_any(entry.reply)
                except (msgspec.DecodeError, RecursionError):
                    reply = None
            engine.apply(StepResult(entry.result, entry.detail, reply), entry.intent_ns)
        return engine, in_doubt


# How a run ended, published by the runner inside the run's flow so the recording carries the
# flow's status: completed, compensated (every compensation owed went through) or failed.
SAGA_OUTCOME_TERMINAL = ("qixtui.saga.*.completed",)
SAGA_OUTCOME_FAILURE = ("qixtui.saga.*.failed", "qixtui.saga.*.compensated")
SAGA_OUTCOME_COMPENSATION = ("qixtui.saga.*.compensated",)
SAGA_STEPPED_HEADER = "Qixtui-Saga-Stepped"


def saga_outcome_subject(saga: str, status: str) -> str:
    token = re.sub(r"[^A-Za-z0-9_-]", "_", saga) or "saga"
    return f"qixtui.saga.{token}.{status}"


def trace_headers(
    run_id: str,
    request: Request,
    correlation_id: str,
    trace_id: str,
    span_id: str,
    stepped: bool = False,
) -> dict[str, str]:
    """The headers every saga request carries (see contracts: orchestrated runs). A request a
    person let go in the stepper says so: its run's times hold their pauses, and a run
    stopped or resumed with --auto has no end announcement saying it was stepped."""
    headers = {
        "Qixtui-Saga-Run": run_id,
        "Qixtui-Saga-Step": request.step,
        "Idempotency-Key": request.idempotency_key,
        "X-Correlation-ID": correlation_id,
        "traceparent": f"00-{trace_id}-{span_id}-01",
    }
    if stepped:
        headers[SAGA_STEPPED_HEADER] = "true"
    return headers


def describe_step(step: StepDef, index: int, pivot: int | None) -> str:
    """One line of `orchestrate --check`'s plan."""
    timeout = format_duration(parse_duration(step.timeout))
    parts = [f"{index + 1}. {step.name}", f"-> {step.request}", f"timeout {timeout}"]
    if step.retries:
        parts.append(f"retries {step.retries} (backoff {step.backoff}, doubling)")
    parts.append(f"success {describe_success(step.success)}")
    if pivot is not None and index == pivot:
        parts.append("[pivot: past here the saga only goes forward]")
    elif pivot is not None and index > pivot:
        parts.append("[after pivot: retried, never compensated]")
    if step.compensate is not None:
        parts.append(f"undo -> {step.compensate.request}")
    elif pivot is None or index < pivot:
        parts.append("(nothing to undo)")
    return "  ".join(parts)


def describe_success(rule: Success | None) -> str:
    if rule is None or rule.not_error:
        return "not error"
    if rule.exists is not None:
        return f"{rule.pointer} {'exists' if rule.exists else 'absent'}"
    return f"{rule.pointer} == {_encode_json(rule.equals).decode()}"
