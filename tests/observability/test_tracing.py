"""Traces across hops: two real grpc.aio servers in-process, the front one calling the peer
through a channel built with the client interceptors; then the whole mesh (every target its
own server) deciding once. Spans go to the SDK's InMemorySpanExporter."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_trace_id

from libs.config import Settings, Target
from libs.errors import NotFound
from libs.logging import configure_logging, get_logger
from libs.observability import Observability, tracing
from libs.rpc.channels import open_channel
from libs.rpc.server import ServiceBinding, create_server
from services.app import BuiltTarget, build_target
from services.arbitration.catalog import parse_catalog_yaml
from services.demo.seed import DEMO_CATALOG, demo_features
from services.demo.train import DEMO_MODEL_NAME, DEMO_MODEL_VERSION
from tools.launch import free_port

Context = grpc.aio.ServicerContext[Any, Any]
_log = get_logger("tests.tracing")


@pytest.fixture(autouse=True)
def _service_names_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The process's real JSON log pipeline (configure_logging), copied into a buffer."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configure_logging("info", "json")
    buffer = io.StringIO()
    copy = logging.StreamHandler(buffer)
    copy.setFormatter(root.handlers[0].formatter)
    root.addHandler(copy)
    try:
        yield buffer
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]


def binding(service: str, call: Any) -> ServiceBinding:
    def add(server: grpc.aio.Server) -> None:
        handler = grpc.method_handlers_generic_handler(
            service, {"Call": grpc.unary_unary_rpc_method_handler(call)}
        )
        server.add_generic_rpc_handlers([handler])

    return ServiceBinding(service, add)


def _same(data: bytes) -> bytes:
    return data


def raw(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(method, request_serializer=_same, response_deserializer=_same)


def spans_by(spans: tuple[ReadableSpan, ...], name: str, kind: SpanKind) -> ReadableSpan:
    found = [s for s in spans if s.name == name and s.kind == kind]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    return found[0]


async def test_one_trace_across_two_servers_and_trace_id_in_logs(
    tmp_path: Path, json_logs: io.StringIO
) -> None:
    exporter = InMemorySpanExporter()
    front_obs = Observability.from_settings(
        Settings(target=Target.ORCHESTRATOR, data_dir=tmp_path, tracing=True),
        span_exporter=exporter,
    )
    peer_obs = Observability.from_settings(
        Settings(target=Target.SCORING, data_dir=tmp_path, tracing=True), span_exporter=exporter
    )

    async def peer_call(request: bytes, context: Context) -> bytes:
        _log.info("peer handling")
        if request == b"missing":
            raise NotFound("no such thing")
        return b"peer:" + request

    peer, peer_port = create_server(
        "127.0.0.1:0",
        [binding("test.v1.Peer", peer_call)],
        reflection_enabled=False,
        interceptors=peer_obs.server_interceptors,
    )
    await peer.start()
    to_peer = open_channel(f"127.0.0.1:{peer_port}", None, front_obs.client_interceptors)

    async def front_call(request: bytes, context: Context) -> bytes:
        _log.info("front handling")
        try:
            answer = await raw(to_peer, "/test.v1.Peer/Call")(request, timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code().name.encode()
        return answer

    front, front_port = create_server(
        "127.0.0.1:0",
        [binding("test.v1.Front", front_call)],
        reflection_enabled=False,
        interceptors=front_obs.server_interceptors,
    )
    await front.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{front_port}") as channel:
            call = raw(channel, "/test.v1.Front/Call")
            assert await call(b"hello", timeout=5) == b"peer:hello"
            assert front_obs.tracer_provider is not None
            front_obs.tracer_provider.force_flush()
            assert peer_obs.tracer_provider is not None
            peer_obs.tracer_provider.force_flush()
            spans = exporter.get_finished_spans()

            front_server = spans_by(spans, "/test.v1.Front/Call", SpanKind.SERVER)
            front_client = spans_by(spans, "/test.v1.Peer/Call", SpanKind.CLIENT)
            peer_server = spans_by(spans, "/test.v1.Peer/Call", SpanKind.SERVER)
            trace_id = front_server.context.trace_id
            assert front_client.context.trace_id == trace_id
            assert peer_server.context.trace_id == trace_id
            assert front_server.parent is None  # the caller sent no trace context
            assert front_client.parent is not None and peer_server.parent is not None
            assert front_client.parent.span_id == front_server.context.span_id
            assert peer_server.parent.span_id == front_client.context.span_id
            assert peer_server.parent.is_remote
            assert front_server.resource.attributes["service.name"] == "nextbest-orchestrator"
            assert peer_server.resource.attributes["service.name"] == "nextbest-scoring"

            logged = {line["event"]: line for line in lines(json_logs)}
            hex_id = format_trace_id(trace_id)
            assert logged["front handling"]["trace_id"] == hex_id
            assert logged["peer handling"]["trace_id"] == hex_id
            assert logged["peer handling"]["request_id"]  # bound beside it, not instead

            # A failure in the peer: its span carries the final code the RpcInterceptor
            # sent (outside OpenTelemetry's interceptor), the caller's span the received one.
            exporter.clear()
            assert await call(b"missing", timeout=5) == b"NOT_FOUND"
            front_obs.tracer_provider.force_flush()
            peer_obs.tracer_provider.force_flush()
            spans = exporter.get_finished_spans()
            peer_server = spans_by(spans, "/test.v1.Peer/Call", SpanKind.SERVER)
            front_client = spans_by(spans, "/test.v1.Peer/Call", SpanKind.CLIENT)
            code = grpc.StatusCode.NOT_FOUND.value[0]
            assert peer_server.attributes is not None and front_client.attributes is not None
            assert peer_server.attributes["rpc.grpc.status_code"] == code
            assert front_client.attributes["rpc.grpc.status_code"] == code
            assert front_client.status.status_code == StatusCode.ERROR
            assert peer_server.status.status_code == StatusCode.UNSET  # the caller's mistake
    finally:
        await front.stop(0)
        await to_peer.close()
        await peer.stop(0)
        front_obs.stop()
        peer_obs.stop()


@pytest.fixture
async def mesh(
    tmp_path: Path, demo_model_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[list[BuiltTarget], InMemorySpanExporter]]:
    """Every target its own server in this process, built as `nextbest serve` builds them,
    the spans of all of them going to one in-memory exporter."""
    exporter = InMemorySpanExporter()
    monkeypatch.setattr(tracing, "otlp_exporter", lambda: exporter)
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "data_dir": tmp_path,
        "tracing": True,
        "decision_budget_ms": 5000,
    }
    built: list[BuiltTarget] = []
    addresses: dict[str, Any] = {}
    try:
        for target in (Target.IDENTITY, Target.CONTEXT, Target.SCORING, Target.ARBITRATION):
            peer = build_target(Settings(target=target, port=0, **base))
            built.append(peer)
            addresses[f"{target.value}_address"] = f"127.0.0.1:{peer.port}"
        arbitration, scoring = built[3].services.arbitration, built[2].services.scoring
        assert arbitration is not None and scoring is not None
        await arbitration.apply_catalog(parse_catalog_yaml(DEMO_CATALOG.read_text()))
        await scoring.register_model(
            DEMO_MODEL_NAME, DEMO_MODEL_VERSION, demo_model_bytes, demo_features(), activate=True
        )
        # The orchestrator with metrics too: both share the one RPC observer.
        orchestrator = Settings(
            target=Target.ORCHESTRATOR, port=0, metrics_port=free_port(), **base, **addresses
        )
        built.append(build_target(orchestrator))
        for one in built:
            await one.warm_up()
            one.observability.start()
            await one.server.start()
        yield built, exporter
    finally:
        for one in reversed(built):
            await one.server.stop(0)
            await one.close()


async def test_a_decide_in_the_mesh_is_one_trace(
    mesh: tuple[list[BuiltTarget], InMemorySpanExporter],
) -> None:
    built, exporter = mesh
    orchestrator = built[-1]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{orchestrator.port}") as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        exporter.clear()
        response = await stub.Decide(
            decision_pb2.DecideRequest(
                identifiers=[decision_pb2.Identifier(type="cookie_id", value="c-traced")],
                channel="web",
            ),
            timeout=10,
        )
    assert response.decision.action.action_id and not response.decision.degraded
    assert orchestrator.services.decisions is not None
    await orchestrator.services.decisions.flush_decisions()
    for one in built:
        assert one.observability.tracer_provider is not None
        one.observability.tracer_provider.force_flush()
    every_span = exporter.get_finished_spans()
    record = spans_by(
        every_span, "/nextbest.context.v1.ContextService/RecordDecisions", SpanKind.SERVER
    )
    spans = tuple(s for s in every_span if s.context.trace_id != record.context.trace_id)

    root = spans_by(spans, "/nextbest.decision.v1.DecisionService/Decide", SpanKind.SERVER)
    assert root.parent is None
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    # The decision is stored behind the answer by the outbox, in a trace of its own.
    assert record.context.trace_id != root.context.trace_id
    by_id = {s.context.span_id: s for s in spans}
    servers = [s for s in spans if s.kind == SpanKind.SERVER and s is not root]
    services = {str(s.resource.attributes["service.name"]) for s in servers}
    # A first-seen cookie has no stored context to read; the decision is stored by the
    # outbox after the answer, in a trace of its own (checked below).
    assert services == {"nextbest-identity", "nextbest-scoring", "nextbest-arbitration"}
    for server in servers:
        # Each peer's server span is the child of the orchestrator's client span for it,
        # itself the child of the Decide span.
        assert server.parent is not None
        client = by_id[server.parent.span_id]
        assert client.kind == SpanKind.CLIENT and client.name == server.name
        assert client.resource.attributes["service.name"] == "nextbest-orchestrator"
        assert client.parent is not None and client.parent.span_id == root.context.span_id

    registry = orchestrator.observability.registry
    assert registry is not None
    decide = {
        "grpc_service": "nextbest.decision.v1.DecisionService",
        "grpc_method": "Decide",
        "grpc_type": "unary",
        "grpc_code": "OK",
    }
    assert registry.get_sample_value("grpc_server_handled_total", decide) == 1
