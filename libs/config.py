"""The one configuration model of every nextbest target, read from ``NEXTBEST_*`` variables."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "NEXTBEST_"


class Target(StrEnum):
    """What one process runs: every service (embedded shape) or exactly one (mesh shape)."""

    ALL = "all"
    IDENTITY = "identity"
    CONTEXT = "context"
    SCORING = "scoring"
    ARBITRATION = "arbitration"
    ORCHESTRATOR = "orchestrator"


class ConfigError(Exception):
    """A configuration value is missing or wrong; the message names the variable."""


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
    shutdown_grace_s: float = Field(5.0, ge=0, description="Drain period on SIGTERM.")
    max_connection_age_s: float = Field(
        300.0, gt=0, description="Clients reconnect (and re-resolve DNS) after this."
    )
    hash_key: SecretStr = Field(
        SecretStr("nextbest-development-only-key"),
        description="HMAC key for pseudonymised identifiers; set a secret in production.",
    )
    catalog_refresh_s: float = Field(
        2.0, gt=0, description="How often a replica checks for a newer catalog or model."
    )
    # --- observability
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Prometheus metrics HTTP port; 0 = no metrics endpoint."
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

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'nextbest.db').resolve()}"

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
