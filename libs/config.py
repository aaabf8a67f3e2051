"""The one configuration model of every nextbest target, read from ``NEXTBEST_*`` variables."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "NEXTBEST_"
_IDENTIFIER_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class Target(StrEnum):
    """What one process runs: every service (embedded shape) or exactly one (mesh shape)."""

    ALL = "all"
    IDENTITY = "identity"
    CONTEXT = "context"
    SCORING = "scoring"
    ARBITRATION = "arbitration"
    ORCHESTRATOR = "orchestrator"
    # Events from a JetStream stream into storage (no public API; NEXTBEST_STREAM_*).
    INGEST = "ingest"


class ConfigError(Exception):
    """A configuration value is missing or wrong; the message names the variable."""


_DURATION = re.compile(r"^([1-9][0-9]{0,8})([smhd])$")
_DURATION_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_s(label: str) -> int:
    """Seconds of a window label such as ``30s``, ``5m``, ``24h`` or ``30d`` (callers bound
    the range they accept: aggregate windows start at 5m)."""
    match = _DURATION.match(label)
    if match is None:
        raise ValueError(f"{label!r} is not a duration like 30s, 5m, 24h or 30d")
    return int(match.group(1)) * _DURATION_S[match.group(2)]


class AggregatesConfig(BaseModel):
    """The aggregates the context service maintains on write (``NEXTBEST_AGGREGATES``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    windows: tuple[str, ...] = Field(
        ("1h", "24h", "7d", "30d"),
        description="Sliding windows of the per-type counts and value sums (5m to 400d).",
    )
    event_types: tuple[str, ...] = Field(
        (), description="Declared event types; empty = any type is accepted."
    )
    value_attribute: str = Field("value", description="Numeric attribute summed per type.")
    last_values: tuple[str, ...] | None = Field(
        None, description="Attributes whose last value is kept per type; null = every scalar."
    )

    @field_validator("windows")
    @classmethod
    def _windows(cls, windows: tuple[str, ...]) -> tuple[str, ...]:
        for label in windows:
            if not 300 <= duration_s(label) <= 400 * 86400:
                raise ValueError(f"window {label!r} must be between 5m and 400d")
        if len(set(windows)) != len(windows):
            raise ValueError("windows must be distinct")
        return windows


def _aggregates(value: Any) -> Any:
    """``NEXTBEST_AGGREGATES`` holds JSON/YAML inline, or the path of a YAML file."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text and text[0] not in "{[" and "\n" not in text:
        try:
            text = Path(text).read_text()
        except OSError as error:
            raise ValueError(f"cannot read the aggregates file {value!r}: {error}") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"not valid YAML/JSON: {error}") from None


class IdentifierTypeSettings(BaseModel):
    """Overrides of one identifier type (``NEXTBEST_IDENTITY_TYPES``); what is left out keeps
    the built-in rule of that type (services/identity/rules.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    priority: int = Field(0, ge=0, le=1000, description="Higher wins the survivor.")
    limit: int | None = Field(
        None, ge=1, le=1000, description="Values per profile; 1 = exclusive; null = no limit."
    )
    normalize: Literal["email", "phone", "id"] | None = None


class Settings(BaseSettings):
    """Typed, validated settings. Every field is the variable ``NEXTBEST_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    target: Target = Target.ALL
    host: str = Field("[::]", description="Address the gRPC server binds.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    data_dir: Path = Field(Path(".nextbest"), description="Where the embedded SQLite lives.")
    database_url: str = Field("", description="SQLAlchemy URL; empty = SQLite file under data_dir.")
    auto_migrate: bool | None = Field(
        None, description="Apply migrations at start-up; default: on for SQLite only."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    reflection: bool = Field(True, description="Serve gRPC server reflection.")
    identity_address: str = "dns:///localhost:50052"
    context_address: str = "dns:///localhost:50053"
    scoring_address: str = "dns:///localhost:50054"
    arbitration_address: str = "dns:///localhost:50055"
    decision_budget_ms: int = Field(
        100, gt=0, le=60_000, description="Time budget of one Decide across all hops."
    )
    decision_outbox_linger_ms: float = Field(
        20.0,
        ge=0,
        le=1000,
        description=(
            "How long the decision outbox waits to gather decisions into one write to the "
            "decision log (0: write each at once). An outcome for a waiting decision, an "
            "export or an erasure cuts the wait short. At risk on kill -9: what waits."
        ),
    )
    shutdown_grace_s: float = Field(5.0, ge=0, description="Drain period on SIGTERM.")
    max_connection_age_s: float = Field(
        300.0, gt=0, description="Clients reconnect (and re-resolve DNS) after this."
    )
    # --- limits and load shedding (docs/operations.md, "Limits")
    max_message_bytes: int = Field(
        4 * 1024 * 1024,
        ge=64 * 1024,
        le=256 * 1024 * 1024,
        description="Largest request or response of any RPC but model uploads.",
    )
    max_model_upload_bytes: int = Field(
        64 * 1024 * 1024,
        ge=64 * 1024,
        le=256 * 1024 * 1024,
        description="Largest RegisterModel request (targets hosting the model registry).",
    )
    # Off by default: gRPC's limiter counts every open WatchDecisions stream, and a hub
    # holds thousands of idle ones; set it above (expected streams + unary concurrency).
    max_concurrent_rpcs: int = Field(
        0,
        ge=0,
        le=100_000,
        description="Calls in progress per process (open WatchDecisions streams count); "
        "more are shed with RESOURCE_EXHAUSTED at once. 0 = no limit.",
    )
    shed_late_calls: bool = Field(
        True,
        description="Refuse with RESOURCE_EXHAUSTED a unary call that has less time left "
        "than its method usually takes while the server is busy (it waited in a queue and "
        "would miss its deadline).",
    )
    min_deadline_ms: float = Field(
        1.0,
        ge=0,
        le=10_000,
        description="A call arriving with less time left is refused with DEADLINE_EXCEEDED "
        "before any work.",
    )
    hash_key: SecretStr = Field(
        SecretStr("nextbest-development-only-key"),
        description="HMAC key for pseudonymised identifiers; set a secret in production.",
    )
    hash_key_previous: SecretStr | None = Field(
        None, description="The key before a rotation: still recognised, re-keyed on sight."
    )
    phone_region: str = Field(
        "GB", description="Region (ISO 3166 alpha-2) of phone numbers given without +country."
    )
    identity_types: dict[str, IdentifierTypeSettings] = Field(
        default_factory=dict,
        description='JSON: {"cookie_id": {"limit": 10}, "loyalty_no": {"priority": 45}}.',
    )
    identity_blocked_values: list[str] | None = Field(
        None, description="JSON list replacing the built-in placeholder values."
    )
    max_catalog_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest catalog document ApplyCatalog accepts (UTF-8 bytes); a larger "
        "one is refused with INVALID_ARGUMENT naming `document` before it is parsed.",
    )
    catalog_refresh_s: float = Field(
        2.0, gt=0, description="How often a replica checks for a newer catalog or model."
    )
    # --- scoring: where the models run
    scoring_backend: str = Field(
        "onnxruntime",
        pattern=r"^(onnxruntime|oip:.+:[0-9]{1,5})$",
        description="onnxruntime (in-process) or oip:host:port (an external Open Inference "
        "Protocol v2 server: Triton, KServe).",
    )
    scoring_backend_timeout_ms: int = Field(
        50, gt=0, le=60_000, description="Deadline of one call to an external v2 server."
    )
    # --- context: the aggregates kept on write, the consent default
    aggregates: Annotated[AggregatesConfig, NoDecode] = Field(
        default_factory=AggregatesConfig,
        description="Aggregates kept on write: JSON/YAML inline or the path of a YAML file.",
    )
    default_personalization: Literal["none", "basic", "full"] = Field(
        "full", description="Personalisation level of a customer who never chose one."
    )
    contact_history: str = Field(
        "90d",
        description="How far back the recent contacts of a profile (decisions served, outcomes)"
        " reach contact policies (1m to 400d); at most 500 of the newest are read.",
    )
    # --- observability
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Prometheus metrics HTTP port; 0 = no metrics endpoint."
    )
    health_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Plaintext port serving only grpc.health.v1 (for probes); 0 = none.",
    )
    tracing: bool = Field(
        False, description="Export OpenTelemetry traces (configured by the OTEL_* variables)."
    )
    # --- security: TLS for this server, mTLS towards peers, bearer tokens
    tls_cert_file: Path | None = Field(None, description="Server certificate chain (PEM).")
    tls_key_file: Path | None = Field(None, description="Server private key (PEM).")
    tls_client_ca_file: Path | None = Field(
        None, description="CA that signs client certificates; set = clients must present one."
    )
    peer_tls_ca_file: Path | None = Field(
        None, description="CA that signs the peers' certificates; set = TLS towards peers."
    )
    peer_tls_cert_file: Path | None = Field(
        None, description="This service's client certificate towards peers (mTLS)."
    )
    peer_tls_key_file: Path | None = Field(None, description="Its private key.")
    auth_tokens_file: Path | None = Field(
        None, description="Bearer tokens and their scopes; set = the public API needs a token."
    )
    mesh_token: SecretStr | None = Field(
        None, description="Shared secret internal services accept from mesh peers."
    )
    # --- events from a stream (NATS JetStream; services/ingest, docs/operations.md)
    stream_url: str = Field(
        "",
        description="NATS server(s), comma-separated (nats://host:4222); set = `--target all` "
        "also consumes the stream, and `--target ingest` needs it.",
    )
    stream_name: str = Field(
        "NEXTBEST_EVENTS", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="JetStream stream."
    )
    stream_subject: str = Field(
        "nextbest.events.>",
        pattern=r"^[^\s]{1,255}$",
        description="Subject (wildcards allowed) the events are published on.",
    )
    stream_consumer: str = Field(
        "nextbest-ingest",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Durable pull consumer shared by every replica.",
    )
    stream_dead_letter_subject: str = Field(
        "nextbest.dead-letter.events",
        pattern=r"^[^\s*>]{1,255}$",
        description="Where undecodable or invalid messages go, with the reason in a header.",
    )
    stream_create: bool = Field(
        True,
        description="Create the stream, the dead-letter stream and the consumer when missing "
        "(false: they must exist).",
    )
    stream_batch: int = Field(
        500, ge=1, le=1000, description="Messages fetched and stored together (one batch)."
    )
    stream_workers: int = Field(4, ge=1, le=16, description="Batches one process stores at a time.")
    stream_max_in_flight: int = Field(
        4000,
        ge=1,
        le=1_000_000,
        description="Messages delivered and not yet acknowledged, across every replica "
        "(the consumer's max_ack_pending).",
    )
    stream_ack_wait_s: float = Field(
        30.0, gt=0, le=3600, description="Redelivery after this long without an ack."
    )
    stream_credentials_file: Path | None = Field(
        None, description="NATS credentials file (JWT and NKey seed) for the connection."
    )

    @field_validator("phone_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        import phonenumbers

        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not a region phonenumbers knows (e.g. GB, US, FR)")
        return region

    @field_validator("identity_types")
    @classmethod
    def _type_names(
        cls, value: dict[str, IdentifierTypeSettings]
    ) -> dict[str, IdentifierTypeSettings]:
        for name in value:
            if not _IDENTIFIER_TYPE.match(name):
                raise ValueError(f"identifier type {name!r} must match [a-z][a-z0-9_]{{0,31}}")
        return value

    @field_validator("contact_history")
    @classmethod
    def _contact_history(cls, value: str) -> str:
        if not 60 <= duration_s(value) <= 400 * 86400:
            raise ValueError(f"{value!r} must be between 1m and 400d")
        return value

    @field_validator("aggregates", mode="before")
    @classmethod
    def _read_aggregates(cls, value: Any) -> Any:
        return _aggregates(value)

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'nextbest.db').resolve()}"

    @property
    def stream_servers(self) -> list[str]:
        return [url.strip() for url in self.stream_url.split(",") if url.strip()]

    @property
    def migrate_on_start(self) -> bool:
        if self.auto_migrate is not None:
            return self.auto_migrate
        return self.effective_database_url.startswith("sqlite")


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment (overrides win); a bad value raises ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            problems.append(f"{ENV_PREFIX}{field.upper()}: {error['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
