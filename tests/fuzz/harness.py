"""The real embedded hub for fuzzing: one server in a background thread, called through
blocking stubs, so that hypothesis drives plain synchronous tests.

Why a thread and not the e2e ``hub`` fixture: hypothesis runs hundreds of examples per test
and needs a synchronous body; the server gets its own event loop in a thread and the test
thread blocks on ordinary gRPC calls. One server serves the whole fuzz package.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from libs.config import Settings, Target
from libs.storage.database import sync_url
from services.app import BuiltTarget, build_target
from services.demo.seed import seed_demo
from services.tables import metadata

# The codes a request may end with on purpose. Anything else (INTERNAL, UNKNOWN...) is a bug.
DELIBERATE = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ALREADY_EXISTS,
        # An RPC the proto declares but this build does not serve yet.
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


@dataclass(frozen=True)
class Outcome:
    """What the server answered: its code, message and google.rpc.BadRequest violations."""

    code: grpc.StatusCode
    details: str
    violations: tuple[tuple[str, str], ...]
    response: Any = None


def _identity(data: bytes) -> bytes:
    return data


def outcome_of(call: Callable[[], Any]) -> Outcome:
    try:
        response = call()
    except grpc.RpcError as error:
        return _failed(error)
    return Outcome(grpc.StatusCode.OK, "", (), response)


def _failed(error: grpc.RpcError) -> Outcome:
    status: status_pb2.Status | None = rpc_status.from_call(error)
    violations: list[tuple[str, str]] = []
    for detail in status.details if status is not None else ():
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            violations.extend((v.field, v.description) for v in bad_request.field_violations)
    return Outcome(error.code(), error.details() or "", tuple(violations))


class FuzzHub:
    """The embedded hub (SQLite, port 0, demo catalog and model) running in its own thread."""

    def __init__(self, workdir: Path) -> None:
        self.settings = Settings(target=Target.ALL, host="127.0.0.1", port=0, data_dir=workdir)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._built: BuiltTarget | None = None
        self.address = ""
        self.channel: grpc.Channel | None = None
        self._engine: Engine | None = None

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=120)
        self.channel = grpc.insecure_channel(self.address)
        self._engine = create_engine(sync_url(self.settings.effective_database_url))

    async def _start(self) -> None:
        built = build_target(self.settings)
        await seed_demo(built.services)
        await built.warm_up()
        await built.server.start()
        self._built = built
        self.address = f"127.0.0.1:{built.port}"

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self._engine is not None:
            self._engine.dispose()
        if self._built is not None:
            asyncio.run_coroutine_threadsafe(self._stop(self._built), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    @staticmethod
    async def _stop(built: BuiltTarget) -> None:
        await built.server.stop(0)
        await built.close()

    def raw(self, method: str, payload: bytes, timeout: float = 10.0) -> Outcome:
        """Call ``/package.Service/Method`` with bytes built by hand (e.g. invalid UTF-8)."""
        assert self.channel is not None
        call = self.channel.unary_unary(
            method, request_serializer=_identity, response_deserializer=_identity
        )
        return outcome_of(lambda: call(payload, timeout=timeout))

    def healthy(self) -> bool:
        assert self.channel is not None
        stub = health_pb2_grpc.HealthStub(self.channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    def settle(self) -> None:
        """Wait until the decisions answered so far are stored (they are written behind
        the answer: services/orchestrator/outbox.py)."""
        assert self._built is not None and self._built.services.decisions is not None
        flushed = self._built.services.decisions.flush_decisions(10.0)
        asyncio.run_coroutine_threadsafe(flushed, self._loop).result(30)

    def row_counts(self) -> dict[str, int]:
        """Rows per table of every service, in one round trip (decisions answered so far
        stored first)."""
        assert self._engine is not None
        self.settle()
        query = " UNION ALL ".join(
            f"SELECT '{table.name}', COUNT(*) FROM {table.name}" for table in metadata.sorted_tables
        )
        with self._engine.connect() as connection:
            return {name: int(count) for name, count in connection.execute(text(query))}


def checked(hub: FuzzHub, call: Callable[[], Outcome]) -> Outcome:
    """Run ``call`` and hold the server to the bad-input contract: a deliberate status, a
    field named when the argument is invalid, and nothing stored when it is refused."""
    before = hub.row_counts()
    outcome = call()
    assert outcome.code in DELIBERATE, f"{outcome.code.name}: {outcome.details}"
    if outcome.code == grpc.StatusCode.INVALID_ARGUMENT:
        assert outcome.violations, f"no google.rpc.BadRequest detail: {outcome.details}"
        assert all(field for field, _ in outcome.violations), outcome.violations
    if outcome.code != grpc.StatusCode.OK:
        assert hub.row_counts() == before, f"refused ({outcome.details}) but stored rows"
    return outcome


def unary(hub: FuzzHub, method: str, request: Any, response_type: Any) -> Outcome:
    """Call a unary ``/package.Service/Method`` with a generated message."""
    assert hub.channel is not None
    call = hub.channel.unary_unary(
        method,
        request_serializer=type(request).SerializeToString,
        response_deserializer=response_type.FromString,
    )
    return outcome_of(lambda: call(request, timeout=10))
