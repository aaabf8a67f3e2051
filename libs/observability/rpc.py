"""The server interceptor that counts and times every RPC and binds the trace id to the logs.

Where it sits: ``create_server`` installs ``[RpcInterceptor(), *interceptors]`` and the first
interceptor is the outermost, so this one runs *inside* the RpcInterceptor. It therefore
sees the handler's raw domain exceptions, before the RpcInterceptor turns them into
``context.abort(...)``; it derives the final status code the same way the RpcInterceptor
does (``libs.rpc.status.status_for``), so the code it counts is the code the caller gets:

- the handler returns: ``OK`` (or what it set with ``context.set_code``);
- it raises a ``DomainError``: ``status_for(error).code`` (INVALID_ARGUMENT, NOT_FOUND...);
- it (or an interceptor inside this one, e.g. authentication) aborts: ``context.code()``;
- the call is cancelled (or a stream closed early): DEADLINE_EXCEEDED when its deadline
  passed, else CANCELLED;
- anything else: INTERNAL, which is what the RpcInterceptor answers.

When tracing, it runs inside OpenTelemetry's server interceptor: it binds the span's trace
id into structlog's contextvars (after the RpcInterceptor cleared them for the call; each
RPC runs in its own task, so the binding lasts for that RPC only) and sets the final code
on the span, which OpenTelemetry's interceptor cannot see for the same ordering reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, format_trace_id
from prometheus_client import Counter, Histogram

from libs.errors import DomainError
from libs.observability.metrics import Metrics
from libs.rpc.interceptors import WrappedHandlers
from libs.rpc.status import status_for

Context = grpc.aio.ServicerContext[Any, Any]
RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code"  # the attribute OpenTelemetry's spans use


def final_code(error: BaseException | None, context: Context) -> grpc.StatusCode:
    """The status code the caller receives for a call that ended with ``error``."""
    if error is None:
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK
    if isinstance(error, DomainError):
        return status_for(error).code
    if isinstance(error, grpc.aio.AbortError):
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


@dataclass
class _MethodMetrics:
    """The metric children of one method, resolved once (labels() takes a lock)."""

    labels: tuple[str, str, str]
    started: Counter
    seconds: Histogram
    handled_family: Counter
    handled: dict[grpc.StatusCode, Counter] = field(default_factory=dict)

    def done(self, code: grpc.StatusCode, elapsed_s: float) -> None:
        counter = self.handled.get(code)
        if counter is None:
            counter = self.handled[code] = self.handled_family.labels(*self.labels, code.name)
        counter.inc()
        self.seconds.observe(elapsed_s)


def _split(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or "unknown"


# Server spans are errors only for these codes (OpenTelemetry's semantic conventions for
# gRPC): INVALID_ARGUMENT, NOT_FOUND and the like are the caller's, not the server's.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def _traced() -> Span | None:
    """The RPC's server span (OpenTelemetry's interceptor runs outside this one), its trace
    id bound into the structlog context."""
    span = trace.get_current_span()
    span_context = span.get_span_context()
    if not span_context.is_valid:
        return None
    structlog.contextvars.bind_contextvars(trace_id=format_trace_id(span_context.trace_id))
    return span


def _set_code(span: Span, code: grpc.StatusCode) -> None:
    """The final code on the span: OpenTelemetry's interceptor cannot see it, since the
    RpcInterceptor (outside it) is the one that aborts with it."""
    span.set_attribute(RPC_GRPC_STATUS_CODE, code.value[0])
    if code in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, code.name))


class RpcObserver(grpc.aio.ServerInterceptor):
    """RED metrics per method (when ``metrics``) and the trace id in the logs (when
    ``bind_trace``: install it inside OpenTelemetry's server interceptor)."""

    def __init__(self, metrics: Metrics | None, *, bind_trace: bool = False) -> None:
        self._metrics = metrics
        self._bind_trace = bind_trace
        self._methods: dict[tuple[str, str], _MethodMetrics] = {}
        self._wrapped = WrappedHandlers()

    def _method(self, full_method: str, kind: str) -> _MethodMetrics | None:
        if self._metrics is None:
            return None
        key = (full_method, kind)
        found = self._methods.get(key)
        if found is None:
            service, method = _split(full_method)
            labels = (service, method, kind)
            found = self._methods[key] = _MethodMetrics(
                labels,
                self._metrics.rpc_started.labels(*labels),
                self._metrics.rpc_seconds.labels(*labels),
                self._metrics.rpc_handled,
            )
        return found

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED, nothing to count
            return None
        return self._wrapped.get(handler_call_details.method, handler, self._wrap)

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        decode, encode = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, self._method(method, "unary")),
                request_deserializer=decode,
                response_serializer=encode,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, self._method(method, "server_stream")),
                request_deserializer=decode,
                response_serializer=encode,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, self._method(method, "client_stream")),
                request_deserializer=decode,
                response_serializer=encode,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(handler.stream_stream, self._method(method, "bidi_stream")),
                request_deserializer=decode,
                response_serializer=encode,
            )
        return handler

    def _unary(self, behaviour: Any, recorded: _MethodMetrics | None) -> Any:
        bind_trace = self._bind_trace

        async def call(request: Any, context: Context) -> Any:
            span = _traced() if bind_trace else None
            if recorded is not None:
                recorded.started.inc()
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                return await behaviour(request, context)
            except BaseException as raised:
                error = raised
                raise
            finally:
                _done(recorded, span, final_code(error, context), started)

        return call

    def _stream(self, behaviour: Any, recorded: _MethodMetrics | None) -> Any:
        bind_trace = self._bind_trace

        async def call(request: Any, context: Context) -> AsyncIterator[Any]:
            span = _traced() if bind_trace else None
            if recorded is not None:
                recorded.started.inc()
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                async for response in behaviour(request, context):
                    yield response
            except BaseException as raised:
                error = raised
                raise
            finally:
                _done(recorded, span, final_code(error, context), started)

        return call


def _done(
    recorded: _MethodMetrics | None, span: Span | None, code: grpc.StatusCode, started: float
) -> None:
    if recorded is not None:
        recorded.done(code, time.perf_counter() - started)
    if span is not None:
        _set_code(span, code)
