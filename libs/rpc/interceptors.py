"""The one server interceptor every target installs.

It binds a request id (from ``x-request-id`` metadata, or a new one) and the method name to
structlog's contextvars for the duration of the call, and maps domain errors to gRPC status
codes with google.rpc details. A lost database connection is UNAVAILABLE (retryable).
Anything unexpected is logged with its traceback and answered with a bare INTERNAL, never a
stack trace to the caller.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from libs.errors import DomainError, FieldViolation, InvalidArgument, ResourceExhausted
from libs.logging import get_logger
from libs.rpc.status import status_for
from libs.rpc.wire import undecodable_field
from libs.storage.errors import is_connection_lost

REQUEST_ID_KEY = "x-request-id"
_log = get_logger("nextbest.rpc")


def _request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    # 32 random hex digits, as uuid4().hex without building a UUID (once per call).
    return os.urandom(16).hex()


Wrap = Callable[[str, "grpc.RpcMethodHandler[Any, Any]"], "grpc.RpcMethodHandler[Any, Any]"]


class WrappedHandlers:
    """The wrapped handler of each method, built once instead of on every call.

    gRPC asks each server interceptor for the handler of every call; the handlers behind
    them are the same objects call after call, so what an interceptor builds around one is
    kept and given again as long as the handler under it is the same object (an inner
    interceptor that builds a new one per call only costs the cache a miss). Methods are
    the registered ones only (an unknown method has no handler), so the cache is bounded.
    """

    def __init__(self) -> None:
        self._by_method: dict[
            str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]
        ] = {}

    def get(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any], wrap: Wrap
    ) -> grpc.RpcMethodHandler[Any, Any]:
        found = self._by_method.get(method)
        if found is not None and found[0] is handler:
            return found[1]
        wrapped = wrap(method, handler)
        self._by_method[method] = (handler, wrapped)
        return wrapped


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: Exception) -> None:
    if isinstance(error, DomainError):
        status = status_for(error)
        await context.abort(status.code, status.details, status.trailing_metadata)
    if isinstance(error, NotImplementedError):
        # The generated servicer base of an RPC the proto declares but no servicer serves yet.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not implemented by this server")
    if is_connection_lost(error):
        # Not a bug: the database went away (restart, failover, a killed backend) or refused
        # a connection; the pool replaces the connection, so the caller may retry.
        _log.warning("database unavailable", error=type(error).__name__)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "database unavailable; retry")
    _log.exception("unhandled error")
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


@dataclass(frozen=True)
class _Undecodable:
    """Stands for a request whose bytes did not parse; the handler wrapper rejects it.

    gRPC answers a deserializer that raises with UNKNOWN and no detail; handing this marker
    to the wrapped handler instead lets the call end as INVALID_ARGUMENT naming the field.
    """

    violation: FieldViolation


@dataclass(frozen=True)
class _TooLarge:
    """Stands for a request over its method's size limit (not parsed at all)."""

    size: int
    limit: int


def _tolerant(
    deserializer: Callable[[bytes], Any] | None, limit: int | None
) -> Callable[[bytes], Any] | None:
    message_type = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_type, "DESCRIPTOR", None)
    if limit is None and (deserializer is None or descriptor is None):
        return deserializer

    def deserialize(data: bytes) -> Any:
        if limit is not None and len(data) > limit:
            return _TooLarge(len(data), limit)
        if deserializer is None:
            return data
        try:
            return deserializer(data)
        except Exception:
            if descriptor is None:
                raise
            return _Undecodable(undecodable_field(descriptor, data))

    return deserialize


def _reject_undecodable(request: Any) -> None:
    if isinstance(request, _Undecodable):
        raise InvalidArgument(request.violation)
    if isinstance(request, _TooLarge):
        raise ResourceExhausted(
            f"request of {request.size} bytes is over this method's limit of {request.limit}"
        )


class RpcInterceptor(grpc.aio.ServerInterceptor):
    """``message_limits``: per method path, the largest request it takes, when smaller than
    the server's transport limit (which must admit the largest upload of any method)."""

    def __init__(
        self, default_limit: int | None = None, message_limits: Mapping[str, int] | None = None
    ) -> None:
        self._default_limit = default_limit
        self._limits = dict(message_limits or {})
        self._wrapped = WrappedHandlers()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return self._wrapped.get(handler_call_details.method, handler, self._wrap)

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        limit = self._limits.get(method, self._default_limit)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method),
                request_deserializer=_tolerant(handler.request_deserializer, limit),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method),
                request_deserializer=_tolerant(handler.request_deserializer, limit),
                response_serializer=handler.response_serializer,
            )
        return handler


def _wrap_unary(behaviour: Any, method: str) -> Any:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=_request_id(context), rpc=method)
        try:
            _reject_undecodable(request)
            return await behaviour(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, error)

    return call


def _wrap_stream(behaviour: Any, method: str) -> Any:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=_request_id(context), rpc=method)
        try:
            _reject_undecodable(request)
            responses = behaviour(request, context)
            if inspect.isawaitable(responses):
                # A handler that writes with context.write() (grpc.health.v1 Watch does).
                await responses
                return
            async for response in responses:
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, error)

    return call


class DeadlineGuard(grpc.aio.ServerInterceptor):
    """Refuse, before any work, a unary call that cannot be answered in time.

    Less than ``min_deadline_s`` left: DEADLINE_EXCEEDED (its caller is giving up). Less time
    left than this method usually takes (a moving average of its recent durations): the
    server is behind, the call waited in its queue, and working on it would only delay the
    calls behind it: RESOURCE_EXHAUSTED at once, so that the server's time goes to calls
    that can still make their deadline.

    Why not count calls in flight only: the embedded hub's decision path barely awaits
    (SQLite answers in microseconds), so its backlog waits inside gRPC's core, where neither
    an interceptor nor gRPC's own ``maximum_concurrent_rpcs`` (also set, see create_server)
    sees it; the time left is what tells. Installed innermost, so what it refuses is traced
    and counted like any other answer.
    """

    _WEIGHT = 0.1  # of the newest duration in the moving average

    def __init__(self, min_deadline_s: float, adaptive: bool = True) -> None:
        self.min_deadline_s = min_deadline_s
        self.adaptive = adaptive
        self.refused = 0
        self.typical_s: dict[str, float] = {}
        self._wrapped = WrappedHandlers()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        if self.min_deadline_s <= 0 and not self.adaptive:
            return handler
        return self._wrapped.get(handler_call_details.method, handler, self._wrap)

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(
            self._guard(handler.unary_unary, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _guard(self, behaviour: Any, method: str) -> Any:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            remaining = context.time_remaining()
            if remaining is not None:
                if remaining < self.min_deadline_s:
                    self.refused += 1
                    await context.abort(
                        grpc.StatusCode.DEADLINE_EXCEEDED, "too little time left to start"
                    )
                typical = self.typical_s.get(method, 0.0)
                if self.adaptive and remaining < typical:
                    self.refused += 1
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"overloaded: {remaining * 1000:.1f} ms left, this call takes about "
                        f"{typical * 1000:.1f} ms; retry with backoff",
                    )
            started = time.perf_counter()
            try:
                return await behaviour(request, context)
            finally:
                took = time.perf_counter() - started
                before = self.typical_s.get(method, took)
                self.typical_s[method] = before + self._WEIGHT * (took - before)

        return call
