"""The one server interceptor every target installs.

It binds a request id (from ``x-request-id`` metadata, or a new one) and the method name to
structlog's contextvars for the duration of the call, and maps domain errors to gRPC status
codes with google.rpc details. Anything unexpected is logged with its traceback and answered
with a bare INTERNAL, never a stack trace to the caller.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

from libs.errors import DomainError
from libs.logging import get_logger
from libs.rpc.status import status_for

REQUEST_ID_KEY = "x-request-id"
_log = get_logger("nextbest.rpc")


def _request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: Exception) -> None:
    if isinstance(error, DomainError):
        status = status_for(error)
        await context.abort(status.code, status.details, status.trailing_metadata)
    _log.exception("unhandled error")
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


class RpcInterceptor(grpc.aio.ServerInterceptor):
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
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _wrap_unary(behaviour: Any, method: str) -> Any:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=_request_id(context), rpc=method)
        try:
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
