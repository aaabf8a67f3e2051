"""OpenTelemetry tracing of one target: a tracer provider of its own and the gRPC interceptors.

The exporter is configured by the standard ``OTEL_*`` variables, read by the SDK itself:
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``), ``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_EXPORTER_OTLP_PROTOCOL`` (``grpc``, the default, or ``http/protobuf``),
``OTEL_TRACES_EXPORTER`` (``otlp``, the default, ``console`` or ``none``),
``OTEL_TRACES_SAMPLER`` / ``..._ARG``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``
and ``OTEL_PROPAGATORS`` (W3C trace context by default).

opentelemetry-instrumentation-grpc supports grpc.aio on both sides
(``aio_server_interceptor`` and ``aio_client_interceptors``); the provider is passed to
them explicitly rather than set globally, so that several targets can live in one process
(the tests do that).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import cast

import grpc
from opentelemetry.instrumentation.grpc import (
    aio_client_interceptors,
    aio_server_interceptor,
    filters,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)

from libs.config import ConfigError

# Probes and reflection would only bury the decisions' traces.
_TRACED = filters.negate(
    filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection."))
)


def otlp_exporter() -> SpanExporter | None:
    """The exporter the ``OTEL_*`` variables ask for (None for ``OTEL_TRACES_EXPORTER=none``)."""
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleSpanExporter()
    if kind != "otlp":
        raise ConfigError(f"OTEL_TRACES_EXPORTER: {kind!r} is not one of otlp, console, none")
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter()
    raise ConfigError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not one of grpc, http/protobuf"
    )


def tracer_provider(service_name: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """A provider named ``service_name`` unless ``OTEL_SERVICE_NAME`` (or the resource
    attributes) name it, exporting in batches to ``exporter`` (default: from ``OTEL_*``)."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)
    exporter = exporter if exporter is not None else otlp_exporter()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def server_interceptor(provider: TracerProvider) -> grpc.aio.ServerInterceptor:
    """A server span per RPC, continuing the caller's trace (``traceparent`` metadata)."""
    interceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=provider, filter_=_TRACED
    )
    return cast(grpc.aio.ServerInterceptor, interceptor)


def client_interceptors(provider: TracerProvider) -> Sequence[grpc.aio.ClientInterceptor]:
    """A client span per call to a peer, its context sent along in the metadata."""
    interceptors = aio_client_interceptors(  # type: ignore[no-untyped-call]
        tracer_provider=provider, filter_=_TRACED
    )
    return cast(Sequence[grpc.aio.ClientInterceptor], interceptors)
