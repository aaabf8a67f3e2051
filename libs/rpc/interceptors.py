"""The one server interceptor every target installs.

It binds a request id (from ``x-request-id`` metadata, or a new one) and the method name to
structlog's contextvars for the duration of the call, and maps domain errors to gRPC status
codes with google.rpc details. A lost database connection is UNAVAILABLE (retryable).
Anything unexpected is logged with its traceback and answered with a bare INTERNAL, never a
stack trace to the caller.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import statistics
import time
from collections import deque
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


def _marking_deserializer(
    deserializer: Callable[[bytes], Any] | None, limit: int | None
) -> Callable[[bytes], Any] | None:
    """``deserializer`` made to return a marker (_TooLarge, _Undecodable) instead of failing,
    so that the handler answers with the field at fault rather than gRPC's own error."""
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
                request_deserializer=_marking_deserializer(handler.request_deserializer, limit),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method),
                request_deserializer=_marking_deserializer(handler.request_deserializer, limit),
                response_serializer=handler.response_serializer,
            )
        return handler


async def _answer_error(context: grpc.aio.ServicerContext[Any, Any], error: Exception) -> None:
    """Answer ``error`` with its status, unless the call is over already.

    A call whose deadline passed (or whose caller left) while it ran cannot be answered: an
    abort then fails inside gRPC (ExecuteBatchError, then UsageError for a second one). That
    is no fault of the server's, so the call ends quietly, as gRPC ends a cancelled one.
    """
    if not context.done():
        try:
            await _abort(context, error)
        except grpc.aio.AbortError:
            raise
        except Exception:
            if not context.done():
                raise
    _log.debug("call over before it was answered", error=type(error).__name__)
    raise asyncio.CancelledError


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
            await _answer_error(context, error)

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
            await _answer_error(context, error)

    return call


class LateCalls:
    """Which calls to refuse for lack of time: what DeadlineGuard learns and decides, apart
    from gRPC so that it runs on any clock.

    A method's usual duration is the median of its last ``samples`` calls that ended within
    ``horizon_s``: one slow call (a cold first one, a hiccup) does not move a median, and an
    estimate whose calls are all older than the horizon is no estimate. It is learnt only
    from the calls that ran, so a method being refused still runs now and then: one call per
    ``probe_every_s`` goes through whatever its time left (its duration keeps the estimate
    true once the server has caught up).

    A call is refused only when all of these hold: its method has an estimate (from at least
    ``min_samples`` recent calls); it has less time left than that; the server is behind
    (another call is in progress); and it is not its method's probe. An idle server always
    tries: a call that comes alone has waited behind nothing.
    """

    def __init__(
        self,
        *,
        samples: int = 16,
        min_samples: int = 3,
        horizon_s: float = 10.0,
        probe_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._samples = samples
        self._min_samples = min_samples
        self._horizon_s = horizon_s
        self._probe_every_s = probe_every_s
        self._clock = clock
        self._durations: dict[str, deque[tuple[float, float]]] = {}
        self._last_start: dict[str, float] = {}
        self.in_progress = 0

    def estimate_s(self, method: str) -> float | None:
        """What a call of ``method`` usually takes, or None when too little is known now."""
        now = self._clock()
        recent = [
            took
            for ended, took in self._durations.get(method, ())
            if now - ended <= self._horizon_s
        ]
        if len(recent) < self._min_samples:
            return None
        return statistics.median(recent)

    def refusal(self, method: str, remaining_s: float) -> float | None:
        """The estimate that ``remaining_s`` falls short of, if the call is to be refused;
        None if it is to run (then ``started`` and ``finished`` must be called)."""
        now = self._clock()
        if self.in_progress == 0:
            return None
        if now - self._last_start.get(method, -math.inf) >= self._probe_every_s:
            return None
        typical = self.estimate_s(method)
        if typical is None or remaining_s >= typical:
            return None
        return typical

    def started(self, method: str) -> float:
        now = self._clock()
        self._last_start[method] = now
        self.in_progress += 1
        return now

    def finished(self, method: str, started: float) -> None:
        now = self._clock()
        self.in_progress -= 1
        durations = self._durations.get(method)
        if durations is None:
            durations = self._durations[method] = deque(maxlen=self._samples)
        durations.append((now, now - started))


class DeadlineGuard(grpc.aio.ServerInterceptor):
    """Refuse, before any work, a unary call that cannot be answered in time.

    Less than ``min_deadline_s`` left: DEADLINE_EXCEEDED (its caller is giving up). With
    ``adaptive``, less time left than this method usually takes while the server is behind
    (``LateCalls``): the call waited in the queue and working on it would only delay the calls
    behind it: RESOURCE_EXHAUSTED at once, so that the server's time goes to calls that can
    still make their deadline.

    The time left tells that a call waited; the calls in progress, that the server is behind
    (a call that comes alone is always tried, so that a method whose estimate is too high
    runs again and learns it). A backlog that waits inside gRPC's core while nothing is in
    progress here (the embedded hub's decision path barely awaits) is for gRPC's own
    ``maximum_concurrent_rpcs`` (see create_server). Installed innermost, so what it refuses
    is traced and counted like any other answer.
    """

    def __init__(
        self, min_deadline_s: float, adaptive: bool = True, late: LateCalls | None = None
    ) -> None:
        self.min_deadline_s = min_deadline_s
        self.adaptive = adaptive
        self.late = late or LateCalls()
        self.refused = 0
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
        late = self.late

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            remaining = context.time_remaining()
            if remaining is not None:
                if remaining < self.min_deadline_s:
                    self.refused += 1
                    await context.abort(
                        grpc.StatusCode.DEADLINE_EXCEEDED, "too little time left to start"
                    )
                typical = late.refusal(method, remaining) if self.adaptive else None
                if typical is not None:
                    self.refused += 1
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"overloaded: {remaining * 1000:.1f} ms left, this call takes about "
                        f"{typical * 1000:.1f} ms; retry with backoff",
                    )
            started = late.started(method)
            try:
                return await behaviour(request, context)
            finally:
                late.finished(method, started)

        return call
