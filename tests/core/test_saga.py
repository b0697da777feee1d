"""The saga engine, definitions and templates as plain data: no bus, no file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qixtui.core.saga import (
    Finished,
    Held,
    JournalEntry,
    Request,
    Response,
    SagaEngine,
    SagaError,
    Sleep,
    StepResult,
    classify,
    load_saga_text,
    render,
    resolve_vars,
)

SHOP_TEXT = (Path(__file__).parent.parent / "sagas" / "shop.toml").read_text()
SHOP = load_saga_text(SHOP_TEXT, "shop.toml")
STEPS = ["authorize", "reserve", "ship", "complete", "notify"]


def engine() -> SagaEngine:
    return SagaEngine(SHOP, "r1", resolve_vars(SHOP, {}, "r1"))


def ok(reply: dict[str, object] | None = None) -> StepResult:
    return StepResult("ok", "", reply or {"ok": True})


def drive(
    eng: SagaEngine, results: dict[tuple[str, str], list[StepResult]]
) -> list[tuple[str, str, int]]:
    """Run to the end; each (step, kind) answers from its list, then ok."""
    sent: list[tuple[str, str, int]] = []
    now = 0
    while True:
        action = eng.next(now)
        if isinstance(action, Finished):
            return sent
        if isinstance(action, Sleep):
            now = action.until_ns
            continue
        sent.append((action.step, action.kind, action.attempt))
        queue = results.get((action.step, action.kind), [])
        reply = {"ok": True, "payment_id": "p1", "reservation_id": "r1", "shipment_id": "s1"}
        eng.apply(queue.pop(0) if queue else ok(reply), now)


# --- definitions ---------------------------------------------------------------------------


def broken(old: str, new: str) -> str:
    assert old in SHOP_TEXT
    return SHOP_TEXT.replace(old, new, 1)


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_missing_timeout_names_the_step_line() -> None:
    text = broken('timeout = "2s"\nretries = 0\n', "retries = 0\n")
    with pytest.raises(SagaError) as exc:
        load_saga_text(text, "shop.toml")
    assert str(exc.value) == (
        f"shop.toml:{line_of(text, '[[steps]]')}: Object missing required field `timeout` "
        "(at steps[0])"
    )


def test_unknown_field_in_an_inline_table_names_its_line() -> None:
    text = broken("equals = true }\ncompensate", "equal = true }\ncompensate")
    with pytest.raises(SagaError, match=rf"^shop.toml:{line_of(text, 'equal = true')}: .*`equal`"):
        load_saga_text(text, "shop.toml")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('timeout = "2s"', 'timeout = "2 parsecs"', "timeout: not a duration"),
        (
            "pivot = true",
            'pivot = true\n[steps.compensate]\nrequest = "x.y"',
            "step `ship`: the pivot is never compensated (once done, the saga only goes forward)",
        ),
        ("${steps.authorize.reply./payment_id}", "${steps.ship.reply./x}", "not an earlier step"),
        ('"${customer_id}"', '"${nobody}"', "${nobody} is not a variable"),
        ('request = "shop.cmd.order.complete"', 'request = "shop.*"', "not a subject"),
        ('name = "reserve"', 'name = "authorize"', "two steps are named `authorize`"),
        ("exists = true", "exists = true, equals = 1", "exactly one of"),
        ('"amount": ${amount}}', '"amount" ${amount}}', "not valid JSON once filled in"),
        (
            'request = "shop.cmd.order.complete"',
            'request = "shop.${customer_id}.complete"',
            "`shop.${customer_id}.complete`: a subject is sent as written",
        ),
        (
            'request = "shop.cmd.payment.refund"',
            'request = "shop.refund.${order_id}"',
            "compensate: `shop.refund.${order_id}`: a subject is sent as written",
        ),
        (
            'order_id = "order-${run_id}"',
            'order_id = "order-${amount}"',
            "variable `order_id`: a default can use only ${run_id} and ${saga}, not ${amount}",
        ),
        ("amount = 42\n", "amount = inf\n", "variable `amount`: inf is no number JSON can carry"),
        ("amount = 42\n", "amount = nan\n", "variable `amount`: nan is no number JSON can carry"),
    ],
)
def test_definition_mistakes_are_one_line_errors(old: str, new: str, message: str) -> None:
    with pytest.raises(SagaError) as exc:
        load_saga_text(broken(old, new), "shop.toml")
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)
    assert str(exc.value).startswith("shop.toml:")


def test_not_toml_is_an_error() -> None:
    with pytest.raises(SagaError, match=r"^x\.toml: not valid TOML"):
        load_saga_text("name = ", "x.toml")


# --- templates and variables ---------------------------------------------------------------


def test_render_inserts_json_outside_strings_and_text_inside() -> None:
    scope = {"id": 'a "quoted" id', "n": 3, "flag": True}
    replies = {"pay": {"payment_id": "p-9", "items": [{"sku": "x"}], "a/b": 1}}
    template = (
        '{"id": "${id}", "n": ${n}, "f": ${flag}, "p": "${steps.pay.reply./payment_id}", '
        '"items": ${steps.pay.reply./items}, "esc": ${steps.pay.reply./a~1b}, "s": "n=${n}$$"}'
    )
    assert json.loads(render(template, scope, replies)) == {
        "id": 'a "quoted" id',
        "n": 3,
        "f": True,
        "p": "p-9",
        "items": [{"sku": "x"}],
        "esc": 1,
        "s": "n=3$",
    }


def test_render_names_what_is_missing() -> None:
    with pytest.raises(KeyError, match="has nothing at /payment_id"):
        render("${steps.pay.reply./payment_id}", {}, {"pay": {"ok": True}})
    with pytest.raises(KeyError, match="has no reply"):
        render("${steps.pay.reply}", {}, {})


def test_vars_use_the_run_id_and_overrides_keep_the_declared_type() -> None:
    assert resolve_vars(SHOP, {}, "r7")["order_id"] == "order-r7"
    got = resolve_vars(SHOP, {"order_id": "o-1", "amount": "99"}, "r7")
    assert (got["order_id"], got["amount"]) == ("o-1", 99)
    with pytest.raises(SagaError, match="expected int"):
        resolve_vars(SHOP, {"amount": "lots"}, "r7")
    with pytest.raises(SagaError, match="no such variable"):
        resolve_vars(SHOP, {"colour": "red"}, "r7")


@pytest.mark.parametrize("number", ["nan", "inf", "-inf", "1e400"])
def test_a_float_var_must_be_a_number_json_can_carry(number: str) -> None:
    saga = load_saga_text(broken("amount = 42\n", "amount = 42.5\n"), "shop.toml")
    assert resolve_vars(saga, {"amount": "1e3"}, "r7")["amount"] == 1000.0
    with pytest.raises(SagaError, match=f"--var amount={number}: expected float"):
        resolve_vars(saga, {"amount": number}, "r7")


# --- success rules -------------------------------------------------------------------------


def test_classify_applies_the_rule_and_names_the_error() -> None:
    rule = SHOP.steps[0].success
    assert classify(rule, Response("reply", b'{"ok": true}')).kind == "ok"
    declined = classify(rule, Response("reply", b'{"ok": false, "error": "declined"}'))
    assert (declined.kind, declined.detail) == ("error", "declined")
    assert classify(rule, Response("reply", b'{"ok": 1}')).kind == "error"  # 1 is not true
    assert classify(rule, Response("reply", b"not json")).detail == "reply is not JSON"
    assert classify(SHOP.steps[2].success, Response("reply", b'{"ok":true}')).kind == "error"
    assert classify(None, Response("reply", b'{"ok": false}')).kind == "error"
    assert classify(None, Response("reply", b"plain text")).kind == "ok"
    service_error = Response("reply", b"", [("Nats-Service-Error-Code", "500")])
    assert classify(None, service_error).kind == "ok"
    assert classify(None, Response("reply", b"", [("Nats-Service-Error", "500 boom")])).kind == (
        "error"
    )
    assert classify(rule, Response("timeout", detail="no reply within 2s")).kind == "timeout"


# --- the engine ----------------------------------------------------------------------------


def test_happy_run_sends_each_step_once_with_stable_keys() -> None:
    eng = engine()
    first = eng.next(0)
    assert isinstance(first, Request)
    assert first.idempotency_key == "r1:authorize:action"
    assert json.loads(first.payload) == {"order_id": "order-r1", "customer_id": "c-1", "amount": 42}
    assert first.timeout_s == 2.0
    eng.apply(ok({"ok": True, "payment_id": "p1"}), 0)
    assert drive(eng, {}) == [(s, "action", 0) for s in STEPS[1:]]
    assert eng.finished == Finished("completed", "every step succeeded")


def test_business_error_before_the_pivot_compensates_in_reverse_order() -> None:
    eng = engine()
    sent = drive(eng, {("ship", "action"): [StepResult("error", "no address")]})
    assert sent == [
        ("authorize", "action", 0),
        ("reserve", "action", 0),
        ("ship", "action", 0),  # a business answer is not retried
        ("reserve", "compensate", 0),
        ("authorize", "compensate", 0),
    ]
    assert eng.finished is not None
    assert eng.finished.outcome == "compensated"


def test_a_declined_first_step_fails_cleanly_and_compensates_nothing() -> None:
    eng = engine()
    sent = drive(eng, {("authorize", "action"): [StepResult("error", "declined")]})
    assert sent == [("authorize", "action", 0)]
    assert eng.finished == Finished(
        "failed", "step `authorize` failed: error: declined", clean=True
    )


def test_a_held_failure_waits_for_a_retry_with_a_new_key_and_the_sent_payload() -> None:
    eng = engine()
    eng.hold = True
    first = eng.next(0)
    assert isinstance(first, Request)
    edited = eng.edit_pending(b'{"amount": 5000}')
    assert (edited.seq, edited.idempotency_key) == (first.seq, first.idempotency_key)
    eng.apply(StepResult("error", "declined"), 1)
    assert eng.next(2) == Held("authorize", "step `authorize` failed: error: declined")
    eng.resolve("retry")
    again = eng.next(3)
    assert isinstance(again, Request)
    assert (again.step, again.attempt, again.payload) == ("authorize", 1, b'{"amount": 5000}')
    assert again.idempotency_key == "r1:authorize:action:retry1"
    eng.apply(ok({"ok": True, "payment_id": "p1"}), 4)
    following = eng.next(5)
    assert isinstance(following, Request)
    assert following.step == "reserve"


def test_skip_passes_a_step_and_abort_compensates_what_was_done() -> None:
    eng = engine()
    eng.next(0)
    eng.apply(ok({"ok": True, "payment_id": "p1"}), 0)
    eng.next(1)
    eng.apply(StepResult("skipped", "skipped by the user"), 1)  # reserve: nothing to undo
    ship = eng.next(2)
    assert isinstance(ship, Request)
    assert ship.step == "ship"
    eng.apply(StepResult("aborted", "aborted by the user"), 2)
    undo = eng.next(3)
    assert isinstance(undo, Request)
    assert (undo.step, undo.kind) == ("authorize", "compensate")
    eng.apply(ok(), 3)
    assert eng.finished == Finished("compensated", "aborted by the user at step `ship`")


def test_a_run_that_skipped_a_step_does_not_say_every_step_succeeded() -> None:
    eng = engine()
    eng.next(0)
    eng.apply(ok({"ok": True, "payment_id": "p1"}), 0)
    eng.next(1)
    eng.apply(StepResult("skipped", "skipped by the user"), 1)  # reserve
    drive(eng, {})  # the rest succeed
    assert eng.finished == Finished(
        "completed", "every step succeeded or was skipped (skipped: reserve)"
    )


def test_a_skipped_compensation_is_not_a_clean_end() -> None:
    eng = engine()
    eng.hold = True
    drive_until = [ok({"ok": True, "payment_id": "p1"}), StepResult("error", "out")]
    for now, result in enumerate(drive_until):
        eng.next(now)
        eng.apply(result, now)
    assert isinstance(eng.next(5), Held)
    eng.resolve("compensate")
    eng.next(6)
    eng.apply(StepResult("skipped", "skipped by the user"), 6)
    assert eng.finished is not None
    assert (eng.finished.outcome, eng.finished.clean) == ("failed", False)
    assert "skipped by the user: undo authorize" in eng.finished.reason


def test_from_journal_replays_what_the_user_decided() -> None:
    eng = engine()
    eng.hold = True
    entries = []
    script = [
        (b'{"amount": 5000}', StepResult("error", "declined")),
        (None, ok({"ok": True, "payment_id": "p1"})),  # retried after the hold
        (None, StepResult("error", "out")),  # reserve fails; held, then skipped
        (None, ok({"ok": True, "shipment_id": "s1"})),
    ]
    decisions = iter([("retry", None), ("skip", None)])
    now = 0
    for payload, result in script:
        now += 1
        action = eng.next(now)
        if isinstance(action, Held):
            eng.resolve(*next(decisions))
            action = eng.next(now)
        assert isinstance(action, Request)
        if payload is not None:
            action = eng.edit_pending(payload)
        entries.append(journal_entry(action, now, result))
        eng.apply(result, now)
    rebuilt, doubt = SagaEngine.from_journal(SHOP, "r1", resolve_vars(SHOP, {}, "r1"), entries)
    assert doubt is None
    assert (rebuilt.index, rebuilt.skipped, rebuilt.retried) == (3, ["reserve"], {"authorize": 1})
    rebuilt.set_hold(False)
    following = rebuilt.next(now + 1)
    assert isinstance(following, Request)
    assert following.step == "complete"


def test_transient_failures_are_retried_after_a_doubling_backoff() -> None:
    text = broken("retries = 0\nbackoff", "retries = 2\nbackoff")
    saga = load_saga_text(text)
    eng = SagaEngine(saga, "r1", resolve_vars(saga, {}, "r1"))
    eng.next(0)
    eng.apply(StepResult("timeout"), 1_000)
    assert eng.next(1_000) == Sleep(1_000 + 100_000_000)
    retry = eng.next(100_001_000)
    assert isinstance(retry, Request)
    assert (retry.attempt, retry.idempotency_key) == (1, "r1:authorize:action")
    eng.apply(StepResult("no_responders"), 200_000_000)
    assert eng.next(200_000_000) == Sleep(400_000_000)
    eng.next(400_000_000)
    eng.apply(StepResult("timeout"), 400_000_000)
    assert eng.finished == Finished("failed", "step `authorize` failed: timeout", clean=True)


def test_failure_after_the_pivot_is_retried_then_fails_without_compensating() -> None:
    eng = engine()
    sent = drive(eng, {("complete", "action"): [StepResult("error", "x")] * 4})
    assert sent[3:] == [("complete", "action", n) for n in range(4)]
    assert eng.finished is not None
    assert eng.finished.outcome == "failed"
    assert "after the pivot" in eng.finished.reason


def test_a_compensation_that_keeps_failing_fails_the_run() -> None:
    eng = engine()
    results = {
        ("reserve", "action"): [StepResult("error", "out_of_stock")],
        ("authorize", "compensate"): [StepResult("timeout", "slow")] * 4,
    }
    sent = drive(eng, results)
    assert sent[-1] == ("authorize", "compensate", 3)
    assert eng.finished is not None
    assert eng.finished.outcome == "failed"


def journal_entry(action: Request, now: int, result: StepResult | None) -> JournalEntry:
    """The journal row of `action` sent at `now` and answered by `result` (None: not yet)."""
    return JournalEntry(
        action.seq,
        action.step,
        action.kind,
        action.attempt,
        action.idempotency_key,
        action.payload,
        now,
        None if result is None else result.kind,
        "",
        None if result is None else json.dumps(result.reply).encode(),
    )


def journal_of(eng: SagaEngine, answers: list[StepResult], stop_before_result: bool) -> list:
    entries = []
    for now, result in enumerate([*answers, None]):
        action = eng.next(now)
        assert isinstance(action, Request)
        last = now == len(answers)
        entries.append(journal_entry(action, now, None if last else result))
        if last:
            return entries if stop_before_result else entries[:-1]
        eng.apply(result, now)
    raise AssertionError


def test_from_journal_rebuilds_the_state_and_resends_the_step_in_doubt() -> None:
    pay = ok({"ok": True, "payment_id": "p1"})
    entries = journal_of(engine(), [pay], stop_before_result=True)
    rebuilt, doubt = SagaEngine.from_journal(SHOP, "r1", resolve_vars(SHOP, {}, "r1"), entries)
    assert doubt is entries[-1]
    resend = rebuilt.next(10)
    assert isinstance(resend, Request)
    assert resend.in_doubt
    assert (resend.step, resend.attempt, resend.seq) == ("reserve", 0, 3)
    assert (resend.idempotency_key, resend.payload) == (doubt.idempotency_key, doubt.payload)
    rebuilt.apply(ok({"ok": True, "reservation_id": "res"}), 11)
    following = rebuilt.next(12)
    assert isinstance(following, Request)
    assert following.step == "ship"
    assert rebuilt.replies["authorize"] == {"ok": True, "payment_id": "p1"}


def test_a_journal_that_does_not_follow_from_the_definition_is_refused() -> None:
    entries = journal_of(engine(), [ok()], stop_before_result=False)
    other = load_saga_text(
        broken('name = "authorize"', 'name = "pay"').replace("steps.authorize.", "steps.pay.")
    )
    with pytest.raises(SagaError, match="does not follow from the saga definition"):
        SagaEngine.from_journal(other, "r1", resolve_vars(other, {}, "r1"), entries)


KINDS = st.sampled_from(["ok", "error", "timeout", "no_responders"])


@settings(max_examples=200, deadline=None)
@given(st.lists(KINDS, max_size=40))
def test_any_answers_end_in_an_outcome_that_undoes_in_reverse(kinds: list[str]) -> None:
    eng = engine()
    answers = iter(kinds)
    done: list[str] = []
    undone: list[str] = []
    now = 0
    for _ in range(200):
        action = eng.next(now)
        if isinstance(action, Finished):
            break
        if isinstance(action, Sleep):
            now = action.until_ns
            continue
        kind = next(answers, "ok")
        reply = {"ok": True, "payment_id": "p", "reservation_id": "r", "shipment_id": "s"}
        eng.apply(StepResult(kind, "", reply if kind == "ok" else None), now)
        if kind == "ok":
            (done if action.kind == "action" else undone).append(action.step)
    else:
        raise AssertionError("the engine did not finish")
    outcome = eng.finished
    assert outcome is not None
    if outcome.outcome == "completed":
        assert done == STEPS
        assert not undone
        return
    to_undo = [s for s in reversed(done) if s in ("authorize", "reserve")]
    if outcome.outcome == "compensated":
        assert "ship" not in done
        assert to_undo
        assert undone == to_undo
    elif outcome.clean:  # failed with nothing before it to undo
        assert outcome.outcome == "failed"
        assert not to_undo
        assert not undone
    elif "ship" in done:  # a step after the pivot ran out of retries
        assert outcome.outcome == "failed"
        assert not undone
    else:  # a compensation ran out of retries: the ones before it are done, none after
        assert outcome.outcome == "failed"
        assert undone == to_undo[: len(undone)]
        assert len(undone) < len(to_undo)
