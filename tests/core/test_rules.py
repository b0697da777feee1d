"""Rules files and flags: defaults, merging, and one-line errors that name the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from qixtui.core.rules import (
    DEFAULT_HEADERS,
    RuleFlags,
    Rules,
    RulesError,
    load_rules,
    parse_duration,
    rules_from_json,
)

CONTRACT_EXAMPLE = """
[correlation]
headers = ["X-Correlation-ID", "Correlation-Id", "correlation_id", "ce-correlationid"]
trace = true
causation_header = "X-Causation-ID"
message_id_headers = ["X-Message-ID", "Nats-Msg-Id", "ce-id"]
keys = ["/order_id", "/data/order_id", "/shipment_id"]
subject_keys = ["orders.*.>:2"]
replies = true

[status]
terminal = ["shop.order.completed"]
failure = ["shop.order.cancelled"]
compensation = ["shop.payment.refunded", "shop.stock.released"]
stall = "30s"

[services]
from = "subject:2"
"""


def test_the_contract_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(CONTRACT_EXAMPLE)
    rules = load_rules(path)
    assert rules.correlation.keys == ["/order_id", "/data/order_id", "/shipment_id"]
    assert rules.status.compensation == ["shop.payment.refunded", "shop.stock.released"]
    assert rules.services.from_ == "subject:2"
    assert rules.stall_ns == 30_000_000_000
    assert rules_from_json(rules.to_json()) == rules


def test_defaults_cover_the_usual_correlation_headers() -> None:
    rules = Rules()
    assert rules.correlation.headers == DEFAULT_HEADERS
    assert rules.correlation.keys == []  # never guessed from *_id fields
    assert rules.correlation.trace
    assert rules.correlation.replies


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[correlation]\nkeyz = ['/a']\n", "unknown field `keyz`"),
        ("[corelation]\n", "unknown field `corelation`"),
        ("[status]\nstall = 'soon'\n", "not a duration"),
        ("[correlation]\nkeys = ['order_id']\n", "not a JSON pointer"),
        ("[correlation]\nsubject_keys = ['orders.*']\n", "not a subject key"),
        ("[services]\nfrom = 'payload:/x'\n", "services.from"),
        ("[correlation\n", "not valid TOML"),
        ("[correlation]\ntrace = 'yes'\n", "Expected `bool`"),
        ("[correlation]\nsubject_keys = ['a..b:1']\n", "has an empty token"),
        ("[correlation]\nsubject_keys = ['orders.*:9']\n", "has no token 9"),
        ("[correlation]\nsubject_keys = ['cpu.load>90:5']\n", "has no token 5"),
        ("[correlation]\nheaders = ['']\n", "not a header name"),
        ("[status]\nterminal = ['a.>.b']\n", "'>' may only be the last token"),
        ("[status]\nfailure = ['']\n", "has an empty token"),
        ("[status]\nstall = '" + "9" * 400 + "s'\n", "longer than any recording"),
    ],
)
def test_bad_files_get_one_line_naming_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(RulesError) as err:
        load_rules(path)
    message = str(err.value)
    assert needle in message
    assert "\n" not in message
    assert message.startswith(str(path))


def test_a_binary_file_given_as_rules_says_it_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "session.qix"
    path.write_bytes(b"SQLite format 3\x00\x10\x00\x02\x02\xff")
    with pytest.raises(RulesError) as err:
        load_rules(path)
    assert str(err.value) == f"{path}: not a UTF-8 text file (byte 20 is not UTF-8)"


def test_flags_add_to_the_file_and_stall_replaces() -> None:
    base = Rules()
    merged = base.merged_with(
        RuleFlags(keys=["/order_id"], headers=["X-Req"], terminal=["a.done"], stall="5m")
    )
    assert merged.correlation.keys == ["/order_id"]
    assert merged.correlation.headers == [*DEFAULT_HEADERS, "X-Req"]
    assert merged.status.terminal == ["a.done"]
    assert merged.stall_ns == 300_000_000_000
    assert base.correlation.keys == []  # the original is unchanged


def test_durations() -> None:
    assert parse_duration("500ms") == 500_000_000
    assert parse_duration("2") == 2_000_000_000
    assert parse_duration("1h") == 3_600_000_000_000
    with pytest.raises(RulesError):
        parse_duration("-1s")
