"""Metrics and traces of a target.

- Prometheus metrics on ``NEXTBEST_METRICS_PORT`` (0 = none) at ``/metrics``, from a
  registry of this target's own: RED per RPC, decisions, outcomes, event ingestion, model
  inference and database latency (see :mod:`libs.observability.metrics`).
- OpenTelemetry traces across hops when ``NEXTBEST_TRACING`` is on, exported as the
  ``OTEL_*`` variables say (see :mod:`libs.observability.tracing`); the trace id of each RPC
  is bound into the structlog context, so every log line of a traced call carries it.

With neither configured, it installs no interceptor and every hook is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import metadata
from threading import Thread
from wsgiref.simple_server import WSGIServer

import grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry, start_http_server
from sqlalchemy import Engine

from libs.config import ConfigError, Settings
from libs.logging import get_logger
from libs.observability import tracing
from libs.observability.database import instrument_engine
from libs.observability.metrics import Metrics
from libs.observability.rpc import RpcObserver

__all__ = ["Metrics", "Observability"]

_log = get_logger("nextbest.observability")


def _version() -> str:
    try:
        return metadata.version("nextbest")
    except metadata.PackageNotFoundError:
        return "unknown"


def _http_host(host: str) -> str:
    """The gRPC bind host as the HTTP server wants it ("[::]" -> "::")."""
    return host.strip("[]") or "0.0.0.0"


class Observability:
    """What a target exports about itself; the orchestrator's DecisionObserver too."""

    def __init__(
        self,
        *,
        metrics: Metrics | None = None,
        tracer_provider: TracerProvider | None = None,
        host: str = "127.0.0.1",
        metrics_port: int = 0,
    ) -> None:
        self.metrics = metrics
        self.tracer_provider = tracer_provider
        self._host = host
        self._port = metrics_port
        self._http: tuple[WSGIServer, Thread] | None = None
        self._stopped = False
        server: list[grpc.aio.ServerInterceptor] = []
        client: list[grpc.aio.ClientInterceptor] = []
        if tracer_provider is not None:
            server.append(tracing.server_interceptor(tracer_provider))
            client.extend(tracing.client_interceptors(tracer_provider))
        if metrics is not None or tracer_provider is not None:
            # Inside OpenTelemetry's interceptor, so that its span is the current one.
            server.append(RpcObserver(metrics, bind_trace=tracer_provider is not None))
        self.server_interceptors: Sequence[grpc.aio.ServerInterceptor] = server
        self.client_interceptors: Sequence[grpc.aio.ClientInterceptor] = client

    @classmethod
    def from_settings(
        cls, settings: Settings, *, span_exporter: SpanExporter | None = None
    ) -> Observability:
        """Metrics when ``metrics_port`` is set, traces when ``tracing`` is on (exported to
        ``span_exporter``, else where the ``OTEL_*`` variables say)."""
        target = settings.target.value
        metrics = Metrics(target=target, version=_version()) if settings.metrics_port else None
        provider = (
            tracing.tracer_provider(f"nextbest-{target}", span_exporter)
            if settings.tracing
            else None
        )
        return cls(
            metrics=metrics,
            tracer_provider=provider,
            host=_http_host(settings.host),
            metrics_port=settings.metrics_port,
        )

    @property
    def registry(self) -> CollectorRegistry | None:
        return self.metrics.registry if self.metrics is not None else None

    @property
    def metrics_port(self) -> int:
        """The port /metrics is served on once started (0: not serving)."""
        return self._http[0].server_port if self._http is not None else 0

    # --- hooks for the pieces that measure (plain callables: they import nothing of this)
    @property
    def inference_observer(self) -> Callable[[str, str, float], None] | None:
        """For ScoringService: told (model, version, seconds) of each batched model run."""
        return self.metrics.model_inferred if self.metrics is not None else None

    @property
    def engine_hook(self) -> Callable[[Engine], None] | None:
        """For Database: instruments each SQLAlchemy engine it creates."""
        metrics = self.metrics
        if metrics is None:
            return None

        def hook(engine: Engine) -> None:
            instrument_engine(engine, metrics)

        return hook

    # --- the orchestrator's DecisionObserver (services/orchestrator/ports.py)
    def decided(
        self,
        *,
        channel: str,
        issue: str,
        action_id: str,
        degraded_reason: str,
        elapsed_s: float,
    ) -> None:
        if self.metrics is not None:
            self.metrics.decided(
                channel=channel,
                issue=issue,
                action_id=action_id,
                degraded_reason=degraded_reason,
                elapsed_s=elapsed_s,
            )

    def outcome_recorded(self, *, action_id: str, outcome: str, duplicate: bool) -> None:
        if self.metrics is not None:
            self.metrics.outcome_recorded(action_id=action_id, outcome=outcome, duplicate=duplicate)

    def events_ingested(self, *, accepted: int, duplicates: int) -> None:
        if self.metrics is not None:
            self.metrics.events_ingested(accepted=accepted, duplicates=duplicates)

    def personal_data_redacted(self, field: str, count: int) -> None:
        """Told (field, count) of stored values redacted (context service, orchestrator)."""
        if self.metrics is not None:
            self.metrics.personal_data_redacted(field, count)

    # --- the stream consumer's StreamObserver (services/ingest/consumer.py)
    def stream_handled(self, outcome: str, count: int) -> None:
        """Told how many stream messages ended with ``outcome`` (stored, duplicate,
        dead_lettered)."""
        if self.metrics is not None and count:
            self.metrics.stream_handled(outcome, count)

    def stream_pending(self, pending: int) -> None:
        """Told the durable consumer's pending count (messages not yet delivered)."""
        if self.metrics is not None:
            self.metrics.stream_pending(pending)

    # --- lifecycle
    def start(self) -> None:
        """Serve /metrics on ``host:metrics_port`` (a daemon thread); idempotent."""
        if self.metrics is None or not self._port or self._http is not None:
            return
        try:
            self._http = start_http_server(self._port, self._host, self.metrics.registry)
        except OSError as error:  # in use, or not an address here: say which setting
            raise ConfigError(
                f"NEXTBEST_METRICS_PORT: cannot serve metrics on {self._host}:{self._port}: "
                f"{error.strerror or error}"
            ) from error
        _log.info("metrics endpoint", address=f"{self._host}:{self.metrics_port}/metrics")

    def stop(self) -> None:
        """Stop serving /metrics and flush the spans not exported yet."""
        if self._http is not None:
            server, thread = self._http
            self._http = None
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        if self.tracer_provider is not None and not self._stopped:
            self.tracer_provider.shutdown()
        self._stopped = True
