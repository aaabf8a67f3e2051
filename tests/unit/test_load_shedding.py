"""Load shedding and size limits of the one server bootstrap (libs/rpc/server.py), on a real
gRPC server with a handler that takes its time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from libs.rpc.interceptors import LateCalls
from libs.rpc.server import GrpcServer, ServiceBinding, create_server

SERVICE = "test.v1.Slow"
_SLOW_S = 0.3
_LIMIT = 4


async def _slow(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    await asyncio.sleep(_SLOW_S)
    return b"done"


async def _fast(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return b"ok"


def _add(server: grpc.aio.Server) -> None:
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Slow": grpc.unary_unary_rpc_method_handler(_slow),
                    "Fast": grpc.unary_unary_rpc_method_handler(_fast),
                },
            )
        ]
    )


def _same(data: bytes) -> bytes:
    return data


@pytest.fixture(scope="module")
async def served() -> AsyncIterator[tuple[GrpcServer, grpc.aio.Channel]]:
    server, port = create_server(
        "127.0.0.1:0",
        [ServiceBinding(SERVICE, _add)],
        reflection_enabled=False,
        max_concurrent_rpcs=_LIMIT,
        # Wide enough that a call with less time left reaches the server before its
        # deadline even on a loaded machine (the guard can only refuse what arrives).
        min_deadline_s=0.2,
        shed_late_calls=True,
    )
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await channel.channel_ready()
        yield server, channel
    await server.stop(0)


async def _timed(call: Any, payload: bytes, deadline_s: float) -> tuple[grpc.StatusCode, float]:
    started = time.perf_counter()
    try:
        await call(payload, timeout=deadline_s)
        code = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as error:
        code = error.code()
    return code, time.perf_counter() - started


async def test_calls_beyond_the_limit_are_shed_at_once(
    served: tuple[GrpcServer, grpc.aio.Channel],
) -> None:
    _, channel = served
    slow = channel.unary_unary(
        f"/{SERVICE}/Slow", request_serializer=_same, response_deserializer=_same
    )
    calls = [asyncio.ensure_future(_timed(slow, b"x", 5.0)) for _ in range(3 * _LIMIT)]
    await asyncio.sleep(_SLOW_S / 3)  # all arrived, the first ones still working
    results = await asyncio.gather(*calls)
    ok = [elapsed for code, elapsed in results if code == grpc.StatusCode.OK]
    shed = [elapsed for code, elapsed in results if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert len(ok) == _LIMIT and len(shed) == 2 * _LIMIT, results
    # Refused without waiting for a slot: well under the time one call takes.
    assert max(shed) < _SLOW_S / 2, shed
    # Capacity comes back as soon as the calls in flight finish.
    assert (await _timed(slow, b"x", 5.0))[0] == grpc.StatusCode.OK


async def test_a_call_without_time_left_is_refused_before_work(
    served: tuple[GrpcServer, grpc.aio.Channel],
) -> None:
    server, channel = served
    fast = channel.unary_unary(
        f"/{SERVICE}/Fast", request_serializer=_same, response_deserializer=_same
    )
    assert (await _timed(fast, b"x", 1.0))[0] == grpc.StatusCode.OK
    code, _ = await _timed(fast, b"x", 0.1)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert server.deadline_guard is not None and server.deadline_guard.refused >= 1


async def test_without_a_limit_nothing_is_shed() -> None:
    server, port = create_server(
        "127.0.0.1:0", [ServiceBinding(SERVICE, _add)], reflection_enabled=False
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            slow = channel.unary_unary(
                f"/{SERVICE}/Slow", request_serializer=_same, response_deserializer=_same
            )
            results = await asyncio.gather(*(_timed(slow, b"x", 5.0) for _ in range(12)))
    finally:
        await server.stop(0)
    assert {code for code, _ in results} == {grpc.StatusCode.OK}


async def test_one_method_may_take_larger_messages_than_the_others() -> None:
    server, port = create_server(
        "127.0.0.1:0",
        [ServiceBinding(SERVICE, _add)],
        reflection_enabled=False,
        max_message_bytes=64 * 1024,
        large_messages={f"/{SERVICE}/Fast": 1024 * 1024},
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            fast = channel.unary_unary(
                f"/{SERVICE}/Fast", request_serializer=_same, response_deserializer=_same
            )
            slow = channel.unary_unary(
                f"/{SERVICE}/Slow", request_serializer=_same, response_deserializer=_same
            )
            assert (await _timed(fast, b"u" * 500_000, 5))[0] == grpc.StatusCode.OK
            too_big = grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (await _timed(fast, b"u" * 2_000_000, 5))[0] == too_big
            assert (await _timed(slow, b"u" * 100_000, 5))[0] == too_big
    finally:
        await server.stop(0)


# --------------------------------------------------------------------------- late calls


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _run(late: LateCalls, clock: Clock, method: str, took_s: float) -> None:
    started = late.started(method)
    clock.now += took_s
    late.finished(method, started)


def test_a_refused_method_keeps_learning_from_its_probes_and_recovers() -> None:
    clock = Clock()
    late = LateCalls(probe_every_s=1.0, clock=clock)
    for _ in range(3):
        _run(late, clock, "/m/Write", 0.120)  # a cold start: slow
    late.started("/m/Other")  # the server is busy with something else
    clock.now += 0.5
    assert late.refusal("/m/Write", 0.080) == pytest.approx(0.120)
    admitted = 0
    for _ in range(20):  # a call every 0.25 s, each with 80 ms left
        clock.now += 0.25
        if late.refusal("/m/Write", 0.080) is None:
            admitted += 1
            _run(late, clock, "/m/Write", 0.010)  # warm now: fast
    # Refused calls teach nothing, the probes do: after a few, every call is admitted.
    assert late.refusal("/m/Write", 0.080) is None
    assert late.estimate_s("/m/Write") == pytest.approx(0.010)
    assert admitted >= 5


def test_an_idle_server_always_tries() -> None:
    clock = Clock()
    late = LateCalls(clock=clock)
    for _ in range(5):
        _run(late, clock, "/m/Write", 0.120)
    clock.now += 0.010
    assert late.estimate_s("/m/Write") == pytest.approx(0.120)
    assert late.refusal("/m/Write", 0.050) is None  # nothing else in progress
    late.started("/m/Write")  # now one is
    assert late.refusal("/m/Write", 0.050) == pytest.approx(0.120)


def test_the_estimate_decays_with_time() -> None:
    clock = Clock()
    late = LateCalls(horizon_s=10.0, clock=clock)
    for _ in range(5):
        _run(late, clock, "/m/Write", 0.120)
    late.started("/m/Other")
    clock.now += 10.5
    assert late.estimate_s("/m/Write") is None  # stale: no estimate, nothing refused
    assert late.refusal("/m/Write", 0.001) is None


def test_one_slow_call_does_not_move_the_estimate() -> None:
    clock = Clock()
    late = LateCalls(clock=clock)
    for took in (0.005, 0.004, 0.006, 0.500, 0.005):
        _run(late, clock, "/m/Read", took)
    assert late.estimate_s("/m/Read") == pytest.approx(0.005)
    assert LateCalls(clock=clock).estimate_s("/m/Read") is None  # nothing known yet


_first_calls: list[int] = []


async def _slow_first(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    _first_calls.append(1)
    if len(_first_calls) <= 3:
        await asyncio.sleep(0.6)  # cold: the first calls are slow
    return b"warm"


async def test_a_slow_start_does_not_lock_a_method_out() -> None:
    """Three slow first calls, then calls with less time left than they took, one at a
    time: each is answered (an idle server tries), none refused for good."""

    def add(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    SERVICE, {"Cold": grpc.unary_unary_rpc_method_handler(_slow_first)}
                )
            ]
        )

    server, port = create_server(
        "127.0.0.1:0",
        [ServiceBinding(SERVICE, add)],
        reflection_enabled=False,
        shed_late_calls=True,
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            cold = channel.unary_unary(
                f"/{SERVICE}/Cold", request_serializer=_same, response_deserializer=_same
            )
            for _ in range(3):
                assert (await _timed(cold, b"x", 5.0))[0] == grpc.StatusCode.OK
            codes = [(await _timed(cold, b"x", 0.4))[0] for _ in range(10)]
    finally:
        await server.stop(0)
    assert codes == [grpc.StatusCode.OK] * 10, codes
