"""What the saga runner adds to each step beyond the request round-trip: two journal
commits, template rendering and the engine. Baseline: bare nats-py requests to the same echo
participant, measured in the same run, interleaved so drift hits both alike."""

from __future__ import annotations

import itertools
import statistics
import time
from pathlib import Path

import nats
import pytest

from qixtui.core import store
from qixtui.core.saga import load_saga_text
from qixtui_nats.saga_runner import Recording, SagaRunner, open_journal
from qixtui_nats.server import EmbeddedServer

STEPS_PER_RUN = 100
ROUNDS = 10  # 1,000 steps and 1,000 bare requests in all
PAYLOAD = b'{"order_id": "order-0123456789ab", "n": 1}'
HEADERS = {
    "Qixtui-Saga-Run": "0123456789ab",
    "Qixtui-Saga-Step": "s1",
    "Idempotency-Key": "0123456789ab:s1:action",
    "X-Correlation-ID": "5c3e6a2e-8f9b-4d7e-9a61-2f0c7c1d2b3a",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
}


def echo_saga(steps: int) -> str:
    head = 'name = "bench"\n[vars]\norder_id = "order-${run_id}"\nn = 1\n'
    body = "".join(
        f'[[steps]]\nname = "s{i}"\nrequest = "bench.echo"\ntimeout = "2s"\n'
        'payload = \'{"order_id": "${order_id}", "n": ${n}}\'\n'
        'success = { pointer = "/n", equals = 1 }\n'
        for i in range(steps)
    )
    return head + body


@pytest.mark.benchmark
@pytest.mark.parametrize("recorder", [False, True], ids=["journal-only", "with-recorder"])
async def test_saga_step_overhead(tmp_path: Path, recorder: bool) -> None:
    """With a recorder the journal shares the file with the recorder's writer process."""
    with EmbeddedServer(jetstream=False) as server:
        participant = await nats.connect(server.url)

        async def echo(msg: nats.aio.msg.Msg) -> None:
            await msg.respond(msg.data)

        await participant.subscribe("bench.echo", cb=echo)
        await participant.flush()
        nc = await nats.connect(server.url)
        path = tmp_path / "bench.qix"
        recording = Recording(path, [], {"NATS_URL": server.url}) if recorder else None
        if recording is not None:
            recording.spawn()
            await recording.ready()
        else:
            store.create_session(path).close()
        db = open_journal(path)
        text = echo_saga(STEPS_PER_RUN)
        saga = load_saga_text(text)
        marks: list[int] = []

        def mark(stage: str, _request: object, _result: object) -> None:
            if stage == "result":
                marks.append(time.perf_counter_ns())

        runner = SagaRunner(nc, db, on_step=mark)

        bare: list[float] = []
        steps: list[float] = []
        for _ in range(20):  # warm up both paths
            await nc.request("bench.echo", PAYLOAD, timeout=2, headers=HEADERS)
        await runner.start(saga, text)
        for _ in range(ROUNDS):
            for _ in range(STEPS_PER_RUN):
                t0 = time.perf_counter_ns()
                await nc.request("bench.echo", PAYLOAD, timeout=2, headers=HEADERS)
                bare.append((time.perf_counter_ns() - t0) / 1e3)
            marks.clear()
            started = time.perf_counter_ns()
            report = await runner.start(saga, text)
            assert report.outcome == "completed"
            edges = [started, *marks]
            steps.extend((b - a) / 1e3 for a, b in itertools.pairwise(edges))
        db.close()
        if recording is not None:
            await recording.stop()
        await nc.close()
        await participant.close()

    bare_med, step_med = statistics.median(bare), statistics.median(steps)
    overhead = step_med - bare_med
    print(
        f"\nsaga step vs bare request ({'with a recorder' if recorder else 'journal only'}), "
        f"median of {len(steps):,} each:\n"
        f"  bare nats-py request   {bare_med:8.1f} µs  (p90 {quantile(bare, 0.9):.1f})\n"
        f"  saga step (journaled)  {step_med:8.1f} µs  (p90 {quantile(steps, 0.9):.1f})\n"
        f"  overhead per step      {overhead:8.1f} µs  (target < 2000 µs), "
        f"ratio {step_med / bare_med:.2f}x"
    )


def quantile(values: list[float], q: float) -> float:
    return sorted(values)[int(q * (len(values) - 1))]
