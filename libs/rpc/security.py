"""Transport security and authentication of every target: TLS, mutual TLS, bearer tokens.

Everything is off until configured (the embedded developer default); see the settings
``tls_*``, ``peer_tls_*``, ``auth_tokens_file`` and ``mesh_token`` and the section
"Security: TLS, mTLS and tokens" of docs/operations.md.

- **Server TLS** from ``tls_cert_file``/``tls_key_file``; with ``tls_client_ca_file`` every
  client must present a certificate signed by that CA (mTLS). The files are re-read when
  they change (a Kubernetes Secret or cert-manager rotation) without a restart.
- **Peer TLS**: the orchestrator's channels verify the peers against ``peer_tls_ca_file``
  and present ``peer_tls_cert_file``/``peer_tls_key_file`` when set.
- **Bearer tokens** (``authorization: Bearer <token>``) with the scopes ``decide``,
  ``ingest`` and ``admin`` guard the public and admin APIs when ``auth_tokens_file`` is set.
- **Mesh identity**: the internal services (identity, context, scoring, arbitration) accept
  only mesh peers: a verified client certificate or the shared ``mesh_token``, which the
  orchestrator's channels send in ``x-nextbest-mesh-token``.
- Health checking and server reflection stay open (probes, grpcurl ``list``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, cast

import grpc
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from libs.config import ConfigError, Settings, Target
from libs.errors import DomainError, PermissionDenied, Unauthenticated
from libs.logging import get_logger
from libs.rpc.status import status_for

_log = get_logger("nextbest.security")
_level = logging.getLogger("nextbest.security")  # the level configure_logging sets

AUTHORIZATION_HEADER = "authorization"
MESH_TOKEN_HEADER = "x-nextbest-mesh-token"


# --------------------------------------------------------------------------- access policy


class Access(StrEnum):
    """What a method requires: nothing, a token scope, or a mesh peer."""

    OPEN = "open"
    DECIDE = "decide"
    INGEST = "ingest"
    ADMIN = "admin"
    MESH = "mesh"


SCOPES = (Access.DECIDE, Access.INGEST, Access.ADMIN)

# Per service; the decision service is split per method below. Anything not listed here
# (a service added later and forgotten) needs the admin scope: fail closed.
SERVICE_ACCESS: dict[str, Access] = {
    "grpc.health.v1.Health": Access.OPEN,
    "grpc.reflection.v1alpha.ServerReflection": Access.OPEN,
    "grpc.reflection.v1.ServerReflection": Access.OPEN,
    "nextbest.catalog.v1.CatalogService": Access.ADMIN,
    "nextbest.scoring.v1.ModelService": Access.ADMIN,
    "nextbest.privacy.v1.PrivacyService": Access.ADMIN,
    # Public admin API served by the orchestrator, despite its package (not ContextService).
    "nextbest.context.v1.ProfileService": Access.ADMIN,
    "nextbest.identity.v1.IdentityService": Access.MESH,
    "nextbest.context.v1.ContextService": Access.MESH,
    "nextbest.scoring.v1.ScoringService": Access.MESH,
    "nextbest.arbitration.v1.ArbitrationService": Access.MESH,
    # Open Inference Protocol v2 on the scoring target: data scientists' tools (tritonclient)
    # score registered models with an admin token. Served at the protocol's own path; the
    # descriptor's package name (nextbest.inference.v2) is listed so it fails closed too.
    "inference.GRPCInferenceService": Access.ADMIN,
    "nextbest.inference.v2.GRPCInferenceService": Access.ADMIN,
}
METHOD_ACCESS: dict[str, Access] = {
    "/nextbest.decision.v1.DecisionService/Decide": Access.DECIDE,
    "/nextbest.decision.v1.DecisionService/WatchDecisions": Access.DECIDE,
    "/nextbest.decision.v1.DecisionService/TrackEvents": Access.INGEST,
    "/nextbest.decision.v1.DecisionService/RecordOutcome": Access.INGEST,
}


def required_access(method: str) -> Access:
    """The access a full method name (``/package.Service/Method``) requires."""
    if method in METHOD_ACCESS:
        return METHOD_ACCESS[method]
    service = method.lstrip("/").partition("/")[0]
    return SERVICE_ACCESS.get(service, Access.ADMIN)


# --------------------------------------------------------------------------- files


def _read(path: Path, variable: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{variable}: cannot read {path}: {error.strerror}") from None


# --------------------------------------------------------------------------- bearer tokens


class TokenEntry(BaseModel):
    """One accepted token: a name (for logs), the SHA-256 of the token, its scopes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128)
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: frozenset[Literal["decide", "ingest", "admin"]] = Field(min_length=1)

    @field_validator("token_sha256", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        if isinstance(value, int | float):  # YAML read an unquoted, all-digit hash
            raise ValueError("write the hash as a quoted string")
        return value.strip().lower() if isinstance(value, str) else value


class TokenFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: list[TokenEntry]


def hash_token(token: str) -> str:
    """The value to store in ``token_sha256`` (same as ``printf %s TOKEN | sha256sum``)."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_tokens(text: str, source: str = "tokens") -> tuple[TokenEntry, ...]:
    """Parse a token file (YAML or JSON): ``{"tokens": [...]}`` or the bare list."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not YAML or JSON: {error}") from None
    if isinstance(document, list):
        document = {"tokens": document}
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'tokens' list (or that list)")
    try:
        parsed = TokenFile.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'file'}: {item['msg']}"
            for item in error.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None
    names = [entry.name for entry in parsed.tokens]
    hashes = [entry.token_sha256 for entry in parsed.tokens]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: token names must be unique")
    if len(set(hashes)) != len(hashes):
        raise ConfigError(f"{source}: the same token_sha256 is listed twice")
    return tuple(parsed.tokens)


class TokenStore:
    """The tokens of ``auth_tokens_file``, re-read when the file changes (checked at most
    every ``check_s``, by content: file times are too coarse to see two quick writes).

    A file that no longer parses is logged and ignored: the tokens loaded before stay valid.
    """

    VARIABLE = "NEXTBEST_AUTH_TOKENS_FILE"

    def __init__(self, path: Path, check_s: float = 1.0) -> None:
        self.path = path
        self._check_s = check_s
        self._checked_at = time.monotonic()
        self._seen = _read(path, self.VARIABLE)
        self.entries = parse_tokens(self._seen.decode(errors="replace"), f"{self.VARIABLE} {path}")

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self._check_s:
            return
        self._checked_at = now
        try:
            content = self.path.read_bytes()
            if content == self._seen:
                return
            self._seen = content
            entries = parse_tokens(content.decode(errors="replace"), f"{self.VARIABLE} {self.path}")
        except (OSError, ConfigError) as error:
            _log.error("token file not reloaded, the previous tokens stay", error=str(error))
            return
        self.entries = entries
        _log.info("token file reloaded", tokens=len(entries))

    def authenticate(self, token: str) -> TokenEntry | None:
        """The entry whose hash matches ``token`` (compared in constant time), or None."""
        self._maybe_reload()
        digest = hash_token(token).encode()
        found = None
        for entry in self.entries:
            if hmac.compare_digest(entry.token_sha256.encode(), digest):
                found = entry
        return found


# --------------------------------------------------------------------------- server TLS


class _Changed(Exception):
    """The files changed while being read."""


Contents = tuple[bytes, bytes, bytes | None]


class ServerCertificates:
    """The server's certificate, key and (for mTLS) client CA, reloaded when they change.

    ``fetch`` is grpc's ``certificate_configuration_fetcher``: the gRPC core calls it (from
    its own thread, for the aio server too) before each TLS handshake, and None means "no
    change". It compares the files' content with what it last saw (a few small reads per
    new connection; modification times are too coarse to notice two writes in the same
    tick). A new set is checked with the standard library's ``ssl`` (key matches the
    certificate, CA parses) and a bad or half-written one is logged and ignored: the
    previous certificate stays, and gRPC also keeps the old one if it cannot use a new one.
    Connections already open keep their session until ``max_connection_age``.
    """

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.client_ca_file = client_ca_file
        self._lock = threading.Lock()
        self._last_error = ""
        for _attempt in range(3):
            try:
                self._seen = self._contents()
                self.initial = self._configuration(self._seen)
                break
            except _Changed:
                continue
            except (OSError, ssl.SSLError, ValueError) as error:
                raise ConfigError(
                    "NEXTBEST_TLS_CERT_FILE/NEXTBEST_TLS_KEY_FILE/NEXTBEST_TLS_CLIENT_CA_FILE: "
                    f"unusable certificate files ({cert_file}, {key_file}, {client_ca_file}): "
                    f"{error}"
                ) from None
        else:
            raise ConfigError(f"NEXTBEST_TLS_CERT_FILE: {cert_file} keeps changing")

    def _contents(self) -> Contents:
        client_ca = self.client_ca_file.read_bytes() if self.client_ca_file else None
        return self.cert_file.read_bytes(), self.key_file.read_bytes(), client_ca

    def _configuration(self, contents: Contents) -> grpc.ServerCertificateConfiguration:
        certificate, key, client_ca = contents
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)  # the key matches the cert
        if client_ca is not None:
            context.load_verify_locations(cadata=client_ca.decode())
        if self._contents() != contents:
            raise _Changed  # what ssl checked may not be what was read
        return grpc.ssl_server_certificate_configuration(
            [(key, certificate)], root_certificates=client_ca
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            contents = None
            try:
                contents = self._contents()
                if contents == self._seen:
                    return None
                configuration = self._configuration(contents)
            except _Changed:
                return None  # mid-rotation: taken at a next handshake
            except (OSError, ssl.SSLError, ValueError) as error:
                # A missing file or half of a rotation (new cert, old key): the previous
                # certificate stays; the files are tried again when they change.
                if contents is not None:
                    self._seen = contents
                if str(error) != self._last_error:
                    self._last_error = str(error)
                    _log.error(
                        "TLS certificate not reloaded, the previous one stays", error=str(error)
                    )
                return None
            self._seen = contents
            self._last_error = ""
            _log.info("TLS certificate reloaded", cert_file=str(self.cert_file))
            return configuration


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (mTLS with ``tls_client_ca_file``) server credentials, or None for plaintext."""
    cert, key, client_ca = (
        settings.tls_cert_file,
        settings.tls_key_file,
        settings.tls_client_ca_file,
    )
    if cert is None and key is None:
        if client_ca is not None:
            raise ConfigError(
                "NEXTBEST_TLS_CLIENT_CA_FILE needs NEXTBEST_TLS_CERT_FILE and NEXTBEST_TLS_KEY_FILE"
            )
        return None
    if cert is None or key is None:
        raise ConfigError("NEXTBEST_TLS_CERT_FILE and NEXTBEST_TLS_KEY_FILE go together")
    certificates = ServerCertificates(cert, key, client_ca)
    # grpc.aio servers take these dynamic credentials like any others (add_secure_port):
    # the core calls the fetcher before each handshake, which tests/security/test_tls.py
    # checks by rotating the files under a running aio server. (The stubs say the fetcher
    # must return a configuration; None is grpc's documented "no change".)
    fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], certificates.fetch)
    return grpc.dynamic_ssl_server_credentials(
        certificates.initial, fetch, require_client_authentication=client_ca is not None
    )


# --------------------------------------------------------------------------- peer TLS


def peer_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """Credentials of the channels towards peers: their CA, and our client cert for mTLS.

    Read once at start-up: gRPC Python has no reloadable channel credentials, so a rotated
    client certificate is picked up by the next (rolling) restart of the orchestrator.
    """
    ca, cert, key = (
        settings.peer_tls_ca_file,
        settings.peer_tls_cert_file,
        settings.peer_tls_key_file,
    )
    if ca is None:
        if cert is not None or key is not None:
            raise ConfigError(
                "NEXTBEST_PEER_TLS_CERT_FILE/_KEY_FILE need NEXTBEST_PEER_TLS_CA_FILE"
            )
        return None
    if (cert is None) != (key is None):
        raise ConfigError("NEXTBEST_PEER_TLS_CERT_FILE and NEXTBEST_PEER_TLS_KEY_FILE go together")
    root = _read(ca, "NEXTBEST_PEER_TLS_CA_FILE")
    if cert is None or key is None:
        return grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=_read(key, "NEXTBEST_PEER_TLS_KEY_FILE"),
        certificate_chain=_read(cert, "NEXTBEST_PEER_TLS_CERT_FILE"),
    )


# --------------------------------------------------------------------------- interceptors


def _metadata_value(metadata: Iterable[tuple[str, Any]] | None, key: str) -> str | None:
    for name, value in metadata or ():
        if name == key and isinstance(value, str):
            return value
    return None


def _bearer(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    value = _metadata_value(metadata, AUTHORIZATION_HEADER)
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


@dataclass
class Principal:
    """Who a call was authenticated as (for logs): a token's name, or a mesh peer."""

    name: str
    kind: str


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks every call against ``required_access`` before the servicer runs.

    It wraps the handler (the client certificate is only visible on the servicer context),
    and answers a refused call itself with the status of ``Unauthenticated`` or
    ``PermissionDenied``, so it behaves the same for every kind of method.
    """

    def __init__(
        self,
        tokens: TokenStore | None,
        mesh_token: str | None,
        mesh_certificates: bool,
        admin_may_call_internal: bool,
    ) -> None:
        self._tokens = tokens
        self._mesh_token = mesh_token.encode() if mesh_token else None
        self._mesh_certificates = mesh_certificates
        self._admin_may_call_internal = admin_may_call_internal

    def enforced(self, access: Access) -> bool:
        if access is Access.OPEN:
            return False
        if access is Access.MESH:
            return (
                self._tokens is not None or self._mesh_token is not None or self._mesh_certificates
            )
        return self._tokens is not None

    def _token(self, metadata: Sequence[tuple[str, Any]]) -> TokenEntry:
        token = _bearer(metadata)
        if token is None:
            raise Unauthenticated("a bearer token is required (authorization: Bearer <token>)")
        if self._tokens is None:
            raise Unauthenticated("bearer tokens are not configured here")
        entry = self._tokens.authenticate(token)
        if entry is None:
            raise Unauthenticated("unknown bearer token")
        return entry

    def _mesh_peer(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal | None:
        if self._mesh_certificates:
            # require_client_authentication is on: a certificate here was verified.
            auth = context.auth_context()
            if auth.get("transport_security_type") == [b"ssl"] and auth.get("x509_pem_cert"):
                names = list(context.peer_identities() or [b"?"])
                return Principal(names[0].decode(errors="replace"), "certificate")
        if self._mesh_token is not None:
            sent = _metadata_value(context.invocation_metadata(), MESH_TOKEN_HEADER)
            if sent is not None and hmac.compare_digest(sent.encode(), self._mesh_token):
                return Principal("mesh", "mesh_token")
        return None

    def authorize(self, access: Access, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        """The caller if it may call a method requiring ``access``; raises otherwise."""
        metadata = tuple(context.invocation_metadata() or ())
        if access is Access.MESH:
            peer = self._mesh_peer(context)
            if peer is not None:
                return peer
            if self._admin_may_call_internal and self._tokens is not None:
                if _bearer(metadata) is None:
                    raise Unauthenticated(
                        "internal service: needs a mesh identity or an admin token"
                    )
                entry = self._token(metadata)
                if "admin" not in entry.scopes:
                    raise PermissionDenied(f"token {entry.name!r} lacks the admin scope")
                return Principal(entry.name, "token")
            if _bearer(metadata) is not None and self._tokens is not None:
                self._token(metadata)  # an unknown token stays UNAUTHENTICATED
                raise PermissionDenied("internal service: only mesh peers may call it")
            raise Unauthenticated("internal service: only mesh peers may call it")
        entry = self._token(metadata)
        if access.value not in entry.scopes:
            raise PermissionDenied(f"token {entry.name!r} lacks the {access.value} scope")
        return Principal(entry.name, "token")

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        access = required_access(handler_call_details.method)
        if handler is None or not self.enforced(access):
            return handler
        guarded: grpc.RpcMethodHandler[Any, Any] = _guarded(
            handler, lambda context: self._check(access, context)
        )
        return guarded

    async def _check(self, access: Access, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            principal = self.authorize(access, context)
        except (Unauthenticated, PermissionDenied) as error:
            _log.warning(
                "call refused",
                reason=str(error),
                required=access.value,
                code=type(error).__name__,
                peer=context.peer(),
            )
            await _abort(context, error)
            return
        if _level.isEnabledFor(logging.DEBUG):  # spare the hot path the log processors
            _log.debug("call authorized", principal=principal.name, via=principal.kind)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: DomainError) -> None:
    status = status_for(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


Check = Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]


def _guarded(handler: grpc.RpcMethodHandler[Any, Any], check: Check) -> Any:
    """The same handler with ``check`` run first, for each of the four kinds of method."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    # The stubs type handlers as synchronous; on an aio server they are coroutines.
    behaviour: Any
    if handler.unary_unary is not None:
        behaviour = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await check(context)
            return await behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
    if handler.unary_stream is not None:
        behaviour = handler.unary_stream

        async def stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await check(context)
            async for response in behaviour(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(stream, **kwargs)
    if handler.stream_unary is not None:
        behaviour = handler.stream_unary

        async def client_stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await check(context)
            return await behaviour(requests, context)

        return grpc.stream_unary_rpc_method_handler(client_stream, **kwargs)
    behaviour = handler.stream_stream

    async def bidi(
        requests: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await check(context)
        async for response in behaviour(requests, context):
            yield response

    return grpc.stream_stream_rpc_method_handler(bidi, **kwargs)


class MeshTokenInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor
):
    """Adds ``x-nextbest-mesh-token`` to every call the orchestrator makes to a peer."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(MESH_TOKEN_HEADER, self._token)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


# --------------------------------------------------------------------------- wiring


@dataclass
class ServerSecurity:
    credentials: grpc.ServerCredentials | None = None
    interceptors: Sequence[grpc.aio.ServerInterceptor] = field(default_factory=list)


@dataclass
class ChannelSecurity:
    credentials: grpc.ChannelCredentials | None = None
    interceptors: Sequence[grpc.aio.ClientInterceptor] = field(default_factory=list)


_INTERNAL_TARGETS = (Target.IDENTITY, Target.CONTEXT, Target.SCORING, Target.ARBITRATION)
# Targets serving methods that need a token scope (public API or admin services).
_TOKEN_TARGETS = (Target.ALL, Target.ORCHESTRATOR, Target.SCORING, Target.ARBITRATION)


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_security(settings: Settings) -> ServerSecurity:
    """TLS credentials and the auth interceptor of the target ``settings`` describes."""
    credentials = server_credentials(settings)
    tokens = TokenStore(settings.auth_tokens_file) if settings.auth_tokens_file else None
    mesh_token = settings.mesh_token.get_secret_value() if settings.mesh_token else None
    mesh_certificates = settings.tls_client_ca_file is not None
    if (
        settings.target in _INTERNAL_TARGETS
        and tokens is not None
        and not (mesh_token or mesh_certificates)
    ):
        raise ConfigError(
            "NEXTBEST_AUTH_TOKENS_FILE is set but the internal services cannot recognise the "
            "orchestrator: set NEXTBEST_MESH_TOKEN or NEXTBEST_TLS_CLIENT_CA_FILE"
        )
    if not is_loopback(settings.host):
        if credentials is None:
            _log.warning("TLS is off on a non-loopback address", host=settings.host)
        if tokens is None and settings.target in _TOKEN_TARGETS:
            _log.warning(
                "authentication is off on a non-loopback address: no token is required",
                host=settings.host,
            )
        if settings.target in _INTERNAL_TARGETS and not (mesh_token or mesh_certificates):
            _log.warning(
                "the internal services accept any caller on a non-loopback address: set "
                "NEXTBEST_TLS_CLIENT_CA_FILE or NEXTBEST_MESH_TOKEN",
                host=settings.host,
            )
    if tokens is None and mesh_token is None and not mesh_certificates:
        return ServerSecurity(credentials, [])  # nothing to check: no interceptor to pay for
    interceptor = AuthInterceptor(
        tokens,
        mesh_token,
        mesh_certificates,
        admin_may_call_internal=settings.target == Target.ALL,
    )
    return ServerSecurity(credentials, [interceptor])


def channel_security(settings: Settings) -> ChannelSecurity:
    """Credentials and the mesh-token interceptor of the orchestrator's peer channels."""
    interceptors: list[grpc.aio.ClientInterceptor] = []
    if settings.mesh_token is not None:
        interceptors.append(MeshTokenInterceptor(settings.mesh_token.get_secret_value()))
    return ChannelSecurity(peer_credentials(settings), interceptors)
