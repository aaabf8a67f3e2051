"""What every gRPC client adapter shares: deadline from the caller, errors back to domain."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from libs.rpc.status import error_from_rpc

ResponseT = TypeVar("ResponseT")

# Absolute time.monotonic() deadline of the request being served, set by the orchestrator so
# every hop gets only what is left of the budget.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "nextbest_deadline", default=None
)

DEFAULT_TIMEOUT_S = 5.0


def set_deadline(deadline: float | None) -> None:
    _deadline.set(deadline)


def remaining_s(default: float = DEFAULT_TIMEOUT_S) -> float:
    deadline = _deadline.get()
    if deadline is None:
        return default
    return max(deadline - time.monotonic(), 0.001)


async def call_peer(
    peer: str, method: Callable[..., Awaitable[ResponseT]], request: object
) -> ResponseT:
    """Call ``method`` with the remaining deadline; a failure becomes a domain error."""
    try:
        return await method(request, timeout=remaining_s())
    except grpc.aio.AioRpcError as error:
        raise error_from_rpc(error, peer) from error
