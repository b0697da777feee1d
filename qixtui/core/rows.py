"""Session-file rows from what the recorder received: header parsing, events, event and flow
rows. This is the writer's per-event work besides correlation, and like
`qixtui.core.correlate` a built wheel carries it compiled by mypyc (hatch_build.py); it stays
plain typed Python, so the same source runs either way.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import msgspec

from qixtui.core.model import Event, Flow, FlowChanges, Headers

# Built wheels carry this module compiled by mypyc (hatch_build.py); editable installs do not.
COMPILED = not __file__.endswith(".py")

_json_encode: Final = msgspec.json.Encoder().encode
_astuple: Final = msgspec.structs.astuple

# What bytes.strip() strips; str.strip() would also take Unicode spaces a value may hold.
_BYTES_WHITESPACE: Final = " \t\n\r\x0b\x0c"


def parse_header_block(raw: bytes) -> Headers:
    """A NATS header block (`NATS/1.0[ status]\\r\\nName: value\\r\\n...`) as ordered pairs.

    Repeated names are kept, in order. An inline status becomes `Status` and `Description`
    pairs, as nats-py names them. Bytes that are not UTF-8 are kept visible as `\\xNN`.
    """
    # One decode for the whole block: the separators are ASCII, so cutting afterwards gives
    # what decoding each part would. Cut by position (str.find is a direct C call compiled):
    # only names and values become strings, where split and partition made four a line.
    text = raw.decode("utf-8", "backslashreplace")
    size = len(text)
    pairs: Headers = []
    end = text.find("\r\n")
    if end < 0:
        end = size
    if text.startswith("NATS/1.0 "):
        status, _, description = text[9:end].strip(_BYTES_WHITESPACE).partition(" ")
        if status:
            pairs.append(("Status", status))
        if description:
            pairs.append(("Description", description))
    pos = end + 2
    while pos < size:
        end = text.find("\r\n", pos)
        if end < 0:
            end = size
        colon = text.find(":", pos, end)
        if colon > pos:
            value = colon + 1
            if value < end and text[value] == " ":  # the usual one space: no strip copy
                value += 1
            pairs.append(
                (
                    text[pos:colon].strip(_BYTES_WHITESPACE),
                    text[value:end].strip(_BYTES_WHITESPACE),
                )
            )
        pos = end + 2
    return pairs


def received_events(frames: list[Any], next_id: int) -> list[Event]:
    """Events from the recorder's frames, `[ts_ns, subject, reply, header_block, payload]`
    (None or empty for no reply and for no headers), numbered from `next_id`."""
    events: list[Event] = []
    for frame in frames:
        ts_ns, subject, reply, block, payload = frame
        headers = parse_header_block(block) if block else None
        events.append(Event(ts_ns, subject, reply or None, headers, payload, next_id))
        next_id += 1
    return events


def event_row(event: Event) -> tuple[Any, ...]:
    """An events row for store.INSERT_EVENT. "" and 0 stand for NULL (no reply, no headers,
    no flow; flow ids start at 1): Python's sqlite3 runs an adapter lookup for every None it
    binds, a fifth of an insert's cost. The writer receives payloads as bytearrays for the
    same reason (see qixtui.core.writer)."""
    # one C call for the fields: attribute reads on a Struct are generic lookups compiled
    ts_ns, subject, reply, headers, payload, eid, flow_id = _astuple(event)
    return (
        eid,
        ts_ns,
        subject,
        reply or "",
        _json_encode(headers).decode() if headers else "",
        payload,
        len(payload),
        flow_id or 0,
    )


def event_rows(events: list[Event]) -> list[tuple[Any, ...]]:
    return [event_row(event) for event in events]


def merged_into(merges: list[tuple[int, int]]) -> dict[int, int]:
    """Where each flow absorbed in a batch ended up: its merges, in order, (gone, into),
    followed to the end (a flow can be absorbed by one that is absorbed later)."""
    final: dict[int, int] = {}
    for gone, into in merges:
        final[gone] = into
    for gone in final:
        into = final[gone]
        while into in final:
            into = final[into]
        final[gone] = into
    return final


def retarget(
    rows: list[tuple[Any, ...]],
    first_id: int,
    final: dict[int, int],
    assign: list[tuple[int, int]],
) -> None:
    """Event rows numbered from `first_id`, moved to where their batch's correlation put
    them at its end: into the flows that absorbed theirs (`final`, from `merged_into`) and
    into the flows that adopted them (`assign`, (flow_id, event_id))."""
    if final:
        for i in range(len(rows)):
            row = rows[i]
            moved = final.get(row[7])
            if moved is not None:
                rows[i] = (*row[:7], moved)
    for flow_id, event_id in assign:
        at = event_id - first_id
        if at >= 0:
            rows[at] = (*rows[at][:7], flow_id)


def reaching_back(found: FlowRows, first_id: int, final: dict[int, int]) -> FlowRows:
    """What a batch's correlation changed in rows filed before it (ids below `first_id`):
    merges of flows those rows name, straight to where each flow ended up (the flow it went
    into may be absorbed later in the batch, and born in it), and adoptions of such rows.
    The batch's own rows take the rest through `retarget`."""
    return FlowRows(
        found.links,
        [(gone, final[gone]) for gone, _ in found.merges if gone < first_id],
        [(flow_id, event_id) for flow_id, event_id in found.assign if event_id < first_id],
        found.flows,
    )


# JSON of one-item lists by their item: most flows have one service, and a new flow one step,
# from a few names, so most services and variant columns are a lookup instead of an encoding.
_one_item_json: Final[dict[str, str]] = {}


def strings_json(items: list[str]) -> str:
    if len(items) != 1:
        return _json_encode(items).decode()
    item = items[0]
    text = _one_item_json.get(item)
    if text is None:
        if len(_one_item_json) >= 10_000:
            _one_item_json.clear()
        text = _one_item_json[item] = _json_encode(items).decode()
    return text


LinkRow = tuple[int, str, str, int | None]
FlowRow = tuple[int, str, int, int, int, str, str, str, int]


def flow_row(flow: Flow) -> FlowRow:
    """A flows row for store.UPSERT_FLOW."""
    flow_id, status, started_ns, ended_ns, events, services, variant, keys, orchestrated = _astuple(
        flow
    )
    return (
        flow_id,
        status,
        started_ns,
        ended_ns,
        events,
        strings_json(services),
        strings_json(variant),
        _json_encode(keys).decode(),
        int(orchestrated),
    )


class FlowRows(NamedTuple):
    """What correlation changed, as rows ready for executemany (they can cross a pipe)."""

    links: list[LinkRow]
    merges: list[tuple[int, int]]  # (absorbed, into)
    assign: list[tuple[int, int]]  # (flow_id, event_id)
    flows: list[FlowRow]


def flow_rows(changes: FlowChanges) -> FlowRows:
    return FlowRows(
        [(lk.event_id, lk.kind, lk.key, lk.parent_id) for lk in changes.links],
        changes.merges,
        [(f, e) for e, f in changes.assign],
        [flow_row(f) for f in changes.flows],
    )


# event_row and flow_row unpack by position
if Event.__struct_fields__ != ("ts_ns", "subject", "reply", "headers", "payload", "id", "flow_id"):
    raise ImportError("Event's fields changed: update event_row")
if Flow.__struct_fields__ != (
    "flow_id",
    "status",
    "started_ns",
    "ended_ns",
    "events",
    "services",
    "variant",
    "keys",
    "orchestrated",
):
    raise ImportError("Flow's fields changed: update flow_row")
