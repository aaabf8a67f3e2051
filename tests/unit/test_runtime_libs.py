"""Runtime libraries: settings from NEXTBEST_* variables, domain errors <-> gRPC status."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import sqlalchemy.exc
import structlog
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from libs.config import ConfigError, Target, load_settings
from libs.errors import (
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
)
from libs.rpc.interceptors import REQUEST_ID_KEY, RpcInterceptor
from libs.rpc.server import ServiceBinding, create_server
from libs.rpc.status import error_from_rpc, status_for

DETAILS_KEY = "grpc-status-details-bin"

# ------------------------------------------------------------------------------------- config


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests see only the NEXTBEST_* variables they set themselves."""
    for name in list(os.environ):
        if name.startswith("NEXTBEST_"):
            monkeypatch.delenv(name)
    yield


def test_settings_default_without_any_variable() -> None:
    settings = load_settings()

    assert settings.target is Target.ALL
    assert settings.port == 50051
    assert settings.decision_budget_ms == 100
    assert settings.log_format == "json"
    assert settings.auto_migrate is None


def test_settings_are_read_from_nextbest_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXTBEST_TARGET", "scoring")
    monkeypatch.setenv("NEXTBEST_PORT", "6001")
    monkeypatch.setenv("NEXTBEST_LOG_LEVEL", "debug")
    monkeypatch.setenv("NEXTBEST_LOG_FORMAT", "console")
    monkeypatch.setenv("NEXTBEST_DECISION_BUDGET_MS", "250")
    monkeypatch.setenv("NEXTBEST_HASH_KEY", "s3cret")
    monkeypatch.setenv("NEXTBEST_REFLECTION", "false")
    monkeypatch.setenv("NEXTBEST_IDENTITY_ADDRESS", "dns:///identity:50052")
    monkeypatch.setenv("PORT", "1")  # not ours: ignored

    settings = load_settings()

    assert settings.target is Target.SCORING
    assert settings.port == 6001
    assert (settings.log_level, settings.log_format) == ("debug", "console")
    assert settings.decision_budget_ms == 250
    assert settings.hash_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.reflection is False
    assert settings.identity_address == "dns:///identity:50052"


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXTBEST_PORT", "6001")

    assert load_settings(port=0).port == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NEXTBEST_PORT", "abc"),
        ("NEXTBEST_PORT", "70000"),
        ("NEXTBEST_LOG_FORMAT", "xml"),
        ("NEXTBEST_LOG_LEVEL", "verbose"),
        ("NEXTBEST_TARGET", "everything"),
        ("NEXTBEST_DECISION_BUDGET_MS", "0"),
        ("NEXTBEST_AUTO_MIGRATE", "perhaps"),
    ],
)
def test_a_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert f"{name}:" in str(caught.value)


def test_every_bad_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXTBEST_PORT", "abc")
    monkeypatch.setenv("NEXTBEST_LOG_FORMAT", "xml")

    with pytest.raises(ConfigError) as caught:
        load_settings()

    message = str(caught.value)
    assert "NEXTBEST_PORT" in message and "NEXTBEST_LOG_FORMAT" in message


def test_database_defaults_to_sqlite_under_data_dir_and_migrates(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NEXTBEST_DATA_DIR", str(tmp_path / "data"))

    settings = load_settings()

    assert settings.data_dir == tmp_path / "data"
    expected = f"sqlite:///{(tmp_path / 'data' / 'nextbest.db').resolve()}"
    assert settings.effective_database_url == expected
    assert settings.migrate_on_start is True


def test_a_relative_data_dir_gives_an_absolute_sqlite_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)

    url = load_settings().effective_database_url

    assert url == f"sqlite:///{tmp_path.resolve() / '.nextbest' / 'nextbest.db'}"


def test_postgresql_does_not_migrate_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+psycopg://nextbest@db:5432/nextbest"
    monkeypatch.setenv("NEXTBEST_DATABASE_URL", url)

    plain = load_settings()
    monkeypatch.setenv("NEXTBEST_AUTO_MIGRATE", "true")
    asked = load_settings()

    assert plain.effective_database_url == url
    assert plain.migrate_on_start is False
    assert asked.migrate_on_start is True


def test_sqlite_migration_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXTBEST_AUTO_MIGRATE", "false")

    assert load_settings().migrate_on_start is False


# -------------------------------------------------------------------------------- status_for


def details_of(status: grpc.Status) -> status_pb2.Status | None:
    for key, value in status.trailing_metadata:
        if key == DETAILS_KEY:
            assert isinstance(value, bytes)
            return status_pb2.Status.FromString(value)
    return None


def test_invalid_argument_carries_a_bad_request_listing_every_field() -> None:
    error = InvalidArgument(
        [FieldViolation("identifiers", "at least one"), FieldViolation("channel", "required")]
    )

    status = status_for(error)

    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert status.details == "identifiers: at least one; channel: required"
    rich = details_of(status)
    assert rich is not None
    assert rich.code == code_pb2.INVALID_ARGUMENT
    assert rich.message == status.details
    assert len(rich.details) == 1
    bad_request = error_details_pb2.BadRequest()
    assert rich.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("identifiers", "at least one"),
        ("channel", "required"),
    ]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NotFound("decision d-1 not found"), grpc.StatusCode.NOT_FOUND),
        (FailedPrecondition("model not validated"), grpc.StatusCode.FAILED_PRECONDITION),
        (Unavailable("context is down"), grpc.StatusCode.UNAVAILABLE),
        (Unimplemented("not yet"), grpc.StatusCode.UNIMPLEMENTED),
        (DomainError("odd"), grpc.StatusCode.UNKNOWN),
    ],
)
def test_each_domain_error_has_its_status_code(error: DomainError, code: grpc.StatusCode) -> None:
    status = status_for(error)

    assert status.code == code
    assert status.details == str(error)
    rich = details_of(status)
    assert rich is not None and rich.code == code.value[0]
    assert list(rich.details) == []  # a BadRequest only for InvalidArgument


def test_an_error_without_message_is_named_by_its_type() -> None:
    assert status_for(NotFound()).details == "NotFound"


# ---------------------------------------------------------------------------- error_from_rpc


class FakeRpcError:
    """What error_from_rpc reads of a failed call: code, details and trailing metadata."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str | None,
        trailing: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        self._code, self._details, self._trailing = code, details, tuple(trailing)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing


def aio_error(status: grpc.Status) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        status.code,
        initial_metadata=grpc.aio.Metadata(),
        trailing_metadata=grpc.aio.Metadata(*status.trailing_metadata),
        details=status.details,
    )


def test_invalid_argument_violations_round_trip_through_a_real_rpc_error() -> None:
    sent = InvalidArgument(
        [
            FieldViolation("events[0].identifiers[1].value", "not a phone number"),
            FieldViolation("events[2].type", "required"),
        ]
    )

    received = error_from_rpc(aio_error(status_for(sent)), "identity")

    assert isinstance(received, InvalidArgument)
    assert received.violations == sent.violations
    assert str(received) == str(sent)


def test_invalid_argument_violations_round_trip_through_a_fake_rpc_error() -> None:
    sent = InvalidArgument(FieldViolation("catalog", "not valid YAML"))
    status = status_for(sent)
    fake = FakeRpcError(status.code, status.details, status.trailing_metadata)

    received = error_from_rpc(fake, "arbitration")  # type: ignore[arg-type]

    assert isinstance(received, InvalidArgument)
    assert received.violations == [FieldViolation("catalog", "not valid YAML")]


def test_invalid_argument_without_details_names_the_peer() -> None:
    fake = FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad request", [("other", "x")])

    received = error_from_rpc(fake, "scoring")  # type: ignore[arg-type]

    assert isinstance(received, InvalidArgument)
    assert received.violations == [FieldViolation("scoring", "bad request")]


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (NotFound("decision d-1 not found"), NotFound),
        (FailedPrecondition("no active model"), FailedPrecondition),
        (Unavailable("database down"), Unavailable),
    ],
)
def test_other_errors_map_back_to_their_domain_error(
    error: DomainError, kind: type[DomainError]
) -> None:
    received = error_from_rpc(aio_error(status_for(error)), "context")

    assert type(received) is kind
    assert str(error) in str(received)


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE],
)
def test_transport_failures_become_unavailable_naming_the_peer(code: grpc.StatusCode) -> None:
    received = error_from_rpc(FakeRpcError(code, None), "scoring")  # type: ignore[arg-type]

    assert isinstance(received, Unavailable)
    assert str(received) == f"scoring: {code.name}: {code.name}"


# ------------------------------------------------------------------------------- interceptor


class Aborted(grpc.aio.AbortError):
    pass


class FakeServicerContext:
    """The part of grpc.aio.ServicerContext the interceptor uses; abort raises, as gRPC's does."""

    def __init__(self, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self._metadata = tuple(metadata)
        self.aborted: tuple[grpc.StatusCode, str, tuple[Any, ...]] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def done(self) -> bool:
        return self.aborted is not None

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> None:
        self.aborted = (code, details, tuple(trailing_metadata))
        raise Aborted()


Behaviour = Callable[[Any, Any], Awaitable[Any]]


async def intercepted(behaviour: Behaviour) -> Behaviour:
    async def continuation(
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(behaviour)

    class Details(grpc.HandlerCallDetails):
        method = "/nextbest.decision.v1.DecisionService/Decide"
        invocation_metadata = ()

    handler = await RpcInterceptor().intercept_service(continuation, Details())
    assert handler is not None and handler.unary_unary is not None
    wrapped: Behaviour = handler.unary_unary
    return wrapped


async def test_interceptor_answers_a_domain_error_with_its_rich_status() -> None:
    async def decide(request: Any, context: Any) -> Any:
        raise InvalidArgument(FieldViolation("channel", "required"))

    context = FakeServicerContext()

    with pytest.raises(Aborted):
        await (await intercepted(decide))(object(), context)

    assert context.aborted is not None
    code, details, trailing = context.aborted
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "channel: required")
    received = error_from_rpc(FakeRpcError(code, details, trailing), "x")  # type: ignore[arg-type]
    assert isinstance(received, InvalidArgument)
    assert received.violations == [FieldViolation("channel", "required")]


async def test_interceptor_hides_unexpected_errors_behind_internal() -> None:
    async def decide(request: Any, context: Any) -> Any:
        raise RuntimeError("secret table name in a traceback")

    context = FakeServicerContext()

    with pytest.raises(Aborted):
        await (await intercepted(decide))(object(), context)

    assert context.aborted == (grpc.StatusCode.INTERNAL, "internal error", ())


def _lost_connection_errors() -> list[BaseException]:
    """What a dropped PostgreSQL connection looks like when it reaches a handler: as the
    driver raises it, as SQLAlchemy wraps it, and wrapped again by a caller."""
    driver = psycopg.errors.AdminShutdown("terminating connection due to administrator command")
    wrapped = sqlalchemy.exc.OperationalError("SELECT 1", {}, driver, connection_invalidated=True)
    invalidated = sqlalchemy.exc.DBAPIError("SELECT 1", {}, driver, connection_invalidated=True)
    rewrapped = RuntimeError("could not record the decision")
    rewrapped.__cause__ = wrapped
    return [driver, wrapped, invalidated, rewrapped]


@pytest.mark.parametrize("error", _lost_connection_errors(), ids=type)
async def test_interceptor_answers_a_lost_database_connection_with_unavailable(
    error: BaseException,
) -> None:
    async def decide(request: Any, context: Any) -> Any:
        raise error

    context = FakeServicerContext()

    with pytest.raises(Aborted):
        await (await intercepted(decide))(object(), context)

    assert context.aborted is not None
    assert context.aborted[0] == grpc.StatusCode.UNAVAILABLE


async def test_interceptor_keeps_other_database_errors_internal() -> None:
    async def decide(request: Any, context: Any) -> Any:
        raise sqlalchemy.exc.ProgrammingError("SELECT x", {}, Exception("no such column"))

    context = FakeServicerContext()

    with pytest.raises(Aborted):
        await (await intercepted(decide))(object(), context)

    assert context.aborted == (grpc.StatusCode.INTERNAL, "internal error", ())


async def test_interceptor_binds_the_callers_request_id() -> None:
    seen: dict[str, Any] = {}

    async def decide(request: Any, context: Any) -> str:
        seen.update(structlog.contextvars.get_contextvars())
        return "ok"

    answer = await (await intercepted(decide))(
        object(), FakeServicerContext([(REQUEST_ID_KEY, "req-123")])
    )

    assert answer == "ok"
    assert seen["request_id"] == "req-123"
    assert seen["rpc"] == "/nextbest.decision.v1.DecisionService/Decide"
    structlog.contextvars.clear_contextvars()


async def test_interceptor_binds_each_calls_own_context_and_drops_the_last_ones() -> None:
    seen: list[dict[str, Any]] = []

    async def decide(request: Any, context: Any) -> str:
        seen.append(structlog.contextvars.get_contextvars())
        structlog.contextvars.bind_contextvars(profile_id="p-1")  # as the orchestrator does
        return "ok"

    handler = await intercepted(decide)
    # Calls in one context, one after another (gRPC gives each its own task; this is worse).
    await handler(object(), FakeServicerContext([(REQUEST_ID_KEY, "req-1")]))
    await handler(object(), FakeServicerContext([(REQUEST_ID_KEY, "req-2")]))
    await handler(object(), FakeServicerContext())

    rpc = "/nextbest.decision.v1.DecisionService/Decide"
    assert seen[0] == {"request_id": "req-1", "rpc": rpc}
    assert seen[1] == {"request_id": "req-2", "rpc": rpc}  # no profile_id of the last call
    assert set(seen[2]) == {"request_id", "rpc"}
    assert len(seen[2]["request_id"]) == 32 and seen[2]["request_id"] not in ("req-1", "req-2")
    structlog.contextvars.clear_contextvars()


def test_rpc_status_helper_agrees_on_the_trailer_key() -> None:
    assert rpc_status.GRPC_DETAILS_METADATA_KEY == DETAILS_KEY


async def _late_abort(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    # A busy event loop: the caller's deadline passes before the handler gets to answer.
    time.sleep(0.3)  # noqa: ASYNC251 - the point: nothing else runs meanwhile
    if request == b"abort":
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too late")
    raise ResourceExhausted("too late")


async def test_an_answer_to_a_call_already_over_is_dropped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def add(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "test.v1.Late", {"Call": grpc.unary_unary_rpc_method_handler(_late_abort)}
                )
            ]
        )

    server, port = create_server(
        "127.0.0.1:0", [ServiceBinding("test.v1.Late", add)], reflection_enabled=False
    )
    await server.start()
    codes: list[grpc.StatusCode] = []
    with structlog.testing.capture_logs() as logged, caplog.at_level(logging.WARNING):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            late: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/test.v1.Late/Call"
            )
            for request in (b"abort", b"raise"):
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await late(request, timeout=0.05)
                codes.append(failed.value.code())
        await server.stop(5)  # the handlers are done
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2
    assert [e for e in logged if e["log_level"] in ("error", "critical")] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
