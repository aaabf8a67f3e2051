"""The composition root: builds a target's services, storage and gRPC server from Settings.

Nothing here runs at import time; ``build_target`` is the only place that knows how the
pieces fit. In the embedded shape (``--target all``) the orchestrator calls the domain
services directly; in the mesh shape it calls them through their gRPC clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from libs.changes import InProcessChangeFeed, change_feed
from libs.clock import utc_now
from libs.config import ConfigError, Settings, Target
from libs.contracts.context import PersonalizationLevel
from libs.contracts.context_proto import ProfileContextEncoder
from libs.logging import get_logger
from libs.observability import Observability
from libs.rpc.channels import open_channel
from libs.rpc.guarded import guarded
from libs.rpc.security import channel_security, server_security
from libs.rpc.server import GrpcServer, ServiceBinding, create_server
from libs.storage import Database
from libs.storage.migrate import upgrade
from services.arbitration.api import ArbitrationClient, arbitration_bindings
from services.arbitration.parsing import CatalogParser
from services.arbitration.repository import SqlArbitrationUnitOfWork
from services.arbitration.service import ArbitrationService
from services.context.api import ContextClient, context_binding
from services.context.repository import SqlContextUnitOfWork
from services.context.service import ContextService
from services.identity.api import IdentityClient, identity_binding
from services.identity.normalize import IdentifierKeyring
from services.identity.repository import SqlIdentityUnitOfWork
from services.identity.service import IdentityService
from services.ingest.consumer import EventSink, StreamConfig, StreamConsumer
from services.orchestrator.admin_proxy import admin_forwarding_bindings
from services.orchestrator.api import orchestrator_bindings
from services.orchestrator.decide import DecisionEngine
from services.orchestrator.events import EventIngestion, announcing
from services.orchestrator.privacy import PrivacyAdmin
from services.scoring.api import ScoringClient, scoring_bindings
from services.scoring.inference import OipBackend, parse_backend
from services.scoring.repository import SqlScoringUnitOfWork
from services.scoring.service import ModelBackend, ScoringService

MIGRATIONS = Path(__file__).parent / "migrations"
REGISTER_MODEL = "/nextbest.scoring.v1.ModelService/RegisterModel"
# How long a process warming up waits for its peers to accept a connection.
PEER_WAIT_S = 5.0
_log = get_logger("nextbest.app")


@dataclass
class DomainServices:
    """The domain services that one process hosts (all of them in the embedded shape)."""

    identity: IdentityService | None = None
    context: ContextService | None = None
    scoring: ScoringService | None = None
    arbitration: ArbitrationService | None = None
    decisions: DecisionEngine | None = None
    privacy: PrivacyAdmin | None = None


@dataclass
class BuiltTarget:
    """A built target: its server, the services behind it, and what to close on stop."""

    server: GrpcServer
    port: int
    services: DomainServices
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    database: Database | None = None
    observability: Observability = field(default_factory=Observability)
    changes: InProcessChangeFeed = field(default_factory=InProcessChangeFeed)
    # The stream's consumer (NEXTBEST_STREAM_URL; --target ingest, or all): starts warm.
    consumer: StreamConsumer | None = None

    async def warm_up(self) -> None:
        """Make the first calls as fast as the next ones, before health reports SERVING
        (``run_until_signalled``): database connections opened; each hosted service's hot
        statements, catalog rules and models run once (nothing stored); the peers
        connected. A first call that pays for these misses a 100 ms budget.

        A peer that is not up yet is waited for at most ``PEER_WAIT_S`` (peers start in any
        order): the decisions that need it are degraded until it is. A service whose own
        warm-up fails still serves (its first calls are slow, not wrong)."""
        if self.database is not None:
            await self.database.warm_up()
        if self.services.decisions is not None:
            await self.changes.start()  # WatchDecisions streams listen for changes
        hosted = self.services
        for name, service in (
            ("identity", hosted.identity),
            ("context", hosted.context),
            ("arbitration", hosted.arbitration),
            ("scoring", hosted.scoring),
        ):
            if service is not None:
                try:
                    await service.warm_up()
                except Exception as error:  # an optimisation, not a precondition
                    _log.warning("warm-up failed", service=name, error=str(error))
        await _connect(self.channels, PEER_WAIT_S)
        if self.consumer is not None:
            await self.consumer.start()  # in the background: the broker may be away

    async def close(self) -> None:
        for close in reversed(self.closers):
            await close()


async def _connect(channels: list[grpc.aio.Channel], wait_s: float) -> None:
    async def ready(channel: grpc.aio.Channel) -> bool:
        try:
            await asyncio.wait_for(channel.channel_ready(), wait_s)
        except TimeoutError:
            return False
        return True

    connected = await asyncio.gather(*(ready(channel) for channel in channels))
    if not all(connected):
        _log.warning("peers not reachable yet", count=connected.count(False), waited_s=wait_s)


def migrate(settings: Settings) -> None:
    upgrade(settings.effective_database_url, MIGRATIONS)


def _local_services(
    settings: Settings,
    database: Database,
    target: Target,
    changes: InProcessChangeFeed,
    observability: Observability,
    scoring_backend: ModelBackend | None = None,
) -> DomainServices:
    hosted = DomainServices()
    if target in (Target.ALL, Target.IDENTITY, Target.INGEST):
        hosted.identity = IdentityService(
            lambda write: SqlIdentityUnitOfWork(database, write=write),
            IdentifierKeyring.from_settings(settings),
        )
    if target in (Target.ALL, Target.CONTEXT, Target.INGEST):
        hosted.context = ContextService(
            lambda write: SqlContextUnitOfWork(database, write=write),
            aggregates=settings.aggregates,
            default_level=settings.default_personalization,
            contact_history=settings.contact_history,
            on_redacted=observability.personal_data_redacted,
        )
    if target in (Target.ALL, Target.SCORING):
        hosted.scoring = ScoringService(
            lambda write: SqlScoringUnitOfWork(database, write=write),
            refresh_s=settings.catalog_refresh_s,
            changes=changes,
            on_inference=observability.inference_observer,
            backend=scoring_backend,
        )
    if target in (Target.ALL, Target.ARBITRATION):
        hosted.arbitration = ArbitrationService(
            lambda write: SqlArbitrationUnitOfWork(database, write=write),
            refresh_s=settings.catalog_refresh_s,
            changes=changes,
        )
    return hosted


def build_target(settings: Settings, *, port: int | None = None) -> BuiltTarget:
    """Wire the services of ``settings.target`` and create (not start) its gRPC server."""
    target = settings.target
    if target == Target.INGEST and not settings.stream_servers:
        raise ConfigError("NEXTBEST_STREAM_URL: required by --target ingest (nats://host:4222)")
    observability = Observability.from_settings(settings)
    # Change notifications for WatchDecisions: LISTEN/NOTIFY on PostgreSQL, else in-process.
    changes = change_feed(settings.effective_database_url)
    closers: list[Callable[[], Awaitable[None]]] = [_stopper(observability), changes.close]
    channels: dict[str, grpc.aio.Channel] = {}
    hosted = DomainServices()
    database: Database | None = None
    if target != Target.ORCHESTRATOR:
        if settings.migrate_on_start:
            migrate(settings)
        database = Database(settings.effective_database_url, on_engine=observability.engine_hook)
        closers.append(database.dispose)
        scoring_backend = None
        backend_address = parse_backend(settings.scoring_backend)
        if backend_address is not None and target in (Target.ALL, Target.SCORING):
            # Models run on an external Open Inference Protocol v2 server (Triton, KServe).
            backend_channel = open_channel(backend_address)
            closers.append(_closer(backend_channel))
            channels["scoring_backend"] = backend_channel
            scoring_backend = OipBackend(
                backend_channel, settings.scoring_backend_timeout_ms / 1000
            )
        hosted = _local_services(
            settings, database, target, changes, observability, scoring_backend
        )
        if hosted.context is not None:
            # Closed in reverse: the decision log drains before the database is disposed.
            closers.append(hosted.context.close)
        if hosted.identity is not None:
            closers.append(hosted.identity.close)  # the profiles being created, likewise
    catalog_parser: CatalogParser | None = None
    if hosted.arbitration is not None:
        catalog_parser = CatalogParser(settings.max_catalog_bytes)
        closers.append(catalog_parser.close)
    if target in (Target.ALL, Target.ORCHESTRATOR):
        if target == Target.ALL:
            assert hosted.identity and hosted.context and hosted.scoring and hosted.arbitration
            identity, context, scoring, arbitration = (
                hosted.identity,
                hosted.context,
                hosted.scoring,
                hosted.arbitration,
            )
        else:
            peer_security = channel_security(settings)
            channels = {
                name: open_channel(
                    address,
                    peer_security.credentials,
                    [*peer_security.interceptors, *observability.client_interceptors],
                )
                for name, address in (
                    ("identity", settings.identity_address),
                    ("context", settings.context_address),
                    ("scoring", settings.scoring_address),
                    ("arbitration", settings.arbitration_address),
                )
            }
            closers.extend(_closer(channel) for channel in channels.values())
            # Deadlines and breakers where the network is (libs/rpc/guarded.py); one
            # encoding of a decision's profile context for scoring and arbitration.
            encoder = ProfileContextEncoder()
            identity = guarded(IdentityClient(channels["identity"]), "identity")  # type: ignore[assignment]
            context = guarded(ContextClient(channels["context"]), "context")  # type: ignore[assignment]
            scoring = guarded(  # type: ignore[assignment]
                ScoringClient(channels["scoring"], encoder), "scoring"
            )
            arbitration = guarded(  # type: ignore[assignment]
                ArbitrationClient(
                    channels["arbitration"],
                    encoder=encoder,
                    listing_ttl_s=settings.catalog_refresh_s,
                ),
                "arbitration",
            )
        hosted.decisions = DecisionEngine(
            identity,
            context,
            scoring,
            arbitration,
            budget_ms=settings.decision_budget_ms,
            observer=observability,
            changes=changes,
            event_types=settings.aggregates.event_types,
            # In-process ports: no round trips to overlap (see DecisionEngine).
            parallel_reads=target != Target.ALL,
            new_profile_level=PersonalizationLevel(settings.default_personalization),
            outbox_linger_s=settings.decision_outbox_linger_ms / 1000,
        )
        # Closed before the services it writes to: the outbox drains into context first.
        closers.append(hosted.decisions.close)
        hosted.privacy = PrivacyAdmin(
            identity, context, changes=changes, outbox=hosted.decisions.outbox
        )
    consumer = _stream_consumer(settings, hosted, observability, changes, closers)
    bindings = _bindings(hosted, catalog_parser)
    if target == Target.ORCHESTRATOR:
        # The admin services of arbitration and scoring, through the public port.
        bindings.extend(admin_forwarding_bindings(channels))
    security = server_security(settings)
    server, bound = create_server(
        f"{settings.host}:{settings.port if port is None else port}",
        bindings,
        reflection_enabled=settings.reflection,
        max_connection_age_s=settings.max_connection_age_s,
        # Observability outside authentication: rejected calls are traced and counted too.
        interceptors=[*observability.server_interceptors, *security.interceptors],
        credentials=security.credentials,
        # Limits and load shedding: docs/operations.md, "Limits".
        max_message_bytes=settings.max_message_bytes,
        large_messages=(
            {REGISTER_MODEL: settings.max_model_upload_bytes}
            if hosted.scoring or target == Target.ORCHESTRATOR
            else None
        ),
        max_concurrent_rpcs=settings.max_concurrent_rpcs,
        min_deadline_s=settings.min_deadline_ms / 1000,
        shed_late_calls=settings.shed_late_calls,
    )
    if settings.health_port:
        _add_probe_port(server, settings)
    return BuiltTarget(
        server,
        bound,
        hosted,
        closers,
        list(channels.values()),
        database,
        observability,
        changes,
        consumer,
    )


def _stream_consumer(
    settings: Settings,
    hosted: DomainServices,
    observability: Observability,
    changes: InProcessChangeFeed,
    closers: list[Callable[[], Awaitable[None]]],
) -> StreamConsumer | None:
    """The stream's consumer of ``--target ingest`` and, when a stream is configured, of
    ``--target all``. It writes through TrackEvents' domain path (``EventIngestion``): the
    ingest target hosts identity and context on the database like the embedded shape does,
    and takes no decisions."""
    sink: EventSink
    if settings.target == Target.INGEST:
        assert hosted.identity is not None and hosted.context is not None
        sink = EventIngestion(
            hosted.identity,
            hosted.context,
            event_types=settings.aggregates.event_types,
            observer=observability,
            clock=utc_now,
            # Other replicas' WatchDecisions streams hear of the events (PostgreSQL).
            announce=announcing(changes),
        )
    elif settings.target == Target.ALL and settings.stream_servers:
        assert hosted.decisions is not None
        sink = hosted.decisions
    else:
        return None
    consumer = StreamConsumer(StreamConfig.from_settings(settings), sink, observability)
    # Closed first (closers run in reverse): the batches being stored finish and are acked
    # before the engine and the database close.
    closers.append(consumer.close)
    return consumer


def _add_probe_port(server: GrpcServer, settings: Settings) -> None:
    """The plaintext health-only port for probes that cannot speak TLS (the kubelet's)."""
    address = f"{settings.host}:{settings.health_port}"
    try:
        server.add_probe_port(address)
    except (OSError, RuntimeError) as error:
        raise ConfigError(
            f"NEXTBEST_HEALTH_PORT: cannot serve health checks on {address}: {error}"
        ) from None


def _stopper(observability: Observability) -> Callable[[], Awaitable[None]]:
    async def stop() -> None:
        observability.stop()

    return stop


def _closer(channel: grpc.aio.Channel) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        await channel.close()

    return close


def _bindings(hosted: DomainServices, catalog_parser: CatalogParser | None) -> list[ServiceBinding]:
    bindings: list[ServiceBinding] = []
    if hosted.decisions is not None and hosted.privacy is not None:
        bindings.extend(orchestrator_bindings(hosted.decisions, hosted.privacy))
    if hosted.identity is not None:
        bindings.append(identity_binding(hosted.identity))
    if hosted.context is not None:
        bindings.append(context_binding(hosted.context))
    if hosted.scoring is not None:
        bindings.extend(scoring_bindings(hosted.scoring))
    if hosted.arbitration is not None and catalog_parser is not None:
        bindings.extend(arbitration_bindings(hosted.arbitration, catalog_parser))
    return bindings
