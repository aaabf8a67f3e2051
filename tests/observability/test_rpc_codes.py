"""The code counted for an RPC is the code its caller receives, whoever sets it: the handler's
domain error (mapped by the RpcInterceptor, outside the observer), an abort from an
interceptor inside the observer (authentication), a blown deadline, an unexpected crash."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from libs.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from libs.observability import Metrics, Observability
from libs.rpc.server import ServiceBinding, create_server

SERVICE = "test.v1.Probe"
Context = grpc.aio.ServicerContext[Any, Any]


async def call(request: bytes, context: Context) -> bytes:
    if request == b"invalid":
        raise InvalidArgument(FieldViolation("x", "bad"))
    if request == b"missing":
        raise NotFound("nothing here")
    if request == b"precondition":
        raise FailedPrecondition("not now")
    if request == b"crash":
        raise RuntimeError("a bug")
    if request == b"abort":
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down")
    if request == b"slow":
        await asyncio.sleep(5)
    return b"ok"


async def watch(request: bytes, context: Context) -> AsyncIterator[bytes]:
    yield b"first"
    if request == b"missing":
        raise NotFound("gone")
    yield b"second"


class Authenticate(grpc.aio.ServerInterceptor):
    """Like the security interceptors: inside the observer, rejects calls without a token."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        behaviour: Any = handler.unary_unary

        async def checked(request: Any, context: Context) -> Any:
            if ("authorization", "Bearer good") not in (context.invocation_metadata() or ()):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "token required")
            return await behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(checked)


def _add(server: grpc.aio.Server) -> None:
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Call": grpc.unary_unary_rpc_method_handler(call),
                    "Watch": grpc.unary_stream_rpc_method_handler(watch),
                },
            )
        ]
    )


def _same(data: bytes) -> bytes:
    return data


@dataclass
class Probe:
    metrics: Metrics
    channel: grpc.aio.Channel

    @property
    def call(self) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        return self.channel.unary_unary(
            f"/{SERVICE}/Call", request_serializer=_same, response_deserializer=_same
        )

    def handled(self, method: str, code: grpc.StatusCode) -> float:
        value = self.metrics.registry.get_sample_value(
            "grpc_server_handled_total",
            {
                "grpc_service": SERVICE,
                "grpc_method": method,
                "grpc_type": "unary" if method == "Call" else "server_stream",
                "grpc_code": code.name,
            },
        )
        return value or 0.0

    async def handled_soon(self, method: str, code: grpc.StatusCode, expected: float) -> float:
        """The server may finish after its caller gave up (deadline): wait a little (up to
        5 s: on a loaded CI machine the cancelled handler can take seconds to be counted)."""
        for _ in range(250):
            if self.handled(method, code) >= expected:
                break
            await asyncio.sleep(0.02)
        return self.handled(method, code)


@pytest.fixture(scope="module")
async def probe() -> AsyncIterator[Probe]:
    metrics = Metrics(process_collectors=False)
    observability = Observability(metrics=metrics)
    server, port = create_server(
        "127.0.0.1:0",
        [ServiceBinding(SERVICE, _add)],
        reflection_enabled=False,
        interceptors=[*observability.server_interceptors, Authenticate()],
    )
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Probe(metrics, channel)
    await server.stop(0)


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (b"fine", grpc.StatusCode.OK),
        (b"invalid", grpc.StatusCode.INVALID_ARGUMENT),
        (b"missing", grpc.StatusCode.NOT_FOUND),
        (b"precondition", grpc.StatusCode.FAILED_PRECONDITION),
        (b"crash", grpc.StatusCode.INTERNAL),
        (b"abort", grpc.StatusCode.RESOURCE_EXHAUSTED),
        (b"slow", grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
async def test_counted_code_is_the_received_code(
    probe: Probe, request_bytes: bytes, code: grpc.StatusCode
) -> None:
    before = probe.handled("Call", code)
    received = grpc.StatusCode.OK
    # Only the slow call is meant to run out of time; the others get room for a loaded CI
    # machine (rendering the crash's traceback log can take longer than 0.3 s there).
    timeout = 0.3 if request_bytes == b"slow" else 10
    try:
        await probe.call(
            request_bytes, metadata=[("authorization", "Bearer good")], timeout=timeout
        )
    except grpc.aio.AioRpcError as error:
        received = error.code()
    assert received == code
    assert await probe.handled_soon("Call", code, before + 1) == before + 1


async def test_calls_rejected_by_authentication_are_counted(probe: Probe) -> None:
    before = probe.handled("Call", grpc.StatusCode.UNAUTHENTICATED)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await probe.call(b"fine", timeout=5)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Counted when the server finishes the call, which may come after the client has its
    # answer.
    assert await probe.handled_soon("Call", grpc.StatusCode.UNAUTHENTICATED, before + 1) == (
        before + 1
    )


async def test_streams_are_counted_when_they_end(probe: Probe) -> None:
    ok, missing = grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND
    before_ok, before_missing = probe.handled("Watch", ok), probe.handled("Watch", missing)
    stream = probe.channel.unary_stream(
        f"/{SERVICE}/Watch", request_serializer=_same, response_deserializer=_same
    )
    assert [r async for r in stream(b"all", timeout=5)] == [b"first", b"second"]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in stream(b"missing", timeout=5):
            pass
    assert error.value.code() == missing
    assert await probe.handled_soon("Watch", ok, before_ok + 1) == before_ok + 1
    assert await probe.handled_soon("Watch", missing, before_missing + 1) == before_missing + 1
