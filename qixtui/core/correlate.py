"""Streaming correlation: events in, flow changes out; keys joined by union-find, no I/O.

A flow is the connected component of events that share a key. Keys an event can carry:

- header     a correlation header value (all configured headers share one key space)
- trace      the trace-id of a W3C `traceparent`
- field      a payload value found by a configured JSON pointer, named by the pointer's last
             token, so /order_id and /data/order_id (CloudEvents structured) meet
- subject    a configured subject token
- reply      a reply joins the flow of its request through the reply subject
- causation  the causation header names the message id of the cause

header, trace, field, subject and causation keys start a flow; reply and message-id keys only
join one, so a bare request/reply (JetStream API, service pings) or a message with only a
message id stays flowless, like heartbeats. A flowless event that later turns out to be the
request or the cause of an event in a flow is moved into it (`FlowChanges.assign`).

Union-find is union by size with relabelling: when two flows meet, every key of the smaller
one is pointed at the larger, so a key lookup is one dict access and a flow id never changes
except by being absorbed (reported in `FlowChanges.merges`).

Memory stays bounded on long recordings and busy buses. A flow quiet for `stall` leaves the
live set; once quiet for ten times that (at least ten minutes), its state and keys are
forgotten: a later event with one of its keys starts a new flow. No more than MAX_FLOWS are
remembered at all (about 1 kB each): past that the least recently touched go first, quiet
ones before live ones. A forgotten flow keeps its last summary in the file, so one forgotten
while running is stalled there by `stall_quiet_flows` when the recording ends.
Message ids and reply subjects of flowless events are kept in two generations that rotate
every LOOSE_LIMIT entries or `retain` nanoseconds.
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Final, cast

import msgspec

from qixtui.core.model import Event, Flow, FlowChanges, Headers, Link
from qixtui.core.rows import FlowRow, FlowRows, LinkRow, strings_json
from qixtui.core.rules import (
    SAGA_RUN_HEADER,
    Rules,
    parse_key,
    parse_subject_key,
    service_rule,
)
from qixtui.core.saga import (
    SAGA_OUTCOME_COMPENSATION,
    SAGA_OUTCOME_FAILURE,
    SAGA_OUTCOME_TERMINAL,
)
from qixtui.core.store import subject_regex

# Final: compiled, these are constants in the code instead of a module lookup at each use.
MAX_STEPS: Final = 200  # variant length kept per flow; the event count keeps counting
MAX_KEYS_SHOWN: Final = 20
MAX_FLOWS: Final = 50_000
LOOSE_LIMIT: Final = 200_000
SUBJECT_CACHE: Final = 50_000
MIN_RETAIN_NS: Final = 600_000_000_000

TERMINAL: Final = 1
FAILURE: Final = 2
COMPENSATION: Final = 4
_CORR: Final = 1
_TRACE: Final = 2
_CAUSE: Final = 3
_MSGID: Final = 4
_SAGA: Final = 5
_SERVICE: Final = 6
_NOWHERE: Final = 0  # where a flow is kept: new or forgotten, live, quiet
_LIVE: Final = 1
_QUIET: Final = 2

# Built wheels carry this module compiled by mypyc (hatch_build.py); editable installs do not.
COMPILED = not __file__.endswith(".py")

_NO_TRACE: Final = "0" * 32
_JSON_START: Final = re.compile(rb"[ \t\r\n]*\{")
_ID_TOKEN: Final = re.compile(r"^(?:\d+|(?=.*\d)[0-9A-Za-z_-]{8,})$")


def event_type(subject: str) -> str:
    """The subject with id-like tokens (all digits, or long and with a digit) as `*`."""
    return ".".join("*" if _ID_TOKEN.match(tok) else tok for tok in subject.split("."))


def reply_type(request_type: str) -> str:
    return f"{request_type} (reply)"


def _service_of_tokens(
    tokens: list[str],
    rule: tuple[str, str | int],
    commands: frozenset[str],
    names: dict[str, str],
) -> str | None:
    kind, arg = rule
    if kind == "auto":
        at = 1 if len(tokens) >= 3 else 0
    elif kind == "subject":
        assert isinstance(arg, int)
        at = arg - 1 if len(tokens) >= arg else len(tokens) - 1
    else:
        return None
    # `shop.cmd.payment.authorize`: the command goes to payment, not to a service "cmd"
    if tokens[at] in commands and at + 1 < len(tokens):
        at += 1
    return names.get(tokens[at], tokens[at])


def event_service(event: Event, rules: Rules) -> str | None:
    """The service an event is attributed to under `rules` (a reply: see `reply_service`)."""
    rule = service_rule(rules)
    names = rules.services.names
    if rule[0] == "header":
        value = event.header(str(rule[1]))
        return names.get(value, value) if value is not None else None
    commands = frozenset(rules.services.command_tokens)
    return _service_of_tokens(event.subject.split("."), rule, commands, names)


class _SubjectInfo:
    __slots__ = ("etype", "keys", "service", "status")

    def __init__(self, etype: str, service: str | None, status: int, keys: list[str]) -> None:
        self.etype = etype
        self.service = service
        self.status = status
        self.keys = keys


class _Sent:
    """A message others may answer (by its reply subject) or cite (by its message id), and
    the flow it is in: None while flowless, then the flow that adopts it."""

    __slots__ = ("etype", "event_id", "flow", "msgid", "reply", "service", "ts_ns")

    def __init__(
        self,
        flow: _FlowState | None,
        event_id: int,
        ts_ns: int,
        etype: str,
        service: str | None,
        reply: str | None,
        msgid: str | None,
    ) -> None:
        self.flow = flow
        self.event_id = event_id  # 0: only cited so far
        self.ts_ns = ts_ns
        self.etype = etype
        self.service = service
        self.reply = reply
        self.msgid = msgid


class _FlowState:
    __slots__ = (
        "batch",
        "compensation",
        "ended_ns",
        "events",
        "failure",
        "flow_id",
        "id_box",
        "into",
        "keys",
        "orchestrated",
        "place",
        "sent",
        "services",
        "stalled",
        "started_ns",
        "steps",
        "terminal",
    )

    def __init__(self, flow_id: int, ts_ns: int, id_box: Any) -> None:
        self.flow_id = flow_id
        self.id_box: Any = id_box  # flow_id as an object: its events get it without a new int
        self.started_ns = ts_ns
        self.ended_ns = ts_ns
        self.events = 0
        self.services: list[str] = []  # a few: a list is cheaper to copy than a dict
        # (ts_ns, event id, event type), the two ints as the event's own objects: typed int,
        # compiled code would box new ones for every step
        self.steps: list[tuple[object, object, str]] = []
        self.keys: list[str] = []
        # its reply subjects and message ids: keys of the inbox and message tables, in one
        # list because a flow rarely has either (each list is 72 bytes of 50,000 flows')
        self.sent: list[str] = []
        self.terminal = False
        self.failure = False
        self.compensation = False
        self.orchestrated = False
        self.stalled = False
        self.place = _NOWHERE
        self.batch = 0  # the last batch that touched it: its summary is in that batch's changes
        self.into: _FlowState | None = None  # the flow that absorbed this one

    def status(self) -> str:
        if self.failure:
            return "compensated" if self.compensation else "failed"
        if self.terminal:
            return "completed"
        return "stalled" if self.stalled else "running"

    def finished(self) -> bool:
        return self.terminal or self.failure

    def summary(self) -> Flow:
        return Flow(
            self.flow_id,
            self.status(),
            self.started_ns,
            self.ended_ns,
            self.events,
            self.services[:],
            [step[2] for step in self.steps],
            self.keys[:MAX_KEYS_SHOWN],
            self.orchestrated,
        )

    def row(self) -> FlowRow:
        """The summary as a flows row (rows.flow_row of `summary()`, without the Flow)."""
        return (
            self.flow_id,
            self.status(),
            self.started_ns,
            self.ended_ns,
            self.events,
            strings_json(self.services),
            strings_json([step[2] for step in self.steps]),
            _json_encode(self.keys[:MAX_KEYS_SHOWN]).decode(),
            int(self.orchestrated),
        )


_Leaf = str | int | float | bool | None


class _Fields:
    """Payload fields by JSON pointer. A msgspec decoder built for just the pointed-at fields
    skips everything else without making Python objects; each pointer is then a path of field
    positions, read from `astuple` (one C call a struct, where attribute lookups are generic).
    Payloads it cannot type (a pointed-at spot holding an object) are walked generically.
    Overlapping pointers (/data and /data/id) always take the generic walk."""

    def __init__(self, pointers: list[str]) -> None:
        keys = [parse_key(p) for p in pointers]
        self.paths = [tokens for tokens, _ in keys]
        self.prefixes = [f"{name}=" for _, name in keys]
        self.decode: Callable[[bytes], Any] | None = None
        self.positions: list[list[int]] = []
        tree: dict[str, Any] = {}
        for segs in self.paths:
            node = tree
            for seg in segs[:-1]:
                node = node.setdefault(seg, {})
                if node is True:
                    return
            if isinstance(node.get(segs[-1]), dict):
                return
            node[segs[-1]] = True
        root, root_mapping = self._build(tree)
        for segs in self.paths:
            at: list[int] = []
            mapping: Any = root_mapping
            for seg in segs:
                position, mapping = mapping[seg]
                at.append(position)
            self.positions.append(at)
        self.decode = msgspec.json.Decoder(root).decode

    @staticmethod
    def _build(tree: dict[str, Any]) -> tuple[Any, dict[str, tuple[int, Any]]]:
        def build(node: dict[str, Any]) -> tuple[Any, dict[str, tuple[int, Any]]]:
            mapping: dict[str, tuple[int, Any]] = {}
            specs: list[tuple[str, Any, Any]] = []
            for seg, child in node.items():
                attr = f"f{len(mapping)}"
                if child is True:
                    specs.append((attr, _Leaf, None))
                    mapping[seg] = (len(specs) - 1, None)
                else:
                    sub, sub_mapping = build(child)
                    specs.append((attr, sub | None, None))  # missing or null: leaves missing
                    mapping[seg] = (len(specs) - 1, sub_mapping)
            rename = {spec[0]: seg for seg, spec in zip(node, specs, strict=True)}
            struct = msgspec.defstruct(
                "Payload", specs, rename=rename, frozen=True, gc=False, cache_hash=False
            )
            return struct, mapping

        return build(tree)

    def keys(self, payload: Any, found: list[str]) -> None:  # bytes, or bytearray
        # typed bytes, the first byte is a C array read; a slice to compare was two calls
        data: bytes = payload if type(payload) is bytes else bytes(payload)
        if not data or (data[0] != 123 and not _JSON_START.match(data)):  # 123: {
            return
        if self.decode is not None:
            try:
                top: tuple[Any, ...] | None = _astuple(self.decode(data))
            except msgspec.ValidationError:
                top = None  # another type where a pointer leads: walk it generically
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                return
            if top is not None:
                positions = self.positions
                for i in range(len(positions)):
                    at = positions[i]
                    value = top[at[0]]
                    for k in range(1, len(at)):
                        if value is None:
                            break
                        value = _astuple(value)[at[k]]
                    if value is not None:
                        text = value if type(value) is str else _plain_value(value)
                        if text:
                            found.append(self.prefixes[i] + text)
                return
        try:
            generic = _decode_any(data)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return
        for prefix, segs in zip(self.prefixes, self.paths, strict=True):
            text = _plain_value(_walk(generic, segs))
            if text:
                found.append(prefix + text)


_astuple: Final = msgspec.structs.astuple
_json_encode: Final = msgspec.json.Encoder().encode

# add_batch unpacks an event by position: astuple is one C call, where reading seven fields
# of a msgspec Struct from compiled code is seven generic attribute lookups.
if Event.__struct_fields__ != ("ts_ns", "subject", "reply", "headers", "payload", "id", "flow_id"):
    raise ImportError("Event's fields changed: update Correlator.add_batch")
_decode_any: Final = msgspec.json.decode


def _plain_value(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return msgspec.json.encode(value).decode()
    return None


def _walk(obj: Any, segs: list[str]) -> Any:
    for seg in segs:
        if isinstance(obj, dict):
            obj = obj.get(seg)
        elif isinstance(obj, list) and seg.isdigit() and int(seg) < len(obj):
            obj = obj[int(seg)]
        else:
            return None
    return obj


class Correlator:
    """Assigns flows to events as they arrive; `now_ns` is the only clock it knows."""

    def __init__(self, rules: Rules, retain_ns: int | None = None) -> None:
        rules.validate()
        corr = rules.correlation
        self.rules = rules
        roles: dict[str, int] = {}
        for name in corr.headers:
            roles[name] = roles[name.lower()] = _CORR
        if corr.trace:
            roles["traceparent"] = _TRACE
        if corr.causation_header:
            roles[corr.causation_header] = roles[corr.causation_header.lower()] = _CAUSE
        for name in corr.message_id_headers:
            roles[name] = roles[name.lower()] = _MSGID
        roles[SAGA_RUN_HEADER] = roles[SAGA_RUN_HEADER.lower()] = _SAGA
        self._service_rule = service_rule(rules)
        self._commands = frozenset(rules.services.command_tokens)
        self._service_names = rules.services.names
        if self._service_rule[0] == "header":
            name = str(self._service_rule[1])
            roles[name] = roles[name.lower()] = _SERVICE
        self._roles = roles
        self._replies = corr.replies
        self._fields = _Fields(corr.keys) if corr.keys else None
        self._subject_keys = [
            (subject_regex([pattern]), index, f"{name}=")
            for pattern, index, name in map(parse_subject_key, corr.subject_keys)
        ]
        # A saga runner announces how each run ended; those subjects count whatever the rules.
        self._status_patterns = [
            (TERMINAL, subject_regex([*rules.status.terminal, *SAGA_OUTCOME_TERMINAL])),
            (FAILURE, subject_regex([*rules.status.failure, *SAGA_OUTCOME_FAILURE])),
            (COMPENSATION, subject_regex([*rules.status.compensation, *SAGA_OUTCOME_COMPENSATION])),
        ]
        self._stall_ns = rules.stall_ns
        self._retain_ns = retain_ns or max(10 * self._stall_ns, MIN_RETAIN_NS)

        # Tables point at flow states themselves: no flow-id lookup, no boxing of ids.
        self._index: dict[str, _FlowState] = {}
        self._inboxes: dict[str, _Sent] = {}  # reply subject -> the request
        self._msgs: dict[str, _Sent] = {}  # message id -> the message
        # Flowless entries of those two also sit in two generations here; a flow forgets its
        # own, these go when their generation does (every LOOSE_LIMIT entries or `retain`).
        self._loose_inboxes: list[dict[str, _Sent]] = [{}, {}]
        self._loose_msgs: list[dict[str, _Sent]] = [{}, {}]
        self._loose_rotated_ns: int | None = None
        # Every remembered flow is in one of these: touched within `stall` (live) or not
        # (quiet), oldest first. Ordered dicts, because flows leave from the front: a plain
        # dict keeps the holes, and finding its first key then walks past every flow ever
        # forgotten (a third of the writer's time once 50,000 flows are remembered).
        self._live: OrderedDict[_FlowState, None] = OrderedDict()
        self._quiet: OrderedDict[_FlowState, None] = OrderedDict()
        self._subjects: dict[str, _SubjectInfo] = {}
        self._moved: dict[int, int] = {}  # absorbed flow id -> the id it went into, per batch
        # The open batch: its number (a flow's `batch` says it is in `touched` already) and
        # what it changed so far.
        self._batch = 1
        self._links: list[LinkRow] = []
        self._merges: list[tuple[int, int]] = []
        self._assign: list[tuple[int, int]] = []
        self._touched: list[_FlowState] = []

    # -- public -----------------------------------------------------------------------------

    def add_batch(self, events: Iterable[Event], now_ns: int) -> FlowChanges:
        """Correlate events in arrival order, setting `flow_id` on each in place."""
        self.link(events if isinstance(events, list) else list(events))
        links, merges, assign, touched = self._close_batch(now_ns)
        return FlowChanges(
            links=[Link(eid, kind, key, parent) for eid, kind, key, parent in links],
            merges=merges,
            flows=[f.summary() for f in touched],
            assign=assign,
        )

    def batch_rows(self, now_ns: int) -> FlowRows:
        """Close the batch `link` filled, with what changed as session-file rows: after
        `link(events)`, `rows.flow_rows(add_batch(events, now_ns))` without the Flow and Link
        structs in between (the recorder's way)."""
        links, merges, assign, touched = self._close_batch(now_ns)
        return FlowRows(links, merges, [(f, e) for e, f in assign], [f.row() for f in touched])

    def link(self, batch: list[Event]) -> None:
        """Correlate events in arrival order into the open batch, setting `flow_id` on each
        in place. A batch can be linked in parts (the recorder links a few hundred events at a
        time, while they are in the CPU's cache); a merge in a later part can absorb a flow
        an earlier part's events were given, which the batch's merges then report."""
        links, merges, assign = self._links, self._merges, self._assign
        touched = self._touched
        flows_of: list[_FlowState | None] = []  # each event's, absorbed ones resolved at the end
        batch_no = self._batch
        # The hot path is this one loop, with the tables it uses bound to locals. Methods are
        # called as methods: compiled, that is a direct C call; a bound method in a local is not.
        subjects = self._subjects
        index, msgs, replies = self._index, self._msgs, self._replies
        inboxes = self._inboxes
        subject: str
        reply: str | None
        ts_box: object  # the event's own int objects, for steps and flow ids
        eid_box: object
        for event in batch:
            ts_box, subject, reply, headers, payload, eid_box, _ = _astuple(event)
            ts = cast(int, ts_box)
            eid = cast(int, eid_box)
            info = subjects.get(subject)
            if info is None:
                info = self._subject_info(subject, replies and subject in inboxes)
            found, cause, msgid, saga, service = self._keys(headers, payload, info, None)

            flow: _FlowState | None = None
            unknown = False
            for key in found:
                other = index.get(key)
                if other is None:
                    unknown = True
                elif other is not flow:
                    flow = other if flow is None else self._union(flow, other, merges)
            etype = info.etype
            request: _Sent | None = None
            if replies:
                request = inboxes.get(subject)
                if request is not None:
                    etype, service = reply_type(request.etype), request.service
                    pointed = request.flow
                    if pointed is not None:
                        flow = pointed if flow is None else self._union(flow, pointed, merges)
            cited: _Sent | None = None
            if cause is not None:
                cited = msgs.get(cause)
                if cited is not None:
                    pointed = cited.flow
                    if pointed is not None:
                        flow = pointed if flow is None else self._union(flow, pointed, merges)
            if msgid is not None:
                same = msgs.get(msgid)
                if same is not None:
                    pointed = same.flow
                    if pointed is not None:
                        flow = pointed if flow is None else self._union(flow, pointed, merges)

            if not replies:
                reply = None
            if flow is None:
                if not found and cause is None:
                    if msgid is not None or reply:
                        loose = _Sent(None, eid, ts, etype, service, reply, msgid)
                        if msgid is not None:
                            self._loose_put(msgs, self._loose_msgs, msgid, loose)
                        if reply:
                            self._loose_put(inboxes, self._loose_inboxes, reply, loose)
                    flows_of.append(None)
                    continue
                flow = _FlowState(eid, ts, eid_box)

            if unknown:
                for key in found:
                    if key not in index:
                        index[key] = flow
                        flow.keys.append(key)
            if request is not None:
                links.append((eid, "reply", subject, request.event_id))
                if request.flow is None:
                    self._adopt(flow, request, "reply", subject, links, assign)
            if cause is not None:
                if cited is None:
                    cited = msgs[cause] = _Sent(flow, 0, 0, "", None, None, cause)
                    flow.sent.append(cause)  # the cause may still arrive
                elif cited.flow is None:
                    self._adopt(flow, cited, "causation", cause, links, assign)
                links.append((eid, "causation", cause, cited.event_id or None))
            if msgid is not None or reply:
                sent = _Sent(flow, eid, ts, etype, service, reply, msgid)
                if msgid is not None:
                    same = msgs.get(msgid)
                    if same is not None and same.event_id == 0:
                        links.append((eid, "causation", msgid, None))
                    msgs[msgid] = sent
                    flow.sent.append(msgid)
                if reply:
                    inboxes[reply] = sent
                    flow.sent.append(reply)

            flow.events += 1
            if ts > flow.ended_ns:
                flow.ended_ns = ts
            elif ts < flow.started_ns:
                flow.started_ns = ts
            if service is not None and service not in flow.services:
                flow.services.append(service)
            steps = flow.steps
            if len(steps) < MAX_STEPS:
                steps.append((ts_box, eid_box, etype))
            status = info.status
            if status:
                if status & TERMINAL:
                    flow.terminal = True
                if status & FAILURE:
                    flow.failure = True
                if status & COMPENSATION:
                    flow.compensation = True
            if saga:
                flow.orchestrated = True
            flows_of.append(flow)
            if flow.batch != batch_no:
                flow.batch = batch_no
                touched.append(flow)

        for i in range(len(batch)):
            owner = flows_of[i]
            if owner is None:
                batch[i].flow_id = None
                continue
            while owner.into is not None:
                owner = owner.into
            batch[i].flow_id = owner.id_box

    def _close_batch(
        self, now_ns: int
    ) -> tuple[list[LinkRow], list[tuple[int, int]], list[tuple[int, int]], list[_FlowState]]:
        links, merges, assign, touched = self._links, self._merges, self._assign, self._touched
        self._links, self._merges, self._assign, self._touched = [], [], [], []
        batch_no = self._batch
        if merges:
            find = self._find
            assign = [(eid, find(fid)) for eid, fid in assign]
            touched = self._absorbed(touched, batch_no)
        self._moved.clear()
        live, quiet = self._live, self._quiet
        for flow in touched:
            if flow.place == _LIVE:
                live.move_to_end(flow)
                continue
            if flow.place == _QUIET:
                del quiet[flow]
                flow.stalled = False
            live[flow] = None
            flow.place = _LIVE
        self._tick(now_ns, touched, batch_no)
        self._batch = batch_no + 1
        return links, merges, assign, touched

    def finish(self, now_ns: int) -> FlowChanges:
        """The recording ended at `now_ns`: running flows quiet for `stall` are stalled."""
        changed: list[_FlowState] = []
        self._tick(now_ns, changed, self._batch)
        self._batch += 1
        return FlowChanges(flows=[f.summary() for f in changed])

    @property
    def stall_ns(self) -> int:
        return self._stall_ns

    @property
    def remembered_flows(self) -> int:
        return len(self._live) + len(self._quiet)

    @property
    def remembered_keys(self) -> int:
        return len(self._index) + len(self._inboxes) + len(self._msgs)

    # -- the hot path -----------------------------------------------------------------------

    def _subject_info(self, subject: str, inbox: bool) -> _SubjectInfo:
        """What a subject says by itself: cached, except a reply inbox's (each is used once;
        its event type and service come from the request)."""
        tokens = subject.split(".")
        status = 0
        for bit, regex in self._status_patterns:
            if regex is not None and regex.fullmatch(subject):
                status |= bit
        keys = [
            prefix + tokens[index - 1]
            for regex, index, prefix in self._subject_keys
            if len(tokens) >= index and regex is not None and regex.fullmatch(subject)
        ]
        if inbox:
            return _SubjectInfo("", None, status, keys)
        info = _SubjectInfo(
            event_type(subject),
            _service_of_tokens(tokens, self._service_rule, self._commands, self._service_names),
            status,
            keys,
        )
        if len(self._subjects) >= SUBJECT_CACHE:
            self._subjects.clear()
        self._subjects[subject] = info
        return info

    def _keys(
        self, headers: Headers | None, payload: Any, info: _SubjectInfo, kinds: list[str] | None
    ) -> tuple[list[str], str | None, str | None, bool, str | None]:
        """An event's own keys, and its causation id, message id, whether a saga runner sent
        it, and its service: everything that depends on the event alone. `kinds`, when given,
        gets each key's kind."""
        found: list[str] = []
        cause = msgid = None
        saga = False
        service = info.service
        if headers:
            roles = self._roles
            for name, value in headers:
                role = roles.get(name)
                if role is None:
                    role = roles.get(name.lower(), 0)
                    if len(roles) < 1000:
                        roles[name] = role
                if not role or not value:
                    continue
                if role == _CORR:
                    found.append("correlation=" + value)
                    if kinds is not None:
                        kinds.append("header")
                elif role == _TRACE:
                    # version-traceid-parentid-flags; slicing makes one string, split five
                    start = value.find("-") + 1
                    trace = value[start : start + 32]
                    ok = start and value[start + 32 : start + 33] == "-" and "-" not in trace
                    if ok and value.find("-", start + 33) > 0 and trace != _NO_TRACE:
                        found.append("trace=" + trace.lower())
                        if kinds is not None:
                            kinds.append("trace")
                elif role == _CAUSE:
                    cause = value
                elif role == _MSGID:
                    msgid = msgid or value
                elif role == _SAGA:
                    saga = True
                else:
                    service = self._service_names.get(value, value)
        if self._fields is not None:
            self._fields.keys(payload, found)
            if kinds is not None:
                kinds.extend(["field"] * (len(found) - len(kinds)))
        if info.keys:
            found.extend(info.keys)
            if kinds is not None:
                kinds.extend(["subject"] * len(info.keys))
        return found, cause, msgid, saga, service

    def key_links(self, event: Event) -> list[Link]:
        """Why an event belongs where it is: its keys. They follow from the event and the
        rules alone, so they are derived when someone asks instead of stored per event."""
        info = self._subjects.get(event.subject) or self._subject_info(event.subject, False)
        kinds: list[str] = []
        found = self._keys(event.headers, event.payload, info, kinds)[0]
        return [Link(event.id, kind, key, None) for kind, key in zip(kinds, found, strict=True)]

    def _adopt(
        self,
        flow: _FlowState,
        loose: _Sent,
        kind: str,
        key: str,
        links: list[LinkRow],
        assign: list[tuple[int, int]],
    ) -> None:
        """Move a flowless event (a request or cause seen before its flow existed) into it."""
        loose.flow = flow
        if loose.reply is not None:
            flow.sent.append(loose.reply)
        if loose.msgid is not None:
            flow.sent.append(loose.msgid)
        links.append((loose.event_id, kind, key, None))
        assign.append((loose.event_id, flow.flow_id))
        flow.events += 1
        flow.started_ns = min(flow.started_ns, loose.ts_ns)
        flow.steps = sorted([*flow.steps, (loose.ts_ns, loose.event_id, loose.etype)])[:MAX_STEPS]
        if loose.service is not None and loose.service not in flow.services:
            flow.services.append(loose.service)

    # -- union-find ---------------------------------------------------------------------------

    def _find(self, fid: int) -> int:
        moved = self._moved
        while fid in moved:
            fid = moved[fid]
        return fid

    @staticmethod
    def _absorbed(touched: list[_FlowState], batch_no: int) -> list[_FlowState]:
        """The touched flows with absorbed ones replaced by the flows they went into."""
        out: list[_FlowState] = []
        for flow in touched:
            while flow.into is not None:
                flow = flow.into
            if flow.batch != -batch_no:
                flow.batch = -batch_no  # a stamp no other batch uses: seen here
                out.append(flow)
        for flow in out:
            flow.batch = batch_no
        return out

    def _union(self, fa: _FlowState, fb: _FlowState, merges: list[tuple[int, int]]) -> _FlowState:
        if fa is fb:
            return fa
        if (fa.events, -fa.flow_id) < (fb.events, -fb.flow_id):
            fa, fb = fb, fa
        into, gone = fa, fb
        index = self._index
        for key in gone.keys:
            index[key] = into
        into.keys.extend(gone.keys)
        for table in (self._inboxes, self._msgs):
            for key in gone.sent:
                sent = table.get(key)
                if sent is not None and sent.flow is gone:
                    sent.flow = into
        into.sent.extend(gone.sent)
        into.events += gone.events
        into.started_ns = min(into.started_ns, gone.started_ns)
        into.ended_ns = max(into.ended_ns, gone.ended_ns)
        for service in gone.services:
            if service not in into.services:
                into.services.append(service)
        into.steps = sorted(into.steps + gone.steps)[:MAX_STEPS]
        into.terminal |= gone.terminal
        into.failure |= gone.failure
        into.compensation |= gone.compensation
        into.orchestrated |= gone.orchestrated
        self._live.pop(gone, None)
        self._quiet.pop(gone, None)
        gone.place = _NOWHERE
        gone.into = into
        self._moved[gone.flow_id] = into.flow_id
        merges.append((gone.flow_id, into.flow_id))
        return into

    # -- time -------------------------------------------------------------------------------

    def _tick(self, now_ns: int, changed: list[_FlowState], batch_no: int) -> None:
        live, quiet = self._live, self._quiet
        quiet_before = now_ns - self._stall_ns
        while live:
            flow = next(iter(live))
            if flow.ended_ns >= quiet_before:
                break
            del live[flow]
            quiet[flow] = None
            flow.place = _QUIET
            if not flow.finished():
                flow.stalled = True
                if flow.batch != batch_no:
                    flow.batch = batch_no
                    changed.append(flow)
        forget_before = now_ns - self._retain_ns
        while quiet:
            flow = next(iter(quiet))
            if flow.ended_ns >= forget_before and len(live) + len(quiet) <= MAX_FLOWS:
                break
            del quiet[flow]
            self._forget(flow)
        while len(live) + len(quiet) > MAX_FLOWS:  # quiet is empty by now
            self._forget(live.popitem(last=False)[0])
        if self._loose_rotated_ns is None:
            self._loose_rotated_ns = now_ns
        elif now_ns - self._loose_rotated_ns > self._retain_ns:
            self._rotate_loose()
            self._loose_rotated_ns = now_ns

    def _forget(self, flow: _FlowState) -> None:
        flow.place = _NOWHERE
        index = self._index
        for key in flow.keys:
            if index.get(key) is flow:
                del index[key]
        for table in (self._inboxes, self._msgs):
            for key in flow.sent:
                sent = table.get(key)
                if sent is not None and sent.flow is flow:
                    del table[key]

    def _rotate_loose(self) -> None:
        self._drop_older(self._inboxes, self._loose_inboxes)
        self._drop_older(self._msgs, self._loose_msgs)

    @staticmethod
    def _drop_older(table: dict[str, _Sent], gens: list[dict[str, _Sent]]) -> None:
        """Forget the older generation's entries that are still flowless."""
        for key, sent in gens[1].items():
            if sent.flow is None and table.get(key) is sent:
                del table[key]
        gens[1] = gens[0]
        gens[0] = {}

    def _loose_put(
        self, table: dict[str, _Sent], gens: list[dict[str, _Sent]], key: str, sent: _Sent
    ) -> None:
        if len(gens[0]) >= LOOSE_LIMIT:
            self._drop_older(table, gens)
        gens[0][key] = sent
        table[key] = sent


def correlate_all(
    events: Iterable[Event], rules: Rules, now_ns: int | None = None
) -> dict[int, list[int]]:
    """Flow id -> event ids for a finite stream, for tests and small tools."""
    correlator = Correlator(rules)
    members: dict[int, list[int]] = {}
    last = 0
    for event in events:
        last = max(last, event.ts_ns)
        changes = correlator.add_batch([event], event.ts_ns)
        for absorbed, into in changes.merges:
            members.setdefault(into, []).extend(members.pop(absorbed, []))
        for eid, fid in changes.assign:
            members.setdefault(fid, []).append(eid)
        if event.flow_id is not None:
            members.setdefault(event.flow_id, []).append(event.id)
    correlator.finish(now_ns if now_ns is not None else last)
    return members


def factory(rules: Rules) -> Callable[[], Correlator]:
    """A picklable correlator factory for the writer process."""
    return functools.partial(Correlator, rules)
